"""Preemptible clusters: SIGUSR1 / SIGTERM give a clean checkpoint, SLURM's self-requeue, an
exact resume (issue 28; docs/clusters.md, "Time limits and preemption").

On one host with gloo, the tiny quick-start model, 4 iterations, one image per process:

- two ``srun`` tasks of SLURM job 4242, at a random iteration: rank 0 waits after it while
  rank 1, waiting for rank 0 inside the next iteration's collectives, gets SIGUSR1 (SLURM's
  ``--signal=USR1@T`` and ``scancel --signal=USR1`` send it to every task; one rank getting it
  is the harder case: only the ranks' agreement can stop rank 0). Both stop after the same
  iteration, one checkpoint is written, a stand-in ``scontrol`` on PATH records exactly one
  ``requeue 4242``, both exit 0; the requeued job (``SLURM_RESTART_COUNT=1``, no ``--resume``)
  ends with the uninterrupted run's weights (the session's shared reference, bit for bit);
- SIGTERM during an evaluation under SLURM: the evaluation completes, the run stops at the next
  iteration with a complete checkpoint, exits 143 and does not requeue;
- a second signal ends the process at once, and a checkpoint write it interrupts leaves the
  last complete checkpoint named by ``last_checkpoint``;
- ``lazy_train_net.py`` in a SLURM job (one process, the table row's LazyConfig at 96 px):
  SIGUSR1 after iteration 0 checkpoints, requeues once and exits 0; the requeued start ends
  with an uninterrupted run's weights, bit for bit.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from gcnet_d2.checkpoint import load_checkpoint_file
from gcnet_d2.cluster import signals
from tests.testing import HOOKED, LAZY_ROW, LAZY_TINY_OPTS, PYTHON, REPO, free_port, run_python
from tests.tools.cluster_runs import (
    MAX_ITER,
    Children,
    assert_same_weights,
    child_env,
    last_line,
    scontrol_calls,
    srun_env,
    stand_in_scontrol,
    train_argv,
)

JOB_ID = "4242"  # srun_env's SLURM_JOB_ID


def wait_for(path: Path, procs: list, children: Children, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, children.tail(proc)
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_requeue_runs_scontrol_and_reports_its_error(tmp_path: Path, monkeypatch):
    for fail in (False, True):
        folder = tmp_path / str(fail)
        folder.mkdir()
        for key, value in stand_in_scontrol(folder, fail).items():
            monkeypatch.setenv(key, value)
        error = signals.requeue(JOB_ID)
        assert scontrol_calls(folder) == [f"requeue {JOB_ID}"]
        if fail:
            assert error == "scontrol: error: Requeue of JobId=4242 not permitted (exit status 1)"
        else:
            assert error is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert "scontrol" in signals.requeue(JOB_ID)  # not installed: the OSError, one line


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_once_and_the_requeued_job_resumes_exactly(
    tmp_path: Path, children: Children, synth: str, reference: Path
):
    seed = random.randrange(1 << 30)
    at = random.Random(seed).randrange(MAX_ITER - 2)  # the signal comes after this iteration
    stop = at + 1  # ... and every rank stops at the next boundary
    print(f"seed {seed}: SIGUSR1 after iteration {at}")
    out, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    port = free_port()
    probe = {"GCNET_TEST_SIGNAL_AT": str(at), "GCNET_TEST_READY": str(ready),
             "GCNET_TEST_GO": str(go)}  # fmt: skip
    procs = [
        children.start(
            f"task{task}",
            [PYTHON, *train_argv(HOOKED, out)],
            srun_env(task, port, tmp_path, synth, **probe),
        )
        for task in (0, 1)
    ]
    wait_for(ready, procs, children)  # rank 0 waits after iteration `at`
    sent = time.monotonic()
    os.kill(procs[1].pid, signal.SIGUSR1)  # rank 1 only, inside iteration `at + 1`
    time.sleep(0.5)
    go.touch()  # rank 0 goes on, without a signal of its own
    codes = [children.wait(proc, 120) for proc in procs]
    took = time.monotonic() - sent
    print(f"SIGUSR1 to exit of both tasks: {took:.1f} s (0.5 s of it before 'go')")
    assert codes == [0, 0], [children.tail(p) for p in procs]

    checkpoint = out / f"model_{stop:07d}.pth"
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]
    assert (out / "last_checkpoint").read_text() == checkpoint.name
    assert not (out / "model_final.pth").exists()
    state = load_checkpoint_file(str(checkpoint))
    trainer = state["trainer"]
    assert trainer["iteration"] == stop
    assert trainer["_trainer"]["optimizer"]["state"]  # SGD momentum buffers
    assert any("LRScheduler" in name for name in trainer["hooks"])
    assert len(trainer["gcnet_resume"]["rng_per_rank"]) == 2
    for task, proc in enumerate(procs):
        line = last_line(children.output(proc))
        who = f"SLURM job {JOB_ID} requeued" if task == 0 else f"rank 0 requeues SLURM job {JOB_ID}"
        assert line == (
            f"train_net_hooked.py (rank {task}): stopped by SIGUSR1 after iteration {stop}; "
            f"checkpoint: {checkpoint}; {who}: it resumes by itself from iteration {stop + 1}"
        ), line

    # SLURM starts the requeued job: same job id, SLURM_RESTART_COUNT=1, the same command.
    port = free_port()
    resumed = [
        children.start(
            f"requeued{task}",
            [PYTHON, *train_argv(HOOKED, out)],
            srun_env(task, port, tmp_path, synth, SLURM_RESTART_COUNT="1"),
        )
        for task in (0, 1)
    ]
    for proc in resumed:
        assert children.wait(proc, 300) == 0, children.tail(proc)
    assert "SLURM restart 1 (SLURM_RESTART_COUNT=1): resuming" in children.output(resumed[0], "out")
    log = (out / "log.txt").read_text().rsplit("Command line arguments", 1)[1]
    assert f"Starting training from iteration {stop + 1}" in log
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]  # once
    assert_same_weights(reference, out / "model_final.pth")


@pytest.mark.slow
def test_sigterm_during_evaluation_stops_at_the_next_iteration_without_requeue(
    tmp_path: Path, children: Children, synth: str
):
    """SLURM's preemption signal (SIGTERM) in a SLURM job's batch step (one process)."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    argv = [
        PYTHON,
        *train_argv(HOOKED, out),
        "DATASETS.TEST",
        "('gcnet_synthetic_val',)",
        "TEST.EVAL_PERIOD",
        "2",
    ]  # fmt: skip  (an evaluation after iteration 1)
    env = child_env(synth, SLURM_JOB_ID=JOB_ID, GCNET_TEST_SIGNAL_IN_EVAL="1",
                    GCNET_TEST_READY=str(ready), **stand_in_scontrol(tmp_path))  # fmt: skip
    proc = children.start("preempted", argv, env)
    wait_for(ready, [proc], children)
    os.kill(proc.pid, signal.SIGTERM)
    assert children.wait(proc, 120) == signals.EXIT_STOPPED, children.tail(proc)

    assert scontrol_calls(tmp_path) == []
    log = (out / "log.txt").read_text()
    assert "Evaluation results for gcnet_synthetic_val in csv format" in log  # it completed
    checkpoint = out / "model_0000002.pth"
    assert (out / "last_checkpoint").read_text() == checkpoint.name
    assert load_checkpoint_file(str(checkpoint))["trainer"]["iteration"] == 2
    assert not (out / "model_final.pth").exists()
    line = last_line(children.output(proc))
    assert re.fullmatch(
        rf"train_net_hooked\.py \(rank 0\): stopped by SIGTERM after iteration 2; checkpoint: "
        rf"{re.escape(str(checkpoint))}; to continue: \S+ \S*train_net_hooked\.py --resume .*",
        line,
    ), line


SECOND_SIGNAL = r"""
import os, signal, sys, time
import torch
from torch import nn
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.cluster import signals

checkpointer = GCNetCheckpointer(nn.Linear(2, 2), save_dir=sys.argv[1])
checkpointer.save("model_0000001")
signals.install("note")
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGTERM)  # the same signal at once: the same event, noted once
time.sleep(0.2)
assert signals.received() == signal.SIGTERM
print("alive after the first signal", flush=True)
save = torch.save


def interrupted(obj, f):
    f.write(b"the first bytes")
    os.kill(os.getpid(), signal.SIGUSR1)  # a second signal in the middle of the write
    time.sleep(30)
    save(obj, f)


torch.save = interrupted
checkpointer.save("model_0000002")
print("the write completed", flush=True)
"""


@pytest.mark.slow
def test_a_second_signal_ends_the_process_at_once_leaving_the_last_complete_checkpoint(
    tmp_path: Path,
):
    started = time.monotonic()
    proc = run_python(["-c", SECOND_SIGNAL, str(tmp_path)], child_env(), timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == -signal.SIGUSR1, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["alive after the first signal"]
    assert took < 25, took  # not after the 30 s write
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert load_checkpoint_file(str(tmp_path / "model_0000001.pth"))["model"]
    assert not (tmp_path / "model_0000002.pth").exists()


LAZY_PROBE = r"""
import os, signal, sys, time
from collections import OrderedDict
sys.path.insert(0, REPO_PATH)
import lazy_train_net
from gcnet_d2.cluster import ClusterHook, signals


class SignalAfter(ClusterHook):  # SIGUSR1 to itself after iteration $GCNET_TEST_SIGNAL_AT
    def after_step(self):
        at = os.environ.get("GCNET_TEST_SIGNAL_AT")
        if at and self.trainer.iter == int(at) and os.environ.get("SLURM_RESTART_COUNT") is None:
            os.kill(os.getpid(), signal.SIGUSR1)
            while not signals.received():
                time.sleep(0.01)
        super().after_step()


lazy_train_net.ClusterHook = SignalAfter
lazy_train_net.do_test = lambda cfg, model: OrderedDict()  # 40 s here, and not what is tested
lazy_train_net.cli(sys.argv[1:])
"""


@pytest.mark.slow
def test_lazy_train_net_sigusr1_requeue_then_resumes_exactly(
    tmp_path: Path, children: Children, synth: str
):
    probe = tmp_path / "lazy_probe.py"
    probe.write_text(LAZY_PROBE.replace("REPO_PATH", repr(str(REPO))))
    opts = [*LAZY_TINY_OPTS, "train.max_iter=3", "train.seed=7"]

    def start(name: str, out: Path, **env: str):  # noqa: ANN202
        argv = [PYTHON, str(probe), "--config-file", LAZY_ROW, *opts, f"train.output_dir={out}"]
        return children.start(name, argv, child_env(synth, **env))

    ref, out = tmp_path / "reference", tmp_path / "out"
    slurm = {"SLURM_JOB_ID": JOB_ID, **stand_in_scontrol(tmp_path)}
    procs = [start("reference", ref), start("stopped", out, GCNET_TEST_SIGNAL_AT="0", **slurm)]
    assert [children.wait(p, 300) for p in procs] == [0, 0], [children.tail(p) for p in procs]
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert last_line(children.output(procs[1])).startswith(
        "lazy_probe.py (rank 0): stopped by SIGUSR1 after iteration 0; checkpoint: "
    )

    requeued = start("requeued", out, SLURM_RESTART_COUNT="1", **slurm)
    assert children.wait(requeued, 300) == 0, children.tail(requeued)
    log = (out / "log.txt").read_text().rsplit("Command line arguments", 1)[1]
    assert "Starting training from iteration 1" in log
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]  # once
    assert_same_weights(ref / "model_final.pth", out / "model_final.pth")
