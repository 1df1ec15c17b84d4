"""GCNet table row 17: DCN Cascade Mask R-CNN X-101-32x4d-FPN, SyncBN backbone, no GC.

Target (mmdet release): box AP 44.9, mask AP 38.9.
"""

from detectron2.config import LazyConfig

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco.py",
    keys=("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)

model.backbone.bottom_up.stages.deform_stages = [False, True, True, True]  # DCN v1 c3-c5
