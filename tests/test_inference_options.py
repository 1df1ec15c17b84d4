"""MODEL.GCNET.COMPILE (opt-in torch.compile of the backbone) and the options' validation."""

from __future__ import annotations

import pytest
import torch
from detectron2.layers import ShapeSpec

import gcnet_d2
from gcnet_d2.modeling import build_gcnet_resnet_backbone, build_gcnet_resnet_fpn_backbone
from tests.helpers import randomize

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


def cfg_with(**keys):  # noqa: ANN003, ANN201
    cfg = gcnet_d2.get_config(CONFIG)
    for key, value in keys.items():
        setattr(cfg.MODEL.GCNET, key, value)
    return cfg


def test_compile_is_off_by_default():
    net = build_gcnet_resnet_fpn_backbone(cfg_with(), ShapeSpec(channels=3))
    assert getattr(net, "_compiled_call_impl", None) is None


def test_compiled_backbone_matches_eager():
    """aot_eager: dynamo's capture and AOT autograd's functionalised graph (what inductor
    compiles), quick on the CPU; inductor itself takes minutes here (tools/compile_check.py)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    compiled = build_gcnet_resnet_fpn_backbone(cfg_with(COMPILE="aot_eager"), ShapeSpec(3))
    eager = build_gcnet_resnet_fpn_backbone(cfg_with(), ShapeSpec(channels=3))
    randomize(eager, 0.05).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # keys unchanged
    compiled.load_state_dict(eager.state_dict())
    compiled.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = compiled(x), eager(x)
    assert counters["stats"]["unique_graphs"] >= 1  # it really ran compiled
    for key in want:
        err = float((got[key] - want[key]).norm() / want[key].norm())
        assert err < 1e-5, (key, err)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("COMPILE", "no_such_backend", "MODEL.GCNET.COMPILE: unknown torch.compile backend"),
        ("COMPILE", 1, "MODEL.GCNET.COMPILE must be"),
        ("FOLD_NORMS", "yes", "MODEL.GCNET.FOLD_NORMS must be"),
        ("CONV1X1_GEMM", "on", "MODEL.GCNET.CONV1X1_GEMM must be"),
        ("PARALLEL_ROI_ALIGN", "yes", "MODEL.GCNET.PARALLEL_ROI_ALIGN must be"),
    ],
)
def test_bad_option_names_its_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_gcnet_resnet_backbone(cfg_with(**{key: value}), ShapeSpec(channels=3))
