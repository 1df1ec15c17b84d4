"""benchmarks/model_vs_mmdet.py: its paired statistics, its timing hooks and the speed-ups of
its gcnet_d2 side (the measurement itself is `benchmarks/run.py --sections mmdet`, not a
test)."""

from __future__ import annotations

import types

import pytest
from torch import nn

from benchmarks import model_vs_mmdet as mvm


def fake(totals):  # noqa: ANN001, ANN201
    it = iter(totals)

    def run():  # noqa: ANN202
        t = next(it)
        return {p: t / 10 for p in mvm.PARTS} | {"total": t, "cpu": 2 * t}, None

    return run


def test_compare_pairs_rounds_and_reports_parts():
    res = mvm.compare(
        {"ours": fake([9, 1.0, 1.6, 2.4]), "mmdet": fake([9, 2.0, 2.0, 3.0])},
        base="mmdet",
        rounds=3,
    )  # first call of each is the warm-up
    ratio = res["variants"]["ours"]["ratio"]
    assert sorted(ratio["all"]) == pytest.approx([0.5, 0.8, 0.8])  # paired by round
    assert ratio["median"] == pytest.approx(0.8)
    assert abs(ratio["best"] - 0.5) < 1e-12
    assert res["variants"]["mmdet"]["parts"]["total"]["median"] == 2.0
    assert "ours / mmdet: median 0.800" in mvm.format_table(res, "t")


def test_part_clock_times_and_restores_functions_and_methods():
    clock = mvm.PartClock()
    mod = types.SimpleNamespace(f=lambda x: x + 1)
    original = mod.f
    net = nn.Linear(2, 2)
    with clock.function(mod, "f", "f"), clock.function(net, "extra_repr", "m"):
        assert mod.f(1) == 2
        net.extra_repr()
    assert mod.f is original
    assert "extra_repr" not in vars(net)  # the instance shadow is removed, the class method stays
    assert set(clock.times) == {"f", "m"}


def test_ours_is_built_with_the_speed_ups_applied():
    """The gcnet_d2 detector timed against mmdetection is the one GCNetPredictor runs:
    ``gcnet_d2.fast.apply(build_model(cfg), cfg)`` (folded GC bottlenecks, folded norms,
    threaded RoIAlign, the lean FPN), in eval mode; no plain GC bottleneck is left."""
    from gcnet_d2.fast import LeanFPN, NormFoldingConv2d, ParallelROIAlign
    from gcnet_d2.fast.gc_fold import FoldedGCBottleneckBlock
    from gcnet_d2.modeling import GCBottleneckBlock

    model = mvm.build_ours(mvm.KINDS["r50"][1])
    assert not model.training
    types = {type(m) for m in model.modules()}
    assert {NormFoldingConv2d, FoldedGCBottleneckBlock, ParallelROIAlign, LeanFPN} <= types
    assert GCBottleneckBlock not in types
    assert type(model.backbone) is LeanFPN
