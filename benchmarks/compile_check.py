"""GPU check, a few minutes on one GPU: ``torch.compile`` on the GC backbone, and GC r16
Mask R-CNN vs plain inference time at batch 1 and 2.

    python benchmarks/compile_check.py                  # both parts, CUDA
    python benchmarks/compile_check.py --parts compile --device cpu --size 128,160  # CPU smoke

``compile``: the GC r16 R-50 backbone (bottom-up, 800x1344) eager vs compiled (inductor),
relative L2 error of every output, next to the plain backbone compiled the same way. Where
the GC backbone is wrong (docs/benchmark.md saw 0.19 on an H100 with torch 2.11), it narrows
the error down: each stage compiled alone inside the eager network, then each block of the
worst stage, then that block alone under inductor settings (aot_eager = no inductor code
generation; no_grad vs inference_mode; pattern matcher, epilogue fusion, split reductions
off; freezing), so the printout names the smallest piece and setting that reproduce it.

``model``: plain and GC r16 Mask R-CNN R-50-FPN (the same calibrated weights, GC blocks
random non-zero, peaked class scores: 100 detections), inference at 800x1333, batch 1 and 2,
interleaved rounds; median GC / plain ratio with a 95% confidence interval.

Every network (backbones and detectors, plain and GC) gets its config's speed-ups after its
weights, ``gcnet_d2.fast.apply(net, cfg)``, as ``FAST.COMPILE`` compiles it: the
folded norms are computed inside the compiled graph, the GC fold is eager-only (a compiled
GC bottleneck runs the plain code).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.timing import median_ci  # noqa: E402
from tests.testing import (  # noqa: E402
    calibrate_norms,
    peaked_class_scores,
    randomize_context_blocks,
)

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


def cfg_for(gc: bool, device: str):  # noqa: ANN201
    import gcnet_d2

    cfg = gcnet_d2.get_config(CONFIG)
    if not gc:
        cfg.MODEL.GCNET.STAGES_ON = [False, False, False, False]
    cfg.MODEL.DEVICE = device
    return cfg


@torch.no_grad()
def realistic_(model: nn.Module, run: Callable[[], object], seed: int = 0) -> None:
    """The tests' realistic random weights (``tests/testing.py``): norm statistics measured on
    one pass (activations stay O(1)), small gain on each bottleneck's last norm, non-zero GC
    blocks."""
    calibrate_norms(model, run)
    randomize_context_blocks(model, seed, std=0.05)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def max_err(out: dict, ref: dict) -> float:
    return max(rel_err(out[k], ref[k]) for k in ref)


def compiled_copy(module: nn.Module, backend: str = "inductor", **kw: object) -> nn.Module:
    m = copy.deepcopy(module)
    m.compile(backend=backend, **kw)
    return m


def part_compile(s: argparse.Namespace) -> None:
    from detectron2.layers import ShapeSpec

    from gcnet_d2 import fast
    from gcnet_d2.modeling import build_gcnet_resnet_backbone

    dev = torch.device(s.device)
    h, w = s.size
    x = torch.randn(1, 3, h, w, device=dev)
    nets = {}
    for gc in (False, True):
        cfg = cfg_for(gc, s.device)
        net = build_gcnet_resnet_backbone(cfg, ShapeSpec(channels=3))
        net = net.to(dev).eval()
        realistic_(net, lambda net=net: net(x))
        nets["GC r16" if gc else "plain"] = fast.apply(net, cfg)
    t0 = time.perf_counter()
    print(f"== compile: backbone bottom-up {h}x{w} on {dev}, torch {torch.__version__}")
    with torch.no_grad():
        errs = {}
        # cuDNN convolutions run in TF32 by default (torch.backends.cudnn.allow_tf32, unlike
        # matmuls): a compiled graph that orders or lays out its convs differently rounds
        # differently, and a deep random network amplifies that. Both settings are shown.
        tf32_default = torch.backends.cudnn.allow_tf32
        for tf32 in dict.fromkeys((tf32_default, False)):
            torch.backends.cudnn.allow_tf32 = tf32
            for name, net in nets.items():
                ref = net(x)
                for backend in ("aot_eager", "inductor"):
                    torch._dynamo.reset()
                    t = time.perf_counter()
                    e = max_err(compiled_copy(net, backend)(x), ref)
                    errs.setdefault((name, backend), e)
                    print(
                        f"cudnn tf32 {tf32!s:5s} {name:7s} {backend:9s} max rel err {e:.2e} "
                        f"(compile+run {time.perf_counter() - t:.0f} s)"
                    )
        # Narrow down in full fp32, where rounding alone cannot explain the error.
        torch.backends.cudnn.allow_tf32 = False
        print("narrowing down with cuDNN TF32 off:")
        gc_net, ref = nets["GC r16"], nets["GC r16"](x)
        if errs["GC r16", "inductor"] < 1e-4 or e < 1e-3:
            print("GC r16 backbone compiles correctly here: nothing to narrow down")
            return
        # Each stage compiled alone inside the eager network.
        worst, worst_err = None, 0.0
        for stage in ("res2", "res3", "res4", "res5"):
            torch._dynamo.reset()
            net = copy.deepcopy(gc_net)
            getattr(net, stage).compile(backend="inductor")
            e = max_err(net(x), ref)
            print(f"  only {stage} compiled: max rel err {e:.2e}")
            if e > worst_err:
                worst, worst_err = stage, e
        # Each block of the worst stage alone, on its real input.
        feats = {}
        hooks = [
            blk.register_forward_pre_hook(
                lambda m, a, i=i: feats.setdefault(i, a[0].detach().clone())
            )
            for i, blk in enumerate(getattr(gc_net, worst))
        ]
        gc_net(x)
        for hk in hooks:
            hk.remove()
        bad = None
        for i, blk in enumerate(getattr(gc_net, worst)):
            torch._dynamo.reset()
            e = rel_err(compiled_copy(blk)(feats[i]), blk(feats[i]))
            print(f"  {worst}[{i}] ({type(blk).__name__}) alone: rel err {e:.2e}")
            if e > 1e-4 and bad is None:
                bad = i
            if time.perf_counter() - t0 > s.budget:
                print("  (time budget reached)")
                break
        if bad is None:
            print(f"  no single block of {worst} is wrong alone: the error needs the stage")
            return
        blk, xb = getattr(gc_net, worst)[bad], feats[bad]
        print(
            f"  minimal reproduction: {worst}[{bad}] on input {tuple(xb.shape)} "
            f"{xb.dtype} (stride {xb.stride()})"
        )
        ref_b = blk(xb)
        import torch._inductor.config as ic

        settings = {
            "inductor, no_grad": {},
            "inductor, pattern_matcher off": {"pattern_matcher": False},
            "inductor, epilogue_fusion off": {"epilogue_fusion": False},
            "inductor, split_reductions off": {"split_reductions": False},
            "inductor, freezing on": {"freezing": True},
        }
        for label, patch in settings.items():
            torch._dynamo.reset()
            with ic.patch(patch):
                e = rel_err(compiled_copy(blk)(xb), ref_b)
            print(f"    {label:34s} rel err {e:.2e}")
        torch._dynamo.reset()
        with torch.inference_mode():
            e = rel_err(compiled_copy(blk)(xb), blk(xb))
        print(f"    {'inductor, inference_mode':34s} rel err {e:.2e}")
        if blk.context_block is not None:
            torch._dynamo.reset()
            out3 = blk.conv3(torch.relu(blk.conv2(torch.relu(blk.conv1(xb)))))
            e = rel_err(compiled_copy(blk.context_block)(out3), blk.context_block(out3))
            print(f"    {'its ContextBlock alone':34s} rel err {e:.2e}")


# --------------------------------------------------------------------------------------


def median_and_ci(values: list[float]) -> tuple[float, float, float]:
    """The median and its ~95% interval (the benchmark's order statistics)."""
    return (statistics.median(values), *median_ci(values))


def part_model(s: argparse.Namespace) -> None:
    from detectron2.modeling import build_model

    from gcnet_d2 import fast

    dev = torch.device(s.device)
    h, w = 800, 1333
    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, h, w, generator=g) * 255).to(dev) for _ in range(2)]
    torch.manual_seed(0)
    cfgs = {gc: cfg_for(gc, s.device) for gc in (False, True)}
    plain = build_model(cfgs[False]).eval()
    gc = build_model(cfgs[True]).eval()
    one = [{"image": images[0], "height": h, "width": w}]
    realistic_(plain, lambda: plain(one))
    peaked_class_scores(plain)
    missing = gc.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("context_block" in k for k in missing), missing
    randomize_context_blocks(gc, seed=5, std=0.05)
    fast.apply(plain, cfgs[False])
    fast.apply(gc, cfgs[True])
    print(f"== model: Mask R-CNN R-50-FPN inference {h}x{w} on {dev}")
    rng = random.Random(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for batch in (1, 2):
        inputs = [{"image": im, "height": h, "width": w} for im in images[:batch]]
        models = {"plain": plain, "GC r16": gc}
        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.inference_mode():
            dets = {k: [len(o["instances"]) for o in m(inputs)] for k, m in models.items()}
            for _ in range(3):
                for m in models.values():
                    m(inputs)
            names = list(models)
            for _ in range(s.rounds):
                rng.shuffle(names)
                for n in names:
                    sync()
                    t = time.perf_counter()
                    models[n](inputs)
                    sync()
                    times[n].append(time.perf_counter() - t)
        ratios = [a / b for a, b in zip(times["GC r16"], times["plain"], strict=True)]
        mid, lo, hi = median_and_ci(ratios)
        print(
            f"batch {batch}: plain {statistics.median(times['plain']) * 1e3:.1f} ms, GC r16 "
            f"{statistics.median(times['GC r16']) * 1e3:.1f} ms; GC/plain {mid:.3f} "
            f"[{lo:.3f}, {hi:.3f}] ({s.rounds} rounds); detections {dets}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", default="compile,model")
    p.add_argument("--size", default="800,1344", type=lambda v: tuple(map(int, v.split(","))))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--no-tf32", action="store_true", help="cuDNN convolutions in full fp32")
    p.add_argument("--budget", type=float, default=100.0, help="seconds for the bisection")
    s = p.parse_args(argv)
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("compile_check: no CUDA device (use --device cpu for a smoke run)")
    import gcnet_d2  # noqa: F401  (registers the backbones)

    if s.device.startswith("cuda"):
        print(
            torch.cuda.get_device_name(),
            "TF32 matmul",
            torch.backends.cuda.matmul.allow_tf32,
            "cudnn",
            torch.backends.cudnn.allow_tf32,
        )
    if s.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    for part in s.parts.split(","):
        {"compile": part_compile, "model": part_model}[part](s)


if __name__ == "__main__":
    main()
