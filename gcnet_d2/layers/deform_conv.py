"""DCN v1 (deformable convolution) on ``torchvision.ops.deform_conv2d``, mmcv's layout.

mmcv's ``DeformConv2dPack`` owns its offset predictor as ``conv_offset`` (a plain conv, zero
initialised so a fresh layer samples the regular grid) and a bias-free ``weight``. This module
keeps those names, plus detectron2's optional ``norm`` attribute, so it slots into detectron2's
bottleneck in place of ``conv2`` and loads mmdetection's ``conv2.conv_offset`` keys directly.
Runs forward and backward on CPU and CUDA, with ResNeXt groups and offset groups; under
autocast in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


class DeformConv2dWithOffset(nn.Module):
    """``norm(deform_conv(x, conv_offset(x)))``; offsets are (dy, dx) per kernel tap."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deform_groups: int = 1,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"channels ({in_channels} -> {out_channels}) not divisible by groups={groups}"
            )
        if in_channels % deform_groups:
            raise ValueError(
                f"in_channels={in_channels} not divisible by deform_groups={deform_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 2 * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.norm = norm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init of the weight (fan-in); zero offsets so a fresh layer is a plain conv."""
        fan_in = self.weight[0].numel()
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # float32: torchvision's CPU deform_conv2d has no bfloat16 / float16 kernel, and the
            # offsets are sampling coordinates (docs/precision.md).
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.to(self.weight.dtype)).to(x.dtype)
        offset = self.conv_offset(x)
        out = deform_conv2d(
            x,
            offset,
            self.weight,
            None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        if self.norm is not None:
            out = self.norm(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}"
        )
