#!/usr/bin/env python
"""The Python half of ``benchmarks/gpu_check.sh``: AMP training steps of the three families
and GC r16 / plain Mask R-CNN inference at batch 1 and 2 on one GPU, as one JSON.

    python benchmarks/gpu_check.py --json gpu_check.json [--pytest-junit pytest.xml]
    python benchmarks/gpu_check.py --dry-run --json /tmp/gpu_check.json   # CPU smoke run

``amp``: each family of ``tests/testing.py`` (GC Mask R-CNN R-50, GC Cascade X-101, DCN + GC
Cascade X-101) at full width, random weights with calibrated norms, non-zero GC blocks and
DCN offsets, two ``--train-size`` images of 6 boxes; every step starts from the same weights
and RNG seed. ``SimpleTrainer`` (fp32) and ``AutocastTrainer`` (``SOLVER.AMP.ENABLED``: fp16
+ grad scaler on CUDA, bf16 on the CPU) alternate for ``--steps`` pairs after one warm-up
each: losses finite, the AMP loss's relative distance from fp32's (same weights and data),
parameters and gradients float32, median step-time ratio AMP / fp32 with its spread.

``inference``: plain and GC r16 Mask R-CNN R-50-FPN (the same calibrated weights; GC blocks
non-zero), ``--infer-size`` images, batch 1 and 2, ``--rounds`` interleaved rounds: median
times and the GC / plain ratio with its ~95% interval.

``--dry-run``: the same code on the CPU at the tests' tiny widths (X-101 as X-50), 64 x 96
images, one pair and one round: a smoke run, no figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gcnet_d2  # noqa: E402
from benchmarks.compile_check import cfg_for, realistic_  # noqa: E402
from benchmarks.fixtures import training_inputs  # noqa: E402
from benchmarks.timing import median_ci, quantile  # noqa: E402
from gcnet_d2 import fast  # noqa: E402
from gcnet_d2.amp import AutocastTrainer  # noqa: E402
from tests.testing import (  # noqa: E402
    FAMILIES,
    calibrate_norms,
    narrow,
    peaked_class_scores,
    randomize_context_blocks,
    randomize_offsets,
    sample_image,
)


def spread(values: list[float]) -> dict:
    lo, hi = median_ci(values)
    return {
        "median": statistics.median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "ci95": [lo, hi],
        "values": values,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def family_model(family: str, args: argparse.Namespace) -> torch.nn.Module:
    """The family's row on ``--device`` with calibrated random weights, sped up, training mode."""
    from detectron2.modeling import build_model

    cfg = gcnet_d2.get_config(FAMILIES[family])
    cfg.MODEL.DEVICE = args.device
    if args.dry_run:
        narrow(cfg, depth=50)
    torch.manual_seed(0)
    model = build_model(cfg)
    randomize_context_blocks(model, 0, std=0.05)
    randomize_offsets(model, 0)
    image = sample_image(*args.train_size, seed=0).float().to(args.device)
    calibrate_norms(model, partial(model, [{"image": image}]))
    return fast.apply(model, cfg).train()


def timed_step(model: torch.nn.Module, start: dict, trainer, storage) -> tuple[float, float]:  # noqa: ANN001
    """One ``trainer`` step from the weights ``start`` and RNG seed 0: (seconds, total loss)."""
    model.load_state_dict(start)
    torch.manual_seed(0)  # the same anchor and RoI samples
    trainer.storage = storage
    device = next(model.parameters()).device
    sync(device)
    t0 = time.perf_counter()
    with storage:
        trainer.run_step()
    sync(device)
    return time.perf_counter() - t0, float(storage.history("total_loss").latest())


def part_amp(args: argparse.Namespace) -> dict:
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    device = torch.device(args.device)
    out = {}
    for family in args.families.split(","):
        model = family_model(family, args)
        start = copy.deepcopy(model.state_dict())
        batch = training_inputs(tuple(args.train_size), device, n=2)
        trainers = {
            "fp32": SimpleTrainer(model, [batch], torch.optim.SGD(model.parameters(), lr=1e-3)),
            "amp": AutocastTrainer(model, [batch], torch.optim.SGD(model.parameters(), lr=1e-3)),
        }
        for t in trainers.values():
            t._data_loader_iter_obj = iter(lambda b=batch: b, None)  # the same batch forever
        storage = EventStorage(0)
        times: dict[str, list[float]] = {k: [] for k in trainers}
        losses: dict[str, list[float]] = {k: [] for k in trainers}
        dtypes: set[str] = set()

        for trainer in trainers.values():  # warm-up (cuDNN autotuning, allocator)
            timed_step(model, start, trainer, storage)
        rng = random.Random(0)
        names = list(trainers)
        for _ in range(args.steps):
            rng.shuffle(names)
            for name in names:
                seconds, loss = timed_step(model, start, trainers[name], storage)
                times[name].append(seconds)
                losses[name].append(loss)
                dtypes.update(str(p.dtype) for p in model.parameters())
                dtypes.update(str(p.grad.dtype) for p in model.parameters() if p.grad is not None)
        ratios = [a / f for a, f in zip(times["amp"], times["fp32"], strict=True)]
        loss_gap = abs(losses["amp"][0] - losses["fp32"][0]) / abs(losses["fp32"][0])
        finite = all(math.isfinite(v) for vs in losses.values() for v in vs)
        out[family] = {
            "config": FAMILIES[family],
            "amp_dtype": str(trainers["amp"].dtype),
            "grad_scaler": trainers["amp"].grad_scaler is not None,
            "losses": losses,
            "losses_finite": finite,
            "amp_loss_rel_gap": loss_gap,
            "param_and_grad_dtypes": sorted(dtypes),
            "fp32_step_s": statistics.median(times["fp32"]),
            "amp_step_s": statistics.median(times["amp"]),
            "time_ratio_amp_to_fp32": spread(ratios),
        }
        print(
            f"amp {family}: {trainers['amp'].dtype}, loss fp32 {losses['fp32'][0]:.4f} amp "
            f"{losses['amp'][0]:.4f} (gap {loss_gap:.2%}, finite {finite}); step fp32 "
            f"{out[family]['fp32_step_s'] * 1e3:.0f} ms, amp {out[family]['amp_step_s'] * 1e3:.0f}"
            f" ms, ratio {statistics.median(ratios):.3f}; dtypes {sorted(dtypes)}"
        )
        del model, trainers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def part_inference(args: argparse.Namespace) -> dict:
    from detectron2.modeling import build_model

    device = torch.device(args.device)
    h, w = args.infer_size
    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, h, w, generator=g) * 255).to(device) for _ in range(2)]
    cfgs = {gc: cfg_for(gc, args.device) for gc in (False, True)}
    if args.dry_run:
        for cfg in cfgs.values():
            narrow(cfg)
    torch.manual_seed(0)
    plain, gc = build_model(cfgs[False]).eval(), build_model(cfgs[True]).eval()
    one = [{"image": images[0], "height": h, "width": w}]
    realistic_(plain, lambda: plain(one))
    peaked_class_scores(plain)
    gc.load_state_dict(plain.state_dict(), strict=False)
    randomize_context_blocks(gc, seed=5, std=0.05)
    models = {"plain": fast.apply(plain, cfgs[False]), "GC r16": fast.apply(gc, cfgs[True])}
    out = {"size": [h, w]}
    rng = random.Random(0)
    for batch in (1, 2):
        inputs = [{"image": im, "height": h, "width": w} for im in images[:batch]]
        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.inference_mode():
            detections = {k: [len(o["instances"]) for o in m(inputs)] for k, m in models.items()}
            for m in models.values():
                m(inputs)
            names = list(models)
            for _ in range(args.rounds):
                rng.shuffle(names)
                for n in names:
                    sync(device)
                    t0 = time.perf_counter()
                    models[n](inputs)
                    sync(device)
                    times[n].append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(times["GC r16"], times["plain"], strict=True)]
        out[f"batch{batch}"] = {
            "plain_s": statistics.median(times["plain"]),
            "gc_r16_s": statistics.median(times["GC r16"]),
            "ratio_gc_to_plain": spread(ratios),
            "detections": detections,
        }
        print(
            f"inference batch {batch}: plain {out[f'batch{batch}']['plain_s'] * 1e3:.1f} ms, "
            f"GC r16 {out[f'batch{batch}']['gc_r16_s'] * 1e3:.1f} ms, GC / plain "
            f"{statistics.median(ratios):.3f} ({args.rounds} rounds)"
        )
    return out


def pytest_summary(path: str) -> dict:
    """Counts of a pytest ``--junitxml`` file, and the ids of failed tests."""
    if not Path(path).is_file():
        return {"error": f"{path}: no such file (pytest did not run or did not finish)"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "failed": failed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", default="amp,inference")
    p.add_argument("--families", default=",".join(FAMILIES), help="families of the amp part")
    p.add_argument("--train-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--infer-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=5, help="fp32 / AMP step pairs per family")
    p.add_argument("--rounds", type=int, default=20, help="inference rounds per batch size")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny widths and sizes (smoke)")
    p.add_argument("--pytest-junit", help="a pytest --junitxml file to summarise in the JSON")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.train_size, args.infer_size = "cpu", [64, 96], [64, 96]
        args.steps, args.rounds = 1, 1
    unknown = [f for f in args.families.split(",") if f not in FAMILIES]
    if unknown:
        p.error(f"--families: unknown {unknown}; choose from {sorted(FAMILIES)}")
    if not args.dry_run and args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device (--dry-run runs the same code on the CPU)")
    report: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }
    if args.pytest_junit:
        report["cuda_tests"] = pytest_summary(args.pytest_junit)
        print(f"cuda tests: {report['cuda_tests']}")
    parts = {"amp": part_amp, "inference": part_inference}
    for name in [s for s in args.parts.split(",") if s]:
        if name not in parts:
            p.error(f"--parts: unknown {name!r}; choose from {sorted(parts)}")
        start = time.perf_counter()
        report[name] = parts[name](args)
        report[name]["seconds"] = time.perf_counter() - start
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
