"""Checkpoint reading, writing and conversion (mmdetection layouts included)."""

from .checkpointer import GCNetCheckpointer
from .safe_load import CheckpointLoadError, load_checkpoint_file

__all__ = ["CheckpointLoadError", "GCNetCheckpointer", "load_checkpoint_file"]
