"""GC / DCN ResNet(X) backbones and gcnet_d2's detector parts; importing registers them.

- :mod:`.backbone`: ``make_gcnet_stem`` / ``make_gcnet_stages`` (config-free) and the
  registered builders ``build_gcnet_resnet_backbone``, ``build_gcnet_resnet_fpn_backbone``,
  ``build_gcnet_retinanet_resnet_fpn_backbone``;
- :mod:`.bottleneck`: detectron2's bottleneck with a GC block after ``conv3`` (and DCN v1);
- :mod:`.box_selection`: detection / proposal selection that eager PyTorch and ONNX Runtime
  compute alike;
- :mod:`.mmdet_recipe`: mmdetection's recipe (``MODEL.MMDET_TRAIN``): its FPN init and
  builder, RPN, RoI heads (``MMDetROIHeads``, ``MMDetCascadeROIHeads``, mmdetection's cascade
  test path). The backbone modules above import nothing from it.

The plain modules (``ContextBlock``, DCN v1, norms) live in :mod:`gcnet_d2.layers`, the
speed-ups in :mod:`gcnet_d2.fast`.
"""

from ..layers import ContextBlock, DeformConv2dWithOffset, FrozenStatsBatchNorm2d, resolve_norm
from .backbone import (
    build_gcnet_resnet_backbone,
    build_gcnet_resnet_fpn_backbone,
    build_gcnet_retinanet_resnet_fpn_backbone,
    make_gcnet_stages,
    make_gcnet_stem,
    validate_gcnet_config,
)
from .bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock
from .mmdet_recipe import (
    MaxIoUMatcher,
    MMDetCascadeROIHeads,
    MMDetFPN,
    MMDetROIHeads,
    MMDetRPN,
    build_gcnet_resnet_mmdet_fpn_backbone,
)

__all__ = [
    "ContextBlock",
    "DeformConv2dWithOffset",
    "DeformGCBottleneckBlock",
    "FrozenStatsBatchNorm2d",
    "GCBottleneckBlock",
    "MMDetCascadeROIHeads",
    "MMDetFPN",
    "MMDetROIHeads",
    "MMDetRPN",
    "MaxIoUMatcher",
    "build_gcnet_resnet_backbone",
    "build_gcnet_resnet_fpn_backbone",
    "build_gcnet_resnet_mmdet_fpn_backbone",
    "build_gcnet_retinanet_resnet_fpn_backbone",
    "make_gcnet_stages",
    "make_gcnet_stem",
    "resolve_norm",
    "validate_gcnet_config",
]
