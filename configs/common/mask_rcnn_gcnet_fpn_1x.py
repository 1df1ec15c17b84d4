"""Everything of Base-GCNet-RCNN-FPN.yaml: mmdetection's Mask R-CNN FPN 1x recipe on COCO.
Leaves import these five names and change what differs."""

from .data.coco_mmdet_resize import dataloader
from .models.mask_rcnn_gcnet_fpn import model
from .optim import SGD as optimizer
from .schedule import lr_multiplier_1x as lr_multiplier
from .train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
