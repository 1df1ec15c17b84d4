#!/usr/bin/env python
"""Side-by-side cost of gcnet_d2's GC block: block, bottleneck, backbone, Mask R-CNN, training.

Everything is measured in one process, variants interleaved (a fresh random order every
round) after warm-up, and reported as the median of repeated runs with its spread. Ratios are
*paired*: each round times every variant back to back and the ratio is taken inside the
round, so slow drifts of a shared machine cancel; the table gives the median ratio and a
distribution-free 95% confidence interval of that median.

Sections (``--sections``, all by default):

  block      the plain GC block alone (``ContextBlock``: the paper's and mmcv's formulation,
             conv_mask -> softmax -> matmul -> channel_add, out of place) at the c3/c4/c5
             shapes of an 800x1333 image (padded to 800x1344), batch 1 and 2, against
             ``x.clone()`` (one read and one write of the map): what the block costs in passes
             over its input; inference forward, and forward + backward. Information, no target:
             gcnet_d2 has no faster standalone block (its speed-up folds the block into the
             bottleneck's conv3, measured by ``bottleneck``).
  bottleneck the folded GC bottleneck (``gcnet_d2.fast``'s GC fold: frozen norm + GC block
             folded into conv3) vs the plain ``GCBottleneckBlock`` (detectron2's bottleneck +
             the plain mmcv block), vs the folded conv3 without GC, and vs detectron2's
             bottleneck (no GC).
  backbone   the bottom-up ResNet forward at 800x1344: plain vs GC r16 vs GC r4, plus a
             control (GC r16 with its context blocks removed: same code, no GC) that isolates
             what the GC blocks themselves cost. ``--backbones r50,r101,x101`` adds depths.
  model      whole Mask R-CNN inference at 800x1333, seconds per image (score threshold 0, so
             every image yields 100 detections and the mask head always runs).
  speedups   like with like: each GC backbone (``--backbones``) and Mask R-CNN R-50 with the
             speed-ups against the plain (no-GC) model with the same speed-ups, both also
             with plain code, and each model fast vs its plain code, interleaved in one run
             (benchmarks/speedup_section.py). The ``backbone`` and ``model`` sections' plain
             model is detectron2's bottleneck with ``fast.apply``, which does not get the GC
             bottleneck's ``conv3`` fold: their GC / plain ratios are not like with like.
  train      one training iteration (2 images, forward + backward + SGD step) and its peak
             memory, plain vs GC.
  recipe     one training iteration (2 images of different sizes) and its peak memory of GC
             r16 Mask R-CNN with mmdetection's training components (the table configs'
             MODEL.MMDET_TRAIN.*, bitmap mask targets) vs Detectron2's stock components, the
             same weights and ground truth (target <= 1.03x).
  flops      parameters and FLOPs (fvcore's counter; 1 multiply-add = 1 flop) of each, and
             of the GC r16 backbone with every speed-up removed (``gcnet_d2.fast.remove``:
             conv, norm and GC block as mmcv runs them).
  options    no target: channels_last, bf16 autocast (with its measured accuracy cost) and
             torch.compile (graph breaks, compile time, speed) on the backbone.
  mmdet      (only when named) whole-detector inference, ours (with ``gcnet_d2.fast.apply``,
             as ``GCNetPredictor`` runs it) vs mmdetection 3.3's own detector built from its
             own config file, the same weights, by part (bottom-up, FPN, RPN, RoI heads,
             post-processing), equal detection counts asserted: GC r16 Mask R-CNN R-50-FPN
             (``--backbones r50``) and GC r4 Cascade Mask R-CNN X-101 (``--backbones x101``)
             (benchmarks/model_vs_mmdet.py; needs the parity environment,
             requirements-parity.txt).

Models (``backbone``, ``model``, ``train``, ``recipe``, ``flops``, ``options``) are built
plain and then sped up with ``gcnet_d2.fast.apply(model, cfg)``, as ``train_net.py`` and
``GCNetPredictor`` run them (the plain variant too); ``FAST.*`` of the table configs
(all speed-ups on, no compile).

The parts live next to this file in ``benchmarks/`` (timing, memory, fixtures, sections,
report, targets); this file is the command line, run from the repository root. Runs on the
CPU by default and on CUDA when available (``--device``). ``--quick`` shrinks rounds and image
sizes (printed in the header) to stay within a couple of minutes on 2 cores.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``. On the CPU, two measures:
``live`` is the peak of the summed bytes of tensor storages allocated during the iteration
and still alive (tracked op by op with a TorchDispatchMode; deterministic), and ``rss`` is the
growth of the process's peak resident set (``/proc/self/clear_refs`` resets the high-water
mark; includes allocator slack, noisier).

Example::

    nice -n 5 python benchmarks/run.py --json benchmark.json --markdown benchmark.md
    python benchmarks/run.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import gcnet_d2  # noqa: E402, F401  (registers the backbones)
from benchmarks.extra_sections import section_flops, section_options  # noqa: E402
from benchmarks.fixtures import CONFIGS  # noqa: E402
from benchmarks.model_vs_mmdet import section_mmdet  # noqa: E402
from benchmarks.recipe_section import section_recipe  # noqa: E402
from benchmarks.report import machine, markdown  # noqa: E402
from benchmarks.sections import (  # noqa: E402
    Settings,
    section_backbone,
    section_block,
    section_bottleneck,
    section_model,
    section_train,
)
from benchmarks.speedup_section import section_speedups  # noqa: E402
from benchmarks.targets import targets  # noqa: E402
from benchmarks.timing import Timer  # noqa: E402
from gcnet_d2.io import atomic_write_text  # noqa: E402

SECTIONS = {
    "block": section_block,
    "bottleneck": section_bottleneck,
    "backbone": section_backbone,
    "model": section_model,
    "speedups": section_speedups,
    "train": section_train,
    "recipe": section_recipe,
    "flops": section_flops,
    "options": section_options,
    "mmdet": section_mmdet,
}
DEFAULT_SECTIONS = [name for name in SECTIONS if name != "mmdet"]


def get_parser() -> argparse.ArgumentParser:
    """The command line of ``benchmarks/run.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA if present)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller images")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma list of {', '.join(SECTIONS)} (all but mmdet by default)",
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
        "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
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
