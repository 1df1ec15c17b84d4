"""Which launcher started this process (torchrun or an ``srun`` step), read from the environment
(docs/clusters.md lists the variables); nothing here decides anything."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Mapping

from ..errors import LaunchError, one_line

__all__ = ["LauncherEnv", "detect_launcher", "launcher_kind", "restarted", "scontrol"]


def scontrol(*args: str) -> tuple[str, str | None]:
    """``scontrol ARGS``: (its output, None), or ("", its error in one line)."""
    try:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", one_line(e)
    if done.returncode == 0:
        return done.stdout, None
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return "", f"{said[-1] if said else ''} (exit status {done.returncode})".strip()


def slurm_default_port(job_id: str | int | None) -> int:
    """A SLURM job's port without ``MASTER_PORT``: the same on every task, 20000..39999."""
    try:
        return 20000 + int(job_id) % 20000
    except (TypeError, ValueError):
        return 29500


@dataclasses.dataclass(frozen=True)
class LauncherEnv:
    """Where this process stands in a job another launcher started."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    def describe(self) -> str:
        return (
            f"{self.launcher}: rank {self.rank} of {self.world_size}, local rank "
            f"{self.local_rank} of {self.local_world_size}, master {self.master_addr}:"
            f"{self.master_port}"
        )


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name, "")
    if not value and default is not None:
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def _torchrun_env(environ: Mapping[str, str]) -> LauncherEnv:
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE") if not environ.get(v)]
    if missing and _int(environ, "WORLD_SIZE") > 1:
        raise LaunchError(
            f"RANK, WORLD_SIZE and LOCAL_RANK are set but {' and '.join(missing)} not: "
            "start the job with torchrun (or set them)"
        )
    ranks = [_int(environ, v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]
    local_size, port = _int(environ, "LOCAL_WORLD_SIZE", 1), _int(environ, "MASTER_PORT", 29500)
    return LauncherEnv(
        "torchrun", *ranks, local_size, environ.get("MASTER_ADDR", "127.0.0.1"), port
    )


def _slurm_env(environ: Mapping[str, str]) -> LauncherEnv:
    world_size = _int(environ, "SLURM_STEP_NUM_TASKS")
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "")
    per_node: list[int] = []  # "8(x2),4" -> [8, 8, 4]
    for item in text.split(",") if text else ():
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise LaunchError(f"SLURM's environment: bad tasks-per-node value {text!r}")
        per_node += [int(m[1])] * int(m[2] or 1)
    if not per_node:
        num_nodes = _int(environ, "SLURM_STEP_NUM_NODES", 1)
        per_node = [world_size // num_nodes] * num_nodes
    if len(set(per_node)) != 1 or sum(per_node) != world_size:
        raise LaunchError(
            f"SLURM started {text or per_node} tasks per node ({world_size} in all): detectron2 "
            "needs the same number of processes on every machine; use --ntasks-per-node"
        )
    master_addr = environ.get("MASTER_ADDR", "")
    if not master_addr:  # the first host of the step, as SLURM itself expands the list
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
        if not nodelist:
            raise LaunchError("SLURM_STEP_NODELIST / SLURM_JOB_NODELIST are not set: no master")
        hosts, error = scontrol("show", "hostnames", nodelist)
        if error or not hosts.split():
            raise LaunchError(
                f"SLURM's environment: scontrol show hostnames {nodelist} gave no host "
                f"({error or 'empty output'}); set MASTER_ADDR"
            )
        master_addr = hosts.split()[0]
    port = _int(environ, "MASTER_PORT", slurm_default_port(environ.get("SLURM_JOB_ID")))
    rank, local_rank = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_LOCALID")
    return LauncherEnv("slurm", rank, world_size, local_rank, per_node[0], master_addr, port)


def launcher_kind(environ: Mapping[str, str] | None = None) -> str | None:
    """ "torchrun", "slurm" (an ``srun`` step) or None (detectron2 spawns). torchrun wins when
    both are present (torchrun inside an ``srun`` step); ``GCNET_LAUNCHER=spawn`` ignores both."""
    environ = os.environ if environ is None else environ
    if environ.get("GCNET_LAUNCHER", "").strip().lower() == "spawn":
        return None
    if all(environ.get(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return "torchrun"
    if all(environ.get(v) for v in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS")):
        return "slurm"
    return None


def detect_launcher(environ: Mapping[str, str] | None = None) -> LauncherEnv | None:
    """torchrun's or SLURM's description of this process, or None (see :func:`launcher_kind`)."""
    environ = os.environ if environ is None else environ
    kind = launcher_kind(environ)
    return None if kind is None else (_torchrun_env if kind == "torchrun" else _slurm_env)(environ)


def restarted(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this start is a restart (torchrun ``--max-restarts``, a requeued SLURM job), or None."""
    environ = os.environ if environ is None else environ
    for var, who in (("TORCHELASTIC_RESTART_COUNT", "torchrun"), ("SLURM_RESTART_COUNT", "SLURM")):
        count = environ.get(var) or "0"
        if count.isdigit() and int(count) > 0:
            return f"{who} restart {count} ({var}={count})"
    return None
