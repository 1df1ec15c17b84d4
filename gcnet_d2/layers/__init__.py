"""Plain modules with no config and no speed-up code: the GC block, DCN v1, the norms."""

from .context_block import ContextBlock, validate_context_args
from .deform_conv import DeformConv2dWithOffset
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
    "DeformConv2dWithOffset",
    "FrozenStatsBatchNorm2d",
    "frozen_affine",
    "has_frozen_affine",
    "resolve_norm",
    "validate_context_args",
]
