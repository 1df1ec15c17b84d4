"""Model components; importing this package registers the backbone builders."""

from .assign import MaxIoUMatcher
from .backbone import (
    build_gcnet_resnet_backbone,
    build_gcnet_resnet_fpn_backbone,
    build_gcnet_retinanet_resnet_fpn_backbone,
    make_gcnet_stages,
    make_gcnet_stem,
    validate_gcnet_config,
)
from .bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock, reference_bottleneck_forward
from .cascade_heads import MMDetCascadeROIHeads
from .context_block import ContextBlock, reference_context_block
from .context_block_fast import set_fast_paths
from .deform_conv import DeformConv2dWithOffset
from .fpn import LeanFPN
from .norm import FrozenStatsBatchNorm2d, resolve_norm
from .roi_heads import MMDetROIHeads
from .rpn import MMDetRPN

__all__ = [
    "ContextBlock",
    "DeformConv2dWithOffset",
    "DeformGCBottleneckBlock",
    "FrozenStatsBatchNorm2d",
    "GCBottleneckBlock",
    "LeanFPN",
    "MMDetCascadeROIHeads",
    "MMDetROIHeads",
    "MMDetRPN",
    "MaxIoUMatcher",
    "build_gcnet_resnet_backbone",
    "build_gcnet_resnet_fpn_backbone",
    "build_gcnet_retinanet_resnet_fpn_backbone",
    "make_gcnet_stages",
    "make_gcnet_stem",
    "reference_bottleneck_forward",
    "reference_context_block",
    "resolve_norm",
    "set_fast_paths",
    "validate_gcnet_config",
]
