"""How far an exported detector's outputs are from the eager model's, field by field.

Both sides are detectron2 ``Instances`` before the final resize (``do_postprocess=False``):
boxes in input-image pixels, ``scores``, ``pred_classes`` and ``pred_masks`` (N x 1 x M x M
mask probabilities of the RoIs). Box differences are reported relative to the image's longer
side ("scale-relative"), so one tolerance fits every image size.

Detections are paired, not compared by position: scores that are equal in one runtime (a
saturated softmax gives many exact 1.0s, ordered by index) can differ in the last bit in the
other and reorder the list. Each expected detection, by score, takes the unpaired detection
of its class whose box is nearest (:func:`pair_detections`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from detectron2.structures import Instances

# The export tolerances: boxes 1e-3 of the image scale, scores 1e-4, RoI mask probabilities
# 1e-3 (a pasted pixel can flip only where the probability is that close to the 0.5
# threshold; full-width X-101 rows differ by ~2e-4 between ONNX Runtime and eager).
BOX_TOL = 1e-3
SCORE_TOL = 1e-4
MASK_TOL = 1e-3


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


def pair_detections(
    boxes_a: torch.Tensor, classes_a: torch.Tensor, boxes_b: torch.Tensor, classes_b: torch.Tensor
) -> torch.Tensor:
    """For each detection of ``a`` in order, the index of the unpaired detection of ``b`` of
    the same class with the nearest box (largest coordinate difference), or -1 if none is
    left. ``a`` should come by score, descending."""
    boxes_a, boxes_b = boxes_a.detach().float().cpu(), boxes_b.detach().float().cpu()
    distance = (boxes_a[:, None, :] - boxes_b[None, :, :]).abs().amax(dim=2)
    distance[classes_a.cpu()[:, None] != classes_b.cpu()[None, :]] = math.inf
    pairs = torch.full((len(boxes_a),), -1, dtype=torch.int64)
    for i in range(len(boxes_a)):
        j = int(distance[i].argmin()) if len(boxes_b) else -1
        if j >= 0 and math.isfinite(float(distance[i, j])):
            pairs[i] = j
            distance[:, j] = math.inf
    return pairs


def compare_instances(expected: Instances, got: Instances) -> InstancesDiff:
    """Field-by-field differences of ``got`` from ``expected``, detections paired by
    :func:`pair_detections`. Differing counts are reported as such (``box``/``score``/
    ``mask`` are then ``inf``); so is a detection with no partner of its class."""
    n_exp, n_got = len(expected), len(got)
    inf = math.inf
    if n_exp != n_got:
        return InstancesDiff(n_exp, n_got, False, inf, inf, inf, inf)
    pairs = pair_detections(
        expected.pred_boxes.tensor, expected.pred_classes, got.pred_boxes.tensor, got.pred_classes
    )
    if bool((pairs < 0).any()):
        return InstancesDiff(n_exp, n_got, False, inf, inf, inf, inf)
    got = got[pairs.to(got.pred_classes.device)]
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
