"""Read checkpoint files without executing code from them.

``torch.load(weights_only=True)`` for torch files. Errors name the file and what was expected.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.utils.file_io import PathManager


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that is missing, unreadable, corrupt or not a checkpoint."""


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """The raw object stored in ``path`` (a dict), loaded without running code from the file."""
    local = PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise CheckpointLoadError(f"checkpoint {path}: no such file")
    try:
        with open(local, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
        raise CheckpointLoadError(
            f"checkpoint {path}: not a readable PyTorch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"checkpoint {path}: expected a dict of tensors, found {type(data).__name__}"
        )
    return data
