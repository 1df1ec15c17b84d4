"""The ``speedups`` section: GC against plain like with like, and each model fast vs plain code.

The ``backbone`` and ``model`` sections time every variant with ``gcnet_d2.fast.apply``, and
so compare a GC model whose bottlenecks fold ``conv3`` + norm + GC block into one matrix
product (``gcnet_d2.fast.gc_fold``) with a plain model built from detectron2's own
``BottleneckBlock``, which ``fast.apply`` leaves with a folded-norm ``conv3`` convolution:
not the same speed-ups. This section times, interleaved in one run, at the same weights:

- ``plain, plain code``: the plain (no-GC) model as built, no speed-up (the base);
- ``plain, fast``: the plain architecture with the GC models' speed-ups: its c3-c5
  bottlenecks in the GC bottleneck class without GC block (the ``backbone`` section's
  control), so ``fast.apply`` folds their ``conv3`` as it does in the GC models;
- ``plain, fast (detectron2 bottleneck)``: the plain model as built, with ``fast.apply``
  (what the ``backbone`` / ``model`` sections call ``plain``);
- ``GC r16, plain code`` / ``GC r4, plain code``: the GC models with every speed-up removed;
- ``GC r16, fast`` / ``GC r4, fast``: the GC models with ``fast.apply``.

Paired ratios (:data:`PAIRS`): GC over plain with the same code on both sides (like with
like: both sped up, both plain code), and fast over plain code for each model. Sub-sections:
the bottom-up backbone for each ``--backbones`` depth, then Mask R-CNN R-50 inference.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from gcnet_d2 import fast

from .fixtures import CONTROL, PLAIN, R4, R16, build_backbones, build_models, inference_inputs
from .report import make_row, print_row
from .sections import Settings, time_detectors
from .timing import Timer

BASE = "plain, plain code"
PLAIN_FAST = "plain, fast"
PLAIN_D2_FAST = "plain, fast (detectron2 bottleneck)"
LIKE_FAST = "GC over plain, both sped up"
LIKE_PLAIN = "GC over plain, both plain code"
FAST_GAIN = "fast over plain code, same model"
PAIRS = (
    (f"{R16}, fast", PLAIN_FAST, LIKE_FAST),
    (f"{R4}, fast", PLAIN_FAST, LIKE_FAST),
    (f"{R16}, plain code", BASE, LIKE_PLAIN),
    (f"{R4}, plain code", BASE, LIKE_PLAIN),
    (PLAIN_FAST, BASE, FAST_GAIN),
    (PLAIN_D2_FAST, BASE, FAST_GAIN),
    (f"{R16}, fast", f"{R16}, plain code", FAST_GAIN),
    (f"{R4}, fast", f"{R4}, plain code", FAST_GAIN),
)


def speedup_variants(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The section's variants (see the module doc) from :func:`~.fixtures.build_backbones` /
    :func:`~.fixtures.build_models`' sped-up ``plain``, ``GC r16``, ``GC r4`` and control,
    which share their weights; the plain-code variants are copies with ``fast.remove``."""
    out = {
        BASE: fast.remove(copy.deepcopy(nets[PLAIN])),
        PLAIN_FAST: nets[CONTROL],
        PLAIN_D2_FAST: nets[PLAIN],
    }
    for gc in (R16, R4):
        out[f"{gc}, plain code"] = fast.remove(copy.deepcopy(nets[gc]))
        out[f"{gc}, fast"] = nets[gc]
    return out


def section_speedups(s: Settings, timer: Timer) -> list[dict]:
    """Backbones (``--backbones``) and Mask R-CNN R-50 inference, every variant of
    :func:`speedup_variants` interleaved; rows with the :data:`PAIRS` ratios."""
    rows = []
    h, w = s.padded
    for depth in s.backbones:
        nets = speedup_variants(build_backbones(depth, s.device, (h, w)))
        x = torch.randn(1, 3, h, w, device=s.device)
        with torch.inference_mode():
            res = timer.compare({k: partial(m, x) for k, m in nets.items()}, BASE, s.rounds(15, 2))
        section = f"speed-ups: backbone {depth} fwd {h}x{w}"
        rows.append(make_row(section, "", 1, res, BASE, pairs=PAIRS))
        print_row(rows[-1])
        del nets
    models = speedup_variants(build_models(s.device, s.image))
    inputs = inference_inputs(s.image, s.device)
    res, dets = time_detectors(models, inputs, BASE, s.rounds(9, 1), timer)
    h, w = s.image
    section = f"speed-ups: Mask R-CNN R-50 inference {h}x{w}"
    rows.append(make_row(section, "", 1, res, BASE, pairs=PAIRS, detections=dets))
    print_row(rows[-1])
    return rows
