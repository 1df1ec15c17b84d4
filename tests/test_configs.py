"""Every GCNet table config: loads, builds on the CPU, trains one step, runs inference."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import gcnet_d2
from gcnet_d2.modeling import ContextBlock, DeformConv2dWithOffset
from tests.helpers import table_config_names

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


def check_row_builds_trains_and_infers(name: str, device: str) -> None:
    """Load, build on ``device``, check the architecture, one SGD step, one inference."""
    cfg = gcnet_d2.get_config(name)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    expect = expected_architecture(name)
    res = cfg.MODEL.RESNETS
    assert (expect["depth"], expect["groups"]) == (res.DEPTH, res.NUM_GROUPS)
    assert res.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert ("SyncBN" if expect["syncbn"] else "FrozenStatsBN") == res.NORM

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

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01)
    with EventStorage():
        losses = model(tiny_batch(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
    for prefix in ("loss_rpn_cls", "loss_cls", "loss_box_reg", "loss_mask"):
        assert any(k.startswith(prefix) for k in losses), (prefix, sorted(losses))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))
    if expect["gc_ratio"] is not None:  # the zero-initialised last conv learns in one step
        assert blocks[-1].channel_add_conv[3].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": tiny_batch(1)[0]["image"], "height": 192, "width": 256}])
    inst = out["instances"]
    assert inst.image_size == (192, 256)
    assert inst.pred_boxes.tensor.shape[1] == 4
    assert inst.pred_masks.shape[1:] == (192, 256)
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
