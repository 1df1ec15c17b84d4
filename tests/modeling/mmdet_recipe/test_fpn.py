"""The recipe's FPN (``gcnet_d2/modeling/mmdet_recipe/fpn.py``): its builder is the GC
backbone's plain builder plus mmdetection's init of the FPN convs, and nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone import FPN

import gcnet_d2
from gcnet_d2.modeling import build_gcnet_resnet_fpn_backbone
from gcnet_d2.modeling.mmdet_recipe import MMDetFPN, build_gcnet_resnet_mmdet_fpn_backbone
from tests.testing import narrow

ROW = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


def _cfg(head_init: str):  # noqa: ANN202
    cfg = narrow(gcnet_d2.get_config(ROW))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MMDET_TRAIN.HEAD_INIT = head_init
    return cfg


def _built(builder, cfg) -> tuple[dict[str, torch.Tensor], float]:  # noqa: ANN001
    """The state dict ``builder`` draws from seed 0, and the next random number after it."""
    torch.manual_seed(0)
    net = builder(cfg, ShapeSpec(channels=3))
    return net.state_dict(), torch.rand(1).item()


def test_table_configs_choose_the_recipe_builder():
    assert gcnet_d2.get_config(ROW).MODEL.BACKBONE.NAME == "build_gcnet_resnet_mmdet_fpn_backbone"
    assert BACKBONE_REGISTRY.get("build_gcnet_resnet_mmdet_fpn_backbone") is (
        build_gcnet_resnet_mmdet_fpn_backbone
    )
    assert type(build_backbone(_cfg("mmdet"))) is MMDetFPN


def test_plain_builder_builds_detectron2s_fpn_without_reading_the_recipe():
    cfg = _cfg("mmdet")
    del cfg.MODEL["MMDET_TRAIN"]  # the GC backbone never reads it
    net = build_gcnet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert type(net) is FPN


def test_detectron2_init_is_the_plain_builders_model_bit_for_bit():
    plain, plain_next = _built(build_gcnet_resnet_fpn_backbone, _cfg("detectron2"))
    recipe, recipe_next = _built(build_gcnet_resnet_mmdet_fpn_backbone, _cfg("detectron2"))
    assert plain_next == recipe_next  # the same draws, no more
    assert list(plain) == list(recipe)
    assert all(torch.equal(plain[k], recipe[k]) for k in plain)


def test_mmdet_init_redraws_exactly_the_fpn_convs():
    plain, _ = _built(build_gcnet_resnet_fpn_backbone, _cfg("mmdet"))
    recipe, _ = _built(build_gcnet_resnet_mmdet_fpn_backbone, _cfg("mmdet"))
    assert list(plain) == list(recipe)
    differ = sorted(k for k in plain if not torch.equal(plain[k], recipe[k]))
    convs = sorted(k for k in plain if k.startswith(("fpn_lateral", "fpn_output")))
    assert differ == sorted(k for k in convs if k.endswith(".weight"))  # biases stay 0
    assert all(not recipe[k].any() for k in convs if k.endswith(".bias"))
    lateral = recipe["fpn_lateral5.weight"]  # xavier_uniform (gain 1) bound
    bound = math.sqrt(6.0 / (lateral.shape[0] + lateral.shape[1]))
    assert 0.95 * bound < float(lateral.abs().max()) <= bound


def test_recipe_builder_checks_the_recipe_config():
    cfg = _cfg("mmdet")
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    with pytest.raises(ValueError, match=r"MODEL\.MMDET_TRAIN\.ROI_MAX_IOU_ASSIGNER"):
        build_gcnet_resnet_mmdet_fpn_backbone(cfg, ShapeSpec(channels=3))


def test_bad_head_init_argument_names_it():
    with pytest.raises(ValueError, match="head_init"):
        MMDetFPN(bottom_up=None, in_features=[], out_channels=8, head_init="xavier")
