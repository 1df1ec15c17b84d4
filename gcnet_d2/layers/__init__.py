"""Plain modules with no config and no speed-up code: the GC block, DCN v1, the norms, and
the per-class NMS that eager PyTorch and ONNX Runtime compute alike."""

from .context_block import ContextBlock, context_arg_errors, validate_context_args
from .deform_conv import DeformConv2dWithOffset
from .nms import class_nms, stable_topk
from .norm import (
    BACKBONE_NORMS,
    FrozenStatsBatchNorm2d,
    frozen_affine,
    has_frozen_affine,
    resolve_norm,
)

__all__ = [
    "BACKBONE_NORMS",
    "ContextBlock",
    "class_nms",
    "context_arg_errors",
    "DeformConv2dWithOffset",
    "FrozenStatsBatchNorm2d",
    "frozen_affine",
    "has_frozen_affine",
    "resolve_norm",
    "stable_topk",
    "validate_context_args",
]
