"""``ClusterHook``: the one trainer hook of the cluster code, run in every process.

At each iteration boundary the ranks agree, in one small all-reduce, whether a stop signal
came (:mod:`.signals`) or ``--checkpoint-minutes`` have passed; at every checkpoint every
rank's RNG state is gathered into ``trainer.rank_rng_states`` (for the main process's
checkpoint); a stop writes ``model_<iteration>.pth``, requeues a SLURM job on SIGUSR1 (rank 0),
logs one line per rank and ends training with :class:`.signals.TrainingStopped`. It sits
before ``PeriodicCheckpointer`` and ``EvalHook`` (docs/clusters.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..checkpoint.training_state import capture_rng_state
from . import peers, signals
from .resume import continue_command

__all__ = ["ClusterHook"]

logger = logging.getLogger(__name__)


class ClusterHook(HookBase):
    """See the module docstring. ``checkpointer`` is the main process's (None elsewhere)."""

    def __init__(self, checkpointer: Any, period: int, output_dir: str, minutes: float = 0.0):
        self.checkpointer, self.period, self.output_dir = checkpointer, int(period), output_dir
        self.minutes, self._last = float(minutes or 0.0), time.monotonic()
        self._group, self._stopped = None, False

    def before_train(self) -> None:
        signals.install("note")
        peers.progress.output_dir, peers.progress.finished = self.output_dir, False
        if self.checkpointer is not None:  # a lost-peer stop lets a write finish first
            self.checkpointer.write_guard = peers.checkpoint_write
        self._last = time.monotonic()
        self.trainer.rank_rng_states = None
        if comm.get_world_size() > 1 and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # CPU flags, not a GPU collective

    def before_step(self) -> None:
        peers.progress.iteration = self.trainer.iter

    def after_train(self) -> None:
        # detectron2 leaves iter == max_iter after a complete loop, < max_iter after a stop
        peers.progress.finished = self.trainer.iter >= self.trainer.max_iter
        if not self._stopped:  # the final evaluation: a signal ends it at once
            signals.install("default")

    def _agree(self, sig: int, due: bool) -> tuple[int, bool]:
        if comm.get_world_size() == 1:
            return sig, due
        flags = torch.tensor([sig, int(due)], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        return int(flags[0]), bool(flags[1])

    def after_step(self) -> None:
        it = self.trainer.iter
        last = it >= self.trainer.max_iter - 1
        periodic = (self.period > 0 and (it + 1) % self.period == 0) or last
        due = self.minutes > 0 and time.monotonic() - self._last >= self.minutes * 60
        sig, due = self._agree(signals.received(), due)
        stop = bool(sig) and not last  # at the last iteration the run simply finishes
        if not (periodic or due or stop):
            return
        if comm.get_world_size() > 1:
            states = comm.all_gather(capture_rng_state())
            self.trainer.rank_rng_states = {"iteration": it, "states": states}
        name = f"model_{it:07d}"
        if (stop or (due and not periodic)) and self.checkpointer is not None:
            if due and not stop:
                logger.info("%g minutes since the last checkpoint", self.minutes)
            self.checkpointer.save(name, iteration=it)
        self._last = time.monotonic()
        if stop:
            comm.synchronize()  # the checkpoint is complete for every rank
            self._stop(signal.Signals(sig), it, os.path.join(self.output_dir, f"{name}.pth"))

    def _stop(self, sig: signal.Signals, it: int, checkpoint: str) -> None:
        # Saved: from here to the exit, signals (SLURM's SIGTERM after the requeue) are ignored.
        self._stopped = True
        signals.install("ignore")
        job = os.environ.get("SLURM_JOB_ID")
        requeue = sig == signal.SIGUSR1 and bool(job)
        program, rank = os.path.basename(sys.argv[0]), comm.get_rank()
        line = (
            f"{program} (rank {rank}): stopped by {sig.name} after iteration {it}; "
            f"checkpoint: {checkpoint}; "
        )
        if requeue and rank == 0:
            error = signals.requeue(job)
            requeue = error is None
            line += f"scontrol requeue {job} failed: {error}; " if error else ""
        if requeue:
            who = f"SLURM job {job} requeued" if rank == 0 else f"rank 0 requeues SLURM job {job}"
            line += f"{who}: it resumes by itself from iteration {it + 1}"
        else:
            line += f"to continue: {continue_command()}"
        logger.warning(line)
        print(line, file=sys.stderr, flush=True)
        raise signals.TrainingStopped(0 if sig == signal.SIGUSR1 and job else signals.EXIT_STOPPED)
