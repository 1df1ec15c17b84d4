"""``class_nms`` / ``stable_topk`` exported to ONNX and run by ONNX Runtime give what eager
PyTorch gives, on the hard inputs of tests/layers/test_nms.py (ties, near-duplicates, IoUs at
the threshold and within 1e-4 of it)."""

from __future__ import annotations

import io

import pytest
import torch

from gcnet_d2.layers.nms import class_nms, stable_topk
from tests.layers.test_nms import (
    THRESHOLD_PAIRS,
    borderline_pairs,
    hard_inputs,
    reference_nms,
    threshold_pair,
)
from tests.missing_packages import require

ort = require("onnxruntime", "the `export` extra, requirements-dev.txt")


class _NMSModule(torch.nn.Module):
    def __init__(self, thr: float, num_classes: int) -> None:
        super().__init__()
        self.thr, self.num_classes = thr, num_classes

    def forward(self, boxes, scores, classes):  # noqa: ANN001, ANN201
        keep = class_nms(boxes, scores, classes, self.thr, self.num_classes)
        return keep, stable_topk(scores, 50)[1]


@pytest.fixture(scope="module")
def onnx_nms():
    """``class_nms`` (IoU 0.5, 4 classes) and ``stable_topk`` (k = 50) in ONNX Runtime."""
    boxes, scores, classes = hard_inputs(64, 4, 0)
    buffer = io.BytesIO()
    torch.onnx.export(
        _NMSModule(0.5, 4),
        (boxes, scores, classes),
        buffer,
        dynamo=False,
        opset_version=16,
        input_names=["boxes", "scores", "classes"],
        output_names=["keep", "top"],
        dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "classes": {0: "n"}},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])

    def run(boxes, scores, classes):  # noqa: ANN001, ANN202
        feeds = {"boxes": boxes.numpy(), "scores": scores.numpy(), "classes": classes.numpy()}
        return [torch.from_numpy(x) for x in session.run(None, feeds)]

    return run


@pytest.mark.parametrize("n,seed", [(64, 4), (700, 5), (5000, 6), (0, 7)])
def test_onnxruntime_equals_eager(onnx_nms, n, seed):
    boxes, scores, classes = hard_inputs(max(n, 1), 4, seed)
    boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    keep, top = onnx_nms(boxes, scores, classes)
    assert torch.equal(keep, class_nms(boxes, scores, classes, 0.5, 4))
    assert torch.equal(top, stable_topk(scores, 50)[1])


def test_iou_at_the_threshold_is_kept_above_it_suppressed(onnx_nms):
    for shift, kept in THRESHOLD_PAIRS:
        boxes, scores, classes = threshold_pair(shift)
        keep = onnx_nms(boxes, scores, classes)[0]
        assert torch.equal(keep, class_nms(boxes, scores, classes, 0.5, 4))
        assert len(keep) == kept, (shift, keep)


def test_borderline_ious_are_decided_on_the_boxes_themselves(onnx_nms):
    boxes, scores, classes = borderline_pairs(480, 80, 8)
    classes4 = classes % 4  # the exported op's 4 classes
    expected4 = reference_nms(boxes, scores, classes4, 0.5)
    assert 0 < len(expected4) - 480 < 480  # some pairs above the threshold, some not
    assert onnx_nms(boxes, scores, classes4)[0].tolist() == expected4
