"""Benchmark models with realistic random weights (calibrated norms, non-zero GC blocks,
peaked class scores) and their inputs; the variant names every section uses.

``build_model(cfg)`` and the backbone builders return the plain model; the models here are
what ``train_net.py`` and ``GCNetPredictor`` run: built plain, given their weights, then
sped up by ``gcnet_d2.fast.apply(model, cfg)`` (``FAST.*``, all on by default), so the
figures time gcnet_d2 as it is used. The plain variant gets the same speed-ups (norm folding,
1x1 convs as products, ...); only the GC variants (and the control) have GC bottlenecks
to fold (benchmarks/speedup_section.py times plain with the same folds).
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from torch import nn

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.modeling import GCBottleneckBlock, build_gcnet_resnet_backbone
from tests.testing import (  # the tests' realistic random weights, shared
    calibrate_norms,
    peaked_class_scores,
    randomize_context_blocks,
)

# c3/c4/c5 of an 800x1333 image padded to 800x1344 (FPN size divisibility 32).
STAGE_SHAPES = {"c3": (512, 100, 168), "c4": (1024, 50, 84), "c5": (2048, 25, 42)}
CONFIGS = {
    "r50": {
        "GC r16": "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml",
        "GC r4": "gcnet/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco.yaml",
    },
    "r101": {
        "GC r16": "gcnet/mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco.yaml",
        "GC r4": "gcnet/mask_rcnn_r101_fpn_r4_gcb_c3-c5_1x_coco.yaml",
    },
    "x101": {
        "GC r16": "gcnet/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml",
        "GC r4": "gcnet/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml",
    },
}
PLAIN, R16, R4, CONTROL = "plain", "GC r16", "GC r4", "GC r16 minus GC (control)"


# --------------------------------------------------------------------------------------
def load_shared(dst: nn.Module, src: nn.Module) -> None:
    """Copy every weight ``src`` and ``dst`` share (all but the GC blocks)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in [*missing, *unexpected] if "context_block" not in k]
    if bad:
        raise RuntimeError(f"state dicts differ outside the GC blocks: {bad[:5]}")


def strip_context_blocks(model: nn.Module) -> nn.Module:
    """The control: a copy with the same bottleneck classes (folded ``conv3`` where ``model``
    has the fold), GC blocks removed."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, GCBottleneckBlock):
            m.context_block = None
    return model


def model_cfg(depth: str, variant: str, device: torch.device):  # noqa: ANN201
    name = CONFIGS[depth][R16 if variant in (PLAIN, CONTROL) else variant]
    cfg = gcnet_d2.get_config(name)
    if variant == PLAIN:
        cfg.MODEL.GCNET.STAGES_ON = [False, False, False, False]
    cfg.MODEL.DEVICE = str(device)
    return cfg


def share_plain_weights(nets: dict, cfgs: dict, with_control: bool) -> None:
    """The GC variants in ``nets`` take the calibrated plain net's weights (their GC blocks
    randomized); then every net gets its config's speed-ups (``gcnet_d2.fast.apply(net,
    cfgs[variant])``). With ``with_control``, add the control: the sped-up GC r16 net with its
    GC blocks removed (the same folded bottleneck code without GC)."""
    for variant in (R16, R4):
        if variant in nets:
            load_shared(nets[variant], nets[PLAIN])
            randomize_context_blocks(nets[variant])
    for variant, net in nets.items():
        fast.apply(net, cfgs[variant])
    if with_control:
        nets[CONTROL] = strip_context_blocks(nets[R16])


def build_backbones(depth: str, device: torch.device, size: tuple[int, int]) -> dict:
    """Plain, GC r16, GC r4 bottom-up ResNets and the control, eval mode, sped up as
    ``FAST`` says (:func:`share_plain_weights`)."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, *size, device=device)
    out, cfgs = {}, {}
    for variant in (PLAIN, R16, R4):
        cfgs[variant] = model_cfg(depth, variant, device)
        net = build_gcnet_resnet_backbone(cfgs[variant], ShapeSpec(channels=3))
        out[variant] = net.to(device).eval()
    calibrate_norms(out[PLAIN], partial(out[PLAIN], image))
    share_plain_weights(out, cfgs, with_control=True)
    return out


def build_models(
    device: torch.device, size: tuple[int, int], variants: tuple = (PLAIN, R16, R4, CONTROL)
) -> dict:
    """R-50 Mask R-CNNs of ``variants`` (the plain one is always built: the others take its
    calibrated weights), eval mode, sped up as ``FAST`` says
    (:func:`share_plain_weights`)."""
    torch.manual_seed(0)
    models, cfgs = {}, {}
    for variant in (PLAIN, R16, R4):
        if variant in variants or variant == PLAIN or (variant == R16 and CONTROL in variants):
            cfgs[variant] = model_cfg("r50", variant, device)
            models[variant] = build_model(cfgs[variant]).to(device).eval()
    image = inference_inputs(size, device)
    calibrate_norms(models[PLAIN], partial(models[PLAIN], image))
    peaked_class_scores(models[PLAIN])
    share_plain_weights(models, cfgs, with_control=CONTROL in variants)
    return {k: models[k] for k in variants}


def inference_inputs(size: tuple[int, int], device: torch.device, n: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    h, w = size
    return [
        {"image": (torch.rand(3, h, w, generator=gen) * 255).to(device), "height": h, "width": w}
        for _ in range(n)
    ]


def training_inputs(size: tuple[int, int], device: torch.device, n: int = 2) -> list[dict]:
    """``n`` images with 6 box + polygon-mask annotations each."""
    gen = torch.Generator().manual_seed(2)
    h, w = size
    batch = []
    for _ in range(n):
        inst = Instances((h, w))
        boxes, polys = [], []
        for _ in range(6):
            bw, bh = (torch.rand(2, generator=gen) * torch.tensor([w / 2, h / 2]) + 32).tolist()
            x0 = float(torch.rand(1, generator=gen)) * (w - bw)
            y0 = float(torch.rand(1, generator=gen)) * (h - bh)
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            cx, cy = x0 + bw / 2, y0 + bh / 2
            polys.append([[x0, cy, cx, y0, x0 + bw, cy, cx, y0 + bh]])  # a diamond
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.randint(0, 80, (6,), generator=gen)
        inst.gt_masks = PolygonMasks(polys)
        image = (torch.rand(3, h, w, generator=gen) * 255).to(device)
        batch.append({"image": image, "height": h, "width": w, "instances": inst.to(device)})
    return batch


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
