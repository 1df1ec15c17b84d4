"""Inference-time folding of frozen norms into the convolutions before them.

A norm that is a fixed per-channel affine (detectron2's ``FrozenBatchNorm2d``, our
``FrozenStatsBatchNorm2d``, any ``BatchNorm`` in eval mode) after a convolution is the same
function as that convolution with its weight scaled per output channel and a bias:
``norm(conv(x, W) + b) == conv(x, W * s) + (b * s + t)``. Running the folded convolution
saves the norm's pass over every feature map (about 5% of a detector's CPU inference,
measured by ``benchmarks/model_vs_mmdet.py``).

:func:`enable_conv_speedups` switches detectron2 ``Conv2d`` modules to
:class:`NormFoldingConv2d`, a subclass with no parameter of its own: nothing about the
module's parameters, buffers or state-dict keys changes. Each module's ``fold_norm``
(``FAST.FOLD_FROZEN_NORMS``) and ``gemm_1x1`` (``FAST.CONV1X1_GEMM``) say which of its
two speed-ups it takes. The fold applies in eval mode where
the norm is a fixed affine; training runs conv + norm as before. Where nothing is
differentiated and nothing records the graph, the folded weight and bias are cached (and
recomputed when any tensor they come from changes: values, dtype or device). Otherwise
(a gradient is recorded, or the model is traced, compiled or exported) the fold is computed
from the parameters inside the graph with the same operations: a trace, an exported program
or a compiled graph stays tied to the parameters, differentiable, free of data-dependent
branches, and computes bit for bit the weights eager inference uses, so its outputs match
eager's exactly.

The same class runs 1x1 convolutions on large maps as matrix products where ``gemm_1x1`` is
set (:mod:`.conv1x1_gemm`), with or without a folded norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import nn

from ..layers import frozen_affine, has_frozen_affine
from ..utils.tracing import graph_is_recorded, tracing_to_torchscript
from .conv1x1_gemm import conv1x1_as_gemm, gemm_applies
from .swap import restore_classes, swap_classes


def _tensor_key(t: torch.Tensor | None) -> tuple:
    if t is None:
        return (None,)
    return (t.data_ptr(), t._version, t.dtype, t.device)


class NormFoldingConv2d(Conv2d):
    """detectron2's ``Conv2d`` that runs as one folded convolution where that is exact.

    Not constructed directly: :func:`enable_conv_speedups` switches existing modules to it.
    """

    fold_norm = True  # per module: fold a frozen norm at inference
    gemm_1x1 = False  # per module: a 1x1 conv on a large map as a product (.conv1x1_gemm)
    fast_attributes = ("_folded", "fold_norm", "gemm_1x1")  # dropped by restore_classes

    def can_fold(self, x: torch.Tensor) -> bool:
        return (
            self.fold_norm
            and self.norm is not None
            and not self.training
            and has_frozen_affine(self.norm, self.training)
            and (x.dtype == self.weight.dtype or torch.is_autocast_enabled(x.device.type))
            and not torch.jit.is_scripting()
        )

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W * s, b * s + t)`` for this conv and its norm's affine ``(s, t)``."""
        scale, shift = frozen_affine(self.norm)
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else torch.addcmul(shift, self.bias, scale)
        return weight, bias

    def cached_fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`fold`, computed once per version of the tensors it comes from."""
        norm = self.norm
        key = tuple(
            _tensor_key(t)
            for t in (self.weight, self.bias, norm.weight, norm.bias)
            + (norm.running_mean, norm.running_var)
        ) + (norm.eps,)
        cache = self.__dict__.get("_folded")
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        # Plain tensors even under inference_mode, so the cache can serve any later caller.
        with torch.inference_mode(False), torch.no_grad():
            weight, bias = self.fold()
        self.__dict__["_folded"] = (key, weight, bias)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.can_fold(x):
            if self.norm is None and _gemm_allowed() and gemm_applies(self, x):
                return self._activate(conv1x1_as_gemm(x, self.weight, self.bias))
            return super().forward(x)
        if torch.is_grad_enabled() or graph_is_recorded():
            weight, bias = self.fold()
        else:
            weight, bias = self.cached_fold()
        if _gemm_allowed() and gemm_applies(self, x):
            return self._activate(conv1x1_as_gemm(x, weight, bias))
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return self._activate(x)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.activation is None else self.activation(x)


def _gemm_allowed() -> bool:
    """1x1 convs as products (:mod:`.conv1x1_gemm`): eager inference and ``torch.jit.trace``
    to TorchScript; not while a gradient is taken eagerly, compiled, exported (ONNX included:
    the product's reshape of an empty batch fails in ONNX Runtime) or scripted."""
    if tracing_to_torchscript():
        return True
    return not torch.is_grad_enabled() and not graph_is_recorded()


def _foldable_or_1x1(module: nn.Module) -> type | None:
    if type(module) is Conv2d and (module.norm is not None or module.kernel_size == (1, 1)):
        return NormFoldingConv2d
    return None


def enable_conv_speedups(
    model: nn.Module, fold_frozen_norms: bool, conv1x1_gemm: bool
) -> nn.Module:
    """Switch every detectron2 ``Conv2d`` of ``model`` that has a norm or is 1x1 to
    :class:`NormFoldingConv2d` with these two switches, in place; returns ``model``. With both
    off, the plain ``Conv2d`` everywhere (:func:`disable_conv_speedups`). State dict unchanged.
    """
    if not (fold_frozen_norms or conv1x1_gemm):
        return disable_conv_speedups(model)
    swap_classes(model, _foldable_or_1x1)
    for module in model.modules():
        if type(module) is NormFoldingConv2d:
            module.fold_norm = bool(fold_frozen_norms)
            module.gemm_1x1 = bool(conv1x1_gemm) and module.kernel_size == (1, 1)
            module.__dict__.pop("_folded", None)
    return model


def disable_conv_speedups(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_conv_speedups` (the plain detectron2 ``Conv2d`` everywhere)."""
    return restore_classes(model, NormFoldingConv2d)


__all__ = ["NormFoldingConv2d", "disable_conv_speedups", "enable_conv_speedups"]
