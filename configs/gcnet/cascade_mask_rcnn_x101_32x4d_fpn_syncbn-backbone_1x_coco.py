"""GCNet table row 14: Cascade Mask R-CNN X-101-32x4d-FPN, SyncBN backbone, no GC.

Target (mmdet release): box AP 44.7, mask AP 38.6.
"""

from ..common.cascade_mask_rcnn_gcnet_fpn_1x import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.stages.depth = 101
model.backbone.bottom_up.stages.num_groups = 32
model.backbone.bottom_up.stages.width_per_group = 4
model.backbone.bottom_up.stages.norm = "SyncBN"
