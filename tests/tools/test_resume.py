"""Interrupted runs lose nothing: SIGKILL after a checkpoint, ``--resume``, same final weights.

The end-to-end test runs ``train_net.py`` three times on the generated dataset (tiny model,
64 px images, one thread, ``NUM_WORKERS 0``): an uninterrupted 4-iteration run; a run killed
with SIGKILL while it is at iteration 2, after the checkpoint of iteration 1; and its
``--resume``. The resumed run must restart at iteration 2, finish at MAX_ITER and end with
weights bit-identical to the uninterrupted run's (measured difference: exactly 0). Without the
data-position and RNG state in the checkpoint (plain detectron2) the resumed run trains on other
images and flips, and its weights differ (the RNG unit tests below show each part matters).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data.samplers import TrainingSampler

from gcnet_d2.checkpoint import load_checkpoint_file
from gcnet_d2.checkpoint.training_state import capture_rng_state, restore_rng_state
from gcnet_d2.data.samplers import ResumableSampler
from tests.testing import (
    HOOKED,
    PYTHON,
    QUICKSTART,
    REPO,
    TINY_OPTS,
    python_env,
    run_python,
    synthetic_root,
)

MAX_ITER = 4
RUN_OPTS = [
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.CHECKPOINT_PERIOD", "2",  # checkpoints after iterations 1 and 3 (0-based)
    "SOLVER.IMS_PER_BATCH", "2",
    "DATASETS.TEST", "()",  # no evaluation: this test is about training state
    "SEED", "7",
    *TINY_OPTS,
]  # fmt: skip


def test_sampler_skip_continues_the_same_stream():
    full = TrainingSampler(10, shuffle=True, seed=3)
    resumed = ResumableSampler(TrainingSampler(10, shuffle=True, seed=99))
    resumed.set_seed(full._seed)  # the checkpoint restores the shuffling seed
    resumed.skip(13)  # 13 indices consumed before the interruption, across an epoch boundary
    expected = list(itertools.islice(iter(full), 13, 33))
    assert list(itertools.islice(iter(resumed), 20)) == expected
    assert resumed.seed == 3


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(5), np.random.rand(5), random.random(), np.random.randn()  # leave a cached gauss
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.rand(4), random.random(), np.random.randn(2))

    path = tmp_path / "state.pth"
    torch.save({"model": {}, "rng": state}, path)
    loaded = load_checkpoint_file(str(path))["rng"]  # torch.load(weights_only=True)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(loaded)
    got = (torch.rand(4), np.random.rand(4), random.random(), np.random.randn(2))
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    np.testing.assert_array_equal(got[3], expected[3])


def test_evaluation_does_not_move_the_training_rngs(monkeypatch: pytest.MonkeyPatch):
    from detectron2.engine import DefaultTrainer

    from gcnet_d2.engine import GCNetTrainer

    def test_drawing_randoms(cls, cfg, model, evaluators=None):  # noqa: ANN001, ANN202
        torch.rand(3), np.random.rand(3), random.random()  # as a test DataLoader's seed does
        return {"bbox": {"AP": 1.0}}

    monkeypatch.setattr(DefaultTrainer, "test", classmethod(test_drawing_randoms))
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert GCNetTrainer.test(None, None) == {"bbox": {"AP": 1.0}}
    after = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0]) and (after[1] == expected[1]).all()
    assert after[2] == expected[2]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(str(path))["model"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path_factory, tmp_path: Path):
    env = python_env(synthetic_root(tmp_path_factory))
    ref_dir, run_dir, ready = tmp_path / "reference", tmp_path / "interrupted", tmp_path / "ready"
    args = ["--config-file", QUICKSTART]

    # The interrupted run, started first: it pauses at iteration 2 and we SIGKILL it there.
    killed = subprocess.Popen(
        [PYTHON, HOOKED, *args, *RUN_OPTS, "OUTPUT_DIR", str(run_dir)],
        cwd=REPO,
        env={**env, "GCNET_TEST_PAUSE_AT": "2", "GCNET_TEST_READY": str(ready)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reference = run_python(["train_net.py", *args, *RUN_OPTS, "OUTPUT_DIR", str(ref_dir)], env)
        assert reference.returncode == 0, reference.stderr[-3000:]
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert killed.poll() is None, killed.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the interrupted run never reached iteration 2"
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        killed.stderr.close()
    assert killed.returncode == -signal.SIGKILL
    assert (run_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (run_dir / "model_final.pth").exists()
    assert _weights(run_dir / "model_0000001.pth")  # complete and loadable

    resumed = run_python(
        ["train_net.py", "--resume", *args, *RUN_OPTS, "OUTPUT_DIR", str(run_dir)], env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (run_dir / "log.txt").read_text()
    assert "Loading from " + str(run_dir / "model_0000001.pth") in log
    assert "Starting training from iteration 2" in log
    assert "Resuming the training data stream after 2 iterations" in log

    final = load_checkpoint_file(str(run_dir / "model_final.pth"))
    assert final["iteration"] == MAX_ITER - 1
    ref, got = _weights(ref_dir / "model_final.pth"), _weights(run_dir / "model_final.pth")
    assert ref.keys() == got.keys()
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    # The run did train: the weights moved away from the checkpoint it resumed from.
    start = _weights(run_dir / "model_0000001.pth")
    assert any(not torch.equal(start[k], got[k]) for k in got)


@pytest.mark.parametrize("missing", ["file", "corrupt"])
def test_resume_from_a_broken_last_checkpoint_is_a_clear_error(tmp_path: Path, missing: str):
    from torch import nn

    from gcnet_d2.checkpoint import CheckpointLoadError, GCNetCheckpointer

    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    if missing == "corrupt":
        (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 half a zip")
    checkpointer = GCNetCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path))
    with pytest.raises(CheckpointLoadError) as info:
        checkpointer.resume_or_load("", resume=True)
    message = str(info.value)
    assert str(tmp_path / "model_0000009.pth") in message
    if missing == "file":
        assert "no such file" in message and "last_checkpoint" in message
    else:
        assert "truncated or corrupt" in message
