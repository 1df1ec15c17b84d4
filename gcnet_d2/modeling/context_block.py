"""The global context (GC) block of GCNet, with mmcv ``ContextBlock``'s parameter layout.

The block pools a C x 1 x 1 context vector from the whole feature map (attention pooling:
a 1x1 conv scores every position, a softmax over H*W weights the sum; or plain average
pooling), transforms it with a bottleneck ``1x1 conv -> LayerNorm -> ReLU -> 1x1 conv`` and
fuses it back into every position by addition (``channel_add``) and/or a sigmoid gate
(``channel_mul``). Sub-module names (``conv_mask``, ``channel_add_conv.{0,1,3}``,
``channel_mul_conv.{0,1,3}``) equal mmcv's so mmdetection checkpoints load key for key.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    def pool(
        self,
        x: torch.Tensor,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The N x C context vector of ``x * scale + shift`` (per-channel affine, optional).

        Pooling weights sum to one, so the affine can be applied to the pooled vector instead
        of the whole map, and ``conv_mask``'s bias drops out of the softmax. This lets the
        bottleneck pool the conv output before its frozen norm.
        """
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        if self.pooling == "att":
            weight = self.conv_mask.weight.reshape(1, c)
            if scale is not None:
                weight = weight * scale.reshape(1, c)
            attention = torch.matmul(weight.to(x.dtype), flat).softmax(dim=-1)  # N x 1 x HW
            context = torch.matmul(flat, attention.transpose(1, 2)).reshape(n, c)
        else:
            context = flat.mean(dim=-1)
        if scale is not None:
            context = context * scale.reshape(1, c)
        if shift is not None:
            context = context + shift.reshape(1, c)
        return context

    def fusion_terms(
        self, context: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(gate, addend)``, each N x C x 1 x 1 or None, from an N x C context vector."""
        context = context.reshape(*context.shape, 1, 1)
        gate = addend = None
        if self.channel_mul_conv is not None:
            gate = torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            addend = self.channel_add_conv(context)
        return gate, addend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, addend = self.fusion_terms(self.pool(x))
        out = x
        if gate is not None:
            out = out * gate
        if addend is not None:
            out = out + addend
        return out

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
