#!/usr/bin/env python
"""Side-by-side cost of gcnet_d2's GC block: block, bottleneck, backbone, Mask R-CNN, training.

Everything is measured in one process, variants interleaved (a fresh random order every
round) after warm-up, and reported as the median of repeated runs with its spread. Ratios are
*paired*: each round times every variant back to back and the ratio is taken inside the
round, so slow drifts of a shared machine cancel; the table gives the median ratio and a
distribution-free 95% confidence interval of that median.

Sections (``--sections``, all by default):

  block      the GC block alone at the c3/c4/c5 shapes of an 800x1333 image (padded to
             800x1344), batch 1 and 2: ``ContextBlock.forward`` vs the plain mmcv formulation
             (``reference_context_block``: conv_mask -> softmax -> matmul -> channel_add, out of
             place), same weights; inference forward, and forward + backward.
  bottleneck the GC bottleneck as the backbone runs it (frozen norm + GC folded into conv3)
             vs detectron2's bottleneck + the plain mmcv block, and vs no GC at all.
  backbone   the bottom-up ResNet forward at 800x1344: plain vs GC r16 vs GC r4, plus a
             control (GC r16 with its context blocks removed: same code, no GC) that isolates
             what the GC blocks themselves cost. ``--backbones r50,r101,x101`` adds depths.
  model      whole Mask R-CNN inference at 800x1333, seconds per image (score threshold 0, so
             every image yields 100 detections and the mask head always runs).
  train      one training iteration (2 images, forward + backward + SGD step) and its peak
             memory, plain vs GC.
  flops      parameters and FLOPs (fvcore's counter; 1 multiply-add = 1 flop) of each.
  options    no target: channels_last, bf16 autocast (with its measured accuracy cost) and
             torch.compile (graph breaks, compile time, speed) on the backbone.

Runs on the CPU by default and on CUDA when available (``--device``). ``--quick`` shrinks
rounds and image sizes (printed in the header) to stay within a couple of minutes on 2 cores.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``. On the CPU, two measures:
``live`` is the peak of the summed bytes of tensor storages allocated during the iteration
and still alive (tracked op by op with a TorchDispatchMode; deterministic), and ``rss`` is the
growth of the process's peak resident set (``/proc/self/clear_refs`` resets the high-water
mark; includes allocator slack, noisier).

Example::

    nice -n 5 python tools/benchmark.py --json benchmark.json --markdown benchmark.md
    python tools/benchmark.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import BottleneckBlock  # noqa: E402
from detectron2.structures import Boxes, Instances, PolygonMasks  # noqa: E402

import gcnet_d2  # noqa: E402  (registers the backbones)
from gcnet_d2.io import atomic_write_text  # noqa: E402
from gcnet_d2.modeling import (  # noqa: E402
    ContextBlock,
    FrozenStatsBatchNorm2d,
    GCBottleneckBlock,
    build_gcnet_resnet_backbone,
    reference_bottleneck_forward,
    reference_context_block,
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
# timing


@dataclass
class Result:
    """Times of one variant (seconds per call) and, when it is not the base, paired ratios."""

    name: str
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time, all threads
    cpu_ratios: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def summary(self) -> dict:
        out = {
            "median_s": self.median,
            "p25_s": quantile(self.times, 0.25),
            "p75_s": quantile(self.times, 0.75),
            "min_s": min(self.times),
            "runs": len(self.times),
            "times_s": list(self.times),
        }
        if self.ratios:
            lo, hi = median_ci(self.ratios)
            out.update(
                ratio=statistics.median(self.ratios),
                ratio_p25=quantile(self.ratios, 0.25),
                ratio_p75=quantile(self.ratios, 0.75),
                ratio_ci95=[lo, hi],
            )
        if self.cpu_ratios:
            lo, hi = median_ci(self.cpu_ratios)
            out.update(cpu_ratio=statistics.median(self.cpu_ratios), cpu_ratio_ci95=[lo, hi])
        return out


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (binomial order statistics)."""
    s = sorted(values)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[hi]


class Timer:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.rng = random.Random(seed)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object], repeat: int = 1) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds per call."""
        self.sync()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeat, (time.process_time() - cpu) / repeat

    def compare(
        self,
        variants: dict[str, Callable[[], object]],
        base: str,
        rounds: int,
        warmup: int = 1,
        min_sample_s: float = 0.05,
    ) -> dict[str, Result]:
        """Interleaved rounds; each sample repeats a call enough to last ``min_sample_s``."""
        repeat = {}
        for name, fn in variants.items():
            if warmup == 0:  # the caller has warmed the variants up
                repeat[name] = 1
                continue
            t = min(self.once(fn)[0] for _ in range(warmup))
            repeat[name] = max(1, math.ceil(min_sample_s / max(t, 1e-6)))
        results = {name: Result(name) for name in variants}
        names = list(variants)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(rounds):
                self.rng.shuffle(names)
                gc.collect()
                sample = {n: self.once(variants[n], repeat[n]) for n in names}
                for n in names:
                    results[n].times.append(sample[n][0])
                    results[n].cpu_times.append(sample[n][1])
                    if n != base:
                        results[n].ratios.append(sample[n][0] / sample[base][0])
                        results[n].cpu_ratios.append(sample[n][1] / max(sample[base][1], 1e-9))
        finally:
            if gc_was_enabled:
                gc.enable()
        return results


# --------------------------------------------------------------------------------------
# memory


class LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak of the bytes of tensor storages allocated inside the mode and still alive.

    Every op's outputs are inspected; a storage that is not one of the op's inputs' (views and
    in-place results share their input's) is a fresh allocation, counted until it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {
            t.untyped_storage()._cdata
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in seen or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def _proc_kib(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"{field_name}:\s+(\d+)\s+kB", text)
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict]:
    """``{"bytes": growth of peak RSS}`` over the block (Linux; None where unsupported)."""
    out: dict = {"bytes": None}
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
        before = _proc_kib("VmRSS")
    except OSError:
        before = None
    yield out
    peak = _proc_kib("VmHWM")
    if before is not None and peak is not None:
        out["bytes"] = (peak - before) * 1024


def measure_peak_memory(fn: Callable[[], object], device: torch.device, rss: bool = True) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"cuda_peak_bytes": torch.cuda.max_memory_allocated(device) - base}
    out = {}
    tracker = LiveTensorBytes()
    with tracker:
        fn()
    out["live_peak_bytes"] = tracker.peak
    if rss:
        with peak_rss_growth() as growth:
            fn()
        out["rss_peak_growth_bytes"] = growth["bytes"]
    return out


# --------------------------------------------------------------------------------------
# models


def randomize_context_blocks(model: nn.Module, seed: int = 0) -> None:
    """GC blocks as after training: no exactly-zero transform (same work, realistic values)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ContextBlock):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                for seq in (m.channel_add_conv, m.channel_mul_conv):
                    if seq is not None:
                        seq[1].weight.fill_(1.0)


NORM_TYPES = (FrozenBatchNorm2d, FrozenStatsBatchNorm2d, nn.modules.batchnorm._BatchNorm)


@torch.no_grad()
def calibrate_norms(model: nn.Module, run: Callable[[], object], branch_gain: float = 0.25) -> None:
    """Data-dependent init: every norm's statistics := those of its input on one forward.

    Random weights with unit statistics make activations explode or vanish (denormals slow
    the CPU); calibrated, every layer sees O(1) values as in a trained network. The last
    norm of each residual branch (``conv3.norm``) outputs ``branch_gain`` times unit scale, as
    trained ResNets' small last-BN scales do; with unit gain a random 50-layer ResNet is
    chaotic (a 0.4% input change moves res5 by ~40%), which would make any numerical
    comparison (bf16, compile) meaningless.
    """
    handles = []

    def hook(module: nn.Module, inputs: tuple, gain: float) -> None:
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_((x.var(dim=(0, 2, 3)) + 1e-3) / gain**2)

    for name, m in model.named_modules():
        if isinstance(m, NORM_TYPES) and getattr(m, "running_mean", None) is not None:
            gain = branch_gain if name.endswith("conv3.norm") else 1.0
            handles.append(m.register_forward_pre_hook(partial(hook, gain=gain)))
    was_training = model.training
    model.eval()
    try:
        run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def load_shared(dst: nn.Module, src: nn.Module) -> None:
    """Copy every weight ``src`` and ``dst`` share (all but the GC blocks)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in [*missing, *unexpected] if "context_block" not in k]
    if bad:
        raise RuntimeError(f"state dicts differ outside the GC blocks: {bad[:5]}")


def strip_context_blocks(model: nn.Module) -> nn.Module:
    """The control: same bottleneck code (folded conv3), GC blocks removed."""
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


def share_plain_weights(nets: dict, with_control: bool) -> None:
    """The GC variants in ``nets`` take the calibrated plain net's weights (their GC blocks
    randomized); with ``with_control``, add the control: GC r16 with its GC blocks removed."""
    for variant in (R16, R4):
        if variant in nets:
            load_shared(nets[variant], nets[PLAIN])
            randomize_context_blocks(nets[variant])
    if with_control:
        nets[CONTROL] = strip_context_blocks(nets[R16])


def build_backbones(depth: str, device: torch.device, size: tuple[int, int]) -> dict:
    torch.manual_seed(0)
    image = torch.randn(1, 3, *size, device=device)
    out = {}
    for variant in (PLAIN, R16, R4):
        cfg = model_cfg(depth, variant, device)
        out[variant] = build_gcnet_resnet_backbone(cfg, ShapeSpec(channels=3)).to(device).eval()
    calibrate_norms(out[PLAIN], partial(out[PLAIN], image))
    share_plain_weights(out, with_control=True)
    return out


@torch.no_grad()
def peaked_class_scores(model: nn.Module) -> None:
    """Class logits that a trained detector's resemble: a few confident classes per box.

    With random weights every class scores ~1/81, below the 0.05 test threshold, so nothing
    would be detected and the mask head would never run. A per-class bias (std 3, background
    -4) gives each box a few classes above 0.05: NMS and the mask head see realistic loads.
    """
    cls_score = model.roi_heads.box_predictor.cls_score
    gen = torch.Generator().manual_seed(4)
    cls_score.weight.mul_(0.1)
    bias = torch.randn(cls_score.bias.shape, generator=gen) * 3
    bias[-1] = -4.0  # detectron2's background is the last class
    cls_score.bias.copy_(bias)


def build_models(
    device: torch.device, size: tuple[int, int], variants: tuple = (PLAIN, R16, R4, CONTROL)
) -> dict:
    torch.manual_seed(0)
    models = {}
    for variant in (PLAIN, R16, R4):
        if variant in variants or (variant == R16 and CONTROL in variants):
            models[variant] = build_model(model_cfg("r50", variant, device)).to(device).eval()
    image = inference_inputs(size, device)
    calibrate_norms(models[PLAIN], partial(models[PLAIN], image))
    peaked_class_scores(models[PLAIN])
    share_plain_weights(models, with_control=CONTROL in variants)
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


# --------------------------------------------------------------------------------------
# sections


@dataclass
class Settings:
    device: torch.device
    quick: bool
    seed: int
    backbones: list[str]
    compile: bool

    @property
    def image(self) -> tuple[int, int]:  # the test image (before padding)
        return (320, 533) if self.quick else (800, 1333)

    @property
    def padded(self) -> tuple[int, int]:
        h, w = self.image
        return (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)

    @property
    def train_image(self) -> tuple[int, int]:
        return (256, 427) if self.quick else (800, 1333)

    def rounds(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def section_block(s: Settings, timer: Timer) -> list[dict]:
    rows = []
    batches = (1,) if s.quick else (1, 2)
    for n in batches:
        for stage, (c, h, w) in STAGE_SHAPES.items():
            torch.manual_seed(0)
            block = ContextBlock(c, 1 / 16).to(s.device)
            randomize_context_blocks(block)
            x = torch.randn(n, c, h, w, device=s.device)
            with torch.inference_mode():
                ours, ref = block(x), reference_context_block(block, x)
                err = (ours - ref).abs().max().item()
                res = timer.compare(
                    {"mmcv": partial(reference_context_block, block, x), "ours": partial(block, x)},
                    "mmcv",
                    s.rounds(25, 3),
                    warmup=2,
                )
            rows.append(_row("block fwd (inference)", stage, n, res, "mmcv", max_abs_err=err))

            xg = x.clone().requires_grad_()
            grad = torch.randn_like(x)
            fb_ours = partial(_fwd_bwd, block, block, xg, grad)
            fb_ref = partial(_fwd_bwd, partial(reference_context_block, block), block, xg, grad)
            # conv_mask.bias cannot change a softmax: its gradient is rounding noise in both
            # formulations, so it is left out of the comparison.
            params = [p for n_, p in block.named_parameters() if n_ != "conv_mask.bias"]
            fb_ours()
            g_ours = [xg.grad.clone()] + [_grad(p) for p in params]
            fb_ref()
            g_ref = [xg.grad.clone()] + [_grad(p) for p in params]
            gerr = max(_rel_err(a, b) for a, b in zip(g_ours, g_ref, strict=True))
            res = timer.compare(
                {"mmcv": fb_ref, "ours": fb_ours}, "mmcv", s.rounds(15, 2), warmup=2
            )
            rows.append(_row("block fwd+bwd", stage, n, res, "mmcv", max_rel_grad_err=gerr))
            _print_row(rows[-2])
            _print_row(rows[-1])
    return rows


def section_bottleneck(s: Settings, timer: Timer) -> list[dict]:
    rows = []
    batches = (1,) if s.quick else (1, 2)
    for n in batches:
        for stage, (c, h, w) in STAGE_SHAPES.items():
            torch.manual_seed(0)
            kw = {"bottleneck_channels": c // 4, "norm": FrozenStatsBatchNorm2d}
            gc_block = GCBottleneckBlock(c, c, gc_ratio=1 / 16, **kw).to(s.device)
            x = torch.randn(n, c, h, w, device=s.device)
            calibrate_norms(gc_block, partial(reference_bottleneck_forward, gc_block, x))
            randomize_context_blocks(gc_block)
            no_gc = strip_context_blocks(gc_block)
            d2 = BottleneckBlock(c, c, **kw).to(s.device)
            load_shared(d2, gc_block)
            mods = {"d2 (no GC)": d2, "mmcv GC": gc_block, "ours": gc_block, "ours minus GC": no_gc}
            fns = {
                "d2 (no GC)": d2,
                "mmcv GC": partial(reference_bottleneck_forward, gc_block),
                "ours": gc_block,
                "ours minus GC": no_gc,
            }
            for m in mods.values():
                m.eval()
            with torch.inference_mode():
                err = (fns["ours"](x) - fns["mmcv GC"](x)).abs().max().item()
                res = timer.compare(
                    {k: partial(f, x) for k, f in fns.items()}, "mmcv GC", s.rounds(15, 2)
                )
            rows.append(
                _row("bottleneck fwd (inference)", stage, n, res, "mmcv GC", max_abs_err=err)
            )
            _print_row(rows[-1])
            if s.quick:
                continue
            for m in mods.values():
                m.train()  # FrozenStatsBN: frozen statistics, trainable affine (the recipe)
            xg = x.clone().requires_grad_()
            grad = torch.randn_like(x)
            res = timer.compare(
                {k: partial(_fwd_bwd, f, mods[k], xg, grad) for k, f in fns.items()},
                "mmcv GC",
                s.rounds(9, 2),
            )
            rows.append(_row("bottleneck fwd+bwd", stage, n, res, "mmcv GC"))
            _print_row(rows[-1])
    return rows


def section_backbone(s: Settings, timer: Timer) -> list[dict]:
    rows = []
    h, w = s.padded
    for depth in s.backbones:
        nets = build_backbones(depth, s.device, (h, w))
        x = torch.randn(1, 3, h, w, device=s.device)
        with torch.inference_mode():
            res = timer.compare(
                {k: partial(m, x) for k, m in nets.items()},
                PLAIN,
                s.rounds(21 if depth == "r50" else 11, 2),
            )
        rows.append(_row(f"backbone {depth} fwd {h}x{w}", "", 1, res, PLAIN))
        _print_row(rows[-1])
        del nets
    return rows


def section_model(s: Settings, timer: Timer) -> list[dict]:
    variants = (PLAIN, R16, R4) if s.quick else (PLAIN, R16, R4, CONTROL)
    models = build_models(s.device, s.image, variants)
    inputs = inference_inputs(s.image, s.device)
    with torch.inference_mode():
        dets = {k: len(m(inputs)[0]["instances"]) for k, m in models.items()}
        res = timer.compare(
            {k: partial(m, inputs) for k, m in models.items()},
            PLAIN,
            s.rounds(11, 1),
            min_sample_s=0.0,
        )
    h, w = s.image
    row = _row(f"Mask R-CNN R-50 inference {h}x{w}", "", 1, res, PLAIN, detections=dets)
    _print_row(row)
    return [row]


def section_train(s: Settings, timer: Timer) -> list[dict]:
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    models = build_models(s.device, s.train_image, (PLAIN, R16) if s.quick else (PLAIN, R16, R4))
    if s.quick:  # smoke-test size: fewer sampled ROIs (the recipe samples 512 per image)
        for m in models.values():
            m.roi_heads.batch_size_per_image = 128
    batch = training_inputs(s.train_image, s.device)
    steps = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            torch.manual_seed(3)  # the same proposal / ROI sampling every time
            opt.zero_grad(set_to_none=True)
            with EventStorage(0):
                losses = model(batch)
            sum(losses.values()).backward()
            opt.step()

        steps[name] = step
    memory = {}
    for name, step in steps.items():
        step()  # warm-up: optimizer state, allocator
        memory[name] = measure_peak_memory(step, s.device, rss=not s.quick)
    res = timer.compare(steps, PLAIN, s.rounds(5, 1), warmup=0, min_sample_s=0.0)
    base = memory[PLAIN]
    for mem in memory.values():
        for key in list(mem):
            if mem[key] is not None and base.get(key):
                mem[key.replace("_bytes", "_ratio")] = mem[key] / base[key]
    h, w = s.train_image
    row = _row(f"training iteration, 2 images {h}x{w}", "", 2, res, PLAIN, memory=memory)
    _print_row(row)
    return [row]


def _flop_handles() -> dict:
    from fvcore.nn.jit_handles import get_shape

    # The ops the GC fast paths use in inference (attention pooling, the folded conv3).
    def mv(inputs: list, outputs: list) -> int:
        m, k = get_shape(inputs[0])
        return m * k

    def addmv(inputs: list, outputs: list) -> int:
        return mv(inputs[1:], outputs)

    def baddbmm(inputs: list, outputs: list) -> int:
        b, n, k = get_shape(inputs[1])
        m = get_shape(inputs[2])[-1]
        return b * n * k * m

    return {"aten::mv": mv, "aten::addmv": addmv, "aten::baddbmm": baddbmm}


def section_flops(s: Settings, timer: Timer) -> list[dict]:
    from detectron2.utils.analysis import FlopCountAnalysis
    from fvcore.nn import FlopCountAnalysis as FvFlops

    rows = []
    h, w = s.padded
    nets = build_backbones("r50", torch.device("cpu"), (h, w))
    x = torch.randn(1, 3, h, w)

    class Flat(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> tuple:
            return tuple(self.net(t).values())

    def count(make: Callable[[], FvFlops]) -> tuple[int, dict]:
        analysis = make()
        analysis.set_op_handle(**_flop_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            total = analysis.total()
        return total, dict(analysis.unsupported_ops())

    backbone = {}
    for name, net in nets.items():
        backbone[name] = {"params": count_params(net)}
        backbone[name]["flops"], unsupported = count(lambda n=net: FvFlops(Flat(n).eval(), (x,)))
        backbone[name]["unsupported_ops"] = unsupported
    # the same GC r16 backbone run the plain mmcv way (conv_mask conv, norm pass, GC pass)
    original = GCBottleneckBlock.forward
    GCBottleneckBlock.forward = reference_bottleneck_forward
    try:
        flops, _ = count(lambda: FvFlops(Flat(nets[R16]).eval(), (x,)))
        backbone["GC r16, mmcv formulation"] = {"params": count_params(nets[R16]), "flops": flops}
    finally:
        GCBottleneckBlock.forward = original
    rows.append({"section": f"params/FLOPs backbone r50 {h}x{w}", "variants": backbone})
    if s.quick:  # the whole-model trace takes minutes: full runs only
        for row in rows:
            _print_flops(row)
        return rows

    models = build_models(torch.device("cpu"), s.image, (PLAIN, R16, R4))
    inputs = inference_inputs(s.image, torch.device("cpu"))
    full = {}
    for name, model in models.items():
        flops, unsupported = count(lambda m=model: FlopCountAnalysis(m.eval(), inputs))
        full[name] = {"params": count_params(model), "flops": flops}
    rows.append({"section": f"params/FLOPs Mask R-CNN {s.image[0]}x{s.image[1]}", "variants": full})
    for row in rows:
        _print_flops(row)
    return rows


def section_options(s: Settings, timer: Timer) -> list[dict]:
    rows = []
    h, w = s.padded
    nets = build_backbones("r50", s.device, (h, w))
    nets = {k: nets[k] for k in (PLAIN, R16)}
    x = torch.randn(1, 3, h, w, device=s.device)
    rounds = s.rounds(11, 1)
    # channels_last
    cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in nets.items()}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        errs = {k: _feature_err(cl[k](x_cl), nets[k](x)) for k in nets}
        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, channels_last": (lambda m=m: m(x_cl)) for k, m in cl.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: channels_last", f"{h}x{w}", 1, res, PLAIN, rel_err_vs_fp32=errs))
    _print_row(rows[-1])
    # bf16 autocast
    dev = s.device.type
    with torch.inference_mode():
        fp32 = {k: m(x) for k, m in nets.items()}
        with torch.autocast(dev, dtype=torch.bfloat16):
            low = {k: m(x) for k, m in nets.items()}
        errs = {k: _feature_err(low[k], fp32[k]) for k in nets}
        del fp32, low

        def bf16(m: nn.Module) -> Callable[[], object]:
            def run() -> object:
                with torch.autocast(dev, dtype=torch.bfloat16):
                    return m(x)

            return run

        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, bf16 autocast": bf16(m) for k, m in nets.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: bf16 autocast", f"{h}x{w}", 1, res, PLAIN, rel_err_vs_fp32=errs))
    _print_row(rows[-1])
    if not s.compile:
        return rows
    # torch.compile (inductor)
    from torch import _dynamo

    extra: dict = {}
    compiled = {}
    for k, m in nets.items():
        _dynamo.reset()
        with torch.inference_mode():
            explanation = _dynamo.explain(m)(x)
        extra[k] = {
            "graphs": explanation.graph_count,
            "graph_breaks": explanation.graph_break_count,
        }
        _dynamo.reset()
        cm = torch.compile(m)
        start = time.perf_counter()
        with torch.inference_mode():
            out = cm(x)
        extra[k]["compile_s"] = time.perf_counter() - start
        with torch.inference_mode():
            extra[k]["rel_err_vs_eager"] = _feature_err(out, m(x))
        compiled[k] = cm
    with torch.inference_mode():
        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, compiled": (lambda m=m: m(x)) for k, m in compiled.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: torch.compile", f"{h}x{w}", 1, res, PLAIN, compile=extra))
    _print_row(rows[-1])
    return rows


def _fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
) -> None:
    x.grad = None
    module.zero_grad(set_to_none=True)
    fn(x).backward(grad)


def _feature_err(out: dict, ref: dict) -> float:
    """Worst relative L2 error over the output feature maps."""
    return max(((out[k].float() - ref[k]).norm() / ref[k].norm()).item() for k in ref)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.clone()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale


def _row(section: str, shape: str, batch: int, res: dict, base: str, **extra: object) -> dict:
    row = {
        "section": section,
        "shape": shape,
        "batch": batch,
        "base": base,
        "variants": {k: r.summary() for k, r in res.items()},
        **extra,
    }
    # Best-of ratio: fastest run over fastest run (the least-disturbed runs of each).
    for k, v in row["variants"].items():
        if k != base:
            v["best_ratio"] = v["min_s"] / row["variants"][base]["min_s"]
    # Paired ratios between two non-base variants (same rounds): what GC alone costs.
    pairs = [(R16, CONTROL), (R4, CONTROL), ("ours", "ours minus GC"), ("ours", "d2 (no GC)")]
    row["pairs"] = {}
    for a, b in pairs:
        if a in res and b in res:
            ratios = [x / y for x, y in zip(res[a].times, res[b].times, strict=True)]
            lo, hi = median_ci(ratios)
            row["pairs"][f"{a} / {b}"] = {
                "ratio": statistics.median(ratios),
                "ratio_ci95": [lo, hi],
            }
    return row


# --------------------------------------------------------------------------------------
# report


def _fmt_ratio(v: dict) -> str:
    if "ratio" not in v:
        return "1 (base)"
    lo, hi = v["ratio_ci95"]
    return f"{v['ratio']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_cpu_ratio(v: dict) -> str:
    if "cpu_ratio" not in v:
        return ""
    lo, hi = v["cpu_ratio_ci95"]
    return f"{v['cpu_ratio']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_time(v: dict) -> str:
    med, lo, hi = v["median_s"], v["p25_s"], v["p75_s"]
    if med < 1:
        return f"{med * 1e3:.2f} ms (IQR {lo * 1e3:.2f}-{hi * 1e3:.2f})"
    return f"{med:.3f} s (IQR {lo:.3f}-{hi:.3f})"


def _print_row(row: dict) -> None:
    print(f"  {row['section']} {row['shape']} n={row['batch']}:", flush=True)
    for k, v in row.get("pairs", {}).items():
        print(f"    paired {k}: x{_fmt_ratio(v)}", flush=True)
    for k, v in row["variants"].items():
        cpu = f"  cpu x{_fmt_cpu_ratio(v)}" if "cpu_ratio" in v else ""
        print(f"    {k:32s} {_fmt_time(v):40s} x{_fmt_ratio(v)}{cpu}", flush=True)


def _print_flops(row: dict) -> None:
    print(f"  {row['section']}:", flush=True)
    for k, v in row["variants"].items():
        print(f"    {k:32s} params {v['params'] / 1e6:.3f} M  flops {v['flops'] / 1e9:.2f} G")


def markdown(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines += [
        f"Machine: {m['cpu']} ({m['cores']} cores), {m['device']}, torch {m['torch']}, "
        f"{m['threads']} threads; load average {m['load_start']} at start, {m['load_end']} "
        "at end.",
        f"Command: `{report['command']}`",
        "",
        "Times: wall clock, median (interquartile range) of interleaved runs; ratio: median "
        "of per-round ratios to the base [95% CI of that median]; CPU-time ratio: the same "
        "on the process's CPU time (all threads); best-of ratio: fastest run over the base's "
        "fastest run.",
        "",
        "| section | shape | n | variant | time | ratio to base | CPU-time ratio | best-of ratio "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "base" not in row:
            continue
        note = ""
        if "max_abs_err" in row:
            note = f"max abs err {row['max_abs_err']:.1e}"
        if "max_rel_grad_err" in row:
            note = f"max rel grad err {row['max_rel_grad_err']:.1e}"
        for k, v in row["variants"].items():
            extra = note
            if "rel_err_vs_fp32" in row and k.split(",")[0] in row["rel_err_vs_fp32"] and "," in k:
                extra = f"rel err vs fp32 {row['rel_err_vs_fp32'][k.split(',')[0]]:.1e}"
            if "memory" in row:
                mem = row["memory"][k]
                extra = ", ".join(
                    f"{key.replace('_bytes', '')} {val / 2**30:.2f} GiB"
                    if key.endswith("bytes") and val is not None
                    else f"{key} {val:.3f}"
                    for key, val in mem.items()
                    if val is not None
                )
            if "compile" in row and k.endswith("compiled"):
                c = row["compile"][k.split(",")[0]]
                extra = (
                    f"graph breaks {c['graph_breaks']}, compile {c['compile_s']:.0f} s, "
                    f"rel err {c['rel_err_vs_eager']:.1e}"
                )
            if "detections" in row:
                extra = f"{row['detections'][k]} detections"
            best = f"{v['best_ratio']:.3f}" if "best_ratio" in v else ""
            lines.append(
                f"| {row['section']} | {row['shape']} | {row['batch']} | {k} | "
                f"{_fmt_time(v)} | {_fmt_ratio(v)} | {_fmt_cpu_ratio(v)} | {best} | {extra} |"
            )
        for k, v in row.get("pairs", {}).items():
            lines.append(
                f"| {row['section']} | {row['shape']} | {row['batch']} | *paired {k}* | | "
                f"{_fmt_ratio(v)} | | | GC alone, same rounds |"
            )
    for row in report["rows"]:
        if "base" in row:
            continue
        lines += ["", f"**{row['section']}**", "", "| variant | params | FLOPs (fvcore) |"]
        lines.append("|---|---|---|")
        for k, v in row["variants"].items():
            lines.append(f"| {k} | {v['params'] / 1e6:.3f} M | {v['flops'] / 1e9:.2f} G |")
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    return "\n".join(lines) + "\n"


def targets(report: dict) -> list[dict]:
    out = []

    def check(name: str, ratio: float, ci: list, limit: float, *, above: bool = False) -> None:
        if above:  # a speed-up: ratio ours / mmcv must be <= 1 / limit
            limit = 1 / limit
        met = ratio <= limit
        sure = ci[1] <= limit if met else ci[0] > limit
        out.append(
            {
                "target": name,
                "measured": f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                "met": ("yes" if met else "no") + ("" if sure else " (within noise)"),
            }
        )

    for row in report["rows"]:
        sec = row["section"]
        v = row.get("variants", {})
        tag = f"{row.get('shape', '')} n={row.get('batch')}"
        if sec == "block fwd (inference)":
            r = v["ours"]
            check(f"block fwd >= 2x ({tag}), ours/mmcv", r["ratio"], r["ratio_ci95"], 2, above=True)
        elif sec == "block fwd+bwd":
            r = v["ours"]
            check(f"block fwd+bwd >= 1.3x ({tag})", r["ratio"], r["ratio_ci95"], 1.3, above=True)
        elif sec.startswith("backbone r50") or sec.startswith("Mask R-CNN"):
            what = "backbone" if sec.startswith("backbone") else "Mask R-CNN"
            limits = {R16: 1.02, R4: 1.03} if what == "backbone" else {R16: 1.015, R4: 1.02}
            for name, limit in limits.items():
                r = v[name]
                check(f"{what} {name} <= {limit}x plain", r["ratio"], r["ratio_ci95"], limit)
                pair = row["pairs"].get(f"{name} / {CONTROL}")
                if pair:  # the same limit on the GC blocks' own cost (informative)
                    check(
                        f"({what} {name} <= {limit}x its control: GC blocks alone)",
                        pair["ratio"],
                        pair["ratio_ci95"],
                        limit,
                    )
        elif sec.startswith("training"):
            for name in [k for k in (R16, R4) if k in row["memory"]]:
                mem = row["memory"][name]
                key = "cuda_peak_ratio" if "cuda_peak_ratio" in mem else "live_peak_ratio"
                ratio = mem[key]
                out.append(
                    {
                        "target": f"training peak memory {name} <= 1.05x plain ({key})",
                        "measured": f"{ratio:.3f}",
                        "met": "yes" if ratio <= 1.05 else "no",
                    }
                )
    return out


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Model name:\s+(.+)", lscpu)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_start": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")
            if k in os.environ
        },
    }
    return info


SECTIONS = {
    "block": section_block,
    "bottleneck": section_bottleneck,
    "backbone": section_backbone,
    "model": section_model,
    "train": section_train,
    "flops": section_flops,
    "options": section_options,
}


def get_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/benchmark.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA if present)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller images")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--backbones", default="r50", help="comma list of r50, r101, x101 (backbone section)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmark.json", help="where to write the JSON")
    parser.add_argument("--markdown", default=None, help="also write the Markdown table here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen sections, print the table, write the JSON (and Markdown); the report."""
    parser = get_parser()
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device on this machine")
    for option in ("json", "markdown"):
        path = getattr(args, option)
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"--{option} {path}: the folder {Path(path).parent} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    backbones = [x.strip() for x in args.backbones.split(",") if x.strip()]
    if any(b not in CONFIGS for b in backbones):
        parser.error(f"--backbones: choose from {list(CONFIGS)}")
    settings = Settings(
        device, args.quick, args.seed, backbones, not (args.no_compile or args.quick)
    )
    timer = Timer(device, args.seed)
    report = {
        "command": " ".join(["python", "tools/benchmark.py", *(argv or sys.argv[1:])]),
        "machine": machine(device),
        "quick": args.quick,
        "image": list(settings.image),
        "padded": list(settings.padded),
        "train_image": list(settings.train_image),
        "rows": [],
    }
    print(
        f"gcnet_d2 benchmark on {report['machine']['device']} ({report['machine']['cpu']}, "
        f"{report['machine']['threads']} threads){' --quick' if args.quick else ''}: image "
        f"{settings.image} (padded {settings.padded}), training image {settings.train_image}",
        flush=True,
    )
    start = time.perf_counter()
    for name in sections:
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        report["rows"] += SECTIONS[name](settings, timer)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        report.setdefault("section_load", {})[name] = load
        print(f"  ({time.perf_counter() - t0:.0f} s, load average {load})", flush=True)
        atomic_write_text(args.json, json.dumps(report, indent=1))  # the sections done so far
    report["machine"]["load_end"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report["seconds"] = time.perf_counter() - start
    report["targets"] = targets(report)
    md = markdown(report)
    print()
    print(md)
    atomic_write_text(args.json, json.dumps(report, indent=1))
    if args.markdown:
        atomic_write_text(args.markdown, md)
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    return report


if __name__ == "__main__":
    main()
