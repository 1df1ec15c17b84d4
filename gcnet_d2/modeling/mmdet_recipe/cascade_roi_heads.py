"""Cascade ROI heads that compute what mmdetection's ``CascadeRoIHead`` computes.

Where detectron2's ``CascadeROIHeads`` differs from mmdetection (and so from the released
GCNet cascade checkpoints), this class follows mmdetection:

- test: the three stages' raw class logits are averaged, then one softmax (detectron2
  averages per-stage probabilities); boxes are the last stage's regression of its inputs;
  detections are selected by :func:`~.box_selection.box_detections` (one NMS formulation in
  eager PyTorch and ONNX Runtime);
- masks: one mask head per stage (``mask_head.{0,1,2}``). At test time all of them run on the
  final boxes and their sigmoid outputs are averaged; in training stage ``k``'s head learns on
  stage ``k``'s foreground proposals;
- training: stage losses are weighted (``MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS``,
  mmdetection's ``stage_loss_weights`` 1, 0.5, 0.25) instead of detectron2's 1/3 gradient
  scaling of the pooled features;
- training, with ``MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER``: every stage samples its RoIs as
  mmdetection does (GTs prepended, ``ROI_HEADS`` budget), and with ``CASCADE_RESAMPLE`` stages
  2 and 3 take the refined boxes of the previous stage's sample *minus its GT rows*, match
  them at their own IoU, prepend the GTs again and re-sample (Detectron2 relabels all refined
  boxes of the first sample, without GTs or re-sampling).

The sampling, ``MASK_PAD`` and ``HEAD_INIT`` plumbing is
:class:`~.roi_heads_recipe.ROIHeadsRecipeMixin`'s, shared with :class:`~.roi_heads.MMDetROIHeads`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, build_mask_head
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from ...registry import register_once
from ..box_selection import box_detections
from .roi_heads_recipe import ROIHeadsRecipeMixin
from .sampling import mmdet_roi_matcher


@register_once(ROI_HEADS_REGISTRY)
class MMDetCascadeROIHeads(ROIHeadsRecipeMixin, CascadeROIHeads):
    """Cascade (Mask) R-CNN heads with mmdetection's test path, per-stage mask heads and
    per-stage loss weights. See the module docstring. The arguments are ``CascadeROIHeads``'s,
    :class:`~.roi_heads_recipe.ROIHeadsRecipeMixin`'s (``mmdet_sampling``, ``mask_pad``,
    ``head_init``), ``stage_loss_weights`` and ``cascade_resample``."""

    @configurable
    def __init__(
        self,
        *,
        stage_loss_weights: Sequence[float],
        cascade_resample: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if cascade_resample and not self.mmdet_sampling:
            raise ValueError("cascade_resample needs mmdet_sampling (GT rows are dropped)")
        self.cascade_resample = bool(cascade_resample)
        if len(stage_loss_weights) != self.num_cascade_stages:
            raise ValueError(
                "MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS needs one weight per stage "
                f"({self.num_cascade_stages}), got {list(stage_loss_weights)!r}"
            )
        if self.mask_on and len(self.mask_head) != self.num_cascade_stages:
            raise ValueError("MMDetCascadeROIHeads needs one mask head per cascade stage")
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)

    @classmethod
    def from_config(cls, cfg, input_shape):  # noqa: ANN001, ANN206 - detectron2 signature
        ret = super().from_config(cfg, input_shape)
        ret["stage_loss_weights"] = cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS
        t = cfg.MODEL.MMDET_TRAIN
        if t.ROI_MAX_IOU_ASSIGNER:
            ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
            ret["proposal_matchers"] = [mmdet_roi_matcher(cfg, [iou], [0, 1]) for iou in ious]
        ret["cascade_resample"] = t.CASCADE_RESAMPLE
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):  # noqa: ANN001, ANN206
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        if not cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE:
            raise ValueError("MMDetCascadeROIHeads needs MODEL.ROI_MASK_HEAD.POOLER_TYPE")
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE,
        )
        shape = ShapeSpec(
            channels=input_shape[in_features[0]].channels, width=resolution, height=resolution
        )
        stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        heads = nn.ModuleList(build_mask_head(cfg, shape) for _ in range(stages))
        return {"mask_in_features": in_features, "mask_pooler": pooler, "mask_head": heads}

    def forward(self, images, features, proposals, targets=None):  # noqa: ANN001, ANN201
        if not self.training:
            return super().forward(images, features, proposals, targets)
        self.pad_gt_masks(images, targets)
        proposals = self.label_and_sample_proposals(proposals, targets)
        return proposals, self._train_stages(features, proposals, targets)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances], stage: int = 0
    ) -> list[Instances]:
        """Stage ``stage``'s sample: mmdetection's (GTs prepended) or Detectron2's."""
        if not self.mmdet_sampling:
            if stage != 0:
                raise RuntimeError("Detectron2's sampler only samples the first stage")
            return super().label_and_sample_proposals(proposals, targets)
        return self.sample_like_mmdet(
            proposals, targets, self.proposal_matchers[stage], log=stage == 0
        )

    def _resample_stage(
        self,
        boxes: list[torch.Tensor],
        previous: list[Instances],
        stage: int,
        targets: list[Instances],
    ) -> list[Instances]:
        """mmdetection's ``refine_bboxes`` + the next stage's assign / sample: the refined
        boxes of the previous sample minus its GT rows, clipped to the image, sampled again."""
        proposals = []
        for b, prev in zip(boxes, previous, strict=True):
            p = Instances(prev.image_size)
            p.proposal_boxes = Boxes(b.detach()[~prev.proposal_is_gt])
            p.proposal_boxes.clip(prev.image_size)
            proposals.append(p)
        return self.label_and_sample_proposals(proposals, targets, stage)

    def _run_stage(self, features, proposals, stage):  # noqa: ANN001, ANN202
        # No 1/num_stages gradient scaling: mmdetection weights the stage losses instead.
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _label_stage(
        self, proposals: list[Instances], stage: int, targets: list[Instances]
    ) -> list[Instances]:
        """Match refined proposals to ground truth with stage ``stage``'s IoU and copy every
        ``gt_*`` field (masks included, which the mask loss of that stage needs)."""
        for props, tgt in zip(proposals, targets, strict=True):
            matched, labels = self.proposal_matchers[stage](
                pairwise_iou(tgt.gt_boxes, props.proposal_boxes)
            )
            if len(tgt) > 0:
                for name, value in tgt.get_fields().items():
                    if name.startswith("gt_"):
                        props.set(name, value[matched])
                gt_classes = props.gt_classes.clone()
                gt_classes[labels == 0] = self.num_classes
            else:
                gt_classes = torch.full_like(matched, self.num_classes)
                props.gt_boxes = Boxes(tgt.gt_boxes.tensor.new_zeros((len(props), 4)))
            props.gt_classes = gt_classes
        return proposals

    def _train_stages(
        self, features: dict[str, torch.Tensor], proposals: list[Instances], targets
    ) -> dict[str, torch.Tensor]:
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        storage = get_event_storage()
        losses = {}
        prev_boxes: list[torch.Tensor] = []
        for k in range(self.num_cascade_stages):
            if k > 0 and self.cascade_resample:
                proposals = self._resample_stage(prev_boxes, proposals, k, targets)
            elif k > 0:
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
                proposals = self._label_stage(proposals, k, targets)
            predictions = self._run_stage(box_features, proposals, k)
            prev_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            with storage.name_scope(f"stage{k}"):
                stage_losses = self.box_predictor[k].losses(predictions, proposals)
                if self.mask_on:
                    stage_losses.update(self._mask_loss(features, proposals, k))
            weight = self.stage_loss_weights[k]
            losses.update({f"{n}_stage{k}": v * weight for n, v in stage_losses.items()})
        return losses

    def _mask_loss(
        self, features: dict[str, torch.Tensor], proposals: list[Instances], stage: int
    ) -> dict[str, torch.Tensor]:
        foreground, _ = select_foreground_proposals(proposals, self.num_classes)
        mask_features = self.mask_pooler(
            [features[f] for f in self.mask_in_features], [x.proposal_boxes for x in foreground]
        )
        return self.mask_head[stage](mask_features, foreground)

    def _forward_box(self, features, proposals, targets=None):  # noqa: ANN001, ANN202
        if self.training:
            raise RuntimeError("MMDetCascadeROIHeads trains through _train_stages")
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        logits, boxes = [], []
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(box_features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            logits.append(predictions[0])
        scores = (sum(logits) / float(self.num_cascade_stages)).softmax(dim=-1)
        # Sizes read from tensor shapes, not len(): a trace keeps them symbolic (len() would
        # bake in the trace image's counts).
        scores = scores.split([p.proposal_boxes.tensor.shape[0] for p in proposals])
        predictor = self.box_predictor[-1]
        return box_detections(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )

    def _forward_mask(self, features, instances):  # noqa: ANN001, ANN202
        if not self.mask_on:
            return instances
        if self.training:
            raise RuntimeError("MMDetCascadeROIHeads trains its mask heads per stage")
        mask_features = self.mask_pooler(
            [features[f] for f in self.mask_in_features], [x.pred_boxes for x in instances]
        )
        probs = sum(head.layers(mask_features).sigmoid() for head in self.mask_head)
        probs = probs / float(len(self.mask_head))
        if probs.shape[1] == 1:
            chosen = probs
        else:  # each detection's own class; gather builds no index tensor on a fixed device
            classes = cat([x.pred_classes for x in instances])
            index = classes.reshape(-1, 1, 1, 1).expand(-1, 1, probs.shape[2], probs.shape[3])
            chosen = probs.gather(1, index)
        counts = [x.pred_classes.shape[0] for x in instances]  # symbolic under tracing
        for inst, masks in zip(instances, chosen.split(counts), strict=True):
            inst.pred_masks = masks
        return instances
