"""``MMDetFPN``: detectron2's FPN starting from mmdetection's init, and the recipe's builder.

The GC backbone builders (:mod:`gcnet_d2.modeling.backbone`) build detectron2's own ``FPN``
and know nothing of the training recipe. The recipe is chosen in the config:
``MODEL.BACKBONE.NAME: build_gcnet_resnet_mmdet_fpn_backbone`` (the table's Base-*.yaml)
builds the same GC ResNet-FPN as ``build_gcnet_resnet_fpn_backbone``, as an :class:`MMDetFPN`
with ``MODEL.MMDET_TRAIN.HEAD_INIT``; the LazyConfigs write ``L(MMDetFPN)(..., head_init=)``.
Same modules, forward and state dict as detectron2's FPN; with ``head_init="mmdet"`` the
lateral and output convs are then drawn again, as mmdetection draws them.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN

from ...registry import register_once
from ..backbone import build_gcnet_resnet_fpn_backbone
from .head_init import check_head_init, init_fpn_like_mmdet
from .validation import validate_mmdet_train_config


class MMDetFPN(FPN):
    """detectron2's ``FPN`` (same arguments, modules, forward and state dict) whose lateral
    and output convs start as mmdetection's with ``head_init="mmdet"``."""

    def __init__(self, *args: object, head_init: str = "detectron2", **kwargs: object) -> None:
        check_head_init(head_init)
        super().__init__(*args, **kwargs)
        self.head_init = head_init
        if head_init == "mmdet":
            init_fpn_like_mmdet(self)


@register_once(BACKBONE_REGISTRY)
def build_gcnet_resnet_mmdet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> MMDetFPN:
    """``build_gcnet_resnet_fpn_backbone`` (GC / DCN ResNet, stride-2 max-pooled P6) under an
    :class:`MMDetFPN` initialised per ``MODEL.MMDET_TRAIN.HEAD_INIT``, after checking the
    config's ``MODEL.MMDET_TRAIN`` combination."""
    validate_mmdet_train_config(cfg)
    head_init = cfg.MODEL.MMDET_TRAIN.HEAD_INIT

    def mmdet_fpn(**kwargs: object) -> MMDetFPN:
        return MMDetFPN(head_init=head_init, **kwargs)

    return build_gcnet_resnet_fpn_backbone(cfg, input_shape, fpn_class=mmdet_fpn)


__all__ = ["MMDetFPN", "build_gcnet_resnet_mmdet_fpn_backbone"]
