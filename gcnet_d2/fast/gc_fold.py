"""The GC bottleneck's ``conv3``, frozen norm and GC block folded into one matrix product.

Where ``conv3``'s norm is a fixed affine (frozen statistics, or BN in eval mode), the GC
bottleneck's middle ``context_block(norm3(conv3(x)))`` is computed without a pass over the
output map for the norm or the block: the norm becomes ``conv3``'s weight scale and bias,
the context is pooled from ``conv3``'s *input* (a quarter of the output's channels; exact,
see :func:`pool_projected`) and the GC fusion rides on ``conv3``'s bias (and weight, for
``channel_mul``) in one batched GEMM (:func:`conv1x1_per_sample`).

Why (2 CPU cores, 800x1344, docs/benchmark.md): the GC R-50 backbone ~5% faster than the
unfolded network (0.951x), training peak memory 0.84x. ``tests/fast/test_gc_fold.py`` pins it
to the plain :class:`~gcnet_d2.modeling.GCBottleneckBlock`, values and gradients.

Applied by :func:`enable_gc_fold` (``FAST.FOLD_FROZEN_NORMS``, through
:func:`gcnet_d2.fast.apply`), which switches the class of each GC bottleneck in place (no
parameter of its own: state dicts unchanged). Only eager calls fold: while a model is
traced, exported or compiled the bottleneck runs its plain code (batched, no per-sample
loops, no branch on grad mode or device, no ``addmv``, which onnxruntime 1.31's
``MatmulTransposeFusion`` miscomputes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ContextBlock, frozen_affine, has_frozen_affine
from ..modeling.bottleneck import DeformGCBottleneckBlock, GCBottleneckBlock
from ..utils.tracing import eager
from .swap import restore_classes, swap_classes


def pool_projected(
    block: ContextBlock, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The N x C context vector of the 1x1 conv ``weight @ h + bias``, read from ``h``.

    ``weight`` is C x K. A 1x1 conv is linear and the pooling weights sum to one, so
    pooling its output equals projecting the pooled input: the attention logits are
    ``(conv_mask.weight @ weight) @ h`` (the constant ``conv_mask @ bias`` cannot change
    a softmax) and the context is ``weight @ pool(h) + bias``. The bottleneck's ``h`` has
    a quarter of the output's channels, so this reads a quarter of the bytes.
    """
    if torch.is_autocast_enabled(h.device.type):
        # float32, as the plain block's attention (gcnet_d2.layers.context_block)
        with torch.autocast(h.device.type, enabled=False):
            f32 = None if bias is None else bias.float()
            return pool_projected(block, h.float(), weight.float(), f32)
    if block.pooling == "att":
        mask = block.conv_mask.weight.reshape(1, -1).to(weight.dtype)
        pooled = attention_pool(h, torch.mm(mask, weight).reshape(-1), block.conv_mask.bias)
    else:
        pooled = h.mean(dim=(2, 3))
    return F.linear(pooled.to(weight.dtype), weight, bias)


def fusion_vectors(
    block: ContextBlock, context: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(gate, addend)``, each N x C or None, from an N x C context vector.

    Runs the transforms' 1x1 convs on the 1 x 1 context as linear layers (same weights,
    same arithmetic) to skip the convolution machinery on a single pixel.
    """
    gate = addend = None
    if block.channel_mul_conv is not None:
        gate = torch.sigmoid(_transform(block.channel_mul_conv, context))
    if block.channel_add_conv is not None:
        addend = _transform(block.channel_add_conv, context)
    return gate, addend


def attention_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_p softmax_p(weight . x[:, :, p] + bias) x[:, :, p]``: N x C from N x C x H x W.

    The pooling of :meth:`ContextBlock.spatial_pool` with a C-vector ``weight`` instead of a
    1-channel conv (so :func:`pool_projected` can pool through ``conv3``), reading a view of
    ``x`` (contiguous or channels_last). Batched products under autograd; on the CPU without
    a gradient, two matrix-vector products per sample (:func:`_attention_pool_rows`).

    ``bias`` (one element) cannot change a softmax; it is added to the logits anyway (an
    N x HW add, a C-th of the pooling's work) so it is part of the graph and gets its exact
    gradient, zero up to rounding: every parameter then receives a gradient, which
    DistributedDataParallel needs unless it searches for unused ones every iteration.
    """
    n, c, h, w = x.shape
    weight = weight.to(x.dtype)
    bias = weight.new_zeros(1) if bias is None else bias.reshape(1).to(x.dtype)
    flat = x.reshape(n, c, h * w)  # a view for contiguous and channels_last maps
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
    if x.device.type == "cpu" and not needs_grad:
        return _attention_pool_rows(flat, weight, bias)
    logits = torch.matmul(weight, flat) + bias  # N x HW
    attention = logits.softmax(dim=-1, dtype=_softmax_dtype(x)).to(x.dtype)
    return torch.bmm(flat, attention.unsqueeze(-1)).reshape(n, c)


def _softmax_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: a softmax over H*W positions in half precision loses the tail."""
    return torch.promote_types(x.dtype, torch.float32)


def _attention_pool_rows(
    flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Inference pooling of ``flat`` (N x C x L), one sample at a time: ``mv`` on the CPU is
    several times faster than ``bmm`` with a 1-column operand on these shapes."""
    contexts = []
    for sample in flat.unbind(0):  # C x L views
        logits = torch.addmv(bias, sample.t(), weight)
        attention = logits.softmax(dim=0, dtype=_softmax_dtype(flat)).to(flat.dtype)
        contexts.append(torch.mv(sample, attention))
    return torch.stack(contexts)


def _transform(seq: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    """``seq`` (conv1x1 -> LayerNorm([P, 1, 1]) -> ReLU -> conv1x1) on an N x C vector, as
    linear layers (same weights, same arithmetic, no convolution machinery on one pixel)."""
    first, norm, last = seq[0], seq[1], seq[3]
    planes = first.out_channels
    y = F.linear(context, first.weight.reshape(planes, -1), first.bias)
    y = F.layer_norm(y, (planes,), norm.weight.reshape(planes), norm.bias.reshape(planes), norm.eps)
    return F.linear(F.relu(y), last.weight.reshape(last.out_channels, planes), last.bias)


# --- the GC bottleneck: conv3 + frozen norm + GC block as one GEMM ---------------------------


def foldable(block: GCBottleneckBlock, x: torch.Tensor) -> bool:
    """Whether to fold: ``conv3`` + norm is a 1x1 linear map with a fixed affine in this
    mode, on the CPU or when a gradient is being recorded.

    GPU inference does not fold: there the bottleneck's kernels are short enough that
    their number, not their bytes, sets the time (launch-bound at detection batch sizes),
    and the fold's extra small kernels cost more than the pass it saves (H100 backbone:
    1.59x plain folded vs 1.39x unfolded). In GPU training the fold still wins (0.87x memory).
    """
    conv3 = block.conv3
    return (
        (x.device.type == "cpu" or torch.is_grad_enabled())
        and has_frozen_affine(conv3.norm, block.training)
        and conv3.kernel_size == (1, 1)
        and conv3.stride == (1, 1)
        and conv3.padding == (0, 0)
        and conv3.groups == 1
        and getattr(conv3, "activation", None) is None
    )


def conv3_and_context(block: GCBottleneckBlock, x: torch.Tensor) -> torch.Tensor:
    """``context_block(norm3(conv3(x)))`` with the frozen norm and the GC terms folded in.

    Where :func:`foldable`, as the module doc says; elsewhere ``conv3`` + norm, then the block.
    """
    conv3, gc = block.conv3, block.context_block
    if not foldable(block, x):
        out = conv3(x)
        return out if gc is None else gc(out)
    scale, shift = frozen_affine(conv3.norm)
    c = conv3.out_channels
    weight = conv3.weight.reshape(c, -1) * scale.reshape(c, 1)
    bias = shift if conv3.bias is None else torch.addcmul(shift, conv3.bias, scale)
    if gc is None:
        return conv1x1_per_sample(x, weight, bias)
    gate, addend = fusion_vectors(gc, pool_projected(gc, x, weight, bias))
    if gate is not None:
        bias = bias * gate  # N x C from here on
    if addend is not None:
        bias = bias + addend
    return conv1x1_per_sample(x, weight, bias, gate)


def conv1x1_per_sample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 1x1 conv ``(weight * gate[i]) @ x[i] + bias[i]`` of every sample ``i``, as one GEMM.

    ``x``: N x K x H x W (contiguous or channels_last; the output keeps the layout);
    ``weight``: C x K; ``bias``: C or N x C; ``gate``: None or N x C (scales sample ``i``'s
    output channels). ``baddbmm`` takes the per-sample bias as its broadcast addend, so the GC
    terms cost no pass over the output; on the CPU it also beats the NCHW 1x1 convolution.
    """
    n, k, h, w = x.shape
    c = weight.shape[0]
    bias = bias.reshape(-1, c)  # 1 or N rows
    weights = weight.unsqueeze(0) if gate is None else weight * gate.reshape(n, c, 1)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(n, h * w, k)  # a view: N x HW x K
        out = torch.baddbmm(bias.unsqueeze(1), flat, weights.transpose(1, 2).expand(n, k, c))
        return out.reshape(n, h, w, c).permute(0, 3, 1, 2)  # channels_last N x C x H x W
    out = torch.baddbmm(bias.unsqueeze(2), weights.expand(n, c, k), x.reshape(n, k, h * w))
    return out.reshape(n, c, h, w)


class _FoldedMiddle:
    """``forward`` of a GC bottleneck with :func:`conv3_and_context` for its middle (eager
    calls only; otherwise the plain bottleneck's ``forward``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not eager():
            return super().forward(x)
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = conv3_and_context(self, out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class FoldedGCBottleneckBlock(_FoldedMiddle, GCBottleneckBlock):
    """:class:`GCBottleneckBlock` folding its middle (see the module doc)."""


class FoldedDeformGCBottleneckBlock(_FoldedMiddle, DeformGCBottleneckBlock):
    """:class:`DeformGCBottleneckBlock` folding its middle (see the module doc)."""


def enable_gc_fold(model: nn.Module) -> nn.Module:
    """Switch every GC bottleneck of ``model`` to its folding class, in place; returns it."""
    return swap_classes(
        model,
        {
            GCBottleneckBlock: FoldedGCBottleneckBlock,
            DeformGCBottleneckBlock: FoldedDeformGCBottleneckBlock,
        },
    )


def disable_gc_fold(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_gc_fold` (the plain bottleneck classes); returns ``model``."""
    return restore_classes(model, (FoldedGCBottleneckBlock, FoldedDeformGCBottleneckBlock))


__all__ = [
    "FoldedDeformGCBottleneckBlock",
    "FoldedGCBottleneckBlock",
    "conv3_and_context",
    "disable_gc_fold",
    "enable_gc_fold",
]
