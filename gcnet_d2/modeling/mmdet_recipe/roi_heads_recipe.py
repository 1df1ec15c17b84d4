"""``ROIHeadsRecipeMixin``: the recipe's plumbing, shared by both of its RoI heads.

:class:`~.roi_heads.MMDetROIHeads` (on ``StandardROIHeads``) and
:class:`~.cascade_roi_heads.MMDetCascadeROIHeads` (on ``CascadeROIHeads``) put it first among
their bases. From a config it checks the ``MODEL.MMDET_TRAIN`` combination and reads the three
switches every RoI head of the recipe takes:

- ``mmdet_sampling`` (``ROI_MAX_IOU_ASSIGNER``): :meth:`~ROIHeadsRecipeMixin.sample_like_mmdet`
  samples the RoIs of each image as mmdetection does, GTs prepended (:mod:`.sampling`);
- ``mask_pad`` (``MASK_PAD``): ``"batch"`` zero-pads the GT bitmaps to the padded batch before
  training (mmdetection 3.x);
- ``head_init`` (``HEAD_INIT``): ``"mmdet"`` re-draws the box FCs and mask logits of every
  head as mmdetection does, in the constructor, right after detectron2 built the heads.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.structures import ImageList, Instances

from .head_init import init_roi_heads
from .sampling import (
    MASK_PAD_MODES,
    log_sample_sizes,
    pad_gt_masks_to_batch,
    sample_with_gt_prepended,
)
from .validation import validate_mmdet_train_config


class ROIHeadsRecipeMixin:
    """mmdetection's RoI sampling, mask padding and head init for a detectron2 RoI heads class
    (the next base in the MRO); see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        mmdet_sampling: bool = False,
        mask_pad: str = "image",
        head_init: str = "detectron2",
        **kwargs: object,
    ) -> None:
        if mask_pad not in MASK_PAD_MODES:
            raise ValueError(f"mask_pad must be one of {MASK_PAD_MODES}, got {mask_pad!r}")
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
        ret["mmdet_sampling"] = t.ROI_MAX_IOU_ASSIGNER
        ret["mask_pad"] = t.MASK_PAD
        ret["head_init"] = t.HEAD_INIT
        return ret

    def forward(self, images, features, proposals, targets=None):  # noqa: ANN001, ANN201
        if self.training:
            self.pad_gt_masks(images, targets)
        return super().forward(images, features, proposals, targets)

    def pad_gt_masks(self, images: ImageList, targets: list[Instances] | None) -> None:
        """With ``mask_pad="batch"``: the targets' GT bitmaps zero-padded to the batch shape."""
        if self.mask_pad == "batch" and targets is not None:
            pad_gt_masks_to_batch(images, targets)

    @torch.no_grad()
    def sample_like_mmdet(
        self,
        proposals: list[Instances],
        targets: list[Instances],
        matcher: Matcher,
        log: bool = True,
    ) -> list[Instances]:
        """Each image's proposals matched by ``matcher``, GTs prepended, the ``ROI_HEADS``
        budget drawn (:func:`~.sampling.sample_with_gt_prepended`); with ``log``, the
        ``roi_head/num_{fg,bg}_samples`` events detectron2's sampler logs."""
        sampled = [
            sample_with_gt_prepended(
                p.proposal_boxes,
                t,
                matcher,
                self.batch_size_per_image,
                self.positive_fraction,
                self.num_classes,
            )
            for p, t in zip(proposals, targets, strict=True)
        ]
        if log:
            log_sample_sizes(sampled, self.num_classes)
        return sampled


__all__ = ["ROIHeadsRecipeMixin"]
