"""Deprecated import paths, kept working for code written against earlier gcnet_d2 layouts.

Modules moved out of ``gcnet_d2.modeling`` (plain layers to :mod:`gcnet_d2.layers`, the
training recipe to :mod:`gcnet_d2.modeling.mmdet_recipe`, speed-ups to :mod:`gcnet_d2.fast`)
stay importable under their old names; a few old functions map onto the new API.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import torch
from torch import nn

#: old module path -> where it lives now
MOVED_MODULES = {
    "gcnet_d2.modeling.context_block": "gcnet_d2.layers.context_block",
    "gcnet_d2.modeling.deform_conv": "gcnet_d2.layers.deform_conv",
    "gcnet_d2.modeling.norm": "gcnet_d2.layers.norm",
    "gcnet_d2.modeling.assign": "gcnet_d2.modeling.mmdet_recipe.matcher",
    "gcnet_d2.modeling.rpn": "gcnet_d2.modeling.mmdet_recipe.rpn",
    "gcnet_d2.modeling.roi_heads": "gcnet_d2.modeling.mmdet_recipe.roi_heads",
    "gcnet_d2.modeling.init": "gcnet_d2.modeling.mmdet_recipe.head_init",
    "gcnet_d2.modeling.indexed_masks": "gcnet_d2.modeling.mmdet_recipe.indexed_masks",
    "gcnet_d2.modeling.fpn": "gcnet_d2.fast.lean_fpn",
    "gcnet_d2.modeling.roi_align_parallel": "gcnet_d2.fast.roi_align",
    "gcnet_d2.modeling.conv1x1_gemm": "gcnet_d2.fast.conv1x1_gemm",
    "gcnet_d2.modeling.inference_fusion": "gcnet_d2.fast.norm_fold",
}


def install_module_aliases() -> None:
    """Make every old module path in :data:`MOVED_MODULES` import its new module."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def set_fast_paths(model: nn.Module, enabled: bool) -> nn.Module:
    """Deprecated: ``gcnet_d2.fast.apply(model)`` / ``gcnet_d2.fast.remove(model)``."""
    from . import fast

    return fast.apply(model) if enabled else fast.remove(model)


def reference_context_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Deprecated: the plain ``ContextBlock`` is the reference; call ``block(x)``."""
    from .layers import ContextBlock

    return ContextBlock.forward(block, x)


def reference_bottleneck_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Deprecated: the plain ``GCBottleneckBlock.forward`` on ``block``'s weights."""
    from .modeling.bottleneck import GCBottleneckBlock

    return GCBottleneckBlock.forward(block, x)


def _lean_fpn() -> type:
    from .fast import LeanFPN

    return LeanFPN


_DEPRECATED_NAMES = {
    "set_fast_paths": lambda: set_fast_paths,
    "reference_context_block": lambda: reference_context_block,
    "reference_bottleneck_forward": lambda: reference_bottleneck_forward,
    "LeanFPN": _lean_fpn,
}


def deprecated_modeling_name(name: str) -> object:
    """``gcnet_d2.modeling.<name>`` for a name that moved; AttributeError for any other."""
    if name not in _DEPRECATED_NAMES:
        raise AttributeError(f"module 'gcnet_d2.modeling' has no attribute {name!r}")
    warnings.warn(
        f"gcnet_d2.modeling.{name} is deprecated (see gcnet_d2.fast and gcnet_d2.layers)",
        DeprecationWarning,
        stacklevel=3,
    )
    return _DEPRECATED_NAMES[name]()
