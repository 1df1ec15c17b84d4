"""Which launcher started this process: torchrun or an ``srun`` step, read from the environment.

:func:`detect_launcher` returns the process's :class:`LauncherEnv` (rank, world size, local
rank and size, the rendezvous address) or None when neither started it; SLURM nodelists are
expanded here (``node[01-03,07]``, ``a[1-2]-b[3-4]``, comma lists), without ``scontrol``.
:func:`restarted` tells whether the launcher restarted the job. :mod:`gcnet_d2.launch` joins
the group these describe.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping

from .errors import LaunchError

__all__ = [
    "LauncherEnv",
    "detect_launcher",
    "expand_nodelist",
    "restarted",
    "resume_if_restarted",
    "slurm_default_port",
]


# --- SLURM hostlists ------------------------------------------------------------------------


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range_list(body: str, whole: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']`` (zero padding kept as written)."""
    values = []
    for item in body.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in {whole!r}")
        if not sep:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in {whole!r}")
        width = len(lo)
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM hostlist, in order, as ``scontrol show hostnames`` lists them.

    ``"node[01-03,07]"`` -> node01, node02, node03, node07; ``"a[1-2]-b[3-4]"`` -> a1-b3,
    a1-b4, a2-b3, a2-b4; ``"login1,gpu[9-10]"`` -> login1, gpu9, gpu10. Raises ``ValueError``
    for a malformed list.
    """
    hosts: list[str] = []
    for pattern in _split_outside_brackets(nodelist):
        expanded = [""]
        for literal, body in re.findall(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", pattern):
            choices = _expand_range_list(body, pattern) if body else [""]
            expanded = [head + literal + c for head in expanded for c in choices]
        hosts.extend(expanded)
    if not hosts:
        raise ValueError(f"empty hostlist {nodelist!r}")
    return hosts


def _parse_tasks_per_node(text: str) -> list[int]:
    """``"8(x2),4"`` -> ``[8, 8, 4]`` (SLURM's ``*_TASKS_PER_NODE`` format)."""
    counts = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ValueError(f"bad tasks-per-node value {text!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def slurm_default_port(job_id: str | int | None) -> int:
    """The rendezvous port of a SLURM job without ``MASTER_PORT``: the same on every task,
    different for jobs whose ids differ by less than 20000, in 20000..39999."""
    try:
        return 20000 + int(job_id) % 20000
    except (TypeError, ValueError):
        return 29500


# --- the launcher's environment -------------------------------------------------------------


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


def _int_var(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def _torchrun_env(environ: Mapping[str, str]) -> LauncherEnv:
    world_size = _int_var(environ, "WORLD_SIZE")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
    if missing and world_size > 1:
        raise LaunchError(
            f"RANK, WORLD_SIZE and LOCAL_RANK are set but {' and '.join(missing)} not: "
            "start the job with torchrun (or set them)"
        )
    local_world_size = (
        _int_var(environ, "LOCAL_WORLD_SIZE") if environ.get("LOCAL_WORLD_SIZE") else None
    )
    if local_world_size is None:
        if world_size > 1:
            raise LaunchError(
                "LOCAL_WORLD_SIZE is not set: start the job with torchrun, which sets it"
            )
        local_world_size = 1
    return LauncherEnv(
        launcher="torchrun",
        rank=_int_var(environ, "RANK"),
        world_size=world_size,
        local_rank=_int_var(environ, "LOCAL_RANK"),
        local_world_size=local_world_size,
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int_var(environ, "MASTER_PORT") if environ.get("MASTER_PORT") else 29500,
    )


def _slurm_env(environ: Mapping[str, str]) -> LauncherEnv:
    world_size = _int_var(environ, "SLURM_STEP_NUM_TASKS")
    nodelist = (
        environ.get("SLURM_STEP_NODELIST")
        or environ.get("SLURM_JOB_NODELIST")
        or environ.get("SLURM_NODELIST")
        or ""
    )
    per_node_text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get(
        "SLURM_TASKS_PER_NODE", ""
    )
    try:
        hosts = expand_nodelist(nodelist) if nodelist else []
        per_node = _parse_tasks_per_node(per_node_text) if per_node_text else []
    except ValueError as e:
        raise LaunchError(f"SLURM's environment: {e}") from None
    if not per_node:
        num_nodes = (
            _int_var(environ, "SLURM_STEP_NUM_NODES")
            if environ.get("SLURM_STEP_NUM_NODES")
            else max(1, len(hosts))
        )
        per_node = [world_size // num_nodes] * num_nodes
    if len(set(per_node)) != 1 or sum(per_node) != world_size:
        raise LaunchError(
            f"SLURM started {per_node_text or per_node} tasks per node ({world_size} in all): "
            "detectron2 needs the same number of processes on every machine; use "
            "--ntasks-per-node"
        )
    if environ.get("MASTER_ADDR"):
        master_addr = environ["MASTER_ADDR"]
    elif hosts:
        master_addr = hosts[0]
    else:
        raise LaunchError("SLURM_STEP_NODELIST / SLURM_JOB_NODELIST are not set: no master host")
    if environ.get("MASTER_PORT"):
        master_port = _int_var(environ, "MASTER_PORT")
    else:
        master_port = slurm_default_port(environ.get("SLURM_JOB_ID"))
    return LauncherEnv(
        launcher="slurm",
        rank=_int_var(environ, "SLURM_PROCID"),
        world_size=world_size,
        local_rank=_int_var(environ, "SLURM_LOCALID"),
        local_world_size=per_node[0],
        master_addr=master_addr,
        master_port=master_port,
    )


def detect_launcher(environ: Mapping[str, str] | None = None) -> LauncherEnv | None:
    """torchrun's or SLURM's description of this process, or None (detectron2 spawns).

    torchrun wins when both are present (torchrun started inside an ``srun`` step).
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
        try:
            count = int(environ.get(var) or 0)
        except ValueError:
            continue
        if count > 0:
            return f"{who} restart {count} ({var}={count})"
    return None


def resume_if_restarted(args: argparse.Namespace, program: str) -> None:
    """A restarted job continues from its last checkpoint, with or without ``--resume``."""
    reason = restarted()
    if reason and not getattr(args, "eval_only", False) and not args.resume:
        print(f"{program}: {reason}: resuming from the last checkpoint", flush=True)
        args.resume = True


# --- joining the launcher's group -------------------------------------------------------------
