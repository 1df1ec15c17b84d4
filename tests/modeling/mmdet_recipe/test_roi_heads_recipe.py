"""The recipe's plumbing shared by both RoI heads (``roi_heads_recipe.py``): the same
``MODEL.MMDET_TRAIN`` reading, head init and argument checks for ``MMDetROIHeads`` and
``MMDetCascadeROIHeads``."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model

import gcnet_d2
from gcnet_d2.modeling.mmdet_recipe import (
    MMDetCascadeROIHeads,
    MMDetROIHeads,
    ROIHeadsRecipeMixin,
)
from tests.testing import tiny_cfg

ROWS = {
    MMDetROIHeads: "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
    MMDetCascadeROIHeads: (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco"
    ),
}


def _heads(cls: type, head_init: str, mask_pad: str = "image"):  # noqa: ANN202
    cfg = tiny_cfg(
        ROWS[cls] + ".yaml",
        "MODEL.ROI_HEADS.NUM_CLASSES", "80",
        "MODEL.MMDET_TRAIN.HEAD_INIT", head_init,
        "MODEL.MMDET_TRAIN.MASK_PAD", mask_pad,
        depth=50,
    )  # fmt: skip
    return build_model(cfg).roi_heads


def _as_list(heads: torch.nn.Module) -> list[torch.nn.Module]:
    return list(heads) if isinstance(heads, torch.nn.ModuleList) else [heads]


@pytest.mark.parametrize("cls", list(ROWS))
def test_both_heads_read_the_recipe_and_init_alike(cls):
    torch.manual_seed(0)
    heads = _heads(cls, "mmdet", mask_pad="batch")
    assert type(heads) is cls and isinstance(heads, ROIHeadsRecipeMixin)
    assert (heads.mmdet_sampling, heads.mask_pad, heads.head_init) == (True, "batch", "mmdet")
    box_heads, mask_heads = _as_list(heads.box_head), _as_list(heads.mask_head)
    assert len(box_heads) == len(mask_heads) == (3 if cls is MMDetCascadeROIHeads else 1)
    for box_head in box_heads:
        for fc in box_head.fcs:  # xavier_uniform: bound sqrt(6 / (fan_in + fan_out))
            bound = math.sqrt(6.0 / sum(fc.weight.shape))
            assert 0.95 * bound < float(fc.weight.detach().abs().max()) <= bound
            assert not fc.bias.any()
    for mask_head in mask_heads:  # kaiming_normal fan_out over 80 classes: std sqrt(2 / 80)
        std = float(mask_head.predictor.weight.detach().std())
        assert std == pytest.approx(math.sqrt(2.0 / 80), rel=0.1)
    stock = _heads(cls, "detectron2")
    assert stock.head_init == "detectron2"
    assert all(float(m.predictor.weight.detach().std()) < 0.01 for m in _as_list(stock.mask_head))


@pytest.mark.parametrize("cls", list(ROWS))
@pytest.mark.parametrize(("arg", "value"), [("mask_pad", "image-32"), ("head_init", "xavier")])
def test_bad_recipe_argument_names_it(cls, arg, value):
    roi_heads = gcnet_d2.get_config(ROWS[cls] + ".py").model.roi_heads
    roi_heads[arg] = value
    with pytest.raises(ValueError, match=arg), torch.device("meta"):
        instantiate(roi_heads)
