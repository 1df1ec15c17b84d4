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

from ..layers import ContextBlock, DeformConv2dWithOffset


class GCBottleneckBlock(BottleneckBlock):
    """detectron2's bottleneck with an optional global context block before the residual add:
    ``relu(context_block(norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x))))))))) + shortcut)``.

    ``gc_ratio=None`` builds the plain bottleneck (used for stages without GC blocks that
    still need this class, e.g. deformable ones).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """mmdetection's ``after_conv3`` order, module by module."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        if self.context_block is not None:
            out = self.context_block(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


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
