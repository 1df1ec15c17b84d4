"""Frozen norms folded into their convs at inference (``gcnet_d2/fast/norm_fold.py``): the
same outputs and detections as the plain model (conv + norm), norms really skipped, training,
tracing and state dicts untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.fast.norm_fold import (
    NormFoldingConv2d,
    disable_conv_speedups,
    enable_conv_speedups,
)
from gcnet_d2.modeling import build_gcnet_resnet_backbone
from tests.fast.fold_probe import kinds, record_unfolded
from tests.testing import randomize

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


def plain_backbone() -> torch.nn.Module:
    """The GC R-50 backbone as built (plain), random weights, eval."""
    cfg = gcnet_d2.get_config(CONFIG)
    torch.manual_seed(0)
    return randomize(build_gcnet_resnet_backbone(cfg, ShapeSpec(channels=3)), 0.05).eval()


def folded_backbone() -> torch.nn.Module:
    """:func:`plain_backbone` with the norm fold only (``enable_conv_speedups``)."""
    return enable_conv_speedups(plain_backbone(), fold_frozen_norms=True, conv1x1_gemm=False)


def count_batch_norms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = F.batch_norm

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counted)
    return calls


def assert_close_scaled(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * scale, msg=key)


def test_every_normed_conv_switched_and_state_dict_unchanged():
    folded, plain = folded_backbone(), plain_backbone()
    n_folding = sum(type(m) is NormFoldingConv2d and m.fold_norm for m in folded.modules())
    assert n_folding == sum(type(m) is Conv2d and m.norm is not None for m in plain.modules())
    assert n_folding > 0
    assert not any(type(m) is NormFoldingConv2d for m in plain.modules())
    assert not any(getattr(m, "gemm_1x1", False) for m in folded.modules())  # gemm off
    a, b = folded.state_dict(), plain.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_equal_and_norms_skipped(monkeypatch):
    """``fast.apply`` (the norm fold and the GC conv3 fold) against the plain model."""
    plain = plain_backbone()
    net = fast.apply(copy.deepcopy(plain))
    x = torch.randn(1, 3, 64, 96)
    calls = count_batch_norms(monkeypatch)
    with torch.inference_mode():
        got = net(x)
        assert calls[0] == 0  # every frozen norm folded (GC conv3s fold in the bottleneck)
        want = plain(x)
        assert calls[0] > 0
    assert_close_scaled(got, want)


def test_fold_norm_off_runs_the_norms(monkeypatch):
    """A ``NormFoldingConv2d`` whose ``fold_norm`` is off (``FOLD_FROZEN_NORMS`` off,
    ``CONV1X1_GEMM`` on) runs conv + norm: the same values as the plain model, norms called."""
    plain = plain_backbone()
    net = enable_conv_speedups(copy.deepcopy(plain), fold_frozen_norms=False, conv1x1_gemm=True)
    switched = [m for m in net.modules() if type(m) is NormFoldingConv2d]
    assert switched and not any(m.fold_norm for m in switched)
    stem = net.stem.conv1
    assert type(stem) is NormFoldingConv2d and not stem.can_fold(torch.zeros(1, 3, 4, 4))
    x = torch.randn(1, 3, 64, 96)
    calls = count_batch_norms(monkeypatch)
    with torch.inference_mode():
        got = net(x)
    assert calls[0] >= len([m for m in switched if m.norm is not None])
    with torch.inference_mode():
        want = plain(x)
    assert_close_scaled(got, want)


def test_fold_follows_new_weights():
    """The folded weights are cached; loading new values (in place) must refresh them."""
    net = folded_backbone()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), record_unfolded(net) as unfolded:
        net(x)
        other = randomize(plain_backbone(), 0.07)
        net.load_state_dict(other.state_dict())
        got, want = net(x), other(x)
    assert "norm" not in kinds(unfolded)  # the folded path ran, both times
    assert_close_scaled(got, want)


def test_training_and_grad_mode_use_the_plain_path(monkeypatch):
    """In training mode nothing folds: every norm runs (its affine trains: mmdet's
    norm_eval), the comparison with the plain model is not a fold's."""
    net = folded_backbone().train()
    x = torch.randn(1, 3, 64, 64)
    switched = [m for m in net.modules() if type(m) is NormFoldingConv2d and m.norm is not None]
    assert switched and not any(m.can_fold(x) for m in switched)
    calls = count_batch_norms(monkeypatch)
    with record_unfolded(net) as unfolded:
        out = net(x)
    assert {name for kind, name in unfolded if kind == "norm"} == {
        f"{n}.norm" for n, m in net.named_modules() if m in switched
    }
    assert calls[0] > 0
    sum(v.sum() for v in out.values()).backward()
    norm = net.res4[0].conv1.norm  # res2 and the stem are frozen (FREEZE_AT)
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_trace_computes_the_fold_from_the_parameters():
    """A trace records the fold itself: no norm left, the same bits as eager inference, and
    still tied to the parameters (a new norm value changes the traced output)."""
    net = folded_backbone()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        eager = net.stem(x)
        traced = torch.jit.trace(net.stem, x)
        assert "batch_norm" not in str(traced.inlined_graph)
        assert torch.equal(traced(x), eager)
        net.stem.conv1.norm.weight.mul_(2.0)
        assert not torch.equal(traced(x), eager)


def test_eval_with_grad_folds_in_graph_and_differentiates():
    plain = plain_backbone()
    net = fast.apply(copy.deepcopy(plain))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net.res3(net.res2(net.stem(x)))
        reference = plain.res3(plain.res2(plain.stem(x)))
    with record_unfolded(net) as unfolded:
        got = net.res3(net.res2(net.stem(x)))
    assert unfolded == []  # folded in the graph: no norm module, no GC middle ran
    # the GC blocks' pooling takes its autograd-capable path here: rounding, not bits
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=atol)
    got.sum().backward()
    norm = net.res3[0].conv1.norm  # the stem and res2 are frozen (FREEZE_AT)
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_enable_is_idempotent_and_reversible():
    net = plain_backbone()
    enable_conv_speedups(enable_conv_speedups(net, True, False), True, False)
    assert any(type(m) is NormFoldingConv2d for m in net.modules())
    copy.deepcopy(net)  # the cache and class survive a deepcopy
    disable_conv_speedups(net)
    assert not any(type(m) is NormFoldingConv2d for m in net.modules())
    assert not any("fold_norm" in vars(m) or "gemm_1x1" in vars(m) for m in net.modules())
    enable_conv_speedups(net, fold_frozen_norms=False, conv1x1_gemm=False)  # both off: plain
    assert not any(type(m) is NormFoldingConv2d for m in net.modules())


# --- whole detector: the same detections -----------------------------------------------


@pytest.fixture(scope="module")
def detector():
    return build_detector()


def build_detector():  # noqa: ANN201
    """The plain detector as built, with mmdetection weights."""
    from detectron2.modeling import build_model

    from tests.parity import mmdet_reference as ref

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


def test_detections_equal_plain_model(detector):
    """The detector with the fold (``FOLD_FROZEN_NORMS`` alone) against the plain one as built."""
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 20, 28), generator=g).float()
    image = F.interpolate(image[None], size=(160, 224), mode="nearest")[0]
    batched = [{"image": image, "height": 160, "width": 224}]
    assert not any(type(m) is NormFoldingConv2d for m in detector.modules())
    only_fold = fast.FastOptions(conv1x1_gemm=False, parallel_roi_align=False, lean_fpn=False)
    folded = fast.apply(copy.deepcopy(detector), only_fold)
    assert any(type(m) is NormFoldingConv2d and m.fold_norm for m in folded.modules())
    with torch.inference_mode():
        with record_unfolded(folded) as unfolded:
            got = folded(batched)[0]["instances"]
        with record_unfolded(detector) as ran:
            want = detector(batched)[0]["instances"]
    assert unfolded == [] and kinds(ran) == {"norm", "gc"}  # the fold ran; the plain did not
    detections_equal(got, want)
