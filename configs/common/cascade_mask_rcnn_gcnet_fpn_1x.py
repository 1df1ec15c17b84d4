"""Everything of Base-GCNet-Cascade-RCNN-FPN.yaml: mmdetection's Cascade Mask R-CNN FPN 1x."""

from .data.coco_mmdet_resize import dataloader
from .models.cascade_mask_rcnn_gcnet_fpn import model
from .optim import SGD as optimizer
from .schedule import lr_multiplier_1x as lr_multiplier
from .train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
