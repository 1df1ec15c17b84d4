"""Which boxes the RPN proposes and the box head detects: top-k, clipping, per-class NMS.

The same steps as detectron2's ``find_top_rpn_proposals`` and
``fast_rcnn_inference_single_image`` (and mmdetection's test path), with two choices pinned so
that eager PyTorch, ONNX Runtime and any sort kernel select the same boxes:

- equal scores are ordered by index (:func:`~gcnet_d2.layers.nms.stable_topk`): a flat image
  region or the padding gives many equal objectness logits, and ``torch.topk`` orders them as
  its kernel happens to;
- NMS is :func:`~gcnet_d2.layers.nms.class_nms` (the level, or the class, as NMS's class).

Non-finite boxes or scores are dropped at inference (an error in training), as detectron2
does, but always through the same mask, so a trace has no data-dependent branch.
"""

from __future__ import annotations

import torch
from detectron2.layers import cat
from detectron2.structures import Boxes, Instances

from ..layers.nms import class_nms, stable_topk

__all__ = ["box_detections", "top_proposals"]


def top_proposals(
    proposals: list[torch.Tensor],
    logits: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Per image: each level's ``pre_nms_topk`` best proposals (``proposals[l]`` N x HWA x 4,
    ``logits[l]`` N x HWA), clipped, boxes no larger than ``min_box_size`` dropped, NMS per
    level, the ``post_nms_topk`` best. Returns ``Instances`` with ``proposal_boxes`` and
    ``objectness_logits``, by score descending."""
    per_level = [stable_topk(level_logits, pre_nms_topk) for level_logits in logits]
    results = []
    for n, image_size in enumerate(image_sizes):
        boxes = cat([p[n][idx[n]] for p, (_, idx) in zip(proposals, per_level, strict=True)])
        scores = cat([s[n] for s, _ in per_level])
        levels = cat([torch.full_like(idx[n], lvl) for lvl, (_, idx) in enumerate(per_level)])
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if training and not bool(finite.all()):
            raise FloatingPointError("Predicted boxes or scores contain Inf/NaN: training diverged")
        boxes, scores, levels = Boxes(boxes[finite]), scores[finite], levels[finite]
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = class_nms(boxes.tensor, scores, levels, nms_thresh, len(proposals))
        keep = keep[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


def box_detections(
    boxes: list[torch.Tensor],
    scores: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> list[Instances]:
    """Per image: the box head's boxes (R x 4K, or R x 4 class-agnostic) and probabilities
    (R x K+1, background last) to detections: clipped, ``score > score_thresh``, NMS per class,
    the ``topk_per_image`` best (all if negative). ``Instances`` with ``pred_boxes``,
    ``scores``, ``pred_classes``, by score descending."""
    return [
        _image_detections(b, s, size, score_thresh, nms_thresh, topk_per_image)
        for b, s, size in zip(boxes, scores, image_sizes, strict=True)
    ]


def _image_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> Instances:
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[finite], scores[finite, :-1]
    num_classes = int(scores.shape[1])
    reg_classes = int(boxes.shape[1]) // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_size)
    boxes = clipped.tensor.view(-1, reg_classes, 4)
    selected = scores > score_thresh  # R x K
    rois_classes = selected.nonzero()  # row-major: by RoI, then class
    boxes = boxes[rois_classes[:, 0], 0] if reg_classes == 1 else boxes[selected]
    scores, classes = scores[selected], rois_classes[:, 1]
    keep = class_nms(boxes, scores, classes, nms_thresh, num_classes)
    if topk >= 0:
        keep = keep[:topk]
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = classes[keep]
    return result
