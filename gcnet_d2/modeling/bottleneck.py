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

from .context_block import ContextBlock, reference_context_block
from .deform_conv import DeformConv2dWithOffset
from .norm import frozen_affine, has_frozen_affine


class GCBottleneckBlock(BottleneckBlock):
    """detectron2's bottleneck with an optional global context block before the residual add.

    On the CPU, where ``conv3``'s norm is a fixed affine (FrozenBN, mmdet-style frozen
    statistics, or any BN in eval mode), the norm is folded into ``conv3``'s weight and bias,
    the context is pooled from ``conv3``'s input (a quarter of the output's channels; exact, as
    a 1x1 conv is linear and the pooling weights sum to one) and the GC terms become a
    per-sample bias (and, for ``channel_mul``, a per-sample weight scale) of ``conv3`` itself
    (:func:`conv1x1_per_sample`): the GC block adds no pass over the output map, and its
    pooling reads a quarter of the bytes. Otherwise (BN with batch statistics, or a GPU) it
    runs ``conv3`` + norm, then the block. Both paths compute the same function, values and
    gradients (tests/test_fast_paths.py pins them against the plain formulation).
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

    def _foldable(self, x: torch.Tensor) -> bool:
        """Whether to fold: ``conv3`` + norm is a 1x1 linear map with a fixed affine in this
        mode, on the CPU or when a gradient is being recorded.

        GPU inference does not fold: there the bottleneck's kernels are short enough that
        their number, not their bytes, sets the time (launch-bound at detection batch sizes),
        and the fold's extra small kernels cost more than the pass it saves. In GPU training
        the fold still wins (fewer full-size activations kept for backward), measured.
        """
        conv3 = self.conv3
        return (
            (x.device.type == "cpu" or torch.is_grad_enabled())
            and has_frozen_affine(conv3.norm, self.training)
            and conv3.kernel_size == (1, 1)
            and conv3.stride == (1, 1)
            and conv3.padding == (0, 0)
            and conv3.groups == 1
            and getattr(conv3, "activation", None) is None
        )

    def _conv3_and_context(self, x: torch.Tensor) -> torch.Tensor:
        conv3, block = self.conv3, self.context_block
        if not self._foldable(x):
            out = conv3(x)
            return out if block is None else block(out)
        # The frozen norm is folded into conv3: weight * scale, bias shift (+ scale * bias).
        scale, shift = frozen_affine(conv3.norm)
        c = conv3.out_channels
        weight = conv3.weight.reshape(c, -1) * scale.reshape(c, 1)
        bias = shift if conv3.bias is None else torch.addcmul(shift, conv3.bias, scale)
        if block is None:
            return conv1x1_per_sample(x, weight, bias)
        # The context is pooled from conv3's *input* (a quarter of the channels) and the GC
        # fusion rides on conv3's bias (and weight, for channel_mul): no extra pass over the
        # output map. See ContextBlock.pool_projected.
        gate, addend = block.fusion_vectors(block.pool_projected(x, weight, bias))
        if gate is not None:
            bias = bias * gate  # N x C from here on
        if addend is not None:
            bias = bias + addend
        return conv1x1_per_sample(x, weight, bias, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self._conv3_and_context(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
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


def reference_bottleneck_forward(block: GCBottleneckBlock, x: torch.Tensor) -> torch.Tensor:
    """mmdetection's ``after_conv3`` statement on ``block``'s weights, step by step:
    ``relu(gc(norm3(conv3(.))) + shortcut)`` with :func:`reference_context_block`.

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
