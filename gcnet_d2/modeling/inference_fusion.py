"""Inference-time folding of frozen norms into the convolutions before them.

A norm that is a fixed per-channel affine (detectron2's ``FrozenBatchNorm2d``, our
``FrozenStatsBatchNorm2d``, any ``BatchNorm`` in eval mode) after a convolution is the same
function as that convolution with its weight scaled per output channel and a bias:
``norm(conv(x, W) + b) == conv(x, W * s) + (b * s + t)``. Running the folded convolution
saves the norm's pass over every feature map (about 5% of a detector's CPU inference,
measured by ``tools/model_vs_mmdet.py``).

:func:`enable_norm_folding` marks detectron2 ``Conv2d`` modules (by switching their class to
:class:`NormFoldingConv2d`, a subclass with no parameter of its own): nothing about the
module's parameters, buffers or state-dict keys changes. The fold applies in eval mode where
the norm is a fixed affine; training runs conv + norm as before. Where nothing is
differentiated and nothing records the graph, the folded weight and bias are cached (and
recomputed when any tensor they come from changes: values, dtype or device). Otherwise
(a gradient is recorded, or the model is traced, compiled or exported) the fold is computed
from the parameters inside the graph with the same operations: a trace, an exported program
or a compiled graph stays tied to the parameters, differentiable, free of data-dependent
branches, and computes bit for bit the weights eager inference uses, so its outputs match
eager's exactly.

The same class runs 1x1 convolutions on large maps as matrix products where
:mod:`.conv1x1_gemm` marks them (``MODEL.GCNET.CONV1X1_GEMM``), with or without a norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import nn

from .conv1x1_gemm import conv1x1_as_gemm, gemm_applies
from .norm import frozen_affine, has_frozen_affine


def _graph_is_recorded() -> bool:
    """Whether a tracer, compiler or exporter is recording (the fold then goes in the graph)."""
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if compiler.is_compiling():
            return True
        is_exporting = getattr(compiler, "is_exporting", None)
        if is_exporting is not None and is_exporting():
            return True
    return False


def _tensor_key(t: torch.Tensor | None) -> tuple:
    if t is None:
        return (None,)
    return (t.data_ptr(), t._version, t.dtype, t.device)


class NormFoldingConv2d(Conv2d):
    """detectron2's ``Conv2d`` that runs as one folded convolution where that is exact.

    Not constructed directly: :func:`enable_norm_folding` switches existing modules to it.
    """

    supports_gemm_1x1 = True  # reads the mark of :func:`.conv1x1_gemm.set_conv1x1_gemm`

    def can_fold(self, x: torch.Tensor) -> bool:
        return (
            self.norm is not None
            and not self.training
            and has_frozen_affine(self.norm, self.training)
            and x.dtype == self.weight.dtype
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
        if torch.is_grad_enabled() or _graph_is_recorded():
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
    """1x1 convs as products (:mod:`.conv1x1_gemm`): eager inference and ``torch.jit.trace``;
    not while a gradient is taken eagerly, compiled, exported or scripted."""
    if torch.jit.is_tracing():
        return True
    return not torch.is_grad_enabled() and not _graph_is_recorded()


def enable_norm_folding(model: nn.Module) -> nn.Module:
    """Switch every detectron2 ``Conv2d`` with a norm in ``model``, and every 1x1 one (for
    :mod:`.conv1x1_gemm`), to :class:`NormFoldingConv2d`, in place; returns ``model``.
    Idempotent; state dict unchanged.
    """
    for module in model.modules():
        if type(module) is Conv2d and (module.norm is not None or module.kernel_size == (1, 1)):
            module.__class__ = NormFoldingConv2d
    return model


def disable_norm_folding(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_norm_folding` (the plain detectron2 ``Conv2d`` everywhere)."""
    for module in model.modules():
        if type(module) is NormFoldingConv2d:
            module.__class__ = Conv2d
            module.__dict__.pop("_folded", None)
    return model


__all__ = ["NormFoldingConv2d", "disable_norm_folding", "enable_norm_folding"]
