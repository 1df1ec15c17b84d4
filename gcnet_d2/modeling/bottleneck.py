"""Bottlenecks that apply a GC block after ``conv3`` + norm, and their deformable variant.

mmdetection's ``after_conv3`` plugin position: ``relu(context_block(bn3(conv3(.))) + shortcut)``.
Both blocks subclass detectron2's ``BottleneckBlock`` and keep its sub-module names (``conv1``,
``conv2``, ``conv3``, ``shortcut``, each with ``.norm``), adding ``context_block`` and, for the
deformable one, ``conv2.conv_offset``. The eager fast path (a frozen ``conv3`` norm and the
GC block folded into one GEMM) lives in :mod:`.context_block_fast`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock

from . import context_block_fast
from .context_block import ContextBlock, reference_context_block
from .deform_conv import DeformConv2dWithOffset


class GCBottleneckBlock(BottleneckBlock):
    """detectron2's bottleneck with an optional global context block before the residual add:
    ``relu(context_block(norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x))))))))) + shortcut)``.

    ``fast_path`` (default True) lets eager calls fold a frozen ``conv3`` norm and the GC
    terms into one GEMM (:func:`~.context_block_fast.conv3_and_context`); tracing, exporting
    and compiling always run :meth:`forward_plain`. Both compute the same function, values
    and gradients (tests/test_fast_paths.py).
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
        fast_path: bool = True,
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
        self.fast_path = fast_path
        self.context_block = (
            ContextBlock(out_channels, gc_ratio, gc_pooling, gc_fusion, fast_path=fast_path)
            if gc_ratio is not None
            else None
        )

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """mmdetection's ``after_conv3`` order, module by module."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        if self.context_block is not None:
            out = self.context_block(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path and context_block_fast.eager():
            return context_block_fast.bottleneck_forward(self, x)
        return self.forward_plain(x)


def reference_bottleneck_forward(block: GCBottleneckBlock, x: torch.Tensor) -> torch.Tensor:
    """mmdetection's ``after_conv3`` statement on ``block``'s weights, step by step:
    ``relu(gc(norm3(conv3(.))) + shortcut)`` with :func:`reference_context_block`, whatever
    the modules' ``fast_path`` flags.

    Used by tests and the benchmark as the formulation the fast paths must agree with.
    """
    out = F.relu_(block.conv1(x))
    out = F.relu_(block.conv2(out))
    out = block.conv3(out)
    if block.context_block is not None:
        out = reference_context_block(block.context_block, out)
    shortcut = x if block.shortcut is None else block.shortcut(x)
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
        fast_path: bool = True,
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
            fast_path=fast_path,
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
