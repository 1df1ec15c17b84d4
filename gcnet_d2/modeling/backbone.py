"""GC / DCN ResNet and ResNeXt backbones: a config-free API and the registered builders.

Config-free, in detectron2's style (``ResNet.make_default_stages``), for LazyConfigs and code::

    ResNet(
        stem=make_gcnet_stem(norm="FrozenStatsBN"),
        stages=make_gcnet_stages(depth=50, gc_stages=(False, True, True, True), gc_ratio=1 / 16),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=2,
    )

Registered, selected from a YAML config with ``MODEL.BACKBONE.NAME`` (they validate the
config, naming the key, then call the functions above):
``build_gcnet_resnet_backbone``, ``build_gcnet_resnet_fpn_backbone`` (Mask / Cascade R-CNN)
and ``build_gcnet_retinanet_resnet_fpn_backbone`` (P3-P7, RetinaNet-style).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from torch import nn

from ..config import validate_mmdet_train_config
from ..layers import resolve_norm, validate_context_args
from ..registry import register_once
from .bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock
from .mmdet_recipe.init import MMDetFPN

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _check_per_stage(key: str, value: object) -> list[bool]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 4:
        raise ValueError(f"{key} must list 4 booleans (res2..res5), got {value!r}")
    if not all(isinstance(v, bool) or v in (0, 1) for v in value):
        raise ValueError(f"{key} must hold booleans, got {value!r}")
    return [bool(v) for v in value]


def _warn_fold_norms(fold_norms: bool | None) -> None:
    if fold_norms is not None:
        warnings.warn(
            "fold_norms is deprecated and ignored: the builders make the plain model; apply "
            "the speed-ups to the built model with gcnet_d2.fast.apply(model)",
            DeprecationWarning,
            stacklevel=3,
        )


def _default_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _resolve_norm_arg(norm: str | Callable[[int], nn.Module], device: str | None):  # noqa: ANN202
    if not isinstance(norm, str):
        return norm
    try:
        return resolve_norm(norm, _default_device(device))
    except ValueError as e:
        raise ValueError(f"norm: {e}") from None


def make_gcnet_stem(
    norm: str | Callable[[int], nn.Module] = "FrozenStatsBN",
    *,
    in_channels: int = 3,
    out_channels: int = 64,
    device: str | None = None,
    fold_norms: bool | None = None,
) -> BasicStem:
    """detectron2's ``BasicStem`` (7x7 conv, norm, ReLU, 3x3 max-pool) with a gcnet_d2 norm.

    Args:
        norm: a detectron2 norm name (``"BN"``, ``"SyncBN"``, ``"FrozenBN"``, ...), gcnet_d2's
            ``"FrozenStatsBN"`` (mmdetection's frozen statistics, trainable affine) or a
            callable ``channels -> nn.Module``.
        in_channels: input image channels.
        out_channels: stem width (64 for every ResNet / ResNeXt of the GCNet table).
        device: where the model will run; ``"SyncBN"`` becomes detectron2's gloo-capable
            ``"naiveSyncBN"`` off CUDA. ``None``: CUDA when available, else the CPU.
        fold_norms: deprecated and ignored; use :func:`gcnet_d2.fast.apply` on the model.
    """
    _warn_fold_norms(fold_norms)
    return BasicStem(in_channels, out_channels, norm=_resolve_norm_arg(norm, device))


def make_gcnet_stages(
    depth: int = 50,
    *,
    num_groups: int = 1,
    width_per_group: int = 64,
    norm: str | Callable[[int], nn.Module] = "FrozenStatsBN",
    stride_in_1x1: bool = False,
    res5_dilation: int = 1,
    gc_stages: Sequence[bool] = (False, False, False, False),
    gc_ratio: float = 1.0 / 16,
    gc_pooling: str = "att",
    gc_fusion: Sequence[str] = ("channel_add",),
    deform_stages: Sequence[bool] = (False, False, False, False),
    deform_num_groups: int = 1,
    in_channels: int = 64,
    out_channels: int = 256,
    device: str | None = None,
    fold_norms: bool | None = None,
) -> list[list[CNNBlockBase]]:
    """The four stages (res2..res5) of a bottleneck ResNet / ResNeXt with GC blocks and DCN.

    Returns the ``stages`` argument of detectron2's ``ResNet``, as
    ``ResNet.make_default_stages`` does, so a LazyConfig writes
    ``L(ResNet)(stem=L(make_gcnet_stem)(...), stages=L(make_gcnet_stages)(...), ...)``.
    Every bottleneck of a stage in ``gc_stages`` applies a GC block after ``conv3`` + norm
    (mmdetection's ``after_conv3``); every bottleneck of a stage in ``deform_stages`` has a
    DCN v1 ``conv2``. Module names match detectron2's ResNet plus ``context_block`` and
    ``conv2.conv_offset``, so mmdetection checkpoints convert key for key.

    Args:
        depth: 50, 101 or 152.
        num_groups: groups of the 3x3 convs (32 for ResNeXt-32x4d, 1 for ResNet).
        width_per_group: width of each group in res2 (4 for ResNeXt-32x4d, 64 for ResNet).
        norm: as in :func:`make_gcnet_stem`.
        stride_in_1x1: stride on the first 1x1 conv ("caffe" style) instead of the 3x3
            ("pytorch" style, mmdetection's and the table's).
        res5_dilation: 1, or 2 for a dilated res5 at stride 16.
        gc_stages: per stage res2..res5, whether its blocks have GC blocks ("c3-c5" is
            ``(False, True, True, True)``).
        gc_ratio: hidden width of the GC transform as a fraction of the channels, in (0, 1]
            (``1/16`` is "r16", ``1/4`` is "r4").
        gc_pooling: ``"att"`` (softmax attention over H x W, the paper's) or ``"avg"``.
        gc_fusion: any of ``"channel_add"``, ``"channel_mul"``.
        deform_stages: per stage res2..res5, whether its 3x3 convs are deformable
            ("dconv_c3-c5" is ``(False, True, True, True)``).
        deform_num_groups: offset groups of the deformable convs.
        in_channels: the stem's output width.
        out_channels: res2's output width (doubled at every later stage).
        device: as in :func:`make_gcnet_stem`.
        fold_norms: deprecated and ignored, as in :func:`make_gcnet_stem`.

    Raises:
        ValueError: naming the argument, for a depth, norm or GC / DCN option it cannot build.
    """
    _warn_fold_norms(fold_norms)
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"depth: gcnet_d2 builds bottleneck ResNets {sorted(BLOCKS_PER_STAGE)}, got {depth!r}"
        )
    gc_on = _check_per_stage("gc_stages", gc_stages)
    dcn_on = _check_per_stage("deform_stages", deform_stages)
    for name, call in (
        ("gc_ratio", lambda: validate_context_args(gc_ratio, "att", ["channel_add"])),
        ("gc_pooling", lambda: validate_context_args(0.5, gc_pooling, ["channel_add"])),
        ("gc_fusion", lambda: validate_context_args(0.5, "att", list(gc_fusion))),
    ):
        try:
            call()
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation!r}")
    norm = _resolve_norm_arg(norm, device)
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        dilation = res5_dilation if idx == 3 else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        kwargs = {
            "bottleneck_channels": bottleneck_channels,
            "num_groups": num_groups,
            "norm": norm,
            "stride_in_1x1": stride_in_1x1,
            "dilation": dilation,
        }
        if dcn_on[idx]:
            block_class = DeformGCBottleneckBlock
            kwargs["deform_num_groups"] = deform_num_groups
        else:
            block_class = GCBottleneckBlock if gc_on[idx] else BottleneckBlock
        if block_class is not BottleneckBlock:
            kwargs["gc_ratio"] = gc_ratio if gc_on[idx] else None
            kwargs["gc_pooling"] = gc_pooling
            kwargs["gc_fusion"] = tuple(gc_fusion)
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
    return stages


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
    """A bottleneck ResNet / ResNeXt whose stages may use GC blocks and deformable convs."""
    return _resnet(cfg, input_shape)


def _resnet(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    validate_gcnet_config(cfg)
    res, gc = cfg.MODEL.RESNETS, cfg.MODEL.GCNET
    norm = resolve_norm(res.NORM, cfg.MODEL.DEVICE)
    # Stem first: modules draw their initial weights in construction order.
    stem = make_gcnet_stem(
        norm, in_channels=input_shape.channels, out_channels=res.STEM_OUT_CHANNELS
    )
    stages = make_gcnet_stages(
        res.DEPTH,
        num_groups=res.NUM_GROUPS,
        width_per_group=res.WIDTH_PER_GROUP,
        norm=norm,
        stride_in_1x1=res.STRIDE_IN_1X1,
        res5_dilation=res.RES5_DILATION,
        gc_stages=gc.STAGES_ON,
        gc_ratio=gc.RATIO,
        gc_pooling=gc.POOLING,
        gc_fusion=gc.FUSION,
        deform_stages=res.DEFORM_ON_PER_STAGE,
        deform_num_groups=res.DEFORM_NUM_GROUPS,
        in_channels=res.STEM_OUT_CHANNELS,
        out_channels=res.RES2_OUT_CHANNELS,
    )
    return ResNet(
        stem, stages, out_features=res.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


def _fpn(
    cfg: CfgNode, input_shape: ShapeSpec, make_top_block: Callable[[ResNet], nn.Module]
) -> FPN:
    validate_mmdet_train_config(cfg)
    bottom_up = _resnet(cfg, input_shape)
    return MMDetFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=make_top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        head_init=cfg.MODEL.MMDET_TRAIN.HEAD_INIT if "MMDET_TRAIN" in cfg.MODEL else "detectron2",
    )


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
