#!/usr/bin/env python
"""Eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side: paired time ratios.

    python benchmarks/int8_speed.py [--config gcnet/<row>.yaml] [--size 800 1216]
        [--pairs 5] [--threads 2] [--calibration 4] [--variant uint8:Conv,MatMul,Gemm ...]

Builds the row at its real width (random weights, GC blocks and DCN offsets non-trivial,
class scores peaked so detections exist) with its config's speed-ups, exports the whole
detector to ONNX (``tools/export_model.py``'s route) and quantizes it as ``--quantize int8``
does (:func:`gcnet_d2.export.quantize.quantize_detector`), calibrated on ``--calibration``
random-rectangle images of ``--size``; each ``--variant`` ``ACTIVATIONS:OPS`` (activation
type ``uint8``/``int8``, comma-separated op types) is one int8 file. Prints how far ONNX
Runtime fp32 is from eager and each int8 file from fp32 (detections), then times every side
on the same image, round after round in turn with ``--threads`` threads each, and prints each
side's median time and the medians (min, max) of the per-round ratios to eager and of int8 to
ONNX Runtime fp32. A single-run figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.export_speed import build  # noqa: E402
from gcnet_d2.export import compare_instances, eager_detections  # noqa: E402
from gcnet_d2.export import onnx_detector as od  # noqa: E402
from gcnet_d2.export.quantize import DEFAULT_OP_TYPES, quantize_detector  # noqa: E402
from tests.testing import sample_image  # noqa: E402

DEFAULT_VARIANT = "uint8:" + ",".join(DEFAULT_OP_TYPES)


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``ACTIVATIONS[:OPS]`` as (activation type, op types)."""
    act, _, ops = text.partition(":")
    if act not in ("uint8", "int8"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: activations must be uint8 or int8")
    return act, tuple(o for o in (ops or ",".join(DEFAULT_OP_TYPES)).split(",") if o)


def ratio_line(name: str, ratios: list[float]) -> str:
    return (
        f"{name} median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--pairs", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=4, help="calibration images")
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help=f"int8 file: ACTIVATIONS:OPS (default {DEFAULT_VARIANT})")  # fmt: skip
    args = parser.parse_args()
    variants = args.variant or [parse_variant(DEFAULT_VARIANT)]
    model, image = build(args)  # sets torch's threads
    opset = od.DEFORM_OPSET if od.has_deform_conv(model) else od.MIN_OPSET
    h, w = args.size
    calibration = [
        sample_image(h, w, seed=100 + k).float().numpy() for k in range(args.calibration)
    ]
    with tempfile.TemporaryDirectory() as work:
        fp32_path = os.path.join(work, "model.onnx")
        with open(fp32_path, "wb") as f:
            f.write(od.detector_onnx_bytes(model, image, opset, {}))
        sides: dict[str, Callable[[], object]] = {"eager": lambda: eager_detections(model, image)}
        fp32 = od.ONNXDetector(fp32_path, threads=args.threads)
        sides["ort fp32"] = lambda: fp32(image)
        for act, ops in variants:
            folder = tempfile.mkdtemp(dir=work)
            path = quantize_detector(fp32_path, calibration, folder, act, ops)
            session = od.ONNXDetector(path, threads=args.threads)
            sides[f"ort int8 {act}:{','.join(ops)}"] = lambda s=session: s(image)
        reference = sides["eager"]()
        fp32_out = sides["ort fp32"]()
        print(f"ort fp32 vs eager: {compare_instances(reference, fp32_out).summary()}")
        for name, run in list(sides.items())[2:]:
            print(f"{name} vs ort fp32: {compare_instances(fp32_out, run()).summary()}")
        times: dict[str, list[float]] = {name: [] for name in sides}
        with torch.no_grad():
            for _ in range(args.pairs):
                for name, run in sides.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    print(
        f"{args.config} {h}x{w}, {args.threads} threads, {args.pairs} rounds, "
        f"{args.calibration} calibration images; median s: "
        + ", ".join(f"{n} {statistics.median(t):.3f}" for n, t in times.items())
    )
    eager_t = times["eager"]
    for name in list(sides)[1:]:
        ratios = [t / e for t, e in zip(times[name], eager_t, strict=True)]
        print("  " + ratio_line(f"{name} / eager", ratios))
    for name in list(sides)[2:]:
        ratios = [t / f for t, f in zip(times[name], times["ort fp32"], strict=True)]
        print("  " + ratio_line(f"{name} / ort fp32", ratios))


if __name__ == "__main__":
    main()
