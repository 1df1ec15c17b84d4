"""1x1 convolutions as matrix products (``gcnet_d2/fast/conv1x1_gemm.py``,
FAST.CONV1X1_GEMM): equal to F.conv2d up to summation order, taken only where stated,
and wired by ``fast.apply`` into the detector's 1x1 convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from gcnet_d2 import fast
from gcnet_d2.fast import norm_fold
from gcnet_d2.fast.conv1x1_gemm import MIN_POSITIONS, conv1x1_as_gemm, gemm_applies
from gcnet_d2.fast.norm_fold import NormFoldingConv2d, enable_conv_speedups
from tests.testing import R50_GC, realistic_weights, tiny_cfg


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_product_equals_conv2d(n, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, 24, 40, generator=g)
    w = torch.randn(32, 16, 1, 1, generator=g)
    b = torch.randn(32, generator=g) if bias else None
    torch.testing.assert_close(conv1x1_as_gemm(x, w, b), F.conv2d(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = conv1x1_as_gemm

    def counting(x, w, b):  # noqa: ANN001, ANN202
        seen.append(tuple(x.shape))
        return real(x, w, b)

    monkeypatch.setattr(norm_fold, "conv1x1_as_gemm", counting)
    return seen


def _conv(k: int = 1, stride: int = 1, norm: bool = False) -> Conv2d:
    conv = Conv2d(8, 16, k, stride=stride, padding=k // 2, bias=not norm,
                  norm=torch.nn.BatchNorm2d(16) if norm else None)  # fmt: skip
    enable_conv_speedups(conv, fold_frozen_norms=True, conv1x1_gemm=True)
    assert type(conv) is NormFoldingConv2d
    assert conv.gemm_1x1 == (k == 1)
    conv.gemm_1x1 = True  # forced: the size, stride and mode guards must still hold
    return conv.eval()


def test_taken_only_for_large_unstrided_1x1_at_inference(calls):
    big = torch.randn(1, 8, 100, MIN_POSITIONS // 100)
    small = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        _conv()(big)
        _conv()(small)  # too few positions
        _conv(k=3, norm=True)(big)  # not 1x1
        _conv(stride=2)(big)  # strided
    _conv()(big)  # a gradient is recorded
    assert calls == [tuple(big.shape)]
    off = _conv()
    off.gemm_1x1 = False
    assert not gemm_applies(off, big)


def test_folded_norm_and_activation_kept():
    conv = _conv(norm=True)
    conv.norm.running_mean.normal_()
    conv.norm.running_var.uniform_(0.5, 2)
    conv.activation = F.relu
    x = torch.randn(2, 8, 80, 80)
    with torch.no_grad():
        expected = F.relu(conv.norm(F.conv2d(x, conv.weight, conv.bias)))
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_detector_uses_products_and_matches_convolutions(calls):
    """Table config: the 1x1 convs of the bottom-up, the FPN laterals and the mask logits are
    marked; CONV1X1_GEMM off marks none; detections agree (same classes, close boxes). The
    products apply to NCHW maps: CHANNELS_LAST (channels-last maps) is off here."""

    def build(on: bool):  # noqa: ANN202
        cfg = tiny_cfg(R50_GC)
        cfg.FAST.CONV1X1_GEMM = on
        cfg.FAST.CHANNELS_LAST = False
        model = build_model(cfg).eval()
        assert not any(isinstance(m, NormFoldingConv2d) for m in model.modules())  # plain
        return fast.apply(model, cfg)  # the same options but for CONV1X1_GEMM

    on, off = build(True), build(False)
    marked = {n for n, m in on.named_modules() if getattr(m, "gemm_1x1", False)}
    assert any(n.startswith("backbone.bottom_up.res2") for n in marked)
    assert any(n.startswith("backbone.fpn_lateral") for n in marked)
    assert "roi_heads.mask_head.predictor" in marked
    assert all(isinstance(on.get_submodule(n), NormFoldingConv2d) for n in marked)
    assert not any(getattr(m, "gemm_1x1", False) for m in off.modules())
    image = torch.rand(3, 256, 320) * 255
    realistic_weights(off, image)
    on.load_state_dict(off.state_dict())
    with torch.inference_mode():
        a = off([{"image": image}])[0]["instances"]
        b = on([{"image": image}])[0]["instances"]
    assert calls, "no 1x1 conv ran as a product"
    assert len(a) == len(b) > 0 and torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=0, atol=1e-2)
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-4)


def test_trace_runs_the_product_with_symbolic_sizes():
    conv = _conv()
    x = torch.randn(1, 8, 100, MIN_POSITIONS // 100)
    with torch.no_grad():
        traced = torch.jit.trace(conv, (x,), check_trace=False)
        assert "aten::baddbmm" in str(traced.graph)
        x2 = torch.randn(2, 8, 120, 130)  # other batch and size
        torch.testing.assert_close(traced(x2), F.conv2d(x2, conv.weight, conv.bias))
