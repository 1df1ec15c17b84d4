"""GCNet table row 5: Mask R-CNN R-50-FPN, SyncBN backbone, no GC.

Target (mmdet release): box AP 38.4, mask AP 34.6.
"""

from ..common.mask_rcnn_gcnet_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

# trained statistics (mmdet syncbn-backbone, norm_eval=False)
model.backbone.bottom_up.stages.norm = "SyncBN"
