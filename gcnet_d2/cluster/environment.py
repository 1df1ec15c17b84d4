"""Which launcher started this process (torchrun or an ``srun`` step), read from the environment.

:func:`detect_launcher` returns the process's :class:`LauncherEnv` or None when neither started
it; SLURM nodelists are expanded here, without ``scontrol``. :func:`restarted` says whether the
launcher restarted the job. Nothing here decides anything (:mod:`.resume` does).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from ..errors import LaunchError

__all__ = ["LauncherEnv", "detect_launcher", "expand_nodelist", "restarted", "slurm_default_port"]

_HOST = r"(?:[^\[\],]|\[[^\[\]]*\])+"  # a host pattern: text and bracketed ranges, no comma


def _range_list(body: str, pattern: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']`` (zero padding kept as written)."""
    values = []
    for item in body.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", item)
        if not m or (m[2] and int(m[2]) < int(m[1])):
            raise ValueError(f"bad range {item!r} in {pattern!r}")
        values += [str(n).zfill(len(m[1])) for n in range(int(m[1]), int(m[2] or m[1]) + 1)]
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM hostlist, in order, as ``scontrol show hostnames`` lists them.

    ``"node[01-03,07]"`` -> node01, node02, node03, node07; ``"a[1-2]-b[3-4]"`` -> a1-b3,
    a1-b4, a2-b3, a2-b4; ``"login1,gpu[9-10]"`` -> login1, gpu9, gpu10. Raises ``ValueError``
    for a malformed list.
    """
    if not nodelist.strip():
        raise ValueError(f"empty hostlist {nodelist!r}")
    if not re.fullmatch(rf"{_HOST}(?:,{_HOST})*", nodelist.strip()):
        raise ValueError(f"unbalanced or misplaced brackets in hostlist {nodelist!r}")
    hosts: list[str] = []
    for pattern in re.findall(_HOST, nodelist.strip()):
        expanded = [""]
        for literal, body in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", pattern):
            choices = _range_list(body, pattern) if body else [""]
            expanded = [head + literal + c for head in expanded for c in choices]
        hosts.extend(expanded)
    return hosts


def _tasks_per_node(text: str) -> list[int]:
    """``"8(x2),4"`` -> ``[8, 8, 4]`` (SLURM's ``*_TASKS_PER_NODE`` format)."""
    counts = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ValueError(f"bad tasks-per-node value {text!r}")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def slurm_default_port(job_id: str | int | None) -> int:
    """The rendezvous port of a SLURM job without ``MASTER_PORT``: the same on every task,
    different for jobs whose ids differ by less than 20000, in 20000..39999."""
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
    world_size = _int(environ, "WORLD_SIZE")
    if world_size > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
        if missing:
            raise LaunchError(
                f"RANK, WORLD_SIZE and LOCAL_RANK are set but {' and '.join(missing)} not: "
                "start the job with torchrun (or set them)"
            )
        if not environ.get("LOCAL_WORLD_SIZE"):
            raise LaunchError("LOCAL_WORLD_SIZE is not set: start the job with torchrun")
    return LauncherEnv(
        "torchrun",
        rank=_int(environ, "RANK"),
        world_size=world_size,
        local_rank=_int(environ, "LOCAL_RANK"),
        local_world_size=_int(environ, "LOCAL_WORLD_SIZE", 1),
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(environ, "MASTER_PORT", 29500),
    )


def _slurm_env(environ: Mapping[str, str]) -> LauncherEnv:
    world_size = _int(environ, "SLURM_STEP_NUM_TASKS")
    nodelist = next(
        (environ[v] for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
         if environ.get(v)),
        "",
    )  # fmt: skip
    per_node_text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get(
        "SLURM_TASKS_PER_NODE", ""
    )
    try:
        hosts = expand_nodelist(nodelist) if nodelist else []
        per_node = _tasks_per_node(per_node_text) if per_node_text else []
    except ValueError as e:
        raise LaunchError(f"SLURM's environment: {e}") from None
    if not per_node:
        num_nodes = _int(environ, "SLURM_STEP_NUM_NODES", max(1, len(hosts)))
        per_node = [world_size // num_nodes] * num_nodes
    if len(set(per_node)) != 1 or sum(per_node) != world_size:
        raise LaunchError(
            f"SLURM started {per_node_text or per_node} tasks per node ({world_size} in all): "
            "detectron2 needs the same number of processes on every machine; use "
            "--ntasks-per-node"
        )
    master_addr = environ.get("MASTER_ADDR") or (hosts[0] if hosts else "")
    if not master_addr:
        raise LaunchError("SLURM_STEP_NODELIST / SLURM_JOB_NODELIST are not set: no master host")
    return LauncherEnv(
        "slurm",
        rank=_int(environ, "SLURM_PROCID"),
        world_size=world_size,
        local_rank=_int(environ, "SLURM_LOCALID"),
        local_world_size=per_node[0],
        master_addr=master_addr,
        master_port=_int(environ, "MASTER_PORT", slurm_default_port(environ.get("SLURM_JOB_ID"))),
    )


def detect_launcher(environ: Mapping[str, str] | None = None) -> LauncherEnv | None:
    """torchrun's or SLURM's description of this process, or None (detectron2 spawns).

    torchrun wins when both are present (torchrun started inside an ``srun`` step);
    ``GCNET_LAUNCHER=spawn`` ignores both.
    """
    environ = os.environ if environ is None else environ
    if environ.get("GCNET_LAUNCHER", "").strip().lower() == "spawn":
        return None
    if all(environ.get(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return _torchrun_env(environ)
    if all(environ.get(v) for v in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS")):
        return _slurm_env(environ)
    return None


def restarted(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this start is a restart (torchrun ``--max-restarts``, a requeued SLURM job), or None."""
    environ = os.environ if environ is None else environ
    for var, who in (("TORCHELASTIC_RESTART_COUNT", "torchrun"), ("SLURM_RESTART_COUNT", "SLURM")):
        count = environ.get(var) or "0"
        if count.isdigit() and int(count) > 0:
            return f"{who} restart {count} ({var}={count})"
    return None
