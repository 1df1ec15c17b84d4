"""GC / DCN ResNet and ResNeXt backbones: a config-free API and the registered builders.

Config-free, in detectron2's style (``ResNet.make_default_stages``), for LazyConfigs and code::

    ResNet(
        stem=make_gcnet_stem(norm="FrozenStatsBN"),
        stages=make_gcnet_stages(depth=50, gc_stages=(False, True, True, True), gc_ratio=1 / 16),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=2,
    )

Registered, selected from a YAML config with ``MODEL.BACKBONE.NAME`` (they validate the
config, naming the key, then build what the functions above build):
``build_gcnet_resnet_backbone``, ``build_gcnet_resnet_fpn_backbone`` (Mask / Cascade R-CNN)
and ``build_gcnet_retinanet_resnet_fpn_backbone`` (P3-P7, RetinaNet-style), all under
detectron2's own ``FPN``. mmdetection's training recipe (its FPN init) picks its own builder,
:mod:`gcnet_d2.modeling.mmdet_recipe.fpn`, which passes its FPN class to these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import torch
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from torch import nn

from ..layers import context_arg_errors, resolve_norm
from ..registry import register_once
from .bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

#: The arguments of :func:`make_gcnet_stages` that can be unusable, and the config key the
#: registered builders read each from: a bad value is reported under the name its user wrote.
CONFIG_KEYS = {
    "depth": "MODEL.RESNETS.DEPTH",
    "norm": "MODEL.RESNETS.NORM",
    "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "gc_stages": "MODEL.GCNET.STAGES_ON",
    "gc_ratio": "MODEL.GCNET.RATIO",
    "gc_pooling": "MODEL.GCNET.POOLING",
    "gc_fusion": "MODEL.GCNET.FUSION",
    "deform_stages": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
}
_GC_ARGS = {"ratio": "gc_ratio", "pooling": "gc_pooling", "fusion": "gc_fusion"}


def _per_stage(value: object) -> list[bool] | None:
    """``value`` as 4 booleans (res2..res5), or None when it is not that."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 4:
        return None
    if not all(isinstance(v, bool) or v in (0, 1) for v in value):
        return None
    return [bool(v) for v in value]


def _default_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _checked_stage_args(args: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``args`` (:func:`make_gcnet_stages`'s) with the norm resolved for its ``device`` (then
    dropped) and the per-stage flags as lists of booleans. One pass over them: the first
    unusable one raises ``ValueError`` under ``names[argument]`` (its config key), or the
    argument's own name."""

    def fail(arg: str, message: str) -> NoReturn:
        raise ValueError(f"{names.get(arg, arg)}: {message}")

    out = dict(args)
    device = _default_device(out.pop("device"))
    depth = args["depth"]
    if depth not in BLOCKS_PER_STAGE:
        fail("depth", f"gcnet_d2 builds bottleneck ResNets {list(BLOCKS_PER_STAGE)}, got {depth!r}")
    for arg in ("gc_stages", "deform_stages"):
        out[arg] = _per_stage(args[arg])
        if out[arg] is None:
            fail(arg, f"must list 4 booleans (res2..res5), got {args[arg]!r}")
    gc_errors = context_arg_errors(args["gc_ratio"], args["gc_pooling"], args["gc_fusion"])
    for gc_arg, message in gc_errors.items():
        fail(_GC_ARGS[gc_arg], message)
    if args["res5_dilation"] not in (1, 2):
        fail("res5_dilation", f"must be 1 or 2, got {args['res5_dilation']!r}")
    if isinstance(args["norm"], str):
        try:
            out["norm"] = resolve_norm(args["norm"], device)
        except ValueError as e:
            fail("norm", str(e))
    return out


def make_gcnet_stem(
    norm: str | Callable[[int], nn.Module] = "FrozenStatsBN",
    *,
    in_channels: int = 3,
    out_channels: int = 64,
    device: str | None = None,
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

    Raises:
        ValueError: naming ``norm``, for a norm name it does not know.
    """
    if isinstance(norm, str):
        try:
            norm = resolve_norm(norm, _default_device(device))
        except ValueError as e:
            raise ValueError(f"norm: {e}") from None
    return BasicStem(in_channels, out_channels, norm=norm)


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

    Raises:
        ValueError: naming the argument, for a depth, norm or GC / DCN option it cannot build.
    """
    args = dict(locals())
    return _make_stages(**_checked_stage_args(args, names={}))


def _make_stages(
    *,
    depth: int,
    num_groups: int,
    width_per_group: int,
    norm: str | Callable[[int], nn.Module],
    stride_in_1x1: bool,
    res5_dilation: int,
    gc_stages: list[bool],
    gc_ratio: float,
    gc_pooling: str,
    gc_fusion: Sequence[str],
    deform_stages: list[bool],
    deform_num_groups: int,
    in_channels: int,
    out_channels: int,
) -> list[list[CNNBlockBase]]:
    """:func:`make_gcnet_stages` on arguments :func:`_checked_stage_args` returned."""
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
        if deform_stages[idx]:
            block_class = DeformGCBottleneckBlock
            kwargs["deform_num_groups"] = deform_num_groups
        else:
            block_class = GCBottleneckBlock if gc_stages[idx] else BottleneckBlock
        if block_class is not BottleneckBlock:
            kwargs["gc_ratio"] = gc_ratio if gc_stages[idx] else None
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


def _stage_args(cfg: CfgNode) -> dict[str, Any]:
    """:func:`make_gcnet_stages`'s arguments as the registered builders read them."""
    res, gc = cfg.MODEL.RESNETS, cfg.MODEL.GCNET
    return {
        "depth": res.DEPTH,
        "num_groups": res.NUM_GROUPS,
        "width_per_group": res.WIDTH_PER_GROUP,
        "norm": res.NORM,
        "stride_in_1x1": res.STRIDE_IN_1X1,
        "res5_dilation": res.RES5_DILATION,
        "gc_stages": gc.STAGES_ON,
        "gc_ratio": gc.RATIO,
        "gc_pooling": gc.POOLING,
        "gc_fusion": gc.FUSION,
        "deform_stages": res.DEFORM_ON_PER_STAGE,
        "deform_num_groups": res.DEFORM_NUM_GROUPS,
        "in_channels": res.STEM_OUT_CHANNELS,
        "out_channels": res.RES2_OUT_CHANNELS,
        "device": cfg.MODEL.DEVICE,
    }


def _checked_config(cfg: CfgNode) -> dict[str, Any]:
    """The one validation pass of the builders: :func:`_checked_stage_args` on ``cfg``'s
    values under their keys, then the keys only the config has."""
    args = _checked_stage_args(_stage_args(cfg), CONFIG_KEYS)
    if cfg.MODEL.RESNETS.DEFORM_MODULATED:
        raise ValueError("MODEL.RESNETS.DEFORM_MODULATED: only DCN v1 (False) is supported")
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"MODEL.BACKBONE.FREEZE_AT: must be in 0..5, got {freeze_at!r}")
    return args


def validate_gcnet_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key and value of any unusable GC / DCN / ResNet setting
    (what the registered builders check before building)."""
    _checked_config(cfg)


@register_once(BACKBONE_REGISTRY)
def build_gcnet_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """A bottleneck ResNet / ResNeXt whose stages may use GC blocks and deformable convs."""
    return _resnet(cfg, input_shape)


def _resnet(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    args = _checked_config(cfg)
    # Stem first: modules draw their initial weights in construction order.
    stem = BasicStem(input_shape.channels, args["in_channels"], norm=args["norm"])
    return ResNet(
        stem,
        _make_stages(**args),
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def _fpn(
    cfg: CfgNode,
    input_shape: ShapeSpec,
    make_top_block: Callable[[ResNet], nn.Module],
    fpn_class: Callable[..., FPN],
) -> FPN:
    bottom_up = _resnet(cfg, input_shape)
    return fpn_class(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=make_top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@register_once(BACKBONE_REGISTRY)
def build_gcnet_resnet_fpn_backbone(
    cfg: CfgNode, input_shape: ShapeSpec, *, fpn_class: Callable[..., FPN] = FPN
) -> FPN:
    """GC / DCN ResNet under an FPN with a stride-2 max-pooled P6 (Mask / Cascade R-CNN).

    ``fpn_class``: detectron2's ``FPN``, or a callable taking its arguments that builds one
    (the mmdetection recipe's builder passes its ``MMDetFPN``)."""
    return _fpn(cfg, input_shape, lambda bottom_up: LastLevelMaxPool(), fpn_class)


@register_once(BACKBONE_REGISTRY)
def build_gcnet_retinanet_resnet_fpn_backbone(
    cfg: CfgNode, input_shape: ShapeSpec, *, fpn_class: Callable[..., FPN] = FPN
) -> FPN:
    """GC / DCN ResNet under an FPN with P6/P7 convs on C5 (RetinaNet-style, P3-P7);
    ``fpn_class`` as in :func:`build_gcnet_resnet_fpn_backbone`."""
    out = cfg.MODEL.FPN.OUT_CHANNELS
    return _fpn(
        cfg,
        input_shape,
        lambda bottom_up: LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out),
        fpn_class,
    )
