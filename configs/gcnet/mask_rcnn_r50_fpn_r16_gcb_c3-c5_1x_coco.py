"""GCNet table row 1: Mask R-CNN R-50-FPN, GC r16 c3-c5.

Target (mmdet release): box AP 39.7, mask AP 35.9.
"""

from ..common.mask_rcnn_gcnet_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.gc_stages = [False, True, True, True]  # c3-c5
model.backbone.bottom_up.stages.gc_ratio = 1 / 16  # r16
