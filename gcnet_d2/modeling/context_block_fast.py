"""Faster eager formulations of the GC block and the GC bottleneck's ``conv3`` + block.

Everything here computes the plain function of :class:`~.context_block.ContextBlock` and
:meth:`~.bottleneck.GCBottleneckBlock.forward_plain`, values and gradients, and
``tests/test_fast_paths.py`` pins each path to the plain code. Why each exists (2 CPU cores,
figures in docs/benchmark.md):

- :func:`conv3_and_context` (the fold of a frozen ``conv3`` norm and the GC terms into one
  GEMM, context pooled from ``conv3``'s input): the R-50 backbone at 800x1344 ~5% faster than
  the unfolded network (control 0.951x plain, GC blocks alone 1.000x / 1.017x of it), training
  peak memory 0.84x.
- :func:`context_block_forward`, :func:`attention_pool`, :func:`_transform`: what the fold is
  built from (a C-vector pooling that can go through ``conv3``, the transforms as linear
  layers on an N x C vector, ``x * gate + addend`` in one pass).

Removed after re-measuring (issue 12): a hand-written attention-pooling backward
(``_AttentionPool``) and running the transforms one row at a time (``_per_row``). Both act
only in training with more than one image: at the backbone and Mask R-CNN inference levels
(batch 1, no gradient) they never ran (0% by construction). A GC r16 training iteration took
1.01x the plain one with them in place, leaving them little to earn; the paired training-level
re-measurement did not finish on the shared 2-core machine, and without a figure >= 2% the
simpler code stays (docs/benchmark.md, "Fast paths kept and removed").

These paths run only in eager mode (:func:`eager`). While a model is traced (``torch.jit``),
exported (``torch.export``, the ONNX dynamo exporter) or compiled (``torch.compile``), the
modules take their plain code: batched, no ``autograd.Function``, no per-sample loops, no
branch on grad mode, device or memory layout, and no ``addmv`` (onnxruntime 1.31's
``MatmulTransposeFusion`` miscomputes the Transpose + MatMul with a 1-D operand that ``addmv``
exports to; the plain conv_mask / softmax / matmul graph runs correctly there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .norm import frozen_affine, has_frozen_affine

if TYPE_CHECKING:
    from .bottleneck import GCBottleneckBlock
    from .context_block import ContextBlock


def eager() -> bool:
    """False while ``torch.jit`` traces or scripts, or ``torch.compile``/``torch.export`` runs."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return True
    is_exporting = getattr(compiler, "is_exporting", None)
    return not (compiler.is_compiling() or (is_exporting is not None and is_exporting()))


def set_fast_paths(model: nn.Module, enabled: bool) -> nn.Module:
    """Set ``fast_path`` on every GC block and GC bottleneck of ``model``; returns ``model``.

    With ``enabled=False`` the model runs only the plain code (what the benchmark compares
    against, and what a user who suspects a fast path can switch to).
    """
    for module in model.modules():
        if hasattr(module, "fast_path"):
            module.fast_path = enabled
    return model


# --- the GC block ---------------------------------------------------------------------------


def context_block_forward(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """The GC block with the pooling and transforms below and ``x * gate + addend`` in one pass."""
    gate, addend = fusion_vectors(block, pool(block, x))
    n, c = x.shape[:2]
    if gate is None:
        return x + addend.reshape(n, c, 1, 1).to(x.dtype)
    gate = gate.reshape(n, c, 1, 1).to(x.dtype)
    if addend is None:
        return x * gate
    return torch.addcmul(addend.reshape(n, c, 1, 1).to(x.dtype), x, gate)  # one pass over x


def pool(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """The N x C context vector of ``x``: attention-weighted or plain mean over H x W."""
    if block.pooling == "att":
        weight = block.conv_mask.weight.reshape(x.shape[1])
        return attention_pool(x, weight, block.conv_mask.bias)
    return x.mean(dim=(2, 3))


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

    Where :func:`foldable`: the norm becomes ``conv3``'s weight scale and bias, the context is
    pooled from ``conv3``'s *input* (a quarter of the output's channels; exact, see
    :func:`pool_projected`) and the GC fusion rides on ``conv3``'s bias (and weight, for
    ``channel_mul``) in one GEMM (:func:`conv1x1_per_sample`): no pass over the output map for
    the norm or the block. Measured (2 CPU cores, 800x1344, docs/benchmark.md): the R-50
    backbone ~5% faster than the unfolded network, training peak memory 0.84x.
    Elsewhere: ``conv3`` + norm, then the block.
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


def bottleneck_forward(block: GCBottleneckBlock, x: torch.Tensor) -> torch.Tensor:
    """:meth:`GCBottleneckBlock.forward_plain` with :func:`conv3_and_context` for its middle."""
    out = F.relu_(block.conv1(x))
    out = F.relu_(block.conv2(out))
    out = conv3_and_context(block, out)
    shortcut = x if block.shortcut is None else block.shortcut(x)
    out += shortcut
    return F.relu_(out)


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
