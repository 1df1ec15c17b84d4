"""The global context (GC) block of GCNet, as the paper states it, in mmcv's parameter layout.

The block pools a C x 1 x 1 context vector from the whole feature map (attention pooling:
a 1x1 conv ``conv_mask`` scores every position, a softmax over H*W weights the sum; or plain
average pooling), transforms it with a bottleneck ``1x1 conv -> LayerNorm -> ReLU -> 1x1 conv``
and fuses it back into every position by addition (``channel_add``) and/or a sigmoid gate
(``channel_mul``). Sub-module names (``conv_mask``, ``channel_add_conv.{0,1,3}``,
``channel_mul_conv.{0,1,3}``) equal mmcv's so mmdetection checkpoints load key for key.

This is the plain statement and the reference every speed-up is tested against; faster
formulations live in :mod:`gcnet_d2.fast`, which this module knows nothing about.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POOLING_TYPES = ("att", "avg")
FUSION_TYPES = ("channel_add", "channel_mul")


def context_arg_errors(ratio: float, pooling: str, fusion: Sequence[str]) -> dict[str, str]:
    """What makes each unusable argument of a GC block unusable, by argument name (``"ratio"``,
    ``"pooling"``, ``"fusion"``); empty when a block can be built from them. A caller that
    read the arguments from elsewhere (a config) names its own source of each."""
    errors = {}
    if not isinstance(ratio, int | float) or not 0.0 < float(ratio) <= 1.0:
        errors["ratio"] = f"GC block ratio must be in (0, 1], got {ratio!r}"
    if pooling not in POOLING_TYPES:
        errors["pooling"] = f"GC block pooling must be one of {POOLING_TYPES}, got {pooling!r}"
    if isinstance(fusion, str) or len(fusion) == 0:
        errors["fusion"] = f"GC block fusion must be a non-empty list of names, got {fusion!r}"
    elif any(f not in FUSION_TYPES for f in fusion):
        errors["fusion"] = f"GC block fusion names must be in {FUSION_TYPES}, got {list(fusion)!r}"
    elif len(set(fusion)) != len(fusion):
        errors["fusion"] = f"GC block fusion names repeat: {list(fusion)!r}"
    return errors


def validate_context_args(ratio: float, pooling: str, fusion: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the bad value when a GC block's arguments are unusable."""
    errors = context_arg_errors(ratio, pooling, fusion)
    if errors:
        raise ValueError(next(iter(errors.values())))


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

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """The N x C x 1 x 1 context of ``x``: softmax(conv_mask(x))-weighted sum, or the mean."""
        n, c, h, w = x.shape
        if self.pooling == "avg":
            return F.adaptive_avg_pool2d(x, 1)
        if torch.is_autocast_enabled(x.device.type):
            # The attention over H*W in float32: a peaked attention pooled in bfloat16 puts the
            # context ~9x further from float32's than bfloat16 rounding does (docs/precision.md).
            with torch.autocast(x.device.type, enabled=False):
                return self.spatial_pool(x.float()).to(x.dtype)
        mask = self.conv_mask(x).reshape(n, 1, h * w).softmax(dim=2)  # N x 1 x HW
        context = torch.matmul(x.reshape(n, 1, c, h * w), mask.reshape(n, 1, h * w, 1))
        return context.view(n, c, 1, 1)  # [N, C, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, planes={self.planes}, pooling={self.pooling!r}, "
            f"fusion={list(self.fusion)}"
        )
