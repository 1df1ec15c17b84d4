"""Bottlenecks that apply a GC block after ``conv3`` + norm, and their deformable variant.

mmdetection's ``after_conv3`` plugin position: ``relu(context_block(bn3(conv3(.))) + shortcut)``.
Both blocks subclass detectron2's ``BottleneckBlock`` and keep its sub-module names (``conv1``,
``conv2``, ``conv3``, ``shortcut``, each with ``.norm``), adding ``context_block`` and, for the
deformable one, ``conv2.conv_offset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock

from .context_block import ContextBlock
from .deform_conv import DeformConv2dWithOffset
from .norm import frozen_affine, has_frozen_affine


class GCBottleneckBlock(BottleneckBlock):
    """detectron2's bottleneck with an optional global context block before the residual add.

    Where ``conv3``'s norm is a fixed affine (FrozenBN, mmdet-style frozen statistics, or any
    BN in eval mode), the block pools the context from the raw ``conv3`` output and applies the
    norm and the GC fusion in a single ``addcmul`` pass; otherwise it runs norm then block.
    Both paths compute the same function (tests pin them against the plain formulation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str | object = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        gc_ratio: float | None = 1.0 / 16,
        gc_pooling: str = "att",
        gc_fusion: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
        )
        self.context_block = (
            ContextBlock(out_channels, gc_ratio, gc_pooling, gc_fusion)
            if gc_ratio is not None
            else None
        )

    def _conv3_and_context(self, x: torch.Tensor) -> torch.Tensor:
        conv3, block = self.conv3, self.context_block
        if block is None:
            return conv3(x)
        if not has_frozen_affine(conv3.norm, self.training):
            return block(conv3(x))
        raw = F.conv2d(x, conv3.weight, conv3.bias)
        scale, shift = frozen_affine(conv3.norm)
        gate, addend = block.fusion_terms(block.pool(raw, scale, shift))
        n, c = raw.shape[:2]
        # norm then fusion: (raw * scale + shift) * gate + addend, as one per-sample affine.
        scale = scale.reshape(1, c, 1, 1).expand(n, c, 1, 1)
        shift = shift.reshape(1, c, 1, 1).expand(n, c, 1, 1)
        if gate is not None:
            scale, shift = scale * gate, shift * gate
        if addend is not None:
            shift = shift + addend
        return torch.addcmul(shift.to(raw.dtype), raw, scale.to(raw.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self._conv3_and_context(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out += shortcut
        return F.relu_(out)


class DeformGCBottleneckBlock(GCBottleneckBlock):
    """:class:`GCBottleneckBlock` whose 3x3 ``conv2`` is a DCN v1 deformable convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str | object = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_num_groups: int = 1,
        gc_ratio: float | None = 1.0 / 16,
        gc_pooling: str = "att",
        gc_fusion: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
            gc_ratio=gc_ratio,
            gc_pooling=gc_pooling,
            gc_fusion=gc_fusion,
        )
        stride_3x3 = 1 if stride_in_1x1 else stride
        self.conv2 = DeformConv2dWithOffset(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deform_groups=deform_num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
