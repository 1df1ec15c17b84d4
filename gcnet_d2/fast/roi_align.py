"""RoIAlign over several CPU threads: the same kernels, on chunks of the boxes.

torchvision's CPU ``roi_align`` kernel loops over the boxes on one thread, whatever
``torch.get_num_threads()`` says; in a Mask R-CNN at 800x1333 on the CPU it is the largest
single-threaded part of inference (the box head pools 1000 proposals, the mask head 100
detections). Each output row depends only on its own box, so splitting the boxes into one
chunk per thread and running the unchanged kernel on each chunk in a worker thread (the op
releases the GIL) gives the same tensor bit for bit. Figures: docs/benchmark.md.

Eager CPU inference takes this path (no gradient needed, more than one thread, enough boxes
to share out). Eager CPU training does too, for the backward pass, where the kernel is as
serial and costs more (it scatters every bin's samples back into the feature map): each chunk's
gradient is computed by torchvision's own backward kernel in a worker thread and the chunks'
feature-map gradients are summed (the same terms, added in another order: equal to the serial
gradient up to float rounding). A ``torch.jit.trace`` records the same split as TorchScript
forks, so exported TorchScript models pool in parallel too (any box count, gradients flow).
Scripting, ``torch.compile`` and ``torch.export`` (and so ONNX) call the plain
``ROIAlign.forward``.
``FAST.PARALLEL_ROI_ALIGN`` switches it, in every ``ROIPooler`` of the model (any RoI
heads: :func:`enable_parallel_roi_align`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from ..utils.tracing import eager, tracing_to_torchscript
from .swap import restore_classes, swap_classes

#: Below this many boxes per thread the thread hand-off costs more than it saves.
MIN_BOXES_PER_THREAD = 16
#: Forks per RoIAlign call in a ``torch.jit.trace`` (the trace cannot read the thread count
#: of the machine it will run on; two cores are the smallest that gain).
TRACE_PARTS = 2

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roi_align")
            _pool_size = workers
        return _pool


def _pool_chunk(align: ROIAlign, input: torch.Tensor, rois: torch.Tensor, inference: bool):  # noqa: A002, ANN202
    # grad / inference mode are thread-local: the worker takes the caller's
    with torch.inference_mode() if inference else torch.no_grad():
        return ROIAlign.forward(align, input, rois)


def _backward_chunk(
    align: ROIAlign, grad: torch.Tensor, rois: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    h, w = _pair(align.output_size)
    return torch.ops.torchvision._roi_align_backward(
        grad, rois, align.spatial_scale, h, w, *shape, align.sampling_ratio, align.aligned
    )


class _ParallelROIAlignFunction(torch.autograd.Function):
    """RoIAlign whose forward and backward run on chunks of the boxes in worker threads.
    The boxes get no gradient (torchvision's RoIAlign gives them none either)."""

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        input: torch.Tensor,  # noqa: A002
        rois: torch.Tensor,
        align: ParallelROIAlign,
        sizes: list[int],
    ):
        ctx.save_for_backward(rois)
        ctx.align, ctx.sizes, ctx.shape = align, sizes, input.shape
        return align._pooled_in_threads(input, rois, sizes)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (rois,) = ctx.saved_tensors
        pool = _executor(len(ctx.sizes))
        parts = [
            pool.submit(_backward_chunk, ctx.align, g.contiguous(), r, ctx.shape)
            for g, r in zip(grad.split(ctx.sizes), rois.split(ctx.sizes), strict=True)
        ]
        grad_input = parts[0].result()
        for p in parts[1:]:
            grad_input += p.result()
        return grad_input, None, None, None


class ParallelROIAlign(ROIAlign):
    """detectron2's ``ROIAlign`` whose eager CPU inference and training backward spread the
    boxes over threads."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if tracing_to_torchscript():  # ONNX export: one RoiAlign node (below, not eager)
            return self._forward_traced(input, rois)
        threads = torch.get_num_threads()
        if (
            not eager()  # first: the checks below would read sizes into a trace
            or threads < 2
            or input.device.type != "cpu"
            or rois.shape[0] < 2 * MIN_BOXES_PER_THREAD
        ):
            return super().forward(input, rois)
        if input.dtype not in (torch.float32, torch.float64):
            # torchvision's CPU kernels are float32 / float64 only; its autocast rule, which
            # casts to float32, does not reach the worker threads.
            float32 = input.to(torch.float32, memory_format=torch.contiguous_format)
            return self.forward(float32, rois).to(input.dtype)
        sizes = self._balanced_sizes(rois, min(threads, rois.shape[0] // MIN_BOXES_PER_THREAD))
        if torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad):
            return _ParallelROIAlignFunction.apply(input, rois.to(dtype=input.dtype), self, sizes)
        return self._pooled_in_threads(input, rois, sizes)

    def _pooled_in_threads(
        self,
        input: torch.Tensor,  # noqa: A002
        rois: torch.Tensor,
        sizes: list[int],
    ) -> torch.Tensor:
        pool = _executor(len(sizes))
        inference = torch.is_inference_mode_enabled()
        input = input.contiguous()  # noqa: A001 - once here, not by the kernel in every chunk
        parts = [pool.submit(_pool_chunk, self, input, r, inference) for r in rois.split(sizes)]
        return torch.cat([p.result() for p in parts])

    def _forward_traced(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """Under ``torch.jit.trace``: the boxes in :data:`TRACE_PARTS` parts (``tensor_split``:
        any box count, none included), each pooled in a TorchScript fork, which the trace runs
        on the inter-op threads. Values and gradients as the plain kernel's."""
        futures = [
            torch.jit.fork(ROIAlign.forward, self, input, part)
            for part in rois.tensor_split(TRACE_PARTS)
        ]
        return torch.cat([torch.jit.wait(f) for f in futures])

    def _balanced_sizes(self, rois: torch.Tensor, chunks: int) -> list[int]:
        """Consecutive chunk sizes of about equal work. With ``sampling_ratio`` 0 the kernel
        takes ceil(box side / bin side) samples per bin and axis, so a large box costs many
        small ones: split at equal shares of that cost, not of the box count."""
        n = rois.shape[0]
        if self.sampling_ratio > 0:
            cost = torch.ones(n, dtype=torch.float64)
        else:
            h, w = _pair(self.output_size)
            side = (rois[:, 3:5] - rois[:, 1:3]).double().clamp_min(1.0) * self.spatial_scale
            cost = (side[:, 1] / h).ceil().clamp_min(1) * (side[:, 0] / w).ceil().clamp_min(1)
        total = cost.cumsum(0)
        cuts = torch.searchsorted(
            total, total[-1] * torch.arange(1, chunks, dtype=torch.float64) / chunks
        )
        bounds = [0, *(int(c) + 1 for c in cuts), n]
        bounds = sorted(min(max(b, 0), n) for b in bounds)
        return [b - a for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def enable_parallel_roi_align(model: nn.Module) -> nn.Module:
    """Make every ``ROIAlign`` level of every ``ROIPooler`` in ``model`` a
    :class:`ParallelROIAlign` (same settings, no parameters: state dicts unchanged), in place;
    returns ``model``."""
    for module in model.modules():
        if isinstance(module, ROIPooler):
            swap_classes(module.level_poolers, {ROIAlign: ParallelROIAlign})
    return model


def disable_parallel_roi_align(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_parallel_roi_align` (detectron2's ``ROIAlign``); returns ``model``."""
    return restore_classes(model, ParallelROIAlign)


def uses_parallel_roi_align(module: nn.Module) -> bool:
    return any(isinstance(m, ParallelROIAlign) for m in module.modules())


__all__ = [
    "ParallelROIAlign",
    "disable_parallel_roi_align",
    "enable_parallel_roi_align",
    "uses_parallel_roi_align",
]
