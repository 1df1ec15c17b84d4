"""GCNet table row 18: DCN Cascade Mask R-CNN X-101-32x4d-FPN, SyncBN backbone, GC r16 c3-c5.

Target (mmdet release): box AP 44.6, mask AP - (2020-05 checkpoint has no mask head).
"""

from detectron2.config import LazyConfig

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_1x_coco.py",
    keys=("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)

model.backbone.bottom_up.stages.gc_stages = [False, True, True, True]  # c3-c5
model.backbone.bottom_up.stages.gc_ratio = 1 / 16  # r16
