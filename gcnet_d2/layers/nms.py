"""Per-class NMS with one definition that eager PyTorch and ONNX Runtime both compute.

:func:`class_nms` keeps, class by class, the boxes that greedy NMS keeps when boxes are taken
in order of score, ties going to the lower index, a box being dropped when its IoU with a kept
box of its class exceeds ``iou_threshold``. The kept indices come back in that same order
(score descending, ties by index). Both the order and the IoU are pinned:

- the boxes are ranked once (a stable sort of the scores) and NMS runs on the ranks, which are
  all different, so no kernel's handling of equal scores can change the result;
- eager: ``torchvision.ops.nms`` for each class present; ONNX: one ``NonMaxSuppression`` with
  the class as its class dimension. Both suppress at ``IoU > threshold`` with the IoU computed
  the same way in float32 (intersection / (area of the kept box + area of the other - the
  intersection)).

torchvision's ``batched_nms`` offers neither: eager on the CPU it loops over classes above
4,000 boxes and shifts boxes by class-dependent offsets below (which rounds their coordinates),
a trace always records the shifted form, and equal scores are ordered by the sort kernel.
A TorchScript trace (no ONNX) records that shifted form here too, as a trace cannot record the
loop over classes; docs/deploy.md says what that changes.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, nms

from ..utils.tracing import exporting_to_onnx, tracing_to_torchscript

__all__ = ["class_nms", "stable_topk"]

INT64_MAX = 2**63 - 1


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row of ``scores`` (last dim), ties to the lower index, in
    that order: what ONNX ``TopK`` returns. ``torch.topk`` orders (and may pick) equal values
    differently, and equal scores are common (a flat image region, the padding)."""
    if exporting_to_onnx():  # ONNX TopK is this order; a stable sort won't export
        size = scores.shape[-1]  # a tensor while tracing: the graph keeps it symbolic
        k = torch.clamp(size, max=k) if isinstance(size, torch.Tensor) else min(size, k)
        return scores.topk(k, dim=-1)
    values, indices = scores.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def _stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting the vector ``scores`` descending, ties by index."""
    return stable_topk(scores, INT64_MAX)[1]


class _NonMaxSuppression(torch.autograd.Function):
    """Per-class greedy NMS on distinct ranks, exported as ONNX ``NonMaxSuppression``."""

    @staticmethod
    def forward(  # noqa: ANN205 - autograd.Function signature
        ctx,  # noqa: ANN001
        boxes: torch.Tensor,
        ranks: torch.Tensor,
        classes: torch.Tensor,
        iou_threshold: float,
        num_classes: int,
    ):
        kept = [boxes.new_zeros(0, dtype=torch.int64)]
        for c in torch.unique(classes).tolist():
            members = torch.nonzero(classes == c).squeeze(1)
            kept.append(members[nms(boxes[members], ranks[members], iou_threshold)])
        return torch.cat(kept)

    @staticmethod
    def symbolic(g, boxes, ranks, classes, iou_threshold: float, num_classes: int):  # noqa: ANN001, ANN205
        def const(value: torch.Tensor):  # noqa: ANN202
            return g.op("Constant", value_t=value)

        axis0 = const(torch.tensor([0], dtype=torch.int64))
        class_ids = const(torch.arange(num_classes, dtype=torch.int64).unsqueeze(1))  # C x 1
        member = g.op("Equal", class_ids, g.op("Unsqueeze", classes, axis0))  # C x N
        # Ranks are >= 1: 0 (not above the score threshold 0) hides a box from other classes.
        class_ranks = g.op(
            "Where", member, g.op("Unsqueeze", ranks, axis0), const(torch.tensor(0.0))
        )
        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, axis0),  # 1 x N x 4
            g.op("Unsqueeze", class_ranks, axis0),  # 1 x C x N
            const(torch.tensor([INT64_MAX], dtype=torch.int64)),
            const(torch.tensor([iou_threshold], dtype=torch.float32)),
            const(torch.tensor([0.0], dtype=torch.float32)),
        )  # K x (batch, class, box)
        return g.op("Gather", selected, const(torch.tensor(2, dtype=torch.int64)), axis_i=1)


def class_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float,
    num_classes: int,
) -> torch.Tensor:
    """Indices of the boxes (N x 4, x1 y1 x2 y2) that per-class NMS keeps, by score
    descending, ties by index (see the module doc). ``classes`` are int64 in
    ``[0, num_classes)``."""
    boxes = boxes.float()
    n = scores.shape[0]
    order = _stable_order(scores)
    ranks = torch.zeros_like(scores, dtype=torch.float32).scatter(
        0, order, torch.arange(n, 0, -1, dtype=torch.float32, device=scores.device)
    )
    if exporting_to_onnx():
        keep = _NonMaxSuppression.apply(boxes, ranks, classes, float(iou_threshold), num_classes)
    elif tracing_to_torchscript():
        keep = batched_nms(boxes, ranks, classes, iou_threshold)
    else:
        keep = _NonMaxSuppression.forward(None, boxes, ranks, classes, iou_threshold, num_classes)
    return keep[_stable_order(ranks[keep])]
