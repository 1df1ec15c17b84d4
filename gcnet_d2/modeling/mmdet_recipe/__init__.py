"""mmdetection's training rules (``MODEL.MMDET_TRAIN``) as detectron2 parts.

Each is detectron2's class with one rule changed, and Detectron2's stock behaviour when its
switch is off (docs/training.md lists them): the max-IoU matcher (:mod:`.matcher`), the RPN's
anchor labelling (:mod:`.rpn`), RoI sampling with the GTs prepended (:mod:`.sampling`,
:mod:`.roi_heads`), the head initialisation (:mod:`.init`) and GT bitmaps indexed rather than
copied per RoI (:mod:`.indexed_masks`). Importing it registers ``MMDetRPN`` and
``MMDetROIHeads``.
"""

from .indexed_masks import IndexedBitMasks
from .init import MMDetFPN, init_like_mmdet
from .matcher import MaxIoUMatcher
from .roi_heads import MMDetROIHeads
from .rpn import MMDetRPN

__all__ = [
    "IndexedBitMasks",
    "MMDetFPN",
    "MMDetROIHeads",
    "MMDetRPN",
    "MaxIoUMatcher",
    "init_like_mmdet",
]
