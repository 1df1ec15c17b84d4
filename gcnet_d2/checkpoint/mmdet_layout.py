"""What an mmdetection (or ImageNet backbone) checkpoint holds, and its Detectron2 key names.

mmdetection 2.x/3.x names (``backbone.layerN.M.bn1``, ``neck.lateral_convs.i.conv``,
``roi_head.bbox_head.shared_fcs.0`` ...) are renamed to the modules gcnet_d2 builds
(``backbone.bottom_up.resN+1.M.conv1.norm``, ``backbone.fpn_lateralI+2``,
``roi_heads.box_head.fc1`` ...). torchvision and OpenMMLab ImageNet files use the bare
backbone names (``layer1.0.conv1.weight``) and are renamed the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

DEPTH_BY_RES4_BLOCKS = {6: 50, 23: 101, 36: 152}

# (pattern on the name without the "backbone." prefix, replacement under backbone.bottom_up.)
_BACKBONE_RULES = [
    (r"^conv1\.weight$", "stem.conv1.weight"),
    (r"^bn1\.(.+)$", r"stem.conv1.norm.\1"),
    (r"^layer(\d)\.(\d+)\.conv([123])\.weight$", r"res{L}.\2.conv\3.weight"),
    (r"^layer(\d)\.(\d+)\.bn([123])\.(.+)$", r"res{L}.\2.conv\3.norm.\4"),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.weight$", r"res{L}.\2.shortcut.weight"),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.(.+)$", r"res{L}.\2.shortcut.norm.\3"),
    (r"^layer(\d)\.(\d+)\.conv2\.conv_offset\.(.+)$", r"res{L}.\2.conv2.conv_offset.\3"),
    (r"^layer(\d)\.(\d+)\.conv2_offset\.(.+)$", r"res{L}.\2.conv2.conv_offset.\3"),
    (r"^layer(\d)\.(\d+)\.context_block\.(.+)$", r"res{L}.\2.context_block.\3"),
]
_HEAD_RULES = [
    (r"^neck\.lateral_convs\.(\d)\.conv\.(.+)$", "backbone.fpn_lateral{I+2}.\\2"),
    (r"^neck\.fpn_convs\.(\d)\.conv\.(.+)$", "backbone.fpn_output{I+2}.\\2"),
    (r"^rpn_head\.rpn_conv\.(.+)$", r"proposal_generator.rpn_head.conv.\1"),
    (r"^rpn_head\.rpn_cls\.(.+)$", r"proposal_generator.rpn_head.objectness_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(.+)$", r"proposal_generator.rpn_head.anchor_deltas.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.(\d)\.(.+)$", "roi_heads.box_head.fc{I+1}.\\2"),
    (r"^roi_head\.bbox_head\.fc_cls\.(.+)$", r"roi_heads.box_predictor.cls_score.\1"),
    (r"^roi_head\.bbox_head\.fc_reg\.(.+)$", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"^roi_head\.mask_head\.convs\.(\d)\.conv\.(.+)$", "roi_heads.mask_head.mask_fcn{I+1}.\\2"),
    (r"^roi_head\.mask_head\.upsample\.(.+)$", r"roi_heads.mask_head.deconv.\1"),
    (r"^roi_head\.mask_head\.conv_logits\.(.+)$", r"roi_heads.mask_head.predictor.\1"),
    # Cascade: one box head and one mask head per stage.
    (
        r"^roi_head\.bbox_head\.(\d)\.shared_fcs\.(\d)\.(.+)$",
        "roi_heads.box_head.\\1.fc{J+1}.\\3",
    ),
    (r"^roi_head\.bbox_head\.(\d)\.fc_cls\.(.+)$", r"roi_heads.box_predictor.\1.cls_score.\2"),
    (r"^roi_head\.bbox_head\.(\d)\.fc_reg\.(.+)$", r"roi_heads.box_predictor.\1.bbox_pred.\2"),
    (
        r"^roi_head\.mask_head\.(\d)\.convs\.(\d)\.conv\.(.+)$",
        "roi_heads.mask_head.\\1.mask_fcn{J+1}.\\3",
    ),
    (r"^roi_head\.mask_head\.(\d)\.upsample\.(.+)$", r"roi_heads.mask_head.\1.deconv.\2"),
    (r"^roi_head\.mask_head\.(\d)\.conv_logits\.(.+)$", r"roi_heads.mask_head.\1.predictor.\2"),
]
_DROPPED = [
    (r"^fc\.(weight|bias)$", "ImageNet classifier, not part of a detector"),
    (r"^data_preprocessor\.", "mmdet 3.x preprocessing buffers (mean/std come from the config)"),
]


def _apply(rule: tuple[str, str], name: str) -> str | None:
    pattern, repl = rule
    m = re.match(pattern, name)
    if m is None:
        return None
    groups = m.groups()
    for placeholder, index, delta in (
        ("{L}", 0, 1),
        ("{I+2}", 0, 2),
        ("{I+1}", 0, 1),
        ("{J+1}", 1, 1),
    ):
        if placeholder in repl:
            repl = repl.replace(placeholder, str(int(groups[index]) + delta))
    return m.expand(repl)


def rename_key(name: str, backbone_only: bool) -> tuple[str | None, str | None]:
    """``(detectron2 name, None)`` for a mapped key, ``(None, reason)`` for a dropped one, or
    ``(None, None)`` when no rule knows the key."""
    for pattern, reason in _DROPPED:
        if re.match(pattern, name):
            return None, reason
    inner = name if backbone_only else name.removeprefix("backbone.")
    if backbone_only or name.startswith("backbone."):
        for rule in _BACKBONE_RULES:
            out = _apply(rule, inner)
            if out is not None:
                return "backbone.bottom_up." + out, None
        return None, None
    for rule in _HEAD_RULES:
        out = _apply(rule, name)
        if out is not None:
            return out, None
    return None, None


@dataclass
class Architecture:
    """The architecture a set of weights fits, as far as the weights tell."""

    depth: int | None = None
    num_groups: int = 1
    width_per_group: int = 64
    gc_stages: tuple[bool, ...] = (False,) * 4
    gc_ratio: float | None = None
    gc_fusion: tuple[str, ...] = ()
    gc_pooling: str = "att"
    dcn_stages: tuple[bool, ...] = (False,) * 4
    cascade_stages: int = 0  # 0: one box head (Mask R-CNN)
    mask_on: bool | None = None  # None: backbone only
    num_classes: int | None = None
    extras: dict = field(default_factory=dict)

    @property
    def backbone_name(self) -> str:
        if self.depth is None:
            return "unknown backbone"
        if self.num_groups > 1:
            return f"ResNeXt-{self.depth} {self.num_groups}x{self.width_per_group}d"
        return f"ResNet-{self.depth}"

    def describe(self) -> str:
        """E.g. 'Cascade Mask R-CNN, ResNeXt-101 32x4d, DCN c3-c5, GC r16 c3-c5, 80 classes'."""
        parts = []
        if self.mask_on is not None:
            head = "Cascade " if self.cascade_stages else ""
            head += (
                "Mask R-CNN"
                if self.mask_on
                else ("R-CNN" if self.cascade_stages else "Faster R-CNN")
            )
            parts.append(head)
        parts.append(self.backbone_name)
        if any(self.dcn_stages):
            parts.append(f"DCN {_stages(self.dcn_stages)}")
        if any(self.gc_stages) and self.gc_ratio:
            parts.append(f"GC r{round(1 / self.gc_ratio)} {_stages(self.gc_stages)}")
        else:
            parts.append("no GC")
        if self.num_classes is not None:
            parts.append(f"{self.num_classes} classes")
        return ", ".join(parts)

    def config_overrides(self) -> list[str]:
        """``KEY VALUE`` overrides that make a gcnet_d2 config build this architecture."""
        out = []
        if self.depth is not None:
            out += ["MODEL.RESNETS.DEPTH", str(self.depth)]
            out += ["MODEL.RESNETS.NUM_GROUPS", str(self.num_groups)]
            out += ["MODEL.RESNETS.WIDTH_PER_GROUP", str(self.width_per_group)]
        out += ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", _yaml_list(self.dcn_stages)]
        out += ["MODEL.GCNET.STAGES_ON", _yaml_list(self.gc_stages)]
        if self.gc_ratio:
            out += ["MODEL.GCNET.RATIO", repr(self.gc_ratio)]
        if self.mask_on is not None:
            out += ["MODEL.MASK_ON", str(self.mask_on)]
        if self.num_classes is not None:
            out += ["MODEL.ROI_HEADS.NUM_CLASSES", str(self.num_classes)]
        return out


def _stages(flags: tuple[bool, ...]) -> str:
    on = [i + 2 for i, f in enumerate(flags) if f]
    if on == list(range(on[0], on[-1] + 1)) and len(on) > 1:
        return f"c{on[0]}-c{on[-1]}"
    return ",".join(f"c{i}" for i in on)


def _yaml_list(flags: tuple[bool, ...]) -> str:
    return "[" + ", ".join("True" if f else "False" for f in flags) + "]"


def read_architecture(sd: dict[str, torch.Tensor], backbone_only: bool) -> Architecture:
    """What the mmdetection-named state dict ``sd`` holds (depth, groups, GC, DCN, heads)."""
    p = "" if backbone_only else "backbone."
    arch = Architecture()
    res4 = {int(k[len(p) :].split(".")[1]) for k in sd if k.startswith(f"{p}layer3.")}
    if res4:
        arch.depth = DEPTH_BY_RES4_BLOCKS.get(max(res4) + 1)
    conv2 = sd.get(f"{p}layer1.0.conv2.weight")
    conv1 = sd.get(f"{p}layer1.0.conv1.weight")
    if conv2 is not None and conv1 is not None:
        width = conv1.shape[0]
        arch.width_per_group = conv2.shape[1]
        arch.num_groups = width // conv2.shape[1]
    gc, dcn = [], []
    for stage in range(1, 5):
        mask = f"{p}layer{stage}.0.context_block."
        gc.append(any(k.startswith(mask) for k in sd))
        dcn.append(
            f"{p}layer{stage}.0.conv2.conv_offset.weight" in sd
            or f"{p}layer{stage}.0.conv2_offset.weight" in sd
        )
        if gc[-1] and arch.gc_ratio is None:
            fusion = [f for f in ("channel_add", "channel_mul") if f"{mask}{f}_conv.0.weight" in sd]
            hidden = sd[f"{mask}{fusion[0]}_conv.0.weight"].shape[0] if fusion else 0
            channels = sd[f"{p}layer{stage}.0.conv3.weight"].shape[0]
            arch.gc_ratio = hidden / channels if hidden else None
            arch.gc_fusion = tuple(fusion)
            arch.gc_pooling = "att" if f"{mask}conv_mask.weight" in sd else "avg"
    arch.gc_stages, arch.dcn_stages = tuple(gc), tuple(dcn)
    if backbone_only:
        return arch
    stages = {int(k.split(".")[2]) for k in sd if re.match(r"roi_head\.bbox_head\.\d\.", k)}
    arch.cascade_stages = len(stages)
    arch.mask_on = any(k.startswith("roi_head.mask_head.") for k in sd)
    cls = sd.get("roi_head.bbox_head.fc_cls.weight", sd.get("roi_head.bbox_head.0.fc_cls.weight"))
    if cls is not None:
        arch.num_classes = cls.shape[0] - 1
    return arch
