"""SIGUSR1 / SIGTERM: a handler that only notes the signal, and SLURM's self-requeue.

Python runs a signal handler in the main thread between bytecodes, so the handler here only
records which signal came; :class:`~.hook.ClusterHook` reads it at the next iteration boundary,
where every rank agrees to stop (so no rank is left inside a collective). A second signal
ends the process at once by the signal's default action; the same signal again within
:data:`DUPLICATE_S` is the same event reaching the process twice (SLURM signals every process
of a step, and a spawning launcher forwards what it gets).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from types import FrameType

from ..errors import one_line

__all__ = [
    "DUPLICATE_S",
    "EXIT_STOPPED",
    "STOP_SIGNALS",
    "TrainingStopped",
    "install",
    "received",
    "requeue",
]

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
#: Exit status of a run stopped by a signal without a requeue (128 + SIGTERM, as shells report).
EXIT_STOPPED = 143
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
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return one_line(e)
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return f"{said[-1] if said else ''} (exit status {done.returncode})".strip()
