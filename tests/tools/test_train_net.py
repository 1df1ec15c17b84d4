"""End to end through the CLI: train a few iterations on the generated data, evaluate with
COCOEvaluator, then evaluate the saved weights with --eval-only and get the same detections."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from tests.testing import QUICKSTART, REPO, TINY_OPTS, python_env, run_python

TINY = [
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000", *TINY_OPTS,
]  # fmt: skip
CONFIG = QUICKSTART


def run_cli(args: list[str], synth_root: str) -> subprocess.CompletedProcess:
    return run_python(["train_net.py", *args], python_env(synth_root), timeout=600)


def detections(output_dir) -> np.ndarray:  # noqa: ANN001 - a pathlib.Path
    """Rows (image, category, score, x, y, w, h) of every detection COCOEvaluator saved."""
    path = output_dir / "inference" / "coco_instances_results.json"
    dets = json.loads(path.read_text())
    rows = sorted((d["image_id"], d["category_id"], d["score"], *d["bbox"]) for d in dets)
    return np.array(rows, dtype=np.float64).reshape(-1, 7)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    out = tmp / "out"
    proc = run_cli(
        ["--config-file", CONFIG, "OUTPUT_DIR", str(out), "TEST.EVAL_PERIOD", "3", *TINY],
        str(tmp / "synth"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, out, proc


# COCO's object-size ranges (area in pixels) and the AP that each one gives.
AREA_RANGES = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "total_loss"}


def undefined_aps(tmp) -> set[str]:  # noqa: ANN001 - a pathlib.Path
    """The size-range APs with no ground truth object in the validation set: COCOeval gives
    -1 for them, which detectron2 reports as NaN; every other AP must be a number."""
    coco = json.loads((tmp / "synth" / "annotations" / "instances_val.json").read_text())
    areas = [a["area"] for a in coco["annotations"] if not a.get("iscrowd")]
    return {k for k, (lo, hi) in AREA_RANGES.items() if not any(lo <= a < hi for a in areas)}


@pytest.mark.slow
def test_train_then_coco_eval(trained):
    tmp, out, proc = trained
    results = json.loads((out / "final_results.json").read_text())
    undefined = undefined_aps(tmp)
    assert undefined != set(AREA_RANGES)  # some ranges do have objects
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", *AREA_RANGES} <= set(results[task])
        for key, value in results[task].items():
            if key in undefined:
                assert math.isnan(value), (task, key, value)
            else:  # a NaN AP (a diverged model, a broken evaluation) fails here
                assert math.isfinite(value) and 0 <= value <= 100, (task, key, value)
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = [(m["iteration"], k, v) for m in metrics for k, v in m.items() if "loss" in k]
    assert {k for _, k, _ in logged} == LOSSES  # every loss of Mask R-CNN, logged
    assert all(math.isfinite(v) for _, _, v in logged), logged
    logged_aps = [(k, v) for m in metrics for k, v in m.items() if "/AP" in k]
    assert len(logged_aps) == len(results["bbox"]) + len(results["segm"])
    for key, value in logged_aps:  # the evaluation's APs as metrics.json has them
        assert math.isfinite(value) or key.split("/")[1] in undefined, (key, value)
    assert (out / "inference" / "coco_instances_results.json").is_file()
    log = (out / "log.txt").read_text()
    # COCOEvaluator says which COCOeval runs (its own fallback without detectron2._C).
    assert "Evaluating predictions with official COCO API" in log or "unofficial COCO" in log


@pytest.mark.slow
def test_eval_only_reproduces_final_eval(trained):
    tmp, out, _ = trained
    out2 = tmp / "eval"
    proc = run_cli(
        ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
         "OUTPUT_DIR", str(out2), *TINY],
        str(tmp / "synth"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / "final_results.json").read_text())
    again = json.loads((out2 / "final_results.json").read_text())
    for task in ("bbox", "segm"):
        assert again[task]["AP"] == pytest.approx(first[task]["AP"], abs=1e-6)
    # The AP of a 3-iteration model is about 0 whatever its weights: compare the detections
    # themselves, which any other weights (a wrong or skipped load) would change.
    trained_dets, loaded_dets = detections(out), detections(out2)
    assert len(trained_dets) > 0
    assert loaded_dets.shape == trained_dets.shape
    np.testing.assert_allclose(loaded_dets, trained_dets, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_summarize_results_guards_against_collapse(trained, tmp_path):
    _, out, _ = trained
    tool = str(REPO / "tools" / "summarize_results.py")
    ok = run_python([tool, str(out)])
    assert ok.returncode == 0 and "box AP" in ok.stdout
    too_high = run_python([tool, str(out), "--min-box-ap", "101"])
    assert too_high.returncode == 1 and "did not learn" in too_high.stderr
    missing = run_python([tool, str(tmp_path)])
    assert missing.returncode == 2 and "final_results.json" in missing.stderr
