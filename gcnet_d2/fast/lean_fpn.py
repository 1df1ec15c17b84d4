"""``LeanFPN``: detectron2's ``FPN`` whose eager inference holds fewer feature maps at once.

detectron2's FPN keeps every bottom-up feature map until the end of its forward and forms
each top-down sum as a new tensor next to its two operands. At the finest level (p2 of an
800x1344 image: 256 x 200 x 336 floats, 69 MB) that is three maps of that size at once plus
``res2``; it sets the detector's peak memory (0.41 GiB of live tensors against mmdetection's
0.35 GiB for GC r16 Mask R-CNN, docs/benchmark.md). Here, at eager inference, each bottom-up
map is released once its lateral conv has read it and the upsampled coarser level is added
into the lateral result in place. Same operations on the same values: the output is the
plain forward's bit for bit (``tests/fast/test_lean_fpn.py``).

Training, tracing, scripting, compiling and exporting run detectron2's own ``FPN.forward``.
:func:`enable_lean_fpn` (``FAST.LEAN_FPN``) switches the class of every FPN whose
forward is detectron2's, in place (no parameter of its own: state dicts unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import FPN
from torch import nn

from ..utils.tracing import eager
from .swap import restore_classes, swap_classes


class LeanFPN(FPN):
    """detectron2's ``FPN`` (same arguments, modules and state dict); see the module doc."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled() or not eager():
            return super().forward(x)
        features = self.bottom_up(x)
        top = self.top_block
        keep = top.in_feature if top is not None and top.in_feature in features else None
        outputs: list[torch.Tensor] = []
        coarser = None
        # lateral_convs / output_convs run from the coarsest level to the finest
        for name, lateral_conv, output_conv in zip(
            reversed(self.in_features), self.lateral_convs, self.output_convs, strict=True
        ):
            level = lateral_conv(features[name] if name == keep else features.pop(name))
            if coarser is not None:
                level += F.interpolate(coarser, scale_factor=2.0, mode="nearest")
                if self._fuse_type == "avg":
                    level /= 2
            outputs.insert(0, output_conv(level))
            coarser = level
        del coarser, level
        if top is not None:
            if keep is not None:
                source = features[keep]
            else:
                source = outputs[self._out_features.index(top.in_feature)]
            outputs.extend(top(source))
        return dict(zip(self._out_features, outputs, strict=True))


def _runs_fpn_forward(module: nn.Module) -> type | None:
    if isinstance(module, FPN) and type(module).forward is FPN.forward:
        return LeanFPN
    return None


def enable_lean_fpn(model: nn.Module) -> nn.Module:
    """Switch every FPN of ``model`` that runs detectron2's ``FPN.forward`` (``FPN`` itself or
    a subclass that only adds construction, such as
    :class:`~gcnet_d2.modeling.mmdet_recipe.MMDetFPN`) to :class:`LeanFPN`; returns ``model``.
    :func:`disable_lean_fpn` gives each its own class back."""
    return swap_classes(model, _runs_fpn_forward)


def disable_lean_fpn(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_lean_fpn`; returns ``model``."""
    return restore_classes(model, LeanFPN)


__all__ = ["LeanFPN", "disable_lean_fpn", "enable_lean_fpn"]
