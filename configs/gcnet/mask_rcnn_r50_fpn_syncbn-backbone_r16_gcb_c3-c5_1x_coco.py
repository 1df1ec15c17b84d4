"""GCNet table row 6: Mask R-CNN R-50-FPN, SyncBN backbone, GC r16 c3-c5.

Target (mmdet release): box AP 40.4, mask AP 36.2.
"""

from detectron2.config import LazyConfig

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "mask_rcnn_r50_fpn_syncbn-backbone_1x_coco.py",
    keys=("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)

model.backbone.bottom_up.stages.gc_stages = [False, True, True, True]  # c3-c5
model.backbone.bottom_up.stages.gc_ratio = 1 / 16  # r16
