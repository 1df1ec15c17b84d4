"""``model``: mmdetection's Mask R-CNN R-50-FPN (Base-GCNet-RCNN-FPN.yaml's MODEL) on a
GC / DCN ResNet. Leaves change ``model.backbone.bottom_up.stages`` (depth, groups, norm, GC,
DCN); the stem takes the stages' norm.

mmdetection's training recipe (the YAML's ``MODEL.MMDET_TRAIN``): MMDetRPN (anchors valid
in each image's own padded size, max-IoU assigner with low-quality matches at IoU >= 0.3),
MMDetROIHeads (GTs prepended, low-quality RoI matches at IoU >= 0.5), and mmdetection's
init of the FPN and heads (``HEAD_INIT: mmdet``: the ``head_init`` arguments below), so that
``instantiate(model)`` starts as ``build_model`` does from the YAML."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import StandardRPNHead
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)

from gcnet_d2.modeling import make_gcnet_stages, make_gcnet_stem
from gcnet_d2.modeling.mmdet_recipe import MaxIoUMatcher, MMDetFPN, MMDetROIHeads, MMDetRPN

FPN_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

model = L(GeneralizedRCNN)(
    backbone=L(MMDetFPN)(
        bottom_up=L(ResNet)(
            stem=L(make_gcnet_stem)(norm="${..stages.norm}"),
            stages=L(make_gcnet_stages)(
                depth=50,
                num_groups=1,
                width_per_group=64,
                # BN statistics frozen, affine trained (mmdet norm_eval=True, requires_grad=True)
                norm="FrozenStatsBN",
                stride_in_1x1=False,  # "pytorch" style: stride on the 3x3 conv
                gc_stages=[False, False, False, False],
                gc_ratio=1.0 / 16,
                gc_pooling="att",
                gc_fusion=["channel_add"],
                deform_stages=[False, False, False, False],
                deform_num_groups=1,
            ),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,  # stem + res2 frozen (mmdet frozen_stages=1)
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        norm="",
        top_block=L(LastLevelMaxPool)(),
        fuse_type="sum",
        head_init="mmdet",  # xavier_uniform lateral / output convs
    ),
    proposal_generator=L(MMDetRPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],  # 8 x stride, one size per level
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(MaxIoUMatcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], min_pos_iou=0.3),
        valid_anchors=True,  # anchors in another image's batch padding never matched
        pad_size_divisor=32,
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # per level, (train, test)
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
        box_reg_loss_type="smooth_l1",
        smooth_l1_beta=0.0,  # = L1 loss, as mmdet's Mask R-CNN
    ),
    roi_heads=L(MMDetROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(MaxIoUMatcher)(thresholds=[0.5], labels=[0, 1], min_pos_iou=0.5),
        mmdet_sampling=True,  # GTs prepended to the proposals, as mmdetection samples
        head_init="mmdet",  # xavier_uniform box FCs, kaiming fan_out mask logits
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            # target stds 0.1, 0.1, 0.2, 0.2
            box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
            num_classes="${..num_classes}",
            cls_agnostic_bbox_reg=False,
            smooth_l1_beta=0.0,  # = L1 loss
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
        ),
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=L(ROIPooler)(
            output_size=14, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=256, width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],  # 4 convs + the deconv
        ),
    ),
    # RGB input, torchvision ImageNet mean/std (mmdet img_norm_cfg, to_rgb=True)
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
