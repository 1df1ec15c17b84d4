"""The timed sections: GC block, GC bottleneck, backbone, Mask R-CNN inference, training."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.utils.events import EventStorage
from torch import nn

from gcnet_d2.modeling import (
    ContextBlock,
    FrozenStatsBatchNorm2d,
    GCBottleneckBlock,
    reference_bottleneck_forward,
    reference_context_block,
)

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


def _feature_err(out: dict, ref: dict) -> float:
    """Worst relative L2 error over the output feature maps."""
    return max(((out[k].float() - ref[k]).norm() / ref[k].norm()).item() for k in ref)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.clone()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return 0.0 if scale == 0 else (a - b).abs().max().item() / scale
