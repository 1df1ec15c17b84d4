#!/usr/bin/env python
"""Eager vs traced TorchScript detector on the CPU: one paired, interleaved time ratio.

    python benchmarks/export_speed.py [--config gcnet/<row>.yaml] [--size 480 640] [--pairs 5]

Builds the row at its real width (random weights, GC blocks and DCN offsets non-trivial,
class scores peaked so detections exist) with its config's speed-ups
(``gcnet_d2.fast.apply(model, cfg)``, as ``tools/export_model.py`` exports it and
``GCNetPredictor`` runs it eagerly), traces it through ``TracingAdapter``, then times
eager and traced forwards alternately on the same image and prints the median of the
per-pair ratios traced / eager (< 1: the export is faster). Pairing and interleaving cancel
most of the drift of a shared, noisy machine; the ratio is still a single-run figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gcnet_d2  # noqa: E402
from gcnet_d2 import fast  # noqa: E402
from gcnet_d2.export import eager_detections, trace_detector  # noqa: E402
from tests.testing import realistic_export_model, sample_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    cfg = gcnet_d2.get_config(args.config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = fast.apply(realistic_export_model(cfg), cfg).eval()
    image = sample_image(*args.size, seed=1)
    traced, _ = trace_detector(model, image)
    with torch.no_grad():
        eager_detections(model, image), traced(image)  # warm-up
        ratios, eager_s, traced_s = [], [], []
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            eager_detections(model, image)
            t1 = time.perf_counter()
            traced(image)
            t2 = time.perf_counter()
            eager_s.append(t1 - t0)
            traced_s.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
    print(
        f"{args.config} {args.size[0]}x{args.size[1]}, {torch.get_num_threads()} threads, "
        f"{args.pairs} pairs: eager median {statistics.median(eager_s):.3f} s, traced median "
        f"{statistics.median(traced_s):.3f} s, traced/eager ratio median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
