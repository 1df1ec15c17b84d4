"""Resume policy: when a run continues from its last checkpoint without being told."""

from __future__ import annotations

import argparse

from .environment import restarted

__all__ = ["resume_policy"]


def resume_policy(args: argparse.Namespace, program: str) -> argparse.Namespace:
    """``args`` with ``resume`` set for a restarted job (torchrun ``--max-restarts``, a requeued
    SLURM job): such a job continues from its last checkpoint, with or without ``--resume``.
    Returns a copy; ``args`` itself is left as the command line gave it."""
    reason = restarted()
    if not reason or getattr(args, "eval_only", False) or args.resume:
        return args
    print(f"{program}: {reason}: resuming from the last checkpoint", flush=True)
    return argparse.Namespace(**{**vars(args), "resume": True})
