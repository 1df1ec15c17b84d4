"""mmdetection's training recipe (``MODEL.MMDET_TRAIN``) as detectron2 parts.

Each is detectron2's class with one rule changed, and Detectron2's stock behaviour when its
switch is off (docs/training.md lists them): the max-IoU matcher (:mod:`.matcher`), the RPN's
anchor labelling (:mod:`.rpn`), RoI sampling with the GTs prepended (:mod:`.sampling`), the
RoI heads (:mod:`.roi_heads`, :mod:`.cascade_roi_heads`, sharing :mod:`.roi_heads_recipe`),
the head initialisation (:mod:`.head_init`) with the FPN that applies it (:mod:`.fpn`), GT
bitmaps indexed rather than copied per RoI (:mod:`.indexed_masks`), and the check of a
config's combination of switches (:mod:`.validation`). Importing it registers ``MMDetRPN``,
``MMDetROIHeads``, ``MMDetCascadeROIHeads`` and the backbone builder
``build_gcnet_resnet_mmdet_fpn_backbone``. The GC backbone itself
(:mod:`gcnet_d2.modeling.backbone`) knows nothing of the recipe.
"""

from .cascade_roi_heads import MMDetCascadeROIHeads
from .fpn import MMDetFPN, build_gcnet_resnet_mmdet_fpn_backbone
from .head_init import init_like_mmdet
from .indexed_masks import IndexedBitMasks
from .matcher import MaxIoUMatcher
from .roi_heads import MMDetROIHeads
from .roi_heads_recipe import ROIHeadsRecipeMixin
from .rpn import MMDetRPN
from .validation import validate_mmdet_train_config

__all__ = [
    "IndexedBitMasks",
    "MMDetCascadeROIHeads",
    "MMDetFPN",
    "MMDetROIHeads",
    "MMDetRPN",
    "MaxIoUMatcher",
    "ROIHeadsRecipeMixin",
    "build_gcnet_resnet_mmdet_fpn_backbone",
    "init_like_mmdet",
    "validate_mmdet_train_config",
]
