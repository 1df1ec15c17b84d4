"""Model components; importing this package registers the backbone builders."""

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
from .deform_conv import DeformConv2dWithOffset
from .norm import FrozenStatsBatchNorm2d, resolve_norm

__all__ = [
    "ContextBlock",
    "DeformConv2dWithOffset",
    "DeformGCBottleneckBlock",
    "FrozenStatsBatchNorm2d",
    "GCBottleneckBlock",
    "MMDetCascadeROIHeads",
    "build_gcnet_resnet_backbone",
    "build_gcnet_resnet_fpn_backbone",
    "build_gcnet_retinanet_resnet_fpn_backbone",
    "make_gcnet_stages",
    "make_gcnet_stem",
    "reference_bottleneck_forward",
    "reference_context_block",
    "resolve_norm",
    "validate_gcnet_config",
]
