"""Every GCNet table config: loads, builds (narrowed) on the CPU, trains one step, infers."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import gcnet_d2
from gcnet_d2.modeling import ContextBlock, DeformConv2dWithOffset
from tests.testing import calibrate_norms, narrow, table_config_names

TABLE = table_config_names()


def test_all_19_rows_shipped():
    assert len(TABLE) == 19
    assert "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml" in TABLE
    assert (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco.yaml"
        in TABLE
    )


def expected_architecture(name: str) -> dict:
    """What the row's name promises, decoded independently of the YAML files."""
    base = name.split("/")[-1]
    return {
        "depth": 50 if "_r50_" in base else 101,
        "groups": 32 if "x101_32x4d" in base else 1,
        "gc_ratio": 1 / 16 if "r16_gcb" in base else 1 / 4 if "r4_gcb" in base else None,
        "dcn": "dconv_c3-c5" in base,
        "cascade": base.startswith("cascade"),
        "syncbn": "syncbn-backbone" in base,
    }


def tiny_batch(num_classes: int) -> list[dict]:
    """Two 96x128 images with two boxes each and their masks."""
    batch = []
    for i in range(2):
        inst = Instances((96, 128))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]))
        inst.gt_classes = torch.tensor([i % num_classes, (i + 1) % num_classes])
        masks = torch.zeros(2, 96, 128, dtype=torch.bool)
        masks[0, 12:70, 10:60] = True
        masks[1, 20:90, 50:120] = True
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": 96, "width": 128})
    return batch


@pytest.mark.parametrize("name", TABLE, ids=[n.split("/")[-1] for n in TABLE])
def test_row_builds_trains_and_infers(name):
    check_row_builds_trains_and_infers(name, "cpu")


def assert_row_widths(cfg: CfgNode) -> None:
    """The row's own widths, before the test narrows them (:func:`tests.testing.narrow`:
    depth, groups, GC ratio, DCN, norms, heads unchanged)."""
    res = cfg.MODEL.RESNETS
    assert (4 if res.NUM_GROUPS == 32 else 64) == res.WIDTH_PER_GROUP
    assert (res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS, cfg.MODEL.FPN.OUT_CHANNELS) == (
        64,
        256,
        256,
    )
    assert (cfg.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM) == (1024, 256)


def first_step_learners(model: torch.nn.Module, cfg: CfgNode) -> set[str]:
    """Names of the parameters one SGD step on :func:`tiny_batch` must change: every trainable
    one except those that get no gradient by design:

    - in each GC block, those before its zero-initialised last convs;
    - with ``MODEL.RPN.BOUNDARY_THRESH >= 0`` (the Cascade rows: mmdetection drops anchors
      crossing the image border), FPN's p4 and p5 output convs: every anchor of p4-p6
      (128 px and more) crosses the border of a 96x128 image, and the RoIs (boxes under
      112 px) are pooled from p2/p3.
    """
    silent = set()
    if cfg.MODEL.RPN.BOUNDARY_THRESH >= 0:
        silent |= {f"backbone.fpn_output{i}.{p}" for i in (4, 5) for p in ("weight", "bias")}
    for prefix, block in model.named_modules():
        if isinstance(block, ContextBlock):
            last = [
                f"{t}.{len(getattr(block, t)) - 1}."
                for t in ("channel_add_conv", "channel_mul_conv")
                if getattr(block, t) is not None
            ]
            silent |= {
                f"{prefix}.{n}"
                for n, _ in block.named_parameters()
                if not n.startswith(tuple(last))
            }
    return {n for n, p in model.named_parameters() if p.requires_grad and n not in silent}


def check_row_builds_trains_and_infers(name: str, device: str) -> None:
    """Load, build narrowed on ``device``, check the architecture; inference at score
    threshold 0 gives well-formed output; one SGD step changes what should learn and nothing
    else."""
    cfg = gcnet_d2.get_config(name)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    # An untrained model scores every class about 1/81, under the row's 0.05: keep them all.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    expect = expected_architecture(name)
    res = cfg.MODEL.RESNETS
    assert (expect["depth"], expect["groups"]) == (res.DEPTH, res.NUM_GROUPS)
    assert res.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert ("SyncBN" if expect["syncbn"] else "FrozenStatsBN") == res.NORM
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2  # stem and res2 frozen (mmdet frozen_stages=1)
    assert_row_widths(cfg)
    narrow(cfg)

    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    blocks = [m for m in bottom_up.modules() if isinstance(m, ContextBlock)]
    if expect["gc_ratio"] is None:
        assert blocks == []
    else:
        assert len(blocks) == (30 if expect["depth"] == 101 else 13)
        assert all(b.ratio == expect["gc_ratio"] for b in blocks)
        assert not any(isinstance(m, ContextBlock) for m in bottom_up.res2.modules())
    dcn = [m for m in bottom_up.modules() if isinstance(m, DeformConv2dWithOffset)]
    assert len(dcn) == (30 if expect["dcn"] else 0)
    heads = type(model.roi_heads).__name__
    assert ("Cascade" in heads) == expect["cascade"]

    image = tiny_batch(1)[0]["image"]
    model.eval()
    # Realistic random weights: every norm's statistics are those of its input on the image,
    # as a trained model's match its data (the norms are all in the backbone).
    backbone_input = model.preprocess_image([{"image": image}]).tensor
    assert calibrate_norms(model, lambda: model.backbone(backbone_input)) > 0
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 192, "width": 256}])
    inst = out["instances"]
    assert inst.image_size == (192, 256)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert len(inst) == cfg.TEST.DETECTIONS_PER_IMAGE  # >= 1 per class survive class-wise NMS
    boxes, scores, classes = inst.pred_boxes.tensor, inst.scores, inst.pred_classes
    assert boxes.shape == (len(inst), 4) and torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 256).all()  # clipped to the image
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 192).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert ((scores > 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
    assert classes.dtype == torch.int64 and 0 <= classes.min() <= classes.max() < num_classes
    assert inst.pred_masks.shape == (len(inst), 192, 256) and inst.pred_masks.dtype == torch.bool

    model.train()
    params = dict(model.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert frozen and frozen == {
        n for n in params if n.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2."))
    }
    before = {n: p.detach().clone() for n, p in params.items()}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.SGD([p for p in params.values() if p.requires_grad], lr=0.01)
    with EventStorage():
        losses = model(tiny_batch(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
    for prefix in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"):
        assert any(k.startswith(prefix) for k in losses), (prefix, sorted(losses))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    changed = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    should = first_step_learners(model, cfg)
    assert not changed - should, sorted(changed - should)  # frozen ones included
    assert not should - changed, sorted(should - changed)
    if expect["gc_ratio"] is not None:  # the zero-initialised last conv learns in one step
        assert blocks[-1].channel_add_conv[3].weight.grad.abs().sum() > 0
    # BN statistics: updated by a training forward in res3-res5 with SyncBN only (FrozenStatsBN
    # and the frozen stem/res2 keep theirs).
    moved = {n for n, b in model.named_buffers() if not torch.equal(buffers_before[n], b)}
    trained_stages = tuple(f"backbone.bottom_up.res{i}." for i in (3, 4, 5))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    updating = {n for n in buffers_before if n.startswith(trained_stages) and n.endswith(stats)}
    assert updating and moved == (updating if expect["syncbn"] else set()), sorted(moved)
