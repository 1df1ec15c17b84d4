"""The precision keys through the command-line tools: AMP training and bf16 evaluation on the
CPU with train_net.py (detectron2's AMPTrainer asserts CUDA), and one error line for a bad
value in train_net.py and lazy_train_net.py."""

from __future__ import annotations

import json

import pytest

from tests.testing import LAZY_ROW, QUICKSTART, TINY_OPTS, python_env, run_python

TINY = [
    "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000", *TINY_OPTS,
]  # fmt: skip


@pytest.mark.slow
def test_train_net_amp_on_the_cpu_trains_and_evaluates_in_bf16(tmp_path):
    out = tmp_path / "out"
    proc = run_python(
        ["train_net.py", "--config-file", QUICKSTART, "SOLVER.AMP.ENABLED", "True",
         "TEST.PRECISION", "bf16", "OUTPUT_DIR", str(out), *TINY],
        python_env(str(tmp_path / "synth")),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "final_results.json").read_text())
    assert {"bbox", "segm"} <= set(results)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(0 < loss < 100 for loss in losses)


def test_train_net_unknown_precision_is_one_error_line(tmp_path, capsys):
    import train_net

    with pytest.raises(SystemExit) as e:
        train_net.cli(
            ["--config-file", QUICKSTART, "--eval-only", "TEST.PRECISION", "fp16",
             "OUTPUT_DIR", str(tmp_path / "out")]
        )  # fmt: skip
    assert e.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert line.startswith("train_net.py: error:") and "TEST.PRECISION" in line and "fp16" in line
    assert not (tmp_path / "out").exists()


def test_lazy_train_net_unknown_precision_is_one_error_line(tmp_path, capsys):
    import lazy_train_net

    with pytest.raises(SystemExit) as e:
        lazy_train_net.cli(
            ["--config-file", LAZY_ROW, "--eval-only", "train.eval_precision=half",
             f"train.output_dir={tmp_path / 'out'}"]
        )  # fmt: skip
    assert e.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert line.startswith("lazy_train_net.py: error:")
    assert "train.eval_precision" in line and "half" in line
    assert not (tmp_path / "out").exists()
