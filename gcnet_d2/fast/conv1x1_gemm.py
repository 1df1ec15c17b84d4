"""1x1 convolutions on large CPU feature maps run as one matrix product at inference.

A stride-1, unpadded, ungrouped 1x1 convolution of an NCHW tensor is the product of the
``C_out x C_in`` weight with each image's ``C_in x (H*W)`` matrix. On the CPU, oneDNN's
convolution reorders such maps into its blocked layout and back; at the FPN's finest levels
(``res2``: 64/256 channels at 200x336 for an 800x1333 image) that costs more than the
arithmetic, and MKL's GEMM on the plain layout is 1.3x to 3x faster (the mask predictor's 1x1
on 100 RoIs of 28x28: 3x). On small maps (50x84 and coarser) oneDNN wins, so the product is
taken only from :data:`MIN_POSITIONS` positions per call. Figures: docs/benchmark.md.

Same function up to float32 summation order (~1e-6 relative, as the norm fold). Taken only in
eager CPU inference and in ``torch.jit.trace`` (the product traces with symbolic sizes; the
size test is read at trace time); training, ``torch.compile`` and ``torch.export`` (ONNX)
use ``F.conv2d``. ``FAST.CONV1X1_GEMM`` switches it: the modules it marks are the
:class:`~.norm_fold.NormFoldingConv2d` ones with ``gemm_1x1`` set. It reads NCHW maps only:
with ``FAST.CHANNELS_LAST`` (:mod:`.channels_last`, on by default) oneDNN takes channels-last
maps without reordering and the product is not taken.
"""

from __future__ import annotations

import torch
from torch import nn

#: N*H*W from which the product beats oneDNN's 1x1 convolution (2 CPU threads, torch 2.14:
#: 16,800 positions 0.73x, 4,200 positions 1.34x of the convolution's time).
MIN_POSITIONS = 10_000


def gemm_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on ``x`` is a 1x1 product worth taking (see the module doc)."""
    return (
        getattr(conv, "gemm_1x1", False)
        and x.device.type == "cpu"
        and x.dim() == 4
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and x.is_contiguous()
        and x.shape[0] * x.shape[2] * x.shape[3] >= MIN_POSITIONS
    )


def conv1x1_as_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight``, as ``weight @ x`` per image."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    w2d = weight.reshape(weight.shape[0], c)
    if bias is None:
        out = torch.matmul(w2d, flat)
    else:
        out = torch.baddbmm(bias.reshape(1, -1, 1), w2d.expand(n, -1, -1), flat)
    return out.reshape(n, weight.shape[0], h, w)


__all__ = ["MIN_POSITIONS", "conv1x1_as_gemm", "gemm_applies"]
