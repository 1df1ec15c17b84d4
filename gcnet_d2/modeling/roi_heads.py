"""``MMDetROIHeads``: Detectron2's ``StandardROIHeads`` with mmdetection's RoI sampling.

With ``MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER`` the proposals of each image are matched by
:class:`~.assign.MaxIoUMatcher` (mmdetection's Mask R-CNN: low-quality matches at IoU >= 0.5),
then the GT boxes are *prepended* as positives of their own GT (``add_gt_as_proposals``;
Detectron2 appends them and matches them with the rest), then ``subsample_labels`` draws the
``ROI_HEADS`` budget. With ``MODEL.MMDET_TRAIN.MASK_PAD: batch`` bitmap GT masks are
zero-padded to the batch's shape first (mmdetection 3.x). Inference is ``StandardROIHeads``
unchanged.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import nonzero_tuple
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from ..config import validate_mmdet_train_config
from ..registry import register_once
from .assign import MaxIoUMatcher
from .indexed_masks import IndexedBitMasks
from .inference_options import apply_roi_heads_options, roi_heads_options
from .init import init_box_head_like_mmdet, init_mask_head_like_mmdet


def sample_with_gt_prepended(
    proposal_boxes: Boxes,
    targets: Instances,
    matcher: Matcher,
    batch_size: int,
    positive_fraction: float,
    num_classes: int,
) -> Instances:
    """mmdetection's ``assign`` + ``RandomSampler(add_gt_as_proposals=True)`` for one image.

    Returns the sampled RoIs, positives first, with ``proposal_boxes``, ``gt_classes``
    (``num_classes`` = background), every ``gt_*`` field of the matched GT, and
    ``proposal_is_gt`` (the row is one of the prepended GTs; cascade stages drop those).
    Bitmap GT masks come as :class:`~.indexed_masks.IndexedBitMasks` (no per-RoI copies).
    """
    num_gt = len(targets)
    matched, labels = matcher(pairwise_iou(targets.gt_boxes, proposal_boxes))
    device = matched.device
    matched = torch.cat([torch.arange(num_gt, device=device), matched])
    labels = torch.cat([labels.new_ones(num_gt), labels])
    boxes = Boxes.cat([targets.gt_boxes, proposal_boxes])
    if num_gt > 0:
        gt_classes = targets.gt_classes[matched]
        gt_classes[labels == 0] = num_classes
        gt_classes[labels == -1] = -1
    else:
        gt_classes = torch.full_like(matched, num_classes)
    fg, bg = subsample_labels(gt_classes, batch_size, positive_fraction, num_classes)
    index = torch.cat([fg, bg])
    sampled = Instances(targets.image_size)
    sampled.proposal_boxes = boxes[index]
    sampled.gt_classes = gt_classes[index]
    sampled.proposal_is_gt = index < num_gt
    if num_gt > 0:
        rows = matched[index]
        for name, value in targets.get_fields().items():
            if name.startswith("gt_") and not sampled.has(name):
                if type(value) is BitMasks:  # indices into the GT bitmaps, not copies of them
                    value = IndexedBitMasks(value.tensor, torch.arange(num_gt, device=device))
                sampled.set(name, value[rows])
    return sampled


def pad_gt_masks_to_batch(images: ImageList, targets: list[Instances]) -> None:
    """Zero-pad each target's ``BitMasks`` to the padded batch shape ``images.tensor`` has.

    mmdetection 3.x pads GT bitmaps to the batch input shape before RoIAlign cuts the 28x28
    targets; where a bitmap ends at an object (an image whose size is a multiple of 32, in a
    batch with a larger image), RoIAlign's samples in its last pixel then blend with zeros
    instead of repeating the edge. Polygon masks have no padding and are left alone.
    """
    height, width = images.tensor.shape[-2:]
    for inst in targets:
        masks = inst.get("gt_masks") if inst.has("gt_masks") else None
        if isinstance(masks, BitMasks):
            h, w = masks.tensor.shape[-2:]
            if h > height or w > width:
                raise ValueError(
                    f"gt_masks of size {(h, w)} larger than the padded batch {(height, width)}"
                )
            if (h, w) != (height, width):
                padded = masks.tensor.new_zeros((len(masks), height, width))
                padded[:, :h, :w] = masks.tensor
                inst.gt_masks = BitMasks(padded)


def mmdet_roi_matcher(cfg, thresholds: list[float], labels: list[int]) -> MaxIoUMatcher:  # noqa: ANN001
    """The RoI matcher that ``MODEL.MMDET_TRAIN`` asks for, at ``thresholds`` / ``labels``."""
    t = cfg.MODEL.MMDET_TRAIN
    return MaxIoUMatcher(
        thresholds, labels, t.ROI_MIN_POS_IOU if t.ROI_LOW_QUALITY_MATCHES else None
    )


def log_sample_sizes(sampled: list[Instances], num_classes: int) -> None:
    """The ``roi_head/num_{fg,bg}_samples`` events Detectron2's sampler logs."""
    fg = sum(int(nonzero_tuple(s.gt_classes != num_classes)[0].numel()) for s in sampled)
    total = sum(len(s) for s in sampled)
    storage = get_event_storage()
    storage.put_scalar("roi_head/num_fg_samples", fg / max(len(sampled), 1))
    storage.put_scalar("roi_head/num_bg_samples", (total - fg) / max(len(sampled), 1))


@register_once(ROI_HEADS_REGISTRY)
class MMDetROIHeads(StandardROIHeads):
    """Mask R-CNN heads with mmdetection's RoI sampling and head init (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        mmdet_sampling: bool = False,
        mask_pad: str = "image",
        parallel_roi_align: bool = True,
        conv1x1_gemm: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.mmdet_sampling = bool(mmdet_sampling)
        self.mask_pad = mask_pad
        apply_roi_heads_options(self, parallel_roi_align, conv1x1_gemm)

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
        ret.update(roi_heads_options(cfg))
        if t.HEAD_INIT == "mmdet":
            init_box_head_like_mmdet(ret["box_head"])
            if ret.get("mask_head") is not None:
                init_mask_head_like_mmdet(ret["mask_head"])
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
