"""benchmarks/precision.py runs end to end (tiny widths, small images: a smoke run, no figure)."""

from __future__ import annotations

import json
import math

import pytest

from tests.testing import run_python


@pytest.mark.slow
def test_precision_benchmark_smoke(tmp_path):
    out = tmp_path / "precision.json"
    proc = run_python(
        ["benchmarks/precision.py", "--parts", "speed,train", "--narrow", "--size", "64", "96",
         "--train-size", "64", "96", "--pairs", "1", "--train-pairs", "1", "--threads", "1",
         "--json", str(out)],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for part in ("speed", "train"):
        assert math.isfinite(report[part]["ratio"]) and report[part]["ratio"] > 0
    assert all(math.isfinite(v) for v in report["train"]["first_loss"].values())
    nchw = report["speed"]["nchw"]  # FAST.CHANNELS_LAST off, both precisions
    assert set(nchw) == {"fp32 NCHW", "bf16 NCHW"}
    assert all(math.isfinite(row["ratio"]) and row["ratio"] > 0 for row in nchw.values())
    assert "bf16 / fp32" in proc.stdout


def test_precision_benchmark_rejects_unknown_part(capsys):
    from benchmarks import precision

    with pytest.raises(SystemExit) as e:
        precision.main(["--parts", "speed,fp16"])
    assert e.value.code == 2 and "unknown ['fp16']" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.py's code on the CPU at tiny size (one family: CI time; the
    three run through the same trainer in tests/precision/test_amp_training.py)."""
    out = tmp_path / "gpu_check.json"
    proc = run_python(
        ["benchmarks/gpu_check.py", "--dry-run", "--families", "gc_mask", "--json", str(out)],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    amp = report["amp"]["gc_mask"]
    assert amp["losses_finite"] and amp["amp_dtype"] == "torch.bfloat16"
    assert amp["amp_loss_rel_gap"] < 0.05  # same weights and data (measured: 0.03%)
    assert amp["param_and_grad_dtypes"] == ["torch.float32"]
    for batch in ("batch1", "batch2"):
        assert report["inference"][batch]["ratio_gc_to_plain"]["median"] > 0
