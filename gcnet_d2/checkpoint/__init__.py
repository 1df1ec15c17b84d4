"""Checkpoint reading (safe), conversion of mmdetection / ImageNet checkpoints, the checkpointer.

- :mod:`.safe_load`: read checkpoint files without running code from them;
- :mod:`.mmdet_layout`: mmdetection's key names and what a state dict says about its model;
- :mod:`.state_dict_conversion`: rename a loaded state dict to gcnet_d2's keys, checked;
- :mod:`.file_conversion`: checkpoint file in, Detectron2 checkpoint file out;
- :mod:`.checkpointer`: ``GCNetCheckpointer`` (safe loading, conversion on load, atomic saves).
"""

from ..errors import CheckpointLoadError, CheckpointMismatchError
from .checkpointer import GCNetCheckpointer
from .safe_load import load_checkpoint_file

__all__ = [
    "CheckpointLoadError",
    "CheckpointMismatchError",
    "GCNetCheckpointer",
    "load_checkpoint_file",
]
