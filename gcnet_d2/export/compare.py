"""How far an exported detector's outputs are from the eager model's, field by field.

Both sides are detectron2 ``Instances`` before the final resize (``do_postprocess=False``):
boxes in input-image pixels, ``scores``, ``pred_classes`` and ``pred_masks`` (N x 1 x M x M
mask probabilities of the RoIs). Box differences are reported relative to the image's longer
side ("scale-relative"), so one tolerance fits every image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from detectron2.structures import Instances

# The export tolerances: boxes 1e-3 of the image scale, scores 1e-4, mask probabilities.
BOX_TOL = 1e-3
SCORE_TOL = 1e-4
MASK_TOL = 1e-4


@dataclass(frozen=True)
class InstancesDiff:
    """The largest differences between two detection results of one image."""

    count_expected: int
    count_got: int
    classes_equal: bool
    box: float  # max |delta| / max(H, W)
    box_px: float  # max |delta| in pixels
    score: float
    mask: float

    @property
    def ok(self) -> bool:
        return (
            self.count_expected == self.count_got
            and self.classes_equal
            and self.box <= BOX_TOL
            and self.score <= SCORE_TOL
            and self.mask <= MASK_TOL
        )

    def summary(self) -> str:
        if self.count_expected != self.count_got:
            return f"{self.count_got} detections where eager has {self.count_expected}"
        return (
            f"{self.count_got} detections, classes {'equal' if self.classes_equal else 'DIFFER'}, "
            f"max |d box| {self.box_px:.3g} px ({self.box:.3g} of the image), "
            f"max |d score| {self.score:.3g}, max |d mask| {self.mask:.3g}"
        )


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def compare_instances(expected: Instances, got: Instances) -> InstancesDiff:
    """Field-by-field differences of ``got`` from ``expected`` (same order of detections).

    Differing counts are reported as such (``box``/``score``/``mask`` are then ``inf``).
    """
    n_exp, n_got = len(expected), len(got)
    if n_exp != n_got:
        inf = math.inf
        return InstancesDiff(n_exp, n_got, False, inf, inf, inf, inf)
    height, width = (int(s) for s in expected.image_size)
    box_px = _max_abs(expected.pred_boxes.tensor, got.pred_boxes.tensor)
    classes_equal = torch.equal(expected.pred_classes.cpu(), got.pred_classes.cpu())
    mask = 0.0
    if expected.has("pred_masks"):
        mask = _max_abs(expected.pred_masks, got.pred_masks)
    return InstancesDiff(
        count_expected=n_exp,
        count_got=n_got,
        classes_equal=classes_equal,
        box=box_px / max(height, width),
        box_px=box_px,
        score=_max_abs(expected.scores, got.scores),
        mask=mask,
    )


def relative_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    """``max |got - expected| / max |expected|`` (the backbone checks' "relative" measure)."""
    expected, got = expected.detach().float().cpu(), got.detach().float().cpu()
    scale = float(expected.abs().max())
    return float((got - expected).abs().max()) / (scale if scale > 0 else 1.0)
