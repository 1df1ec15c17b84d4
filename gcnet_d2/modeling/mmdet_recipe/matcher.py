"""mmdetection's ``MaxIoUAssigner`` as a Detectron2 ``Matcher``.

Thresholds and labels work exactly as in ``Matcher`` (each prediction takes its
highest-IoU ground truth). Only the low-quality rule differs: Detectron2 makes every GT's
best predictions positive at any IoU and leaves them matched to their own argmax GT;
mmdetection (``match_low_quality=True, gt_max_assign_all=True``) makes them positive only
when that best IoU is at least ``min_pos_iou``, and assigns them to *that* GT, later GTs
winning when one prediction is the best of several.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.matcher import Matcher


class MaxIoUMatcher(Matcher):
    """``Matcher`` with mmdetection's low-quality matches (``min_pos_iou``); ``None`` turns
    low-quality matching off (mmdetection's ``match_low_quality=False``)."""

    def __init__(
        self, thresholds: Sequence[float], labels: Sequence[int], min_pos_iou: float | None
    ) -> None:
        super().__init__(list(thresholds), list(labels), allow_low_quality_matches=False)
        self.min_pos_iou = min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``match_quality_matrix`` (G, N): IoU of G ground truths with N predictions.
        Returns matched GT index (N,) and label (N,) as ``Matcher`` does."""
        matches, labels = super().__call__(match_quality_matrix)
        if self.min_pos_iou is None or match_quality_matrix.numel() == 0:
            return matches, labels
        best = match_quality_matrix.max(dim=1).values  # per GT
        # GTs whose best IoU is below min_pos_iou take nothing (no IoU equals +inf)
        best = best.masked_fill(best < self.min_pos_iou, float("inf"))
        gt_index, pred_index = nonzero_tuple(match_quality_matrix == best[:, None])
        if len(pred_index) > 0:
            # the last GT taking a prediction wins (mmdetection assigns GT after GT)
            last = torch.full_like(matches, -1)
            last.scatter_reduce_(0, pred_index, gt_index, reduce="amax")
            matches[pred_index] = last[pred_index]
            labels[pred_index] = 1
        return matches, labels
