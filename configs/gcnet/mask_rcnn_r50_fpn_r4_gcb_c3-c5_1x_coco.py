"""GCNet table row 2: Mask R-CNN R-50-FPN, GC r4 c3-c5.

Target (mmdet release): box AP 39.9, mask AP 36.0.
"""

from ..common.mask_rcnn_gcnet_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.gc_stages = [False, True, True, True]  # c3-c5
model.backbone.bottom_up.stages.gc_ratio = 1 / 4  # r4
