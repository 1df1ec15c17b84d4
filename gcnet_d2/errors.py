"""The error types gcnet_d2 raises for bad input, and how entry points report them.

Each error's message names the file or key and the problem, so an entry point prints it as
one line (:func:`one_line`) and exits with status 2 instead of showing a traceback.
:data:`KNOWN_ERRORS` lists them; :func:`quiet_known_errors` keeps detectron2's trainer from
logging their traceback before the entry point prints the line.

This module imports nothing else from gcnet_d2, so every other module can raise these.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "KNOWN_ERRORS",
    "CheckpointLoadError",
    "CheckpointMismatchError",
    "ConfigError",
    "DatasetError",
    "LaunchError",
    "OutputDirError",
    "one_line",
    "quiet_known_errors",
]


class ConfigError(ValueError):
    """A config file or override that cannot be used: unsafe, malformed, unknown key, bad value."""


class OutputDirError(OSError):
    """``OUTPUT_DIR`` cannot be created or written."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that is missing, unreadable, corrupt, unsafe or not a checkpoint."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's architecture is not the one the config builds."""


class DatasetError(RuntimeError):
    """A dataset that cannot be used as it is; the message names the file and the problem."""


class LaunchError(RuntimeError):
    """The launcher's environment (torchrun, SLURM) or the launch flags cannot be used."""


#: Errors whose message names the file/key and the problem; entry points print just that.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointLoadError,
    CheckpointMismatchError,
    DatasetError,
    LaunchError,
    OutputDirError,
)


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line, unwrapping errors re-raised by DataLoader workers."""
    text = str(e).strip()
    if "Original Traceback" in text:
        # torch's DataLoader re-raises worker errors as "Caught X in DataLoader worker ...
        # Original Traceback ... module.X: message": keep the original message.
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception):\s*", "", last.strip())
    return " ".join(text.split())


class _DropKnownErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, KNOWN_ERRORS)


def quiet_known_errors() -> None:
    """Keep detectron2's trainer from logging a traceback for errors the entry point explains.

    ``TrainerBase.train`` logs every exception with its traceback before re-raising it; for
    :data:`KNOWN_ERRORS` the entry point prints the message instead. Idempotent.
    """
    log = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _DropKnownErrorTracebacks) for f in log.filters):
        log.addFilter(_DropKnownErrorTracebacks())
