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
        best = match_quality_matrix.max(dim=1, keepdim=True).values  # per GT
        takes = (match_quality_matrix == best) & (best >= self.min_pos_iou)
        # GT index + 1 of the last GT taking each prediction (0: none), i.e. later GTs win.
        order = torch.arange(1, len(best) + 1, device=takes.device)[:, None]
        last = (takes * order).max(dim=0).values
        low_quality = last > 0
        matches = torch.where(low_quality, last - 1, matches)
        labels[low_quality] = 1
        return matches, labels
