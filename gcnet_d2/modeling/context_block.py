"""The global context (GC) block of GCNet, with mmcv ``ContextBlock``'s parameter layout.

The block pools a C x 1 x 1 context vector from the whole feature map (attention pooling:
a 1x1 conv scores every position, a softmax over H*W weights the sum; or plain average
pooling), transforms it with a bottleneck ``1x1 conv -> LayerNorm -> ReLU -> 1x1 conv`` and
fuses it back into every position by addition (``channel_add``) and/or a sigmoid gate
(``channel_mul``). Sub-module names (``conv_mask``, ``channel_add_conv.{0,1,3}``,
``channel_mul_conv.{0,1,3}``) equal mmcv's so mmdetection checkpoints load key for key.

What differs from the plain statement (:func:`reference_context_block`), same results:
the attention logits come from
matrix-vector products on a view of the map instead of a 1-channel convolution; the
transforms run as linear layers on the N x C vector; ``x * gate + addend`` is one pass. The
GC bottleneck goes further (``pool_projected``, see ``bottleneck.py``). Tests pin every path
against the plain one, values and gradients (tests/test_fast_paths.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

POOLING_TYPES = ("att", "avg")
FUSION_TYPES = ("channel_add", "channel_mul")


def validate_context_args(ratio: float, pooling: str, fusion: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the bad value when a GC block's arguments are unusable."""
    if not isinstance(ratio, int | float) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"GC block ratio must be in (0, 1], got {ratio!r}")
    if pooling not in POOLING_TYPES:
        raise ValueError(f"GC block pooling must be one of {POOLING_TYPES}, got {pooling!r}")
    if isinstance(fusion, str) or len(fusion) == 0:
        raise ValueError(f"GC block fusion must be a non-empty list of names, got {fusion!r}")
    unknown = [f for f in fusion if f not in FUSION_TYPES]
    if unknown:
        raise ValueError(f"GC block fusion names must be in {FUSION_TYPES}, got {list(fusion)!r}")
    if len(set(fusion)) != len(fusion):
        raise ValueError(f"GC block fusion names repeat: {list(fusion)!r}")


def attention_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_p softmax_p(weight . x[:, :, p] + bias) x[:, :, p]``: N x C from N x C x H x W.

    Reads a view of ``x`` (no copy, contiguous or channels_last). On the CPU, two
    matrix-vector products per sample (several times faster there than ``bmm`` on these
    shapes) and, when a gradient is needed, a backward that writes the input gradient in
    one pass (:class:`_AttentionPool`); elsewhere, batched ``matmul`` under autograd.

    ``bias`` (one element) cannot change a softmax; it is added to the logits anyway (an
    N x HW add, a C-th of the pooling's work) so it is part of the graph and gets its exact
    gradient, zero up to rounding: every parameter then receives a gradient, which
    DistributedDataParallel needs unless it searches for unused ones every iteration.
    """
    n, c, h, w = x.shape
    weight = weight.to(x.dtype)
    if bias is None:
        bias = weight.new_zeros(1)
    bias = bias.reshape(1).to(x.dtype)
    if x.is_contiguous():
        flat = x.reshape(n, c, h * w)  # a view
    elif x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(n, h * w, c).transpose(1, 2)  # a view
    else:
        flat = x.reshape(n, c, h * w)  # copies
    if x.device.type != "cpu":
        logits = torch.matmul(weight, flat) + bias  # N x HW
        attention = logits.softmax(dim=-1, dtype=_softmax_dtype(x)).to(x.dtype)
        return torch.bmm(flat, attention.unsqueeze(-1)).reshape(n, c)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (flat, weight, bias)):
        return _AttentionPool.apply(flat, weight, bias)
    return _attention_pool_cpu(flat, weight, bias)[0]


def _softmax_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: a softmax over H*W positions in half precision loses the tail."""
    return torch.promote_types(x.dtype, torch.float32)


def _attention_pool_cpu(
    flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(context N x C, attention N x L)`` of ``flat`` (N x C x L), one sample at a time."""
    contexts, attentions = [], []
    for sample in flat.unbind(0):  # C x L views
        logits = torch.addmv(bias, sample.t(), weight)
        attention = logits.softmax(dim=0, dtype=_softmax_dtype(flat)).to(flat.dtype)
        attentions.append(attention)
        contexts.append(torch.mv(sample, attention))
    return torch.stack(contexts), torch.stack(attentions)


class _AttentionPool(torch.autograd.Function):
    """Attention pooling with a hand-written backward (first order).

    Autograd through the per-sample products would write the input gradient twice per
    sample (one outer product per ``mv``) and then sum the pieces. Here it is one rank-2
    product per sample, ``[d_context, weight] @ [attention; d_logits]``, written in place.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        context, attention = _attention_pool_cpu(flat, weight, bias)
        ctx.save_for_backward(flat, weight, attention)
        return context

    @staticmethod
    def backward(ctx, d_context: torch.Tensor):
        flat, weight, attention = ctx.saved_tensors
        d_context = d_context.to(flat.dtype)
        need_flat, need_weight, need_bias = ctx.needs_input_grad[:3]
        d_flat = torch.empty_like(flat) if need_flat else None
        d_weight = torch.zeros_like(weight) if need_weight else None
        d_bias = weight.new_zeros(1) if need_bias else None
        for i in range(flat.shape[0]):
            sample, att = flat[i], attention[i]
            d_att = torch.mv(sample.t(), d_context[i])
            d_logits = att * (d_att - torch.dot(att, d_att))  # softmax backward
            if d_weight is not None:
                d_weight += torch.mv(sample, d_logits)
            if d_bias is not None:
                d_bias += d_logits.sum()
            if d_flat is not None:
                left = torch.stack([d_context[i], weight], dim=1)  # C x 2
                right = torch.stack([att, d_logits])  # 2 x L
                out = d_flat[i]
                if out.stride(-1) == 1:
                    torch.mm(left, right, out=out)
                else:  # channels_last: write the transposed product
                    torch.mm(right.t(), left.t(), out=out.t())
        return d_flat, d_weight, d_bias


def _per_row(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` on an N x D tensor; on the CPU one row at a time.

    The GC vectors are tiny. With N > 1 rows, the CPU's GEMM and layer-norm kernels open a
    multi-threaded region for them, whose join waits for every thread: when another process
    holds a core, that wait is a scheduler time slice (milliseconds, measured) for a
    microsecond op. Single rows run on the calling thread.
    """
    if x.device.type != "cpu" or x.shape[0] == 1:
        return fn(x)
    return torch.cat([fn(row) for row in x.split(1)])


def _transform(seq: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    """``seq`` (conv1x1 -> LayerNorm([P, 1, 1]) -> ReLU -> conv1x1) on an N x C vector."""
    return _per_row(partial(_transform_rows, seq), context)


def _transform_rows(seq: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    first, norm, last = seq[0], seq[1], seq[3]
    planes = first.out_channels
    y = F.linear(context, first.weight.reshape(planes, -1), first.bias)
    y = F.layer_norm(y, (planes,), norm.weight.reshape(planes), norm.bias.reshape(planes), norm.eps)
    return F.linear(F.relu(y), last.weight.reshape(last.out_channels, planes), last.bias)


def _channel_transform(channels: int, planes: int) -> nn.Sequential:
    # Index 2 (ReLU) has no parameters, so the checkpoint keys are .0, .1 and .3.
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1),
    )


class ContextBlock(nn.Module):
    """Global context block: ``x * sigmoid(mul(ctx)) + add(ctx)`` with ``ctx`` pooled from ``x``.

    A freshly built block is the identity: the last conv of each transform is zero-initialised
    (``channel_mul`` then gates with ``sigmoid(0)``, so only add-only blocks are exact
    identities, as in mmcv).
    """

    def __init__(
        self,
        channels: int,
        ratio: float = 1.0 / 16,
        pooling: str = "att",
        fusion: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__()
        validate_context_args(ratio, pooling, fusion)
        self.channels = channels
        self.ratio = float(ratio)
        self.planes = int(channels * ratio)
        if self.planes < 1:
            raise ValueError(
                f"GC block ratio {ratio!r} leaves no channel for {channels} input channels"
            )
        self.pooling = pooling
        self.fusion = tuple(fusion)
        if pooling == "att":
            self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add_conv = (
            _channel_transform(channels, self.planes) if "channel_add" in self.fusion else None
        )
        self.channel_mul_conv = (
            _channel_transform(channels, self.planes) if "channel_mul" in self.fusion else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (fan_in) on ``conv_mask``; zeros on the last conv of each transform."""
        if self.pooling == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The N x C context vector of ``x``: attention-weighted or plain mean over H x W."""
        if self.pooling == "att":
            weight = self.conv_mask.weight.reshape(x.shape[1])
            return attention_pool(x, weight, self.conv_mask.bias)
        return x.mean(dim=(2, 3))

    def pool_projected(
        self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The N x C context vector of the 1x1 conv ``weight @ h + bias``, read from ``h``.

        ``weight`` is C x K. A 1x1 conv is linear and the pooling weights sum to one, so
        pooling its output equals projecting the pooled input: the attention logits are
        ``(conv_mask.weight @ weight) @ h`` (the constant ``conv_mask @ bias`` cannot change
        a softmax) and the context is ``weight @ pool(h) + bias``. The bottleneck's ``h`` has
        a quarter of the output's channels, so this reads a quarter of the bytes.
        """
        if self.pooling == "att":
            mask = self.conv_mask.weight.reshape(1, -1).to(weight.dtype)
            pooled = attention_pool(h, torch.mm(mask, weight).reshape(-1), self.conv_mask.bias)
        else:
            pooled = h.mean(dim=(2, 3))
        return _per_row(partial(F.linear, weight=weight, bias=bias), pooled.to(weight.dtype))

    def fusion_vectors(
        self, context: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(gate, addend)``, each N x C or None, from an N x C context vector.

        Runs the transforms' 1x1 convs on the 1 x 1 context as linear layers (same weights,
        same arithmetic) to skip the convolution machinery on a single pixel.
        """
        gate = addend = None
        if self.channel_mul_conv is not None:
            gate = torch.sigmoid(_transform(self.channel_mul_conv, context))
        if self.channel_add_conv is not None:
            addend = _transform(self.channel_add_conv, context)
        return gate, addend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, addend = self.fusion_vectors(self.pool(x))
        n, c = x.shape[:2]
        if gate is None:
            return x + addend.reshape(n, c, 1, 1).to(x.dtype)
        gate = gate.reshape(n, c, 1, 1).to(x.dtype)
        if addend is None:
            return x * gate
        return torch.addcmul(addend.reshape(n, c, 1, 1).to(x.dtype), x, gate)  # one pass over x

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, planes={self.planes}, pooling={self.pooling!r}, "
            f"fusion={list(self.fusion)}"
        )


def reference_context_block(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """A plain, step-by-step statement of the GC block (the paper's equations) on ``block``'s
    weights: conv_mask -> softmax -> weighted sum -> transforms -> fuse, all out of place.

    Used by tests and the benchmark as the formulation the fast paths must agree with.
    """
    n, c, h, w = x.shape
    if block.pooling == "att":
        mask = F.conv2d(x, block.conv_mask.weight, block.conv_mask.bias).view(n, 1, h * w)
        mask = F.softmax(mask, dim=2).unsqueeze(-1)  # N x 1 x HW x 1
        context = torch.matmul(x.view(n, c, h * w).unsqueeze(1), mask).view(n, c, 1, 1)
    else:
        context = F.adaptive_avg_pool2d(x, 1)
    out = x
    if block.channel_mul_conv is not None:
        out = out * torch.sigmoid(block.channel_mul_conv(context))
    if block.channel_add_conv is not None:
        out = out + block.channel_add_conv(context)
    return out
