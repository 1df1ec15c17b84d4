"""``class_nms`` in eager PyTorch against greedy NMS written out in Python (boxes by score,
ties by index; IoU in float32 as the module doc says). Inputs are made to be hard: many equal
scores, near-duplicate boxes, IoUs at the threshold. The same op in ONNX Runtime:
tests/layers/test_nms_onnx.py (these need no onnxruntime).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcnet_d2.layers.nms import class_nms, stable_topk


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, thr: float):
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    b = boxes.float().numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept: list[int] = []
    for i in order:
        suppressed = False
        for k in kept:
            if int(classes[k]) != int(classes[i]):
                continue
            w = max(np.float32(0), min(b[k, 2], b[i, 2]) - max(b[k, 0], b[i, 0]))
            h = max(np.float32(0), min(b[k, 3], b[i, 3]) - max(b[k, 1], b[i, 1]))
            inter = np.float32(w * h)
            if inter > 0 and inter / np.float32(area[k] + area[i] - inter) > thr:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


def hard_inputs(n: int, num_classes: int, seed: int):
    """Clusters of near-duplicate boxes, scores from a few values (many ties)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, n // 8), 2, generator=g) * 200
    pick = torch.randint(0, len(centres), (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 3
    wh = 20 + torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randint(0, 6, (n,), generator=g).float() / 5
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize("n,seed", [(64, 1), (300, 2), (5000, 3)])
def test_eager_equals_greedy_reference_with_ties(n, seed):
    boxes, scores, classes = hard_inputs(n, 4, seed)
    keep = class_nms(boxes, scores, classes, 0.5, 4)
    if n <= 300:  # the Python reference is quadratic
        assert keep.tolist() == reference_nms(boxes, scores, classes, 0.5)
    # kept boxes by score descending, ties by index
    pairs = list(zip((-scores[keep]).tolist(), keep.tolist(), strict=True))
    assert pairs == sorted(pairs) and len(keep) < n


# Two 30 x 10 boxes ``shift`` apart: IoU = (30 - s) / (30 + s), exactly 0.5 at s = 10 (kept:
# NMS suppresses above the threshold), a hair above it at s = 9.999: (shift, boxes kept).
THRESHOLD_PAIRS = [(10.0, 2), (9.999, 1), (12.0, 2)]


def threshold_pair(shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[0.0, 0.0, 30.0, 10.0], [shift, 0.0, shift + 30.0, 10.0]])
    return boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64)


def test_iou_at_the_threshold_is_kept_above_it_suppressed():
    for shift, kept in THRESHOLD_PAIRS:
        boxes, scores, classes = threshold_pair(shift)
        eager = class_nms(boxes, scores, classes, 0.5, 4)
        assert eager.tolist() == reference_nms(boxes, scores, classes, 0.5)
        assert len(eager) == kept, (shift, eager)


def test_stable_topk_takes_the_largest_ties_by_lower_index():
    scores = hard_inputs(300, 4, 9)[1].reshape(3, 100)  # six values: many ties in each row
    values, indices = stable_topk(scores, 50)
    for row, vals, idx in zip(scores, values, indices, strict=True):
        expected = sorted(range(100), key=lambda i: (-float(row[i]), i))[:50]
        assert idx.tolist() == expected and torch.equal(vals, row[idx])
    assert stable_topk(scores[0], 500)[1].shape == (100,)  # k beyond the size: all of them


def test_equal_scores_keep_the_lower_index_and_classes_do_not_suppress():
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([box, box, box, [0.0, 0.0, 10.0, 9.0]])
    scores = torch.tensor([0.5, 0.7, 0.7, 0.7])
    classes = torch.tensor([0, 1, 1, 0])
    # class 1: 1 beats 2 (tie, lower index); class 0: 3 (0.7) beats 0 (IoU 0.9)
    assert class_nms(boxes, scores, classes, 0.5, 2).tolist() == [1, 3]


def borderline_pairs(n: int, num_classes: int, seed: int):
    """``n`` pairs of boxes (one pair per class, cycling) whose IoU is within ~1e-4 of 0.5:
    box B is box A moved right by about a third of its width."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 2, generator=g) * 1200
    wh = 20 + torch.rand(n, 2, generator=g) * 110
    dx = wh[:, :1] / 3 * (1 + (torch.rand(n, 1, generator=g) - 0.5) * 2e-4)
    box_a = torch.cat([a, a + wh], dim=1)
    box_b = box_a + torch.cat([dx, torch.zeros_like(dx), dx, torch.zeros_like(dx)], dim=1)
    boxes = torch.stack([box_a, box_b], dim=1).reshape(-1, 4)
    scores = torch.tensor([0.9, 0.8]).repeat(n) - torch.arange(2 * n) * 1e-5
    classes = (torch.arange(n) % num_classes).repeat_interleave(2)
    return boxes, scores, classes


def test_borderline_ious_are_decided_on_the_boxes_themselves():
    """torchvision's ``batched_nms`` (offset form: up to 4,000 coordinates) shifts each
    class's boxes by an offset, which rounds their coordinates, and so decides some of these
    pairs differently from NMS on the boxes themselves; ``class_nms`` decides them as the
    reference does."""
    from torchvision.ops import batched_nms

    boxes, scores, classes = borderline_pairs(480, 80, 8)
    expected = reference_nms(boxes, scores, classes, 0.5)
    keep = class_nms(boxes, scores, classes, 0.5, 80)
    assert keep.tolist() == expected
    assert 0 < len(expected) - 480 < 480  # some pairs above the threshold, some not
    shifted = batched_nms(boxes, scores, classes, 0.5)
    assert set(shifted.tolist()) != set(expected)  # the inputs do tell the two apart
