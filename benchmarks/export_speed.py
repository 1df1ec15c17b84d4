#!/usr/bin/env python
"""Eager vs an exported whole detector on the CPU: paired, interleaved time ratios, peak memory.

    python benchmarks/export_speed.py [--runtime onnxruntime|torchscript]
        [--config gcnet/<row>.yaml] [--size 800 1216] [--pairs 5] [--threads 2]

Builds the row at its real width (random weights, GC blocks and DCN offsets non-trivial,
class scores peaked so detections exist) with its config's speed-ups
(``gcnet_d2.fast.apply(model, cfg)``, as ``GCNetPredictor`` runs it eagerly and
``tools/export_model.py`` exports it), exports it (``onnxruntime``: the whole-detector ONNX
file, run by an ONNX Runtime CPU session with default options; ``torchscript``: the
``TracingAdapter`` trace), checks that both give the same detections, then times eager and
exported forwards alternately on the same image with ``--threads`` threads each and prints
the median of the per-pair ratios exported / eager (< 1: the export is faster) with their
range. Peak memory: each side's growth of the peak RSS over its first call, measured in a
fresh child process that has loaded the model (or opened the session) and nothing else, so
allocator caches and ONNX Runtime's arena count once. Pairing and interleaving cancel most
of the drift of a noisy machine; the ratio is still a single-run figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gcnet_d2  # noqa: E402
from benchmarks.memory import peak_rss_growth  # noqa: E402
from gcnet_d2 import fast  # noqa: E402
from gcnet_d2.export import (  # noqa: E402
    compare_instances,
    eager_detections,
    outputs_to_instances,
    trace_detector,
)
from gcnet_d2.export import onnx_detector as od  # noqa: E402
from gcnet_d2.export.tracing_adapter import output_fields  # noqa: E402
from tests.testing import realistic_export_model, sample_image  # noqa: E402


def exported_runner(model: torch.nn.Module, image: torch.Tensor, runtime: str, threads: int):
    """``(function running the exported detector on image, the ONNX file's bytes or None)``;
    the function returns detections as ``Instances``."""
    if runtime == "torchscript":
        traced, _ = trace_detector(model, image)
        names = output_fields(model)
        return (lambda: outputs_to_instances(traced(image), names)), None
    opset = od.DEFORM_OPSET if od.has_deform_conv(model) else od.MIN_OPSET
    data = od.detector_onnx_bytes(model, image, opset, {})
    session = od.ONNXDetector(data, threads=threads)
    return (lambda: session(image)), data


def rss_growth_mib(run: Callable[[], object]) -> float:
    with peak_rss_growth() as growth:
        run()
    return float("nan") if growth["bytes"] is None else growth["bytes"] / 2**20


def first_call_memory(args: argparse.Namespace, side: str, onnx_file: str) -> float:
    """Peak RSS growth (MiB) of ``side``'s first call, in a fresh child process."""
    command = [sys.executable, __file__, "--memory-of", side, "--onnx-file", onnx_file]
    command += ["--config", args.config, "--size", *map(str, args.size)]
    command += ["--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.set_num_threads(args.threads)
    cfg = gcnet_d2.get_config(args.config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = fast.apply(realistic_export_model(cfg), cfg).eval()
    return model, sample_image(*args.size, seed=1)


def memory_child(args: argparse.Namespace) -> None:
    """``--memory-of``: print the peak RSS growth (MiB) of one call, nothing before it."""
    image = sample_image(*args.size, seed=1)
    if args.memory_of == "onnxruntime":
        session = od.ONNXDetector(args.onnx_file, threads=args.threads)
        print(rss_growth_mib(lambda: session(image)))
    else:
        model, image = build(args)
        print(rss_growth_mib(lambda: eager_detections(model, image)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", choices=("onnxruntime", "torchscript"), default="onnxruntime")
    parser.add_argument("--config", default="gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-of", choices=("eager", "onnxruntime"), help=argparse.SUPPRESS)
    parser.add_argument("--onnx-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        memory_child(args)
        return
    model, image = build(args)
    exported, onnx_bytes = exported_runner(model, image, args.runtime, args.threads)

    def eager() -> object:
        return eager_detections(model, image)

    diff = compare_instances(eager(), exported())  # also the warm-up
    print(f"exported vs eager: {diff.summary()}")
    ratios, eager_s, exported_s = [], [], []
    with torch.no_grad():
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            eager()
            t1 = time.perf_counter()
            exported()
            t2 = time.perf_counter()
            eager_s.append(t1 - t0)
            exported_s.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
    memory = {}
    if onnx_bytes is not None:
        with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
            f.write(onnx_bytes)
            f.flush()
            for side in ("eager", "onnxruntime"):
                memory[side] = first_call_memory(args, side, f.name)
    print(
        f"{args.config} {args.size[0]}x{args.size[1]}, {args.threads} threads, "
        f"{args.pairs} pairs: eager median {statistics.median(eager_s):.3f} s, "
        f"{args.runtime} median {statistics.median(exported_s):.3f} s, "
        f"{args.runtime}/eager ratio median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        + "".join(f"; first call's peak RSS growth, {k} {v:.0f} MiB" for k, v in memory.items())
    )


if __name__ == "__main__":
    main()
