"""Convolution weights in channels-last memory order: the CPU convolves without reordering.

oneDNN, which runs PyTorch's CPU convolutions, computes them on channels-last (NHWC) data, and
on this CPU kind with AVX-512 BF16 / AMX its fast bfloat16 kernels exist only for that order.
PyTorch's default NCHW maps are reordered into it and back around every convolution. When a
convolution's weight is channels-last, PyTorch hands oneDNN channels-last data and returns a
channels-last map, which the next convolution, the ReLUs, sums and upsampling keep: the first
convolution reorders the image once and the reorders are gone. Measured on GC r16 Mask R-CNN
R-50-FPN at 800 x 1216, 2 threads, Intel Xeon with AMX (``benchmarks/precision.py --parts
speed``, one run): bf16 inference 1.50 s with NCHW maps, 1.16 s channels-last (0.605x ->
0.462x of fp32); fp32 1.087x with NCHW maps (docs/precision.md).

Only memory order changes: every value, shape, name and state-dict entry is as before (a
state dict loads into the channels-last parameters by copying); oneDNN may pick another
summation order (float32 rounding). The 1x1 GEMM of :mod:`.conv1x1_gemm` (written for NCHW
maps, where it avoids oneDNN's reorder) is not taken on channels-last maps. Tracing,
scripting, ``torch.compile``, ``torch.export`` and ONNX see the same operators (memory order
is not part of their graphs).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["disable_channels_last", "enable_channels_last", "is_channels_last"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _strides(shape: torch.Size, memory_format: torch.memory_format) -> tuple[int, ...]:
    """The strides of a dense tensor of ``shape`` in ``memory_format``. Compared stride by
    stride, not with ``is_contiguous(memory_format)``: a 1 x 1 kernel or map counts as
    contiguous in both orders, but PyTorch picks the convolution's order from the strides."""
    return torch.empty(shape, device="meta", memory_format=memory_format).stride()


def _set_format(
    model: nn.Module, memory_format: torch.memory_format, cpu_only: bool = False
) -> nn.Module:
    for module in model.modules():
        weight = getattr(module, "weight", None) if isinstance(module, _CONVS) else None
        if weight is None or weight.dim() != 4 or (cpu_only and not weight.is_cpu):
            continue
        strides = _strides(weight.shape, memory_format)
        if weight.stride() != strides:  # applying twice copies nothing
            data = torch.empty_strided(weight.shape, strides, dtype=weight.dtype,
                                       device=weight.device)  # fmt: skip
            weight.data = data.copy_(weight.data)
    return model


def enable_channels_last(model: nn.Module) -> nn.Module:
    """Every 2-D convolution weight of ``model`` on the CPU channels-last, in place; returns
    ``model``. Weights on a GPU keep their order: the reason is measured on the CPU only."""
    return _set_format(model, torch.channels_last, cpu_only=True)


def disable_channels_last(model: nn.Module) -> nn.Module:
    """Every 2-D convolution weight of ``model`` back in PyTorch's default order, in place."""
    return _set_format(model, torch.contiguous_format)


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Whether a 4-D ``tensor`` has channels-last strides (compared stride by stride: for a
    1 x 1 kernel or map, ``is_contiguous`` holds in both orders)."""
    return tensor.dim() == 4 and tensor.stride() == _strides(tensor.shape, torch.channels_last)
