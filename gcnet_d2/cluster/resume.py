"""Resume policy: when a run continues from its last checkpoint, and how a person continues it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

import torch.distributed as dist
from detectron2.utils import comm

from .environment import launcher_kind, restarted

__all__ = ["continue_command", "resume_policy"]


def resume_policy(args: argparse.Namespace, program: str) -> argparse.Namespace:
    """``args`` with ``resume`` set for a restarted job (torchrun ``--max-restarts``, a requeued
    SLURM job): such a job continues from its last checkpoint, with or without ``--resume``.
    Returns a copy; ``args`` itself is left as the command line gave it."""
    reason = restarted()
    if not reason or getattr(args, "eval_only", False) or args.resume:
        return args
    print(f"{program}: {reason}: resuming from the last checkpoint", flush=True)
    return argparse.Namespace(**{**vars(args), "resume": True})


def _with_resume(argv: Sequence[str]) -> list[str]:
    """``argv`` (script first) with ``--resume`` right after the script (before the trailing
    ``KEY VALUE`` overrides, which argparse collects as a remainder)."""
    argv = list(argv)
    return argv if "--resume" in argv else [argv[0], "--resume", *argv[1:]]


def continue_command() -> str:
    """How a person continues this run after a stop: this command with ``--resume``."""
    script_argv, launcher = _with_resume(sys.argv), launcher_kind()
    several = dist.is_initialized() and comm.get_world_size() > comm.get_local_size()
    if launcher == "torchrun":
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
        except OSError:
            parent = []
        if sys.argv[0] in parent:  # torchrun's own command line, with --resume added
            command = shlex.join([*parent[: parent.index(sys.argv[0])], *script_argv])
        else:
            command = "torchrun <its options> " + shlex.join(script_argv)
        command += " (on every machine)" if several else ""
        left = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0) - int(
            os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0
        )
        if left > 0:
            command += f" (torchrun restarts the group itself: {left} restart(s) left)"
        return command
    command = shlex.join([sys.executable, *script_argv])
    if launcher == "slurm":
        return f"srun {command} (resubmit the job script with --resume)"
    return command + (" (on every machine, each with its own --machine-rank)" if several else "")
