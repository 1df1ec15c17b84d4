"""benchmarks/speedup_section.py: GC against plain like with like (the same speed-ups on both
sides), and each model fast against its own plain code, at the same weights."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock

from benchmarks import run as benchmark
from benchmarks.fixtures import R4, R16, build_backbones
from benchmarks.report import make_row
from benchmarks.speedup_section import (
    BASE,
    LIKE_FAST,
    PAIRS,
    PLAIN_D2_FAST,
    PLAIN_FAST,
    speedup_variants,
)
from benchmarks.timing import Result
from gcnet_d2.fast import NormFoldingConv2d
from gcnet_d2.fast.gc_fold import FoldedGCBottleneckBlock
from gcnet_d2.layers import ContextBlock
from gcnet_d2.modeling import GCBottleneckBlock


def types(model: torch.nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


@pytest.mark.slow
def test_variants_pair_like_with_like_at_the_same_weights():
    nets = speedup_variants(build_backbones("r50", torch.device("cpu"), (64, 96)))
    assert set(nets) == {
        BASE,
        PLAIN_FAST,
        PLAIN_D2_FAST,
        f"{R16}, plain code",
        f"{R16}, fast",
        f"{R4}, plain code",
        f"{R4}, fast",
    }
    fast_classes = {NormFoldingConv2d, FoldedGCBottleneckBlock}
    # plain code: no speed-up anywhere; the plain one is detectron2's bottleneck, no GC block
    for name in (BASE, f"{R16}, plain code", f"{R4}, plain code"):
        assert not types(nets[name]) & fast_classes, name
    assert GCBottleneckBlock not in types(nets[BASE]) and BottleneckBlock in types(nets[BASE])
    # like with like: the plain architecture with the GC models' speed-ups (conv3 folded)
    for name in (PLAIN_FAST, f"{R16}, fast", f"{R4}, fast"):
        assert fast_classes <= types(nets[name]), name
    assert ContextBlock not in types(nets[PLAIN_FAST])
    assert FoldedGCBottleneckBlock not in types(nets[PLAIN_D2_FAST])  # detectron2's bottleneck
    # the same weights: the plain architecture's four variants compute the same function,
    # each GC model fast and plain-code too
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        out = {k: m(x)["res5"] for k, m in nets.items()}
    for a, b in [(PLAIN_FAST, BASE), (PLAIN_D2_FAST, BASE)] + [
        (f"{gc}, fast", f"{gc}, plain code") for gc in (R16, R4)
    ]:
        torch.testing.assert_close(out[a], out[b], rtol=1e-3, atol=1e-3 * out[b].abs().max())
    assert (out[f"{R16}, fast"] - out[PLAIN_FAST]).abs().max() > 1e-3  # GC blocks do work


def test_row_reports_every_pair():
    names = {a for a, _, _ in PAIRS} | {b for _, b, _ in PAIRS}
    times = [1.0, 1.1, 0.9]
    res = {n: Result(n, times=times, ratios=[] if n == BASE else [1.0] * 3) for n in names}
    row = make_row("speed-ups: backbone r50", "", 1, res, BASE, pairs=PAIRS)
    assert set(row["pairs"]) == {f"{a} / {b}" for a, b, _ in PAIRS}
    assert row["pairs"][f"{R16}, fast / {PLAIN_FAST}"]["note"] == LIKE_FAST
    assert benchmark.targets({"rows": [row]}) == []  # information, no target


def test_section_is_offered_on_the_command_line():
    assert "speedups" in benchmark.SECTIONS
    args = benchmark.get_parser().parse_args(["--sections", "speedups", "--backbones", "r50"])
    assert args.sections == "speedups"
