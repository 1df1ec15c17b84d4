"""SIGUSR1 / SIGTERM: a handler that only notes the signal, and SLURM's self-requeue.

:class:`~.hook.ClusterHook` reads the note at the next iteration boundary, where every rank
agrees to stop; a second signal ends the process at once (the same one within
:data:`DUPLICATE_S` is the same event reaching the process twice). docs/clusters.md.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from types import FrameType

from .environment import scontrol

__all__ = ["EXIT_STOPPED", "TrainingStopped", "install", "received", "requeue"]

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_STOPPED = 143  # a run stopped by a signal without a requeue (128 + SIGTERM, as in shells)
DUPLICATE_S = 2.0


class TrainingStopped(SystemExit):
    """Training ended early on a signal, after a complete checkpoint (not a failure)."""


_received: list[tuple[int, float]] = []  # (signal, monotonic time) of the first signal


def _note(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append((signum, time.monotonic()))
        return
    first, at = _received[0]
    if signum == first and time.monotonic() - at < DUPLICATE_S:
        return
    signal.signal(signum, signal.SIG_DFL)  # a second signal: end now, as if never handled
    os.kill(os.getpid(), signum)


def _forward(signum: int, frame: FrameType | None) -> None:
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def install(how: str = "note") -> None:
    """Handle the stop signals in this process: ``"note"`` (a training process), ``"forward"``
    (a launcher whose spawned workers train), ``"ignore"`` (nothing left to save) or
    ``"default"``. Does nothing outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = {"note": _note, "forward": _forward, "ignore": signal.SIG_IGN}.get(
        how, signal.SIG_DFL
    )
    if how == "note":
        _received.clear()
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def received() -> int:
    """The first stop signal this process received since :func:`install`, or 0."""
    return _received[0][0] if _received else 0


def requeue(job_id: str) -> str | None:
    """``scontrol requeue JOB_ID``: None when it worked, else its error in one line."""
    return scontrol("requeue", job_id)[1]
