"""GCNet table row 8: Mask R-CNN R-101-FPN, SyncBN backbone, no GC.

Target (mmdet release): box AP 40.5, mask AP 36.3.
"""

from ..common.mask_rcnn_gcnet_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
model.backbone.bottom_up.stages.norm = "SyncBN"
