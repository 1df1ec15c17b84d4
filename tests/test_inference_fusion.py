"""Frozen norms folded into their convs at inference (gcnet_d2.modeling.inference_fusion):
the same detections as the plain conv + norm path, norms really skipped, training, tracing
and state dicts untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec

import gcnet_d2
from gcnet_d2.modeling import build_gcnet_resnet_backbone
from gcnet_d2.modeling.inference_fusion import (
    NormFoldingConv2d,
    disable_norm_folding,
    enable_norm_folding,
)
from tests.helpers import randomize

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


def backbone(fold: bool = True) -> torch.nn.Module:
    cfg = gcnet_d2.get_config(CONFIG)
    cfg.MODEL.GCNET.FOLD_NORMS = fold
    torch.manual_seed(0)
    return randomize(build_gcnet_resnet_backbone(cfg, ShapeSpec(channels=3)), 0.05).eval()


def count_batch_norms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = F.batch_norm

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counted)
    return calls


def test_on_by_default_and_state_dict_unchanged():
    folded, plain = backbone(True), backbone(False)
    n_folding = sum(type(m) is NormFoldingConv2d for m in folded.modules())
    assert n_folding == sum(type(m) is Conv2d and m.norm is not None for m in plain.modules())
    assert n_folding > 0
    assert not any(type(m) is NormFoldingConv2d for m in plain.modules())
    a, b = folded.state_dict(), plain.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_equal_and_norms_skipped(monkeypatch):
    net = backbone()
    x = torch.randn(1, 3, 64, 96)
    calls = count_batch_norms(monkeypatch)
    with torch.inference_mode():
        fast = net(x)
        assert calls[0] == 0  # every frozen norm folded (GC conv3s fold in the bottleneck)
        plain = disable_norm_folding(net)(x)
        assert calls[0] > 0
    for key in fast:
        scale = plain[key].abs().max().item()
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5 * scale, msg=key)


def test_fold_follows_new_weights():
    """The folded weights are cached; loading new values (in place) must refresh them."""
    net = backbone()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        net(x)
        other = randomize(backbone(False), 0.07)
        net.load_state_dict(other.state_dict())
        fast, plain = net(x), other(x)
    for key in fast:
        scale = plain[key].abs().max().item()
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5 * scale, msg=key)


def test_training_and_grad_mode_use_the_plain_path(monkeypatch):
    """With a gradient recorded, the norm runs (its affine trains: mmdet's norm_eval)."""
    net = backbone().train()
    calls = count_batch_norms(monkeypatch)
    out = net(torch.randn(1, 3, 64, 64))
    assert calls[0] > 0
    sum(v.sum() for v in out.values()).backward()
    norm = net.res4[0].conv1.norm  # res2 and the stem are frozen (FREEZE_AT)
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_trace_computes_the_fold_from_the_parameters():
    """A trace records the fold itself: no norm left, the same bits as eager inference, and
    still tied to the parameters (a new norm value changes the traced output)."""
    net = backbone()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        eager = net.stem(x)
        traced = torch.jit.trace(net.stem, x)
        assert "batch_norm" not in str(traced.inlined_graph)
        assert torch.equal(traced(x), eager)
        net.stem.conv1.norm.weight.mul_(2.0)
        assert not torch.equal(traced(x), eager)


def test_eval_with_grad_folds_in_graph_and_differentiates():
    net = backbone()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net.res3(net.res2(net.stem(x)))
    got = net.res3(net.res2(net.stem(x)))
    # the GC blocks' pooling takes its autograd-capable path here: rounding, not bits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    got.sum().backward()
    norm = net.res3[0].conv1.norm  # the stem and res2 are frozen (FREEZE_AT)
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_enable_is_idempotent_and_reversible():
    net = backbone(False)
    enable_norm_folding(enable_norm_folding(net))
    assert any(type(m) is NormFoldingConv2d for m in net.modules())
    copy.deepcopy(net)  # the cache and class survive a deepcopy
    disable_norm_folding(net)
    assert not any(type(m) is NormFoldingConv2d for m in net.modules())


# --- whole detector: the same detections -----------------------------------------------


@pytest.fixture(scope="module")
def detector():
    return build_detector()


def build_detector():  # noqa: ANN201
    from detectron2.modeling import build_model

    from tests import mmdet_reference as ref

    if not ref.mmdet_available():
        pytest.skip(ref.mmdet_unavailable_reason())
    import tempfile
    from pathlib import Path

    from gcnet_d2.checkpoint import GCNetCheckpointer

    mm = ref.build_mmdet_model("mask_rcnn_r50_gc_r16", num_classes=3, seed=0)
    with torch.no_grad():  # peaked class scores: detections above the 0.05 threshold
        bias = torch.tensor([2.0, 1.0, 0.5, -4.0])
        mm.roi_head.bbox_head.fc_cls.weight.mul_(0.1)
        mm.roi_head.bbox_head.fc_cls.bias.copy_(bias)
    cfg = gcnet_d2.get_config(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.pth")
        ref.save_mmdet_checkpoint(mm, path)
        GCNetCheckpointer(model).load(path)
    return model


def detections_equal(a, b) -> None:  # noqa: ANN001
    """Same count and classes; boxes, scores and masks equal up to float32 rounding.

    The plain path is not reproducible to the bit itself: the same model on this image with
    1 thread instead of 2 moves boxes by 1.7e-3 px, scores by 1.1e-5 and 5 mask pixels
    (measured); the fold moved them by 2.6e-3 px, 2.2e-5 and 7 pixels. The bounds sit a few
    times above that floor; a wrong fold (a missing shift or scale) moves them by pixels.
    """
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max() <= 1e-2
    assert (a.scores - b.scores).abs().max() <= 1e-4
    assert (a.pred_masks != b.pred_masks).double().mean() <= 1e-5


def test_detections_equal_plain_path(detector):
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 20, 28), generator=g).float()
    image = F.interpolate(image[None], size=(160, 224), mode="nearest")[0]
    batched = [{"image": image, "height": 160, "width": 224}]
    assert any(type(m) is NormFoldingConv2d for m in detector.modules())
    with torch.inference_mode():
        fast = detector(batched)[0]["instances"]
        plain = disable_norm_folding(copy.deepcopy(detector))(batched)[0]["instances"]
    detections_equal(fast, plain)
