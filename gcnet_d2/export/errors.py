"""The error of an export route a model cannot take, and the atomic output file of a route."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


class ExportRouteError(RuntimeError):
    """An export route that this model cannot take; the message names the reason (the op,
    construct or setting that stops it) and, where there is one, the route that works."""


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on any failure it is removed, so ``path`` is never left half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
