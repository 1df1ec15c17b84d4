"""tools/model_vs_mmdet.py: its paired statistics and its timing hooks (the measurement
itself is `tools/benchmark.py --sections mmdet`, not a test)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from torch import nn

from tests.helpers import REPO


def _load():
    spec = importlib.util.spec_from_file_location(
        "model_vs_mmdet", REPO / "tools/model_vs_mmdet.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mvm = _load()


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
