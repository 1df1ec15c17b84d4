"""lazy_train_net.py end to end: 2 iterations from a table row's LazyConfig on the generated
data (tiny images, CPU), COCO evaluation, checkpoint and results written."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.testing import LAZY_ROW, LAZY_TINY_OPTS, REPO, python_env, run_python

ROW = LAZY_ROW
TINY = [
    *LAZY_TINY_OPTS,
    "train.log_period=1",
    "optimizer.lr=0.005",
    "lr_multiplier.warmup_length=0.5",
]


def run(args: list[str], tmp_path) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = python_env(str(tmp_path / "synth"))
    return run_python(["lazy_train_net.py", *args], env, timeout=900)


@pytest.mark.slow
def test_two_iterations_train_and_evaluate(tmp_path):
    out = tmp_path / "out"
    proc = run(["--config-file", ROW, f"train.output_dir={out}", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "final_results.json").read_text())
    # COCOEvaluator ran (after 2 iterations the model may have no mask above threshold)
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    iters = sorted({m["iteration"] for m in metrics if "total_loss" in m})
    assert iters == [0, 1]
    # the config it ran is saved and loads back (detectron2's default_setup)
    assert (out / "config.yaml").is_file()


def test_misspelt_override_is_named(tmp_path, capsys):
    """Checked before any process starts (in this one: ``cli`` exits before training)."""
    import lazy_train_net

    with pytest.raises(SystemExit) as info:
        argv = ["--config-file", str(REPO / ROW), f"train.output_dir={tmp_path}"]
        lazy_train_net.cli([*argv, "train.max_itr=2"])
    # detectron2 would add the key silently and train for train.max_iter (87948 iterations)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'train.max_itr'" in err and "did you mean train.max_iter" in err
    assert not any(tmp_path.iterdir())  # nothing set up, nothing written
