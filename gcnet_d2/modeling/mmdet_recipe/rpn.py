"""``MMDetRPN``: Detectron2's RPN with mmdetection's anchor labelling for training.

Two switches (``MODEL.MMDET_TRAIN``), each Detectron2's stock behaviour when off:

- ``RPN_MAX_IOU_ASSIGNER``: anchors are matched by :class:`~.matcher.MaxIoUMatcher`
  (low-quality matches only at IoU >= ``RPN_MIN_POS_IOU``, re-assigned to that GT);
- ``RPN_VALID_ANCHORS``: before matching, anchors are removed whose centre lies outside the
  image's own pad shape (its size rounded up to ``PAD_SIZE_DIVISOR``: the anchors in another
  image's batch padding) and, when ``MODEL.RPN.BOUNDARY_THRESH >= 0``, anchors crossing the
  image border by more than that (mmdetection's ``allowed_border``). Removed anchors are
  ignored by the loss, and no GT can take one as its best anchor.

Proposals (training and inference) are selected by
:func:`~gcnet_d2.modeling.box_selection.top_proposals`: detectron2's steps with ties ordered by
index and one per-level NMS that eager PyTorch and ONNX Runtime compute alike.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, Instances, pairwise_iou

from ...registry import register_once
from ..box_selection import top_proposals
from .matcher import MaxIoUMatcher
from .validation import validate_mmdet_train_config


def valid_anchor_mask(
    anchors: Boxes,
    image_size: tuple[int, int],
    pad_size_divisor: int,
    boundary_thresh: float,
    centers: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anchors mmdetection would match in an image of ``image_size`` (h, w): centre inside
    the image's pad shape and, for ``boundary_thresh >= 0``, inside the image +- it.
    ``centers`` may pass ``anchors.get_centers()`` when it is shared by several images."""
    h, w = image_size
    pad_h = -(-h // pad_size_divisor) * pad_size_divisor
    pad_w = -(-w // pad_size_divisor) * pad_size_divisor
    centers = anchors.get_centers() if centers is None else centers
    valid = (centers[:, 0] < pad_w) & (centers[:, 1] < pad_h)
    if boundary_thresh >= 0:
        valid &= anchors.inside_box(image_size, boundary_thresh)
    return valid


@register_once(PROPOSAL_GENERATOR_REGISTRY)
class MMDetRPN(RPN):
    """RPN with mmdetection's anchor validity and assigner in training (see module doc)."""

    @configurable
    def __init__(
        self, *, valid_anchors: bool = False, pad_size_divisor: int = 32, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.valid_anchors = bool(valid_anchors)
        self.pad_size_divisor = int(pad_size_divisor)

    @classmethod
    def from_config(cls, cfg, input_shape):  # noqa: ANN001, ANN206 - detectron2 signature
        validate_mmdet_train_config(cfg)
        ret = super().from_config(cfg, input_shape)
        t = cfg.MODEL.MMDET_TRAIN
        if t.RPN_MAX_IOU_ASSIGNER:
            ret["anchor_matcher"] = MaxIoUMatcher(
                cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS, t.RPN_MIN_POS_IOU
            )
        ret["valid_anchors"] = t.RPN_VALID_ANCHORS
        ret["pad_size_divisor"] = t.PAD_SIZE_DIVISOR
        return ret

    def predict_proposals(
        self,
        anchors: list[Boxes],
        pred_objectness_logits: list[torch.Tensor],
        pred_anchor_deltas: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Instances]:
        with torch.no_grad():
            return top_proposals(
                self._decode_proposals(anchors, pred_anchor_deltas),
                pred_objectness_logits,
                image_sizes,
                self.nms_thresh,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if not self.valid_anchors:
            return super().label_and_sample_anchors(anchors, gt_instances)
        anchors = Boxes.cat(anchors)
        centers = anchors.get_centers()
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            gt_boxes = inst.gt_boxes
            keep = valid_anchor_mask(
                anchors,
                inst.image_size,
                self.pad_size_divisor,
                self.anchor_boundary_thresh,
                centers,
            )
            if bool(keep.all()):  # e.g. the batch's largest image: no subset to take
                idx, labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
                labels = labels.to(torch.int8)
                matched = gt_boxes.tensor[idx] if len(gt_boxes) > 0 else None
            else:
                index = keep.nonzero().squeeze(1)
                labels = torch.full((len(anchors),), -1, dtype=torch.int8, device=keep.device)
                idx, lab = self.anchor_matcher(pairwise_iou(gt_boxes, anchors[index]))
                labels[index] = lab.to(labels.dtype)
                matched = None
                if len(gt_boxes) > 0:
                    matched = gt_boxes.tensor.new_zeros((len(anchors), 4))
                    matched[index] = gt_boxes.tensor[idx]
            if matched is None:  # no GT: the values are never read (no positive anchor)
                matched = gt_boxes.tensor.new_zeros((len(anchors), 4))
            gt_labels.append(self._subsample_labels(labels))
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes
