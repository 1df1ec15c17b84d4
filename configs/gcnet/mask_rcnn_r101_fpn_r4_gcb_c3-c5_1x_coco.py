"""GCNet table row 4: Mask R-CNN R-101-FPN, GC r4 c3-c5.

Target (mmdet release): box AP 42.2, mask AP 37.8.
"""

from ..common.mask_rcnn_gcnet_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
model.backbone.bottom_up.stages.gc_stages = [False, True, True, True]  # c3-c5
model.backbone.bottom_up.stages.gc_ratio = 1 / 4  # r4
