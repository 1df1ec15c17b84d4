#!/usr/bin/env python
"""bf16 against fp32 on the CPU: inference speed, training step time, accuracy (box / mask AP)
and why the GC block's attention stays float32.

    python benchmarks/precision.py --parts speed,train --size 800 1216 --threads 2 --pairs 7
    python benchmarks/precision.py --parts accuracy --weights output/quickstart/model_final.pth
    python benchmarks/precision.py --parts attention

Parts (``--parts``, comma-separated; default ``attention,speed,train``):

- ``attention``: the GC block's context pooled under bfloat16 autocast without the float32
  guard (conv_mask logits, softmax and weighted sum in bfloat16) and with it (the pooling in
  float32 on the same bfloat16 input), each as the relative distance from the float32
  context, on GC r16 block shapes of an 800 x 1216 image (res3 / res4 / res5) and attention
  from flat to peaked (``conv_mask`` scaled 1x / 4x / 16x).
- ``speed``: GC r16 Mask R-CNN R-50-FPN (``--config``), realistic random weights, with the
  speed-ups (``gcnet_d2.fast.apply``), one ``--size`` image: eager fp32 and eager bf16
  (``TEST.PRECISION bf16``: :func:`gcnet_d2.precision.inference_precision`), and both again
  with ``FAST.CHANNELS_LAST`` off (NCHW maps), interleaved, ``--threads`` threads, ``--pairs``
  rounds in shuffled order; median ratio of each to fp32 with its interquartile range and
  ~95% interval.
- ``train``: the same row's training step (two ``--train-size`` images with 6 boxes each,
  SGD): ``SimpleTrainer`` (fp32) against ``AutocastTrainer`` (bf16 autocast, the
  ``SOLVER.AMP.ENABLED`` trainer) alternately, each from the same weights every step.
- ``accuracy``: ``--weights`` (default: the quick start's ``output/quickstart/model_final.pth``,
  written by ``bash scripts/quickstart.sh``) of ``--accuracy-config`` (the quick start's)
  evaluated by ``COCOEvaluator`` on its held-out images (``DATASETS.TEST``) with
  ``TEST.PRECISION`` fp32 and bf16: box and mask AP of each and the drop. ``--val-images N``
  evaluates on N held-out images of the same generator instead of the quick start's 12 (the
  first 12 are those; none is a training image): with 12 images one changed detection moves
  AP by about a point.

``--json FILE`` writes everything measured. Figures: docs/precision.md. ``--narrow`` (the
tests' tiny widths) with small sizes is a smoke run (``tests/benchmarks``), not a figure.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gcnet_d2  # noqa: E402
from benchmarks.fixtures import training_inputs  # noqa: E402
from benchmarks.timing import Timer, median_ci, quantile  # noqa: E402
from gcnet_d2 import fast, precision  # noqa: E402
from gcnet_d2.amp import AutocastTrainer  # noqa: E402
from gcnet_d2.layers import ContextBlock  # noqa: E402
from tests.testing import (  # noqa: E402
    QUICKSTART_NAME,
    R50_GC,
    narrow,
    realistic_weights,
    sample_image,
)

# (channels, height, width) of GC r16 blocks' inputs in res3 / res4 / res5 at 800 x 1216.
ATTENTION_SHAPES = [(512, 100, 152), (1024, 50, 76), (2048, 25, 38)]
ATTENTION_SCALES = [1, 4, 16]


def ratio_summary(ratios: list[float]) -> dict:
    lo, hi = median_ci(ratios)
    return {
        "ratio": statistics.median(ratios),
        "ratio_p25": quantile(ratios, 0.25),
        "ratio_p75": quantile(ratios, 0.75),
        "ratio_ci95": [lo, hi],
        "ratios": ratios,
    }


def part_attention(args: argparse.Namespace) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for c, h, w in ATTENTION_SHAPES:
        for scale in ATTENTION_SCALES:
            block = ContextBlock(c, 1 / 16).eval()
            with torch.no_grad():
                block.conv_mask.weight.normal_(0, scale / c**0.5)
                x = torch.relu(torch.randn(1, c, h, w))
                reference = block.spatial_pool(x)
                xb = x.bfloat16()
                guarded = block.spatial_pool(xb.float())  # what the guard computes
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mask = block.conv_mask(xb).reshape(1, 1, h * w).softmax(dim=2)
                    naive = torch.matmul(xb.reshape(1, 1, c, h * w), mask.reshape(1, 1, h * w, 1))
                peak = block.conv_mask(x).flatten().softmax(0).max().item()

            def err(a: torch.Tensor, ref: torch.Tensor = reference) -> float:
                return float((a.float().reshape(-1) - ref.reshape(-1)).norm() / ref.norm())

            row = {
                "shape": [c, h, w],
                "conv_mask_scale": scale,
                "max_attention_weight": peak,
                "bf16_pooling_rel_err": err(naive),
                "fp32_pooling_of_bf16_input_rel_err": err(guarded),
                "bf16_rounding_of_context_rel_err": err(reference.bfloat16()),
            }
            rows.append(row)
            print(
                f"attention {c}x{h}x{w} scale {scale:>2} (max weight {peak:.1e}): pooled in bf16 "
                f"{row['bf16_pooling_rel_err']:.1e}, in fp32 from bf16 input "
                f"{row['fp32_pooling_of_bf16_input_rel_err']:.1e} (bf16 rounding of the "
                f"context itself {row['bf16_rounding_of_context_rel_err']:.1e})"
            )
    return rows


def row_cfg(args: argparse.Namespace):  # noqa: ANN201 - a detectron2 CfgNode
    """``--config`` on the CPU; at the tests' tiny widths with ``--narrow``."""
    cfg = gcnet_d2.get_config(args.config)
    cfg.MODEL.DEVICE = "cpu"
    return narrow(cfg) if args.narrow else cfg


def speed_model(args: argparse.Namespace) -> torch.nn.Module:
    """The row (full width unless ``--narrow``), realistic random weights (calibrated at
    ``--size``), sped up."""
    cfg = row_cfg(args)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    realistic_weights(model, sample_image(*args.size, seed=0))
    return fast.apply(model, cfg)


def part_speed(args: argparse.Namespace) -> dict:
    model = speed_model(args)
    options = fast.FastOptions.from_config(row_cfg(args))
    nchw = fast.apply(copy.deepcopy(model), dataclasses.replace(options, channels_last=False))
    inputs = [{"image": sample_image(*args.size, seed=1)}]

    def run(net: torch.nn.Module, value: str):  # noqa: ANN202
        def call() -> object:
            with torch.no_grad(), precision.inference_precision(net, value, "cpu"):
                return net(inputs)

        return call

    sides = {"fp32": run(model, "fp32"), "bf16": run(model, "bf16"),
             "fp32 NCHW": run(nchw, "fp32"), "bf16 NCHW": run(nchw, "bf16")}  # fmt: skip
    counts = {name: len(call()[0]["instances"]) for name, call in sides.items()}
    res = Timer(torch.device("cpu"), seed=0).compare(
        sides, base="fp32", rounds=args.pairs, min_sample_s=0.0
    )
    out = {
        "config": args.config,
        "size": list(args.size),
        "threads": torch.get_num_threads(),
        "detections": counts,
        "fp32_median_s": res["fp32"].median,
        "bf16_median_s": res["bf16"].median,
        **ratio_summary(res["bf16"].ratios),
        # FAST.CHANNELS_LAST off: the same speed-ups on NCHW maps, both precisions
        "nchw": {
            name: {"median_s": res[name].median, **ratio_summary(res[name].ratios)}
            for name in ("fp32 NCHW", "bf16 NCHW")
        },
    }
    print(
        f"speed {args.config} {args.size[0]}x{args.size[1]}, {out['threads']} threads: eager fp32 "
        f"{out['fp32_median_s']:.3f} s, bf16 {out['bf16_median_s']:.3f} s; bf16 / fp32 "
        f"{out['ratio']:.3f} (IQR {out['ratio_p25']:.3f}-{out['ratio_p75']:.3f}, "
        f"~95% {out['ratio_ci95'][0]:.3f}-{out['ratio_ci95'][1]:.3f}, {args.pairs} pairs)"
    )
    for name, row in out["nchw"].items():
        print(
            f"  CHANNELS_LAST off: {name} {row['median_s']:.3f} s, / fp32 {row['ratio']:.3f} "
            f"(IQR {row['ratio_p25']:.3f}-{row['ratio_p75']:.3f})"
        )
    return out


def part_train(args: argparse.Namespace) -> dict:
    cfg = row_cfg(args)
    torch.manual_seed(0)
    base = fast.apply(build_model(cfg), cfg).train()
    start_state = copy.deepcopy(base.state_dict())
    batch = training_inputs(tuple(args.train_size), torch.device("cpu"), n=2)
    trainers = {}
    for name, cls in (("fp32", SimpleTrainer), ("bf16", AutocastTrainer)):
        opt = torch.optim.SGD(base.parameters(), lr=1e-4, momentum=0.9)
        trainers[name] = cls(base, [batch] * 10**6, opt)
    storage = EventStorage(0)
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def step(name: str):  # noqa: ANN202
        def run() -> None:
            base.load_state_dict(start_state)  # every step from the same weights
            trainers[name].storage = storage
            with storage:
                trainers[name].run_step()
            losses[name].append(storage.history("total_loss").latest())

        return run

    res = Timer(torch.device("cpu"), seed=0).compare(
        {"fp32": step("fp32"), "bf16": step("bf16")},
        base="fp32",
        rounds=args.train_pairs,
        min_sample_s=0.0,
    )
    out = {
        "config": args.config,
        "size": list(args.train_size),
        "images": 2,
        "threads": torch.get_num_threads(),
        "fp32_median_s": res["fp32"].median,
        "bf16_median_s": res["bf16"].median,
        "first_loss": {k: v[0] for k, v in losses.items()},
        **ratio_summary(res["bf16"].ratios),
    }
    print(
        f"train step {args.config} 2 x {args.train_size[0]}x{args.train_size[1]}: fp32 "
        f"{out['fp32_median_s']:.3f} s, bf16 {out['bf16_median_s']:.3f} s; bf16 / fp32 "
        f"{out['ratio']:.3f} (IQR {out['ratio_p25']:.3f}-{out['ratio_p75']:.3f}, "
        f"{args.train_pairs} pairs); first total loss fp32 {out['first_loss']['fp32']:.4f}, "
        f"bf16 {out['first_loss']['bf16']:.4f}"
    )
    return out


def heldout_dataset(count: int) -> str:
    """The name of a registered synthetic split of ``count`` held-out images, generated as the
    quick start's (same seed and size, so its first 12 are the quick start's) in
    ``$DETECTRON2_DATASETS/gcnet_synthetic_val<count>``."""
    from gcnet_d2.data.synthetic import default_synthetic_root, register_synthetic_datasets

    root = f"{default_synthetic_root()}_val{count}"
    names = (f"gcnet_synthetic_val{count}_train", f"gcnet_synthetic_val{count}")
    register_synthetic_datasets(root, names, num_val=count)
    return names[1]


def part_accuracy(args: argparse.Namespace) -> dict:
    from detectron2.utils.logger import setup_logger

    from gcnet_d2.checkpoint import GCNetCheckpointer
    from gcnet_d2.engine import GCNetTrainer

    if not Path(args.weights).is_file():
        raise SystemExit(
            f"precision.py: error: --weights {args.weights}: no such file (train the quick "
            "start first: bash scripts/quickstart.sh)"
        )
    setup_logger(name="gcnet_d2")
    out: dict = {"config": args.accuracy_config, "weights": args.weights}
    held_out = []
    if args.val_images:
        held_out = ["DATASETS.TEST", f"('{heldout_dataset(args.val_images)}',)"]
        out["val_images"] = args.val_images
    for value in ("fp32", "bf16"):
        cfg = gcnet_d2.get_config(args.accuracy_config)
        cfg.merge_from_list(["MODEL.WEIGHTS", args.weights, "TEST.PRECISION", value])
        cfg.merge_from_list(["OUTPUT_DIR", str(Path(args.output_dir) / value), *held_out])
        cfg.merge_from_list(list(args.opts))
        if not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
        model = GCNetTrainer.build_model(cfg)
        GCNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        start = time.perf_counter()
        results = GCNetTrainer.test(cfg, model)
        out[value] = {
            "box_AP": results["bbox"]["AP"],
            "mask_AP": results["segm"]["AP"],
            "seconds": time.perf_counter() - start,
        }
    for task in ("box_AP", "mask_AP"):
        out[f"{task}_drop"] = out["fp32"][task] - out["bf16"][task]
    print(
        f"accuracy {args.weights}: fp32 box / mask AP {out['fp32']['box_AP']:.2f} / "
        f"{out['fp32']['mask_AP']:.2f}, bf16 {out['bf16']['box_AP']:.2f} / "
        f"{out['bf16']['mask_AP']:.2f} (drop {out['box_AP_drop']:.2f} / {out['mask_AP_drop']:.2f})"
    )
    return out


PARTS = {
    "attention": part_attention,
    "speed": part_speed,
    "train": part_train,
    "accuracy": part_accuracy,
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="attention,speed,train")
    p.add_argument("--config", default=R50_GC, help="row of the speed and train parts")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--train-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--narrow", action="store_true", help="speed / train: the tests' tiny widths (smoke run)"
    )
    p.add_argument("--pairs", type=int, default=7, help="fp32 / bf16 pairs of the speed part")
    p.add_argument("--train-pairs", type=int, default=5)
    p.add_argument("--weights", default="output/quickstart/model_final.pth")
    p.add_argument("--accuracy-config", default=QUICKSTART_NAME)
    p.add_argument("--val-images", type=int, default=0,
                   help="accuracy: N held-out images instead of the quick start's 12")  # fmt: skip
    p.add_argument("--output-dir", default="output/precision_accuracy")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="accuracy part: config overrides")
    args = p.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {sorted(PARTS)}")
    torch.set_num_threads(args.threads)
    if not precision.cpu_has_bf16():
        print("precision.py: this CPU has no bfloat16 instructions: bf16 figures are emulation")
    report = {"cpu_has_bf16": precision.cpu_has_bf16(), "torch": torch.__version__}
    for name in parts:
        report[name] = PARTS[name](args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
