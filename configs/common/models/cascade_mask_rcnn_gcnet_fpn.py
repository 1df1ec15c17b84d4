"""``model``: mmdetection's Cascade Mask R-CNN FPN (Base-GCNet-Cascade-RCNN-FPN.yaml): three
box stages (IoU 0.5 / 0.6 / 0.7), class-agnostic regression, SmoothL1 losses, 2000 training
proposals, mmdetection's test path and one mask head per stage (MMDetCascadeROIHeads)."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)
from torch import nn

from gcnet_d2.modeling.mmdet_recipe import MaxIoUMatcher, MMDetCascadeROIHeads

from .mask_rcnn_gcnet_fpn import model

# target stds (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)
STAGE_BOX_REG_WEIGHTS = [
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.3030303030303, 30.3030303030303, 14.925373134328357, 14.925373134328357),
]
STAGE_IOUS = [0.5, 0.6, 0.7]

model.proposal_generator.post_nms_topk = (2000, 1000)
model.proposal_generator.anchor_boundary_thresh = 0  # allowed_border=0
model.proposal_generator.smooth_l1_beta = 1.0 / 9

for key in ("box_head", "box_predictor", "proposal_matcher", "mask_head", "mmdet_sampling"):
    model.roi_heads.pop(key)
model.roi_heads.update(
    _target_=MMDetCascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        )
        for _ in STAGE_IOUS
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            box2box_transform=L(Box2BoxTransform)(weights=weights),
            num_classes="${...num_classes}",
            cls_agnostic_bbox_reg=True,
            smooth_l1_beta=1.0,
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
        )
        for weights in STAGE_BOX_REG_WEIGHTS
    ],
    # mmdetection's cascade stages: max-IoU assigner without low-quality matches
    proposal_matchers=[
        L(MaxIoUMatcher)(thresholds=[iou], labels=[0, 1], min_pos_iou=None) for iou in STAGE_IOUS
    ],
    mmdet_sampling=True,
    cascade_resample=True,  # stages 2-3: drop GT rows, re-assign, re-add GTs, re-sample
    # mmdetection: one mask head per stage, averaged at test time
    mask_head=L(nn.ModuleList)(
        modules=[
            L(MaskRCNNConvUpsampleHead)(
                input_shape=ShapeSpec(channels=256, width=14, height=14),
                num_classes="${....num_classes}",
                conv_dims=[256, 256, 256, 256, 256],
            )
            for _ in STAGE_IOUS
        ]
    ),
    stage_loss_weights=[1.0, 0.5, 0.25],
)
