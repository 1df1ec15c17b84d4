"""State-dict conversion: mmdetection detector checkpoints and ImageNet backbones renamed to
gcnet_d2's keys, checked against the model they will be loaded into (in memory; files are
:mod:`.file_conversion`'s)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from .mmdet_layout import DEPTH_BY_RES4_BLOCKS, Architecture, read_architecture, rename_key

LAYOUT_D2 = "detectron2"
LAYOUT_MMDET = "mmdetection detector"
LAYOUT_BACKBONE = "ImageNet backbone (torchvision / OpenMMLab)"


def detect_layout(data: dict) -> tuple[str, dict[str, torch.Tensor]]:
    """``(layout, state_dict)`` of a loaded checkpoint file's contents."""
    if "model" in data and isinstance(data["model"], dict):
        return LAYOUT_D2, data["model"]
    sd = data.get("state_dict", data)
    if not isinstance(sd, dict):
        return LAYOUT_D2, data
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith("backbone.layer1.") for k in keys) and any(
        k.startswith(("neck.", "rpn_head.", "roi_head.")) for k in keys
    ):
        return LAYOUT_MMDET, sd
    if "conv1.weight" in sd and any(k.startswith("layer1.0.") for k in keys):
        return LAYOUT_BACKBONE, sd
    return LAYOUT_D2, sd


def architecture_of_model(model: nn.Module) -> Architecture:
    """The :class:`Architecture` of a model built by gcnet_d2 (FPN + ResNet, R-CNN heads)."""
    from ..modeling import ContextBlock, DeformConv2dWithOffset

    backbone = getattr(model, "backbone", model)
    bottom_up = getattr(backbone, "bottom_up", backbone)
    arch = Architecture()
    stages = [getattr(bottom_up, f"res{i}", None) for i in range(2, 6)]
    if stages[2] is not None:
        arch.depth = DEPTH_BY_RES4_BLOCKS.get(len(stages[2]))
    if stages[0] is not None:
        conv2 = stages[0][0].conv2
        arch.num_groups = conv2.groups
        arch.width_per_group = conv2.weight.shape[1]
    gc, dcn = [], []
    for stage in stages:
        blocks = [] if stage is None else list(stage)
        ctx = [getattr(b, "context_block", None) for b in blocks]
        gc.append(any(isinstance(c, ContextBlock) for c in ctx))
        dcn.append(
            any(isinstance(getattr(b, "conv2", None), DeformConv2dWithOffset) for b in blocks)
        )
        if gc[-1] and arch.gc_ratio is None:
            first = next(c for c in ctx if c is not None)
            arch.gc_ratio = first.planes / first.channels
            arch.gc_fusion = first.fusion
            arch.gc_pooling = first.pooling
    arch.gc_stages, arch.dcn_stages = tuple(gc), tuple(dcn)
    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        arch.cascade_stages = getattr(heads, "num_cascade_stages", 0)
        arch.mask_on = bool(getattr(heads, "mask_on", False))
        arch.num_classes = heads.num_classes
    return arch


def _differences(ckpt: Architecture, model: Architecture, backbone_only: bool) -> list[str]:
    fields = ["depth", "num_groups", "width_per_group"]
    if backbone_only:  # ImageNet weights: GC blocks and DCN offsets start fresh
        return [
            f"{f}: checkpoint {getattr(ckpt, f)!r}, model {getattr(model, f)!r}"
            for f in fields
            if getattr(ckpt, f) != getattr(model, f)
        ]
    fields += ["gc_stages", "dcn_stages", "cascade_stages", "mask_on", "num_classes"]
    if any(ckpt.gc_stages):
        fields += ["gc_fusion", "gc_pooling"]
    out = [
        f"{f}: checkpoint {getattr(ckpt, f)!r}, model {getattr(model, f)!r}"
        for f in fields
        if getattr(ckpt, f) != getattr(model, f)
    ]
    if any(ckpt.gc_stages) and not math.isclose(ckpt.gc_ratio or 0, model.gc_ratio or 0):
        out.append(f"gc_ratio: checkpoint {ckpt.gc_ratio!r}, model {model.gc_ratio!r}")
    return out


def matching_configs(arch: Architecture) -> list[str]:
    """Shipped table configs that build ``arch`` (norm choice aside: weights don't tell)."""
    from .. import model_zoo

    names = []
    for name in model_zoo.list_configs():
        if not name.startswith("gcnet/"):
            continue
        cfg = model_zoo.get_config(name)
        r, g = cfg.MODEL.RESNETS, cfg.MODEL.GCNET
        cascade = (
            len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) if "Cascade" in cfg.MODEL.ROI_HEADS.NAME else 0
        )
        same = (
            (arch.depth, arch.num_groups, arch.width_per_group)
            == (r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP)
            and tuple(r.DEFORM_ON_PER_STAGE) == arch.dcn_stages
            and tuple(g.STAGES_ON) == arch.gc_stages
            and (not any(arch.gc_stages) or math.isclose(g.RATIO, arch.gc_ratio or 0))
            and cascade == arch.cascade_stages
            and (arch.mask_on is None or arch.mask_on == cfg.MODEL.MASK_ON)
        )
        if same:
            names.append(name)
    return names


def _group(key: str) -> str:
    if ".context_block." in key:
        return "GC blocks"
    if ".conv_offset." in key:
        return "DCN offsets"
    if key.startswith("backbone.bottom_up."):
        return "backbone " + key.split(".")[2].split("_")[0]
    if key.startswith("backbone.fpn_"):
        return "FPN"
    if key.startswith("proposal_generator."):
        return "RPN"
    if key.startswith(("roi_heads.box_head", "roi_heads.box_predictor")):
        return "box head"
    if key.startswith("roi_heads.mask_head"):
        return "mask head"
    return key.split(".")[0]


@dataclass
class ConversionReport:
    """What a conversion did: counts per module, and every key it did not carry over."""

    source: str
    layout: str
    architecture: Architecture
    mapped: Counter = field(default_factory=Counter)
    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    new: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.layout}; {self.architecture.describe()}"]
        lines.append(
            "  converted: " + ", ".join(f"{g} {n}" for g, n in sorted(self.mapped.items()))
        )
        for reason, keys in sorted(self.dropped.items()):
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
            lines.append(f"  dropped ({reason}): {shown}")
        if self.new:
            lines.append(
                "  newly initialised (not in an ImageNet checkpoint): "
                + ", ".join(f"{g} {n}" for g, n in sorted(self.new.items()))
                + " (GC blocks start as identity, DCN offsets at zero)"
            )
        return "\n".join(lines)


def convert_state_dict(
    data: dict, model: nn.Module, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename an mmdetection / ImageNet checkpoint's weights to ``model``'s keys.

    Raises :class:`CheckpointMismatchError` (naming what the checkpoint holds and which
    configs or overrides fit it) when the weights are for another architecture.
    Detectron2-layout files are returned unchanged (``report.layout == LAYOUT_D2``).
    """
    layout, sd = detect_layout(data)
    backbone_only = layout == LAYOUT_BACKBONE
    arch = read_architecture(sd, backbone_only) if layout != LAYOUT_D2 else Architecture()
    report = ConversionReport(source, layout, arch)
    if layout == LAYOUT_D2:
        return sd, report
    model_arch = architecture_of_model(model)
    diffs = _differences(arch, model_arch, backbone_only)
    if diffs:
        raise CheckpointMismatchError(_mismatch_message(source, arch, model_arch, diffs))
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new, reason = rename_key(key, backbone_only)
        if new is None:
            report.dropped[reason or "no counterpart in gcnet_d2's models"].append(key)
        elif new not in target:
            why = (
                "model keeps no batch counter here" if key.endswith("num_batches_tracked") else None
            )
            report.dropped[why or "no such weight in the model"].append(key)
        else:
            out[new] = value
            report.mapped[_group(new)] += 1
    unknown = report.dropped.get("no counterpart in gcnet_d2's models", [])
    missing = [k for k in target if k not in out and not k.startswith("pixel_")]
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    for k in counters:  # BN in training mode counts batches; mmdet files may lack the counter
        out[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in missing if k not in counters]
    if backbone_only:
        for k in missing:
            report.new[_group(k)] += 1
    elif missing or unknown:
        raise CheckpointMismatchError(
            f"{source} holds {arch.describe()}, but its weights do not cover the model: "
            f"{len(missing)} model weights missing (e.g. {missing[:3]}), "
            f"{len(unknown)} checkpoint keys unknown (e.g. {unknown[:3]})"
        )
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
        for k, v in out.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if shapes:
        raise CheckpointMismatchError(
            f"{source} holds {arch.describe()}; shapes differ from the model: "
            + "; ".join(shapes[:5])
        )
    return out, report


def _mismatch_message(
    source: str, ckpt: Architecture, model: Architecture, diffs: list[str]
) -> str:
    fits = matching_configs(ckpt)
    advice = (
        "configs that fit it: " + ", ".join(f"configs/{n}" for n in fits)
        if fits
        else "no shipped config fits it; add these overrides to the closest config: "
        + " ".join(ckpt.config_overrides())
    )
    return (
        f"{source} holds {ckpt.describe()}, but the config builds {model.describe()} "
        f"({'; '.join(diffs)}). {advice}"
    )
