"""``GCNetCheckpointer``: detectron2's DetectionCheckpointer that reads files safely and
accepts mmdetection checkpoints and ImageNet backbones directly (converted on load)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer

from ..errors import CheckpointLoadError
from ..io import atomic_torch_save, atomic_write_text
from .safe_load import load_checkpoint_file
from .state_dict_conversion import LAYOUT_BACKBONE, LAYOUT_D2, convert_state_dict

logger = logging.getLogger(__name__)


class GCNetCheckpointer(DetectionCheckpointer):
    """Loads Detectron2 checkpoints, mmdetection detector checkpoints (``state_dict`` +
    ``meta``, e.g. the GCNet table's released ``.pth`` files) and torchvision / OpenMMLab
    ImageNet backbones, checking the architecture and reporting what it converted."""

    _expected_new: frozenset[str] = frozenset()
    #: Held around each write; the trainer may hand in a lock that a process stopping for a
    #: lost peer takes to let a write finish first (:class:`gcnet_d2.cluster.ClusterHook`).
    write_guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext

    # --- safe reading (.safe_load), atomic writing (gcnet_d2.io) ----------------------------

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # fvcore asserts on a missing file; raise a CheckpointLoadError naming it instead.
        if path and "://" not in path:
            local = urlparse(path)._replace(query="").geturl()
            if not os.path.isfile(local):
                named_by = ""
                if self.save_dir and path == self.get_checkpoint_file():
                    named_by = f" (named by {os.path.join(self.save_dir, 'last_checkpoint')})"
                raise CheckpointLoadError(f"checkpoint {path}: no such file{named_by}")
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save``, written atomically (temp file + fsync + rename), then tagged.

        A crash at any point leaves ``last_checkpoint`` naming a complete file.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a path separator")
        self.logger.info(f"Saving checkpoint to {save_file}")
        with self.write_guard():
            atomic_torch_save(data, save_file)
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # --- conversion on load ---------------------------------------------------------------

    def _load_file(self, filename: str) -> dict[str, Any]:
        data = load_checkpoint_file(filename)
        sd, report = convert_state_dict(data, self.model, source=filename)
        if report.layout == LAYOUT_D2:
            return data if "model" in data else {"model": data}
        logger.info("Converted on load:\n%s", report.summary())
        new = set()
        if report.layout == LAYOUT_BACKBONE:
            new = {k for k in self.model.state_dict() if k not in sd}
        self._expected_new = frozenset(new)
        return {"model": sd, "__author__": report.layout, "matching_heuristics": False}

    def _load_model(self, checkpoint: Any) -> Any:
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and self._expected_new:
            kept = [k for k in incompatible.missing_keys if k not in self._expected_new]
            incompatible.missing_keys.clear()
            incompatible.missing_keys.extend(kept)
        self._expected_new = frozenset()
        return incompatible
