"""Registered backbone builders: GC / DCN ResNet and ResNeXt, bare and inside an FPN.

Selected from a config with ``MODEL.BACKBONE.NAME``:
``build_gcnet_resnet_backbone``, ``build_gcnet_resnet_fpn_backbone`` (Mask / Cascade R-CNN)
and ``build_gcnet_retinanet_resnet_fpn_backbone`` (P3-P7, RetinaNet-style).
"""

from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from torch import nn

from ..registry import register_once
from .bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock
from .context_block import validate_context_args
from .inference_options import apply_inference_options
from .norm import resolve_norm

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _check_per_stage(key: str, value: object) -> list[bool]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"{key} must list 4 booleans (res2..res5), got {value!r}")
    if not all(isinstance(v, bool) or v in (0, 1) for v in value):
        raise ValueError(f"{key} must hold booleans, got {value!r}")
    return [bool(v) for v in value]


def validate_gcnet_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key and value of any unusable GC / DCN / ResNet setting."""
    gc = cfg.MODEL.GCNET
    _check_per_stage("MODEL.GCNET.STAGES_ON", gc.STAGES_ON)
    _check_per_stage("MODEL.RESNETS.DEFORM_ON_PER_STAGE", cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
    for key, call in (
        ("MODEL.GCNET.RATIO", lambda: validate_context_args(gc.RATIO, "att", ["channel_add"])),
        ("MODEL.GCNET.POOLING", lambda: validate_context_args(0.5, gc.POOLING, ["channel_add"])),
        ("MODEL.GCNET.FUSION", lambda: validate_context_args(0.5, "att", list(gc.FUSION))),
    ):
        try:
            call()
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    res = cfg.MODEL.RESNETS
    if res.DEPTH not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH: gcnet_d2 builds bottleneck ResNets {sorted(BLOCKS_PER_STAGE)}, "
            f"got {res.DEPTH!r}"
        )
    if res.DEFORM_MODULATED:
        raise ValueError("MODEL.RESNETS.DEFORM_MODULATED: only DCN v1 (False) is supported")
    if res.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res.RES5_DILATION!r}")
    if not 0 <= cfg.MODEL.BACKBONE.FREEZE_AT <= 5:
        raise ValueError(
            f"MODEL.BACKBONE.FREEZE_AT must be in 0..5, got {cfg.MODEL.BACKBONE.FREEZE_AT}"
        )


@register_once(BACKBONE_REGISTRY)
def build_gcnet_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """A bottleneck ResNet / ResNeXt whose stages may use GC blocks and deformable convs,
    with the inference options of ``MODEL.GCNET`` (norm folding, ``torch.compile``)."""
    return apply_inference_options(_resnet(cfg, input_shape), cfg)


def _resnet(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    validate_gcnet_config(cfg)
    res, gc = cfg.MODEL.RESNETS, cfg.MODEL.GCNET
    norm = resolve_norm(res.NORM, cfg.MODEL.DEVICE)
    stem = BasicStem(input_shape.channels, res.STEM_OUT_CHANNELS, norm=norm)
    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[res.DEPTH]):
        dilation = res.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        kwargs = {
            "bottleneck_channels": bottleneck_channels,
            "num_groups": res.NUM_GROUPS,
            "norm": norm,
            "stride_in_1x1": res.STRIDE_IN_1X1,
            "dilation": dilation,
        }
        gc_on, dcn_on = gc.STAGES_ON[idx], res.DEFORM_ON_PER_STAGE[idx]
        if dcn_on:
            block_class = DeformGCBottleneckBlock
            kwargs["deform_num_groups"] = res.DEFORM_NUM_GROUPS
        else:
            block_class = GCBottleneckBlock if gc_on else BottleneckBlock
        if block_class is not BottleneckBlock:
            kwargs["gc_ratio"] = gc.RATIO if gc_on else None
            kwargs["gc_pooling"] = gc.POOLING
            kwargs["gc_fusion"] = tuple(gc.FUSION)
        stages.append(
            ResNet.make_stage(
                block_class,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                **kwargs,
            )
        )
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(
        stem, stages, out_features=res.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


def _fpn(
    cfg: CfgNode, input_shape: ShapeSpec, make_top_block: Callable[[ResNet], nn.Module]
) -> FPN:
    bottom_up = _resnet(cfg, input_shape)
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=make_top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    return apply_inference_options(fpn, cfg)


@register_once(BACKBONE_REGISTRY)
def build_gcnet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """GC / DCN ResNet under an FPN with a stride-2 max-pooled P6 (Mask / Cascade R-CNN)."""
    return _fpn(cfg, input_shape, lambda bottom_up: LastLevelMaxPool())


@register_once(BACKBONE_REGISTRY)
def build_gcnet_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """GC / DCN ResNet under an FPN with P6/P7 convs on C5 (RetinaNet-style, P3-P7)."""
    out = cfg.MODEL.FPN.OUT_CHANNELS
    return _fpn(
        cfg,
        input_shape,
        lambda bottom_up: LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out),
    )
