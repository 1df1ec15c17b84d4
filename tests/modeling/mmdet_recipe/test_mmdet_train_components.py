"""The ``MODEL.MMDET_TRAIN`` components one by one, on hand-made cases (no mmdetection needed;
tests/parity/test_train_parity_mmdet.py compares whole training steps with mmdetection's code)."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

import gcnet_d2
from gcnet_d2.config import DETECTRON2_TRAINING_COMPONENTS
from gcnet_d2.modeling import MaxIoUMatcher
from gcnet_d2.modeling.mmdet_recipe.rpn import valid_anchor_mask
from gcnet_d2.modeling.mmdet_recipe.sampling import sample_with_gt_prepended

ROW = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
CASCADE_ROW = "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml"


def _cfg(row: str = ROW, **overrides: object):  # noqa: ANN202
    cfg = gcnet_d2.get_config(row)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


# --------------------------------------------------------------------------------------------
# 1. MaxIoU low-quality matches
# --------------------------------------------------------------------------------------------
def test_low_quality_matches_need_min_pos_iou_and_go_to_that_gt():
    iou = torch.tensor(
        [
            [0.20, 0.10, 0.00, 0.00],  # GT 0: best 0.20 < 0.3 -> no low-quality positive
            [0.00, 0.65, 0.65, 0.00],  # GT 1: best 0.65 at two anchors -> both positive
            [0.00, 0.66, 0.00, 0.40],  # GT 2: best 0.66 at anchor 1 -> later GT wins anchor 1
        ]
    )
    d2_matches, d2_labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    matches, labels = MaxIoUMatcher([0.3, 0.7], [0, -1, 1], min_pos_iou=0.3)(iou)
    assert d2_labels[0] == 1  # Detectron2 takes GT 0's best anchor at IoU 0.2
    assert labels.tolist() == [0, 1, 1, -1]
    # anchor 1 is one of GT 1's two best (0.65) and GT 2's best: the later GT takes it
    assert matches[1] == 2 and matches[2] == 1
    # ties: both of GT 1's best anchors are taken (gt_max_assign_all); later GT wins a shared one
    tie = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.2, 0.1]])
    m, lab = MaxIoUMatcher([0.3, 0.7], [0, -1, 1], min_pos_iou=0.3)(tie)
    assert lab.tolist() == [1, 1, 0] and m[:2].tolist() == [1, 0]


def test_without_low_quality_it_is_detectron2s_matcher():
    g = torch.Generator().manual_seed(0)
    iou = torch.rand(5, 50, generator=g)
    for thresholds, labels in (([0.5], [0, 1]), ([0.3, 0.7], [0, -1, 1])):
        a = Matcher(thresholds, labels, allow_low_quality_matches=False)(iou)
        b = MaxIoUMatcher(thresholds, labels, min_pos_iou=None)(iou)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    empty = MaxIoUMatcher([0.3, 0.7], [0, -1, 1], 0.3)(torch.zeros(0, 7))
    assert empty[1].tolist() == [0] * 7


# --------------------------------------------------------------------------------------------
# 2. valid anchors before matching
# --------------------------------------------------------------------------------------------
def test_anchors_in_padding_and_across_the_border_are_invalid():
    anchors = Boxes(
        torch.tensor(
            [
                [-10.0, -10.0, 10.0, 10.0],  # centre (0, 0), crosses the border
                [40.0, 40.0, 60.0, 60.0],  # inside
                [90.0, 10.0, 110.0, 30.0],  # centre x 100: inside pad 128, crosses w = 100
                [120.0, 10.0, 140.0, 30.0],  # centre x 130 >= pad 128: in batch padding
            ]
        )
    )
    assert valid_anchor_mask(anchors, (64, 100), 32, -1).tolist() == [True, True, True, False]
    assert valid_anchor_mask(anchors, (64, 100), 32, 0).tolist() == [False, True, False, False]


def test_rpn_matches_only_valid_anchors():
    model = build_model(_cfg(**{"MODEL.RPN.BOUNDARY_THRESH": 0}))
    rpn = model.proposal_generator
    assert isinstance(rpn.anchor_matcher, MaxIoUMatcher)
    anchors = Boxes(
        torch.tensor([[-4.0, 10.0, 28.0, 42.0], [8.0, 10.0, 40.0, 42.0], [200.0, 0.0, 232.0, 32.0]])
    )
    gt = Instances((64, 96))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 10.0, 30.0, 40.0]]))
    labels, matched = rpn.label_and_sample_anchors([anchors], [gt])
    # anchor 0 (IoU 0.78) is the GT's best but crosses the border: removed before matching,
    # so the GT's best *valid* anchor (1, IoU 0.52) becomes its low-quality positive; anchor 2
    # lies in the padding
    assert labels[0].tolist() == [-1, 1, -1]
    assert torch.equal(matched[0][1], gt.gt_boxes.tensor[0])
    # Detectron2 (switches off): matches all, then ignores the anchors crossing the border
    stock = build_model(
        _cfg(
            **{
                "MODEL.RPN.BOUNDARY_THRESH": 0,
                "MODEL.MMDET_TRAIN.RPN_VALID_ANCHORS": False,
                "MODEL.MMDET_TRAIN.RPN_MAX_IOU_ASSIGNER": False,
            }
        )
    ).proposal_generator
    stock_labels, _ = stock.label_and_sample_anchors([anchors], [gt])
    assert stock_labels[0].tolist() == [-1, -1, -1]  # the GT gets no positive anchor


# --------------------------------------------------------------------------------------------
# 5. RoI sampling with GTs prepended
# --------------------------------------------------------------------------------------------
def _targets() -> Instances:
    t = Instances((100, 120))
    t.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 110.0, 90.0]]))
    t.gt_classes = torch.tensor([2, 0])
    return t


def test_gts_are_prepended_and_flagged(monkeypatch):
    # deterministic sampling: the first candidates of each kind, in index order
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n, device=kw.get("device")))
    props = Boxes(
        torch.tensor(
            [
                [12.0, 12.0, 50.0, 60.0],  # IoU 0.9 with GT 0
                [0.0, 0.0, 20.0, 20.0],  # background
                [62.0, 20.0, 110.0, 80.0],  # IoU 0.83 with GT 1
                [30.0, 30.0, 80.0, 80.0],  # background
            ]
        )
    )
    matcher = MaxIoUMatcher([0.5], [0, 1], 0.5)
    out = sample_with_gt_prepended(props, _targets(), matcher, 512, 0.25, num_classes=3)
    # positives first (GT rows in front, in GT order), then negatives, each in index order
    assert out.proposal_is_gt.tolist() == [True, True, False, False, False, False]
    assert out.gt_classes.tolist() == [2, 0, 2, 0, 3, 3]
    assert torch.equal(out.proposal_boxes.tensor[:2], _targets().gt_boxes.tensor)
    # budget: at most 1 positive of 4
    out = sample_with_gt_prepended(props, _targets(), matcher, 4, 0.25, num_classes=3)
    assert (out.gt_classes != 3).sum() == 1 and len(out) == 3


# --------------------------------------------------------------------------------------------
# 3. cascade re-sampling, and whole training steps with every switch on / off
# --------------------------------------------------------------------------------------------
def _batch() -> list[dict]:
    t = _targets()
    from detectron2.structures import BitMasks

    masks = torch.zeros(2, 100, 120, dtype=torch.bool)
    masks[0, 10:60, 10:50] = True
    masks[1, 20:90, 60:110] = True
    t.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    return [{"image": image, "instances": t, "height": 100, "width": 120}]


def test_cascade_stages_resample_without_gt_rows(monkeypatch):
    model = build_model(_cfg(CASCADE_ROW, **{"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64}))
    heads = model.roi_heads
    assert heads.cascade_resample and isinstance(heads.proposal_matchers[2], MaxIoUMatcher)
    seen = []
    sample = heads.label_and_sample_proposals

    def spy(proposals, targets, stage=0):  # noqa: ANN001, ANN202
        out = sample(proposals, targets, stage)
        seen.append((stage, [len(p) for p in proposals], out))
        return out

    monkeypatch.setattr(heads, "label_and_sample_proposals", spy)
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n, device=kw.get("device")))
    with EventStorage():
        losses = model.train()(_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert [s for s, _, _ in seen] == [0, 1, 2]
    for (_, _, prev), (stage, n_in, out) in zip(seen, seen[1:], strict=False):
        # the refined boxes of the previous sample minus its GT rows, GTs prepended again
        assert n_in == [int((~p.proposal_is_gt).sum()) for p in prev]
        assert out[0].proposal_is_gt[:2].all() and len(out[0]) <= 64
        assert int((out[0].gt_classes != 3).sum()) <= 16  # 64 x 0.25 positives at most
        iou = pairwise_iou(_targets().gt_boxes, out[0].proposal_boxes).max(0).values
        fg = out[0].gt_classes != 3
        assert (iou[fg] >= heads.proposal_matchers[stage].thresholds[1] - 1e-6).all()


def test_switches_off_give_detectron2s_training():
    off = {k: v for k, v in DETECTRON2_TRAINING_COMPONENTS.items() if k.startswith("MODEL.")}
    assert len(off) == 6
    torch.manual_seed(0)
    stock = build_model(_cfg(**off))
    torch.manual_seed(0)
    ours = build_model(
        _cfg(**{k: v for k, v in off.items() if "NAME" not in k})  # our classes, switches off
    )
    ours.load_state_dict(stock.state_dict())
    batch = _batch()
    with EventStorage():
        torch.manual_seed(1)
        a = stock.train()(batch)
        torch.manual_seed(1)
        b = ours.train()(batch)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------------------------
# 6. head initialisation
# --------------------------------------------------------------------------------------------
def test_mmdet_head_init():
    model = build_model(_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 80}))
    fc6 = model.roi_heads.box_head.fc1.weight
    bound = math.sqrt(6.0 / (fc6.shape[0] + fc6.shape[1]))  # xavier_uniform, ~0.021
    assert 0.99 * bound < float(fc6.abs().max()) <= bound
    lateral = model.backbone.fpn_lateral5.weight  # 2048 -> 256
    bound = math.sqrt(6.0 / (2048 + 256))
    assert 0.99 * bound < float(lateral.abs().max()) <= bound
    logits = model.roi_heads.mask_head.predictor.weight  # kaiming_normal fan_out: sqrt(2/80)
    assert float(logits.std()) == pytest.approx(math.sqrt(2.0 / 80), rel=0.05)
    stock = build_model(_cfg(**{"MODEL.MMDET_TRAIN.HEAD_INIT": "detectron2"}))
    assert float(stock.roi_heads.mask_head.predictor.weight.std()) < 0.01


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (
            {"MODEL.ROI_HEADS.NAME": "MMDetROIHeads", "MODEL.MMDET_TRAIN.CASCADE_RESAMPLE": True},
            ("MODEL.MMDET_TRAIN.CASCADE_RESAMPLE", "MODEL.ROI_HEADS.NAME"),
        ),
        (
            {"MODEL.PROPOSAL_GENERATOR.NAME": "RPN"},
            ("MODEL.MMDET_TRAIN.RPN_MAX_IOU_ASSIGNER", "MODEL.PROPOSAL_GENERATOR.NAME"),
        ),
        (
            {"MODEL.ROI_HEADS.NAME": "StandardROIHeads"},
            ("MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER", "MODEL.ROI_HEADS.NAME"),
        ),
        ({"MODEL.MMDET_TRAIN.HEAD_INIT": "xavier"}, ("MODEL.MMDET_TRAIN.HEAD_INIT",)),
        ({"MODEL.MMDET_TRAIN.MASK_PAD": "image-32"}, ("MODEL.MMDET_TRAIN.MASK_PAD",)),
        (
            {
                "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
                "MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER": False,
                "MODEL.MMDET_TRAIN.HEAD_INIT": "detectron2",
                "MODEL.MMDET_TRAIN.MASK_PAD": "batch",
            },
            ("MODEL.MMDET_TRAIN.MASK_PAD", "MODEL.ROI_HEADS.NAME"),
        ),
        ({"MODEL.MMDET_TRAIN.RPN_MIN_POS_IOU": 1.5}, ("MODEL.MMDET_TRAIN.RPN_MIN_POS_IOU",)),
        (  # the GC backbone's own builder: detectron2's FPN, no recipe init
            {"MODEL.BACKBONE.NAME": "build_gcnet_resnet_fpn_backbone"},
            ("MODEL.MMDET_TRAIN.HEAD_INIT", "MODEL.BACKBONE.NAME"),
        ),
    ],
)
def test_incompatible_options_fail_at_build_naming_the_keys(overrides, keys):
    with pytest.raises(ValueError) as err:
        build_model(_cfg(**overrides))
    for key in keys:
        assert key in str(err.value)


def test_recipe_parts_need_gcnet_d2s_keys():
    from detectron2.config import get_cfg

    from gcnet_d2.modeling.mmdet_recipe import validate_mmdet_train_config

    with pytest.raises(ValueError, match=r"MODEL\.MMDET_TRAIN.*add_gcnet_config"):
        validate_mmdet_train_config(get_cfg())


def test_cascade_resample_needs_the_mmdet_sampler():
    cfg = _cfg(CASCADE_ROW, **{"MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER": False})
    with pytest.raises(ValueError, match="MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER"):
        build_model(cfg)


def test_mask_pad_batch_pads_bitmaps_to_the_batch_shape():
    """MASK_PAD "batch" (mmdetection 3.x): bitmaps zero-padded to the padded batch, polygons
    untouched, a bitmap larger than the batch is an error naming both sizes."""
    from detectron2.structures import BitMasks, ImageList, PolygonMasks

    from gcnet_d2.modeling.mmdet_recipe.sampling import pad_gt_masks_to_batch

    images = ImageList(torch.zeros(2, 3, 64, 96), [(64, 96), (32, 64)])
    small, poly = Instances((32, 64)), Instances((64, 96))
    small.gt_masks = BitMasks(torch.ones(2, 32, 64, dtype=torch.bool))
    poly.gt_masks = PolygonMasks([[[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]]])
    pad_gt_masks_to_batch(images, [poly, small])
    assert small.gt_masks.tensor.shape == (2, 64, 96)
    assert small.gt_masks.tensor[:, :32, :64].all() and int(small.gt_masks.tensor.sum()) == 4096
    assert isinstance(poly.gt_masks, PolygonMasks)
    big = Instances((64, 96))
    big.gt_masks = BitMasks(torch.ones(1, 96, 96, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(96, 96\).*\(64, 96\)"):
        pad_gt_masks_to_batch(images, [big])
