"""Atomic file writes, and the check that an output folder is writable.

Every file gcnet_d2 writes (checkpoints, ``last_checkpoint``, converted checkpoints, results,
demo pictures, plots) goes through :func:`atomic_open`: the bytes go to a temporary sibling
file, which is flushed to disk and renamed over the target. A crash mid-write leaves the
previous file (or none) under the target's name, never a truncated one; a failed write leaves
no temporary. The temporary is created with mode ``0o666`` minus the process umask, like
``open()``, so the result has the usual permissions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import torch
from detectron2.utils.file_io import PathManager

from .errors import OutputDirError

__all__ = [
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
]

_TMP_MARK = ".tmp-"


def _remove_stale_tmp(path: str) -> None:
    """Delete temporaries of ``path`` left by writers killed mid-write (best effort).

    Writers of one target are not expected to run at once (detectron2 writes from the main
    process only), so any temporary found is a dead writer's.
    """
    folder, base = os.path.split(path)
    prefix = f".{base}{_TMP_MARK}"
    with contextlib.suppress(OSError):
        for name in os.listdir(folder or "."):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[IO[bytes]]:
    """A binary file to write; on a clean exit it replaces ``path`` atomically.

    The parent folder is created if needed. Remote paths (``scheme://``, other than
    ``file://``) are written through detectron2's ``PathManager``, whose stores replace
    objects whole anyway.
    """
    path = str(path)
    if "://" in path and not path.startswith("file://"):
        with PathManager.open(path, "wb") as f:
            yield f
        return
    path = path.removeprefix("file://")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_tmp(path)
    tmp = f"{os.path.join(folder, '.' + os.path.basename(path))}{_TMP_MARK}{secrets.token_hex(4)}"
    # os.open with 0o666 lets the kernel apply the umask, as open() does (mkstemp would 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file under ``path``."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def check_output_dir(path: str) -> None:
    """Create ``path`` if needed and prove it writable, else raise :class:`OutputDirError`."""
    if not path:
        raise OutputDirError("OUTPUT_DIR is empty; set it to a writable folder")
    if "://" in path:  # remote stores: detectron2's PathManager decides
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test-", dir=path)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputDirError(f"OUTPUT_DIR {path}: not writable ({reason})") from None
