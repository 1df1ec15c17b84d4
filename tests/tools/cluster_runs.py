"""Child processes for the cluster tests: launcher environments, bounded runs, weights.

Shared by tests/tools/test_cluster.py and test_preemption.py (their fixtures, the shared
uninterrupted reference run among them, are in tests/tools/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from gcnet_d2.checkpoint import load_checkpoint_file
from tests.testing import PYTHON, QUICKSTART, REPO, TINY_OPTS, python_env

MAX_ITER = 4
TRAIN_OPTS = [
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.CHECKPOINT_PERIOD", "2",  # checkpoints after iterations 1 and 3 (0-based)
    "SOLVER.IMS_PER_BATCH", "2",  # one image per process
    "DATASETS.TEST", "()",
    "SEED", "7",
    *TINY_OPTS,
]  # fmt: skip
TORCHRUN = [PYTHON, "-m", "torch.distributed.run"]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def child_env(synth: str | None = None, **extra: str) -> dict[str, str]:
    """The tests' child environment without a launcher's variables from outside."""
    env = python_env(synth)
    for key in list(env):
        if key.startswith(("SLURM_", "TORCHELASTIC_", "GCNET_LAUNCHER")) or key in (
            *LAUNCHER_VARS,
            "MASTER_PORT",
        ):
            del env[key]
    env.update(extra)
    return env


class Children:
    """Started children; whatever is still running at the end is killed with its group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.folder / f"{name}.out", "w")  # noqa: SIM115 - closed with the child
        err = open(self.folder / f"{name}.err", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True
        )
        proc.name, proc.files = name, (out, err)  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            pytest.fail(f"{proc.name} did not end within {timeout} s:\n{self.tail(proc)}")

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)

    def output(self, proc: subprocess.Popen, stream: str = "err") -> str:
        for f in proc.files:
            f.flush()
        return (self.folder / f"{proc.name}.{stream}").read_text(errors="replace")

    def tail(self, proc: subprocess.Popen, n: int = 3000) -> str:
        return (self.output(proc, "out") + self.output(proc, "err"))[-n:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                if proc.name.startswith("torchrun"):  # torchrun stops its workers on SIGTERM
                    self.kill(proc, signal.SIGTERM)
                self.kill(proc)
            for f in proc.files:
                f.close()


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(str(path))["model"]


def assert_same_weights(reference: Path, got: Path) -> None:
    ref, new = weights(reference), weights(got)
    assert ref.keys() == new.keys()
    differing = [k for k in ref if not torch.equal(ref[k], new[k])]
    assert not differing, f"{len(differing)} of {len(ref)} tensors differ, e.g. {differing[:3]}"


STAND_IN_SCONTROL = r"""#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
if [ "$1 $2" = "show hostnames" ]; then
  [ -n "$SCONTROL_HOSTNAMES" ] || { echo "scontrol: error: Invalid hostlist: $3" >&2; exit 1; }
  printf '%s\n' $SCONTROL_HOSTNAMES
  exit 0
fi
"""
REQUEUE_REFUSED = 'echo "scontrol: error: Requeue of JobId=$2 not permitted" >&2\nexit 1\n'


def stand_in_scontrol(folder: Path, fail: bool = False) -> dict[str, str]:
    """The variables that put a stand-in ``scontrol`` first on PATH. It appends its arguments
    to ``folder/scontrol.log``; ``show hostnames`` prints ``$SCONTROL_HOSTNAMES`` (fails, as
    scontrol does for a bad list, when that is unset); ``requeue`` fails as SLURM does for a
    job submitted without ``--requeue`` when ``fail``."""
    script = folder / "bin" / "scontrol"
    if not script.exists():
        script.parent.mkdir(parents=True)
        script.write_text(STAND_IN_SCONTROL + (REQUEUE_REFUSED if fail else ""))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {
        "PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(folder / "scontrol.log"),
    }


def scontrol_calls(folder: Path, command: str = "requeue") -> list[str]:
    """The stand-in scontrol's recorded calls of ``command`` (``requeue``, ``show``)."""
    log = folder / "scontrol.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split()[0] == command]


def srun_env(
    task: int, port: int, folder: Path, synth: str | None = None, **extra: str
) -> dict[str, str]:
    """An ``srun`` step's variables for task ``task`` of 2, one task per node; the first host
    of the nodelist (this one, as the stand-in ``scontrol`` in ``folder`` expands it) is the
    master."""
    return child_env(
        synth,
        SLURM_PROCID=str(task), SLURM_LOCALID="0", SLURM_NODEID=str(task), SLURM_NTASKS="2",
        SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)",
        SLURM_STEP_NODELIST="localhost,gpu[02]", SLURM_JOB_ID="4242", MASTER_PORT=str(port),
        SCONTROL_HOSTNAMES="localhost gpu02", **stand_in_scontrol(folder), **extra,
    )  # fmt: skip


def train_argv(script: str, out: Path, *flags: str) -> list[str]:
    return [script, *flags, "--config-file", QUICKSTART, *TRAIN_OPTS, "OUTPUT_DIR", str(out)]
