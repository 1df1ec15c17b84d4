"""The timed sections: GC block, GC bottleneck, backbone, Mask R-CNN inference, training.

Every model is gcnet_d2 as it runs (:mod:`.fixtures`: built plain, then
``gcnet_d2.fast.apply``), except where a section says it compares against the plain code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.utils.events import EventStorage
from torch import nn

from gcnet_d2.fast.gc_fold import enable_gc_fold
from gcnet_d2.layers import ContextBlock, FrozenStatsBatchNorm2d
from gcnet_d2.modeling import GCBottleneckBlock

from .fixtures import (
    CONTROL,
    PLAIN,
    R4,
    R16,
    STAGE_SHAPES,
    build_backbones,
    build_models,
    calibrate_norms,
    inference_inputs,
    load_shared,
    randomize_context_blocks,
    strip_context_blocks,
    training_inputs,
)
from .memory import measure_peak_memory
from .report import make_row as _row
from .report import print_row as _print_row
from .timing import Timer

BLOCK_BASE = "copy of input"  # the block section's base: x.clone(), one pass over the map


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
    """The plain GC block alone, in units of one pass over its input: information, no target.

    ``ContextBlock.forward`` (the paper's and mmcv's formulation: ``conv_mask`` -> softmax ->
    matmul -> ``channel_add``, out of place; gcnet_d2 has no other standalone block) at the
    c3 / c4 / c5 shapes of an 800x1333 image, timed against ``x.clone()``, one read and one
    write of the same map: the least any out-of-place block costs. The ratio says how many
    such passes the GC block costs. Earlier versions compared a separate fast block with this
    formulation; that block no longer exists: gcnet_d2's speed-up folds the GC block into the
    bottleneck's ``conv3`` (``gcnet_d2.fast.gc_fold``), measured by the ``bottleneck``
    section. ``rel_change_vs_input`` (||block(x) - x|| / ||x||) shows the block's random
    weights make it do work (a freshly built block is the identity).
    """
    rows = []
    batches = (1,) if s.quick else (1, 2)
    for n in batches:
        for stage, (c, h, w) in STAGE_SHAPES.items():
            torch.manual_seed(0)
            block = ContextBlock(c, 1 / 16).to(s.device)
            randomize_context_blocks(block)
            x = torch.randn(n, c, h, w, device=s.device)
            with torch.inference_mode():
                change = ((block(x) - x).norm() / x.norm()).item()
                res = timer.compare(
                    {BLOCK_BASE: partial(torch.clone, x), "GC block": partial(block, x)},
                    BLOCK_BASE,
                    s.rounds(25, 3),
                    warmup=2,
                )
            rows.append(
                _row("block fwd (inference)", stage, n, res, BLOCK_BASE, rel_change_vs_input=change)
            )

            xg = x.clone().requires_grad_()
            grad = torch.randn_like(x)
            fns = {
                BLOCK_BASE: partial(_fwd_bwd, torch.clone, block, xg, grad),
                "GC block": partial(_fwd_bwd, block, block, xg, grad),
            }
            res = timer.compare(fns, BLOCK_BASE, s.rounds(15, 2), warmup=2)
            rows.append(_row("block fwd+bwd", stage, n, res, BLOCK_BASE))
            _print_row(rows[-2])
            _print_row(rows[-1])
    return rows


def bottleneck_variants(
    c: int, n: int, h: int, w: int, device: torch.device
) -> tuple[dict[str, nn.Module], torch.Tensor]:
    """The ``bottleneck`` section's four modules (eval mode, the same weights) and their input.

    - ``mmcv GC``: the plain :class:`GCBottleneckBlock` (mmdetection's ``after_conv3``:
      ``conv3``, frozen norm, the plain GC block, the residual add);
    - ``ours``: a copy switched to the folded bottleneck (``gcnet_d2.fast.gc_fold``,
      ``enable_gc_fold``: ``conv3`` + frozen norm + GC block as one GEMM);
    - ``ours minus GC``: ``ours`` with its GC block removed (the folded ``conv3`` alone);
    - ``d2 (no GC)``: detectron2's ``BottleneckBlock``.

    Only ``conv3`` and the GC block differ: ``conv1`` / ``conv2`` run conv + norm in all four
    (the backbone's norm folding, ``gcnet_d2.fast.norm_fold``, is not applied here).
    """
    torch.manual_seed(0)
    kw = {"bottleneck_channels": c // 4, "norm": FrozenStatsBatchNorm2d}
    plain = GCBottleneckBlock(c, c, gc_ratio=1 / 16, **kw).to(device)
    x = torch.randn(n, c, h, w, device=device)
    calibrate_norms(plain, partial(plain, x))
    randomize_context_blocks(plain)
    ours = enable_gc_fold(copy.deepcopy(plain))
    d2 = BottleneckBlock(c, c, **kw).to(device)
    load_shared(d2, plain)
    no_gc = strip_context_blocks(ours)
    mods = {"d2 (no GC)": d2, "mmcv GC": plain, "ours": ours, "ours minus GC": no_gc}
    for m in mods.values():
        m.eval()
    return mods, x


def section_bottleneck(s: Settings, timer: Timer) -> list[dict]:
    """The folded GC bottleneck (``ours``) vs the plain one (``mmcv GC``), and vs no GC at all
    (:func:`bottleneck_variants`); inference forward, and forward + backward in training mode
    (frozen statistics, trainable affine: the recipe)."""
    rows = []
    batches = (1,) if s.quick else (1, 2)
    for n in batches:
        for stage, (c, h, w) in STAGE_SHAPES.items():
            mods, x = bottleneck_variants(c, n, h, w, s.device)
            with torch.inference_mode():
                err = (mods["ours"](x) - mods["mmcv GC"](x)).abs().max().item()
                res = timer.compare(
                    {k: partial(m, x) for k, m in mods.items()}, "mmcv GC", s.rounds(15, 2)
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
                {k: partial(_fwd_bwd, m, m, xg, grad) for k, m in mods.items()},
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


def time_detectors(
    models: dict[str, nn.Module], inputs: list, base: str, rounds: int, timer: Timer
) -> tuple[dict, dict[str, int]]:
    """Detectors timed side by side on ``inputs`` (inference mode) against ``base``: the
    timer's result and each model's number of detections."""
    with torch.inference_mode():
        dets = {k: len(m(inputs)[0]["instances"]) for k, m in models.items()}
        res = timer.compare(
            {k: partial(m, inputs) for k, m in models.items()}, base, rounds, min_sample_s=0.0
        )
    return res, dets


def section_model(s: Settings, timer: Timer) -> list[dict]:
    variants = (PLAIN, R16, R4) if s.quick else (PLAIN, R16, R4, CONTROL)
    models = build_models(s.device, s.image, variants)
    inputs = inference_inputs(s.image, s.device)
    res, dets = time_detectors(models, inputs, PLAIN, s.rounds(11, 1), timer)
    h, w = s.image
    row = _row(f"Mask R-CNN R-50 inference {h}x{w}", "", 1, res, PLAIN, detections=dets)
    _print_row(row)
    return [row]


def section_train(s: Settings, timer: Timer) -> list[dict]:
    torch.manual_seed(0)
    models = build_models(s.device, s.train_image, (PLAIN, R16) if s.quick else (PLAIN, R16, R4))
    if s.quick:  # smoke-test size: fewer sampled ROIs (the recipe samples 512 per image)
        for m in models.values():
            m.roi_heads.batch_size_per_image = 128
    batch = training_inputs(s.train_image, s.device)
    steps = training_steps(models, dict.fromkeys(models, batch))
    memory = peak_memory_of_steps(steps, PLAIN, s)
    res = timer.compare(steps, PLAIN, s.rounds(5, 1), warmup=0, min_sample_s=0.0)
    h, w = s.train_image
    row = _row(f"training iteration, 2 images {h}x{w}", "", 2, res, PLAIN, memory=memory)
    _print_row(row)
    return [row]


def training_steps(models: dict[str, nn.Module], batches: dict[str, list]) -> dict:
    """Per model, a call that runs one SGD training step on its batch (train mode), with the
    same proposal / RoI sampling every time."""
    steps = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )

        def step(
            model: nn.Module = model, opt: torch.optim.Optimizer = opt, batch: list = batches[name]
        ) -> None:
            torch.manual_seed(3)
            opt.zero_grad(set_to_none=True)
            with EventStorage(0):
                losses = model(batch)
            sum(losses.values()).backward()
            opt.step()

        steps[name] = step
    return steps


def peak_memory_of_steps(steps: dict, base: str, s: Settings) -> dict:
    """Each step warmed up once (optimizer state, allocator), then its peak memory, with
    ``*_ratio`` entries relative to ``base``'s."""
    memory = {}
    for name, step in steps.items():
        step()
        memory[name] = measure_peak_memory(step, s.device, rss=not s.quick)
    for mem in memory.values():
        for key in list(mem):
            if mem[key] is not None and memory[base].get(key):
                mem[key.replace("_bytes", "_ratio")] = mem[key] / memory[base][key]
    return memory


def _fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
) -> None:
    x.grad = None
    module.zero_grad(set_to_none=True)
    fn(x).backward(grad)
