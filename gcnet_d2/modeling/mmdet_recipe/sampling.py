"""mmdetection's RoI sampling as functions on detectron2's structures (one image at a time).

``MaxIoUAssigner`` + ``RandomSampler(add_gt_as_proposals=True)``: the proposals are matched
by :class:`~.matcher.MaxIoUMatcher`, the GT boxes are *prepended* as positives of their own
GT, then ``subsample_labels`` draws the budget. Used by both RoI heads of the recipe through
:class:`~.roi_heads_recipe.ROIHeadsRecipeMixin` (every cascade stage samples this way).
"""

from __future__ import annotations

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .indexed_masks import IndexedBitMasks
from .matcher import MaxIoUMatcher

#: ``MODEL.MMDET_TRAIN.MASK_PAD`` / ``mask_pad``: GT bitmaps padded per image (mmdetection
#: 2.x) or to the padded batch (3.x, :func:`pad_gt_masks_to_batch`).
MASK_PAD_MODES = ("image", "batch")


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


__all__ = [
    "MASK_PAD_MODES",
    "log_sample_sizes",
    "mmdet_roi_matcher",
    "pad_gt_masks_to_batch",
    "sample_with_gt_prepended",
]
