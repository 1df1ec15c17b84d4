"""Another project's detector picks up a GC backbone by config alone, YAML and LazyConfig:
detectron2's RetinaNet (P3-P7 from ``build_gcnet_retinanet_resnet_fpn_backbone`` or
``make_gcnet_stages``) and a semantic-segmentation FPN (SemanticSegmentor + SemSegFPNHead).
One training step and one inference each, on tiny images."""

from __future__ import annotations

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import RetinaNet, SemanticSegmentor
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import gcnet_d2
from gcnet_d2.modeling import ContextBlock, make_gcnet_stages, make_gcnet_stem

H, W, NUM_CLASSES = 64, 96, 3
GC_C3_C5 = [False, True, True, True]


def yaml_retinanet():  # noqa: ANN201
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_gcnet_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.GCNET.STAGES_ON = GC_C3_C5
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def lazy_retinanet():  # noqa: ANN201
    """detectron2's own RetinaNet LazyConfig, GC stages swapped in."""
    model = model_zoo.get_config("common/models/retinanet.py").model
    model.backbone.bottom_up.stem = L(make_gcnet_stem)(norm="FrozenBN")
    model.backbone.bottom_up.stages = L(make_gcnet_stages)(
        depth=50, norm="FrozenBN", gc_stages=GC_C3_C5, gc_ratio=1 / 16
    )
    model.num_classes = NUM_CLASSES
    return instantiate(model)


def yaml_semseg():  # noqa: ANN201
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "build_gcnet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.GCNET.STAGES_ON = GC_C3_C5
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES + 1
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def lazy_semseg():  # noqa: ANN201
    """A SemanticSegmentor whose backbone node comes from a gcnet_d2 row's LazyConfig."""
    backbone = gcnet_d2.get_config(
        "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py"
    ).model.backbone
    model = L(SemanticSegmentor)(
        backbone=backbone,
        sem_seg_head=L(SemSegFPNHead)(
            input_shape={
                f: L(ShapeSpec)(stride=s, channels=256)
                for f, s in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32], strict=True)
            },
            num_classes=NUM_CLASSES + 1,
            conv_dims=128,
            common_stride=4,
            norm="GN",
            ignore_value=255,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return instantiate(model)


def batch(with_boxes: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        item = {"image": torch.rand(3, H, W, generator=gen) * 255, "height": H, "width": W}
        if with_boxes:
            inst = Instances((H, W))
            inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [50.0, 20.0, 90.0, 60.0]]))
            inst.gt_classes = torch.tensor([0, 2])
            item["instances"] = inst
        else:
            sem = torch.zeros(H, W, dtype=torch.long)
            sem[8:36, 8:40], sem[20:60, 50:90] = 1, 3
            item["sem_seg"] = sem
        out.append(item)
    return out


CASES = {
    "retinanet-yaml": (yaml_retinanet, True),
    "retinanet-lazy": (lazy_retinanet, True),
    "semseg-yaml": (yaml_semseg, False),
    "semseg-lazy": (lazy_semseg, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gc_backbone_trains_and_infers(case):
    build, detection = CASES[case]
    model = build()
    expected = RetinaNet if detection else SemanticSegmentor
    assert isinstance(model, expected)
    blocks = [m for m in model.backbone.modules() if isinstance(m, ContextBlock)]
    assert len(blocks) == 4 + 6 + 3  # c3-c5 of a ResNet-50
    # one training step reaches the GC blocks
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with EventStorage():  # detectron2's training-time logging
        losses = model(batch(detection))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    last = blocks[-1].channel_add_conv[-1].weight
    assert last.grad is not None and last.grad.abs().sum() > 0
    before = last.detach().clone()
    opt.step()
    assert not torch.equal(before, last.detach())
    # inference
    model.eval()
    with torch.no_grad():
        out = model(batch(detection))
    assert len(out) == 2
    if detection:
        assert out[0]["instances"].image_size == (H, W)
    else:
        assert out[0]["sem_seg"].shape == (NUM_CLASSES + 1, H, W)
