"""``MMDetROIHeads``: Detectron2's ``StandardROIHeads`` with mmdetection's RoI sampling.

With ``MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER`` the proposals of each image are matched by
:class:`~.matcher.MaxIoUMatcher` (mmdetection's Mask R-CNN: low-quality matches at IoU >= 0.5),
then the GT boxes are *prepended* as positives of their own GT (``add_gt_as_proposals``;
Detectron2 appends them and matches them with the rest), then ``subsample_labels`` draws the
``ROI_HEADS`` budget. With ``MODEL.MMDET_TRAIN.MASK_PAD: batch`` bitmap GT masks are
zero-padded to the batch's shape first (mmdetection 3.x). ``head_init="mmdet"`` initialises
the box head's FCs and the mask logits as mmdetection does, in the constructor, so a model
from ``build_model(cfg)`` and one from ``instantiate(cfg.model)`` start alike. These three are
:class:`~.roi_heads_recipe.ROIHeadsRecipeMixin`'s, shared with the cascade heads. Inference is
``StandardROIHeads``'s, with the detections selected by
:func:`~gcnet_d2.modeling.box_selection.box_detections` (ties by index, one per-class NMS
that eager PyTorch and ONNX Runtime compute alike).
"""

from __future__ import annotations

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from ...registry import register_once
from ..box_selection import box_detections
from .roi_heads_recipe import ROIHeadsRecipeMixin
from .sampling import mmdet_roi_matcher


@register_once(ROI_HEADS_REGISTRY)
class MMDetROIHeads(ROIHeadsRecipeMixin, StandardROIHeads):
    """Mask R-CNN heads with mmdetection's RoI sampling and head init (see module doc); the
    arguments are ``StandardROIHeads``'s plus :class:`~.roi_heads_recipe.ROIHeadsRecipeMixin`'s
    ``mmdet_sampling``, ``mask_pad`` and ``head_init``."""

    @classmethod
    def from_config(cls, cfg, input_shape):  # noqa: ANN001, ANN206 - detectron2 signature
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER:
            ret["proposal_matcher"] = mmdet_roi_matcher(
                cfg, cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS, cfg.MODEL.ROI_HEADS.IOU_LABELS
            )
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        if not self.mmdet_sampling:
            return super().label_and_sample_proposals(proposals, targets)
        return self.sample_like_mmdet(proposals, targets, self.proposal_matcher)

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
