"""``GCNetCheckpointer``: detectron2's DetectionCheckpointer that reads files safely and
accepts mmdetection checkpoints directly (converted on load)."""

from __future__ import annotations

from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from .safe_load import load_checkpoint_file


class GCNetCheckpointer(DetectionCheckpointer):
    """Loads Detectron2 and mmdetection checkpoints; never unpickles arbitrary objects."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        data = load_checkpoint_file(filename)
        if "model" not in data:
            data = {"model": data}
        return data
