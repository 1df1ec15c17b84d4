"""LeanFPN (``gcnet_d2/fast/lean_fpn.py``): detectron2's FPN output bit for bit at a lower
peak memory (eager inference), detectron2's own forward everywhere else; switched on a built
model by ``enable_lean_fpn`` and back by ``disable_lean_fpn``."""

from __future__ import annotations

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN

import gcnet_d2
from benchmarks.memory import LiveTensorBytes
from gcnet_d2.fast.lean_fpn import LeanFPN, disable_lean_fpn, enable_lean_fpn
from gcnet_d2.modeling import (
    MMDetFPN,
    build_gcnet_resnet_fpn_backbone,
    build_gcnet_resnet_mmdet_fpn_backbone,
)
from gcnet_d2.modeling import build_gcnet_retinanet_resnet_fpn_backbone as retinanet_fpn
from tests.testing import randomize


def _cfg(builder, fuse: str = "sum"):  # noqa: ANN001, ANN202
    cfg = gcnet_d2.get_config("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.FUSE_TYPE = fuse
    if builder is retinanet_fpn:
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    return cfg


def _pair(builder, fuse: str = "sum") -> tuple[FPN, LeanFPN]:  # noqa: ANN001
    """detectron2's own ``FPN`` and the built FPN switched to ``LeanFPN``, same modules."""
    built = builder(_cfg(builder, fuse), ShapeSpec(channels=3)).eval()
    assert type(built) is FPN  # the GC builders make detectron2's plain FPN
    randomize(built, std=0.05)
    lean = enable_lean_fpn(built)
    assert type(lean) is LeanFPN
    plain = FPN(
        bottom_up=lean.bottom_up,
        in_features=lean.in_features,
        out_channels=lean.output_shape()["p5"].channels,
        top_block=lean.top_block,
        fuse_type=fuse,
    ).eval()
    plain.load_state_dict(lean.state_dict())
    return plain, lean


@pytest.mark.parametrize(
    ("builder", "fuse"),
    [(build_gcnet_resnet_fpn_backbone, "sum"), (build_gcnet_resnet_fpn_backbone, "avg"),
     (retinanet_fpn, "sum")],
)  # fmt: skip
def test_inference_equals_detectron2_fpn_bit_for_bit(builder, fuse):
    plain, lean = _pair(builder, fuse)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = plain(x), lean(x)
    assert list(got) == list(expected)  # same levels, same order (p2..p6 / p3..p7)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_enable_and_disable_switch_the_class_in_place():
    """The recipe's built ``MMDetFPN`` becomes ``LeanFPN`` and back to its own class (same
    object, same state dict); an FPN with a forward of its own is left alone."""
    cfg = _cfg(build_gcnet_resnet_fpn_backbone)
    net = build_gcnet_resnet_mmdet_fpn_backbone(cfg, ShapeSpec(3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert enable_lean_fpn(enable_lean_fpn(net)) is net  # idempotent
    assert type(net) is LeanFPN
    assert list(net.state_dict()) == list(before)
    assert disable_lean_fpn(net) is net
    assert type(net) is MMDetFPN and "_plain_class" not in vars(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    class OwnForward(FPN):
        def forward(self, x):  # noqa: ANN001, ANN202
            return super().forward(x)

    net.__class__ = OwnForward
    enable_lean_fpn(net)
    assert type(net) is OwnForward


def test_peak_memory_lower_than_detectron2_fpn():
    plain, lean = _pair(build_gcnet_resnet_fpn_backbone)
    x = torch.randn(1, 3, 256, 384)
    peaks = {}
    for name, net in (("plain", plain), ("lean", lean)):
        with torch.inference_mode():
            net(x)  # warm-up
            tracker = LiveTensorBytes()
            with tracker:
                net(x)
        peaks[name] = tracker.peak
    # one finest-level map (64 x 64 x 96 floats) less at the peak, at least
    assert peaks["lean"] <= peaks["plain"] - 256 * 64 * 96 * 4, peaks


def test_training_and_tracing_take_detectron2s_forward(monkeypatch):
    plain, lean = _pair(build_gcnet_resnet_fpn_backbone)
    calls = []
    real = FPN.forward

    def counted(self, x):  # noqa: ANN001, ANN202
        calls.append(1)
        return real(self, x)

    monkeypatch.setattr(FPN, "forward", counted)
    x = torch.randn(1, 3, 64, 96)
    lean.train()
    sum(v.sum() for v in lean(x).values()).backward()
    lean.eval()
    with torch.no_grad():
        torch.jit.trace(lean, (x,), strict=False, check_trace=False)
    assert len(calls) == 2
