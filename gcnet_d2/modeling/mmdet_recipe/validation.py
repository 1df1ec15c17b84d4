"""Which ``MODEL.MMDET_TRAIN`` combinations the recipe's parts can build.

Each part of the recipe (the FPN builder, ``MMDetRPN``, the RoI heads) checks the whole
combination when it is built from a config, so a bad one fails at build time, naming the keys,
rather than training silently with part of the recipe.
"""

from __future__ import annotations

from detectron2.config import CfgNode

from .head_init import HEAD_INITS
from .sampling import MASK_PAD_MODES

MMDET_RPN = "MMDetRPN"
MMDET_ROI_HEADS = ("MMDetROIHeads", "MMDetCascadeROIHeads")
MMDET_CASCADE_ROI_HEADS = "MMDetCascadeROIHeads"
MMDET_FPN_BACKBONE = "build_gcnet_resnet_mmdet_fpn_backbone"


def validate_mmdet_train_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the keys of an unusable ``MODEL.MMDET_TRAIN`` combination
    (or naming ``MODEL.MMDET_TRAIN`` when ``cfg`` lacks gcnet_d2's keys)."""
    if "MMDET_TRAIN" not in cfg.MODEL:
        raise ValueError(
            "MODEL.MMDET_TRAIN is missing: mmdetection's recipe parts read it; add gcnet_d2's "
            "keys with gcnet_d2.add_gcnet_config(cfg)"
        )
    t = cfg.MODEL.MMDET_TRAIN
    rpn_name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    roi_name = cfg.MODEL.ROI_HEADS.NAME
    for key in ("RPN_MAX_IOU_ASSIGNER", "RPN_VALID_ANCHORS"):
        if t[key] and rpn_name != MMDET_RPN:
            raise ValueError(
                f"MODEL.MMDET_TRAIN.{key}=True needs MODEL.PROPOSAL_GENERATOR.NAME "
                f"{MMDET_RPN!r}, got {rpn_name!r}"
            )
    for key in ("RPN_MIN_POS_IOU", "ROI_MIN_POS_IOU"):
        if not 0.0 <= float(t[key]) <= 1.0:
            raise ValueError(f"MODEL.MMDET_TRAIN.{key} must be in [0, 1], got {t[key]!r}")
    if int(t.PAD_SIZE_DIVISOR) < 1:
        raise ValueError(
            f"MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR must be >= 1, got {t.PAD_SIZE_DIVISOR!r}"
        )
    if t.ROI_MAX_IOU_ASSIGNER and roi_name not in MMDET_ROI_HEADS:
        raise ValueError(
            "MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER=True needs MODEL.ROI_HEADS.NAME in "
            f"{MMDET_ROI_HEADS}, got {roi_name!r}"
        )
    if t.CASCADE_RESAMPLE:
        if roi_name != MMDET_CASCADE_ROI_HEADS:
            raise ValueError(
                "MODEL.MMDET_TRAIN.CASCADE_RESAMPLE=True is the mmdetection cascade sampler: it "
                f"needs MODEL.ROI_HEADS.NAME {MMDET_CASCADE_ROI_HEADS!r}, got {roi_name!r}"
            )
        if not t.ROI_MAX_IOU_ASSIGNER:
            raise ValueError(
                "MODEL.MMDET_TRAIN.CASCADE_RESAMPLE=True needs "
                "MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER=True (stages 2-3 drop the prepended GTs)"
            )
    if t.MASK_PAD not in MASK_PAD_MODES:
        raise ValueError(
            f"MODEL.MMDET_TRAIN.MASK_PAD must be one of {MASK_PAD_MODES}, got {t.MASK_PAD!r}"
        )
    if t.MASK_PAD == "batch" and roi_name not in MMDET_ROI_HEADS:
        raise ValueError(
            "MODEL.MMDET_TRAIN.MASK_PAD='batch' needs MODEL.ROI_HEADS.NAME in "
            f"{MMDET_ROI_HEADS}, got {roi_name!r}"
        )
    if t.HEAD_INIT not in HEAD_INITS:
        raise ValueError(
            f"MODEL.MMDET_TRAIN.HEAD_INIT must be one of {HEAD_INITS}, got {t.HEAD_INIT!r}"
        )
    if t.HEAD_INIT == "mmdet":
        if roi_name not in MMDET_ROI_HEADS:
            raise ValueError(
                "MODEL.MMDET_TRAIN.HEAD_INIT='mmdet' needs MODEL.ROI_HEADS.NAME in "
                f"{MMDET_ROI_HEADS}, got {roi_name!r}"
            )
        if cfg.MODEL.BACKBONE.NAME != MMDET_FPN_BACKBONE:
            raise ValueError(
                "MODEL.MMDET_TRAIN.HEAD_INIT='mmdet' needs MODEL.BACKBONE.NAME "
                f"{MMDET_FPN_BACKBONE!r} (the FPN starts from mmdetection's init), "
                f"got {cfg.MODEL.BACKBONE.NAME!r}"
            )
