"""``MMDetROIHeads``: Detectron2's ``StandardROIHeads`` with mmdetection's RoI sampling.

With ``MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER`` the proposals of each image are matched by
:class:`~.matcher.MaxIoUMatcher` (mmdetection's Mask R-CNN: low-quality matches at IoU >= 0.5),
then the GT boxes are *prepended* as positives of their own GT (``add_gt_as_proposals``;
Detectron2 appends them and matches them with the rest), then ``subsample_labels`` draws the
``ROI_HEADS`` budget. With ``MODEL.MMDET_TRAIN.MASK_PAD: batch`` bitmap GT masks are
zero-padded to the batch's shape first (mmdetection 3.x). ``head_init="mmdet"`` initialises
the box head's FCs and the mask logits as mmdetection does, in the constructor, so a model
from ``build_model(cfg)`` and one from ``instantiate(cfg.model)`` start alike. Inference is
``StandardROIHeads``'s, with the detections selected by
:func:`~gcnet_d2.modeling.box_selection.box_detections` (ties by index, one per-class NMS
that eager PyTorch and ONNX Runtime compute alike).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from ...config import validate_mmdet_train_config
from ...registry import register_once
from ..box_selection import box_detections
from .init import init_roi_heads
from .sampling import (
    log_sample_sizes,
    mmdet_roi_matcher,
    pad_gt_masks_to_batch,
    sample_with_gt_prepended,
)


@register_once(ROI_HEADS_REGISTRY)
class MMDetROIHeads(StandardROIHeads):
    """Mask R-CNN heads with mmdetection's RoI sampling and head init (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        mmdet_sampling: bool = False,
        mask_pad: str = "image",
        head_init: str = "detectron2",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.mmdet_sampling = bool(mmdet_sampling)
        self.mask_pad = mask_pad
        self.head_init = head_init
        init_roi_heads(self, head_init)

    @classmethod
    def from_config(cls, cfg, input_shape):  # noqa: ANN001, ANN206 - detectron2 signature
        validate_mmdet_train_config(cfg)
        ret = super().from_config(cfg, input_shape)
        t = cfg.MODEL.MMDET_TRAIN
        if t.ROI_MAX_IOU_ASSIGNER:
            ret["proposal_matcher"] = mmdet_roi_matcher(
                cfg, cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS, cfg.MODEL.ROI_HEADS.IOU_LABELS
            )
        ret["mmdet_sampling"] = t.ROI_MAX_IOU_ASSIGNER
        ret["mask_pad"] = t.MASK_PAD
        ret["head_init"] = t.HEAD_INIT
        return ret

    def forward(self, images, features, proposals, targets=None):  # noqa: ANN001, ANN201
        if self.training and self.mask_pad == "batch" and targets is not None:
            pad_gt_masks_to_batch(images, targets)
        return super().forward(images, features, proposals, targets)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        if not self.mmdet_sampling:
            return super().label_and_sample_proposals(proposals, targets)
        sampled = [
            sample_with_gt_prepended(
                p.proposal_boxes,
                t,
                self.proposal_matcher,
                self.batch_size_per_image,
                self.positive_fraction,
                self.num_classes,
            )
            for p, t in zip(proposals, targets, strict=True)
        ]
        log_sample_sizes(sampled, self.num_classes)
        return sampled

    def _forward_box(self, features, proposals):  # noqa: ANN001, ANN202 - detectron2 signature
        if self.training:
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        predictor = self.box_predictor
        return box_detections(
            predictor.predict_boxes(predictions, proposals),
            predictor.predict_probs(predictions, proposals),
            [x.image_size for x in proposals],
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
