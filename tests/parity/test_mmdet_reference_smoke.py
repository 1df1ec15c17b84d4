"""Smoke tests of the mmdet reference harness (tests/parity/mmdet_reference.py).

Skipped when the optional mmdet stack of requirements-parity.txt is not installed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.parity import mmdet_reference as ref

# mmdet's FCNMaskHead copies the merged cascade masks with Tensor.new_tensor (harmless)
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")

H, W = 128, 160
# X-101 kinds are built at depth 50 (same ResNeXt-32x4d blocks, GC and DCN) to stay fast.
DEPTH = {"mask_rcnn_r50_gc_r16": None}
FAST_TEST_CFG = {"rcnn": {"max_per_img": 20}}


@pytest.fixture(scope="module")
def mmdet_stack() -> None:
    if not ref.mmdet_available():
        pytest.skip(ref.mmdet_unavailable_reason())


@pytest.fixture(scope="module")
def models(mmdet_stack: None) -> dict:
    return {}


def _model(models: dict, kind: str):
    if kind not in models:
        t0 = time.perf_counter()
        models[kind] = ref.build_mmdet_model(
            kind, num_classes=3, seed=0, depth=DEPTH.get(kind, 50), test_cfg=FAST_TEST_CFG
        )
        print(f"built {kind} in {time.perf_counter() - t0:.2f}s")
    return models[kind]


def test_mmcv_op_stubs(mmdet_stack: None) -> None:
    assert ref.install_mmcv_op_stubs() is ref.install_mmcv_op_stubs()
    from mmcv.ops import DeformConv2dPack, RoIAlign, batched_nms, nms

    g = torch.Generator().manual_seed(0)
    # nms: mmcv semantics (descending score order, suppress IoU > thr) vs a naive greedy loop
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 20], 1)
    scores = torch.rand(60, generator=g)
    dets, keep = nms(boxes, scores, 0.5)
    order, expect = scores.argsort(descending=True).tolist(), []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= 0.5 for j in expect):
            expect.append(i)
    assert keep.tolist() == expect
    torch.testing.assert_close(dets[:, 4], scores[keep])
    labels = torch.arange(60) % 3
    _, keep_b = batched_nms(boxes, scores, labels, dict(iou_threshold=0.5))
    assert len(keep_b) >= len(keep)

    # RoIAlign(aligned=True) on a ramp f(y, x) = x: every bin averages to its centre x
    feat = torch.arange(32.0).repeat(1, 1, 32, 1)
    roi = torch.tensor([[0.0, 4.0, 6.0, 20.0, 14.0]])  # image coords at spatial_scale 0.5
    out = RoIAlign((2, 4), spatial_scale=0.5, sampling_ratio=0, aligned=True)(feat, roi)
    centres = 4 * 0.5 - 0.5 + (torch.arange(4) + 0.5) * (16 * 0.5 / 4)
    torch.testing.assert_close(out[0, 0], centres.expand(2, 4))

    # DCN v1: mmcv's module and keys; zero offsets == plain conv, real offsets != plain conv
    dcn = DeformConv2dPack(8, 16, 3, padding=1, groups=2, deform_groups=1, bias=False)
    assert set(dcn.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    assert dcn.conv_offset.out_channels == 18 and not dcn.conv_offset.weight.any()
    x = torch.randn(1, 8, 9, 11, generator=g)
    plain = F.conv2d(x, dcn.weight, padding=1, groups=2)
    torch.testing.assert_close(dcn(x), plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        dcn.conv_offset.bias.fill_(1.0)  # dy = dx = +1 everywhere: shift by one pixel
    shifted = F.conv2d(F.pad(x, (0, 2, 0, 2)), dcn.weight, groups=2)  # taps at p + k + 1
    torch.testing.assert_close(dcn(x), shifted, rtol=1e-5, atol=1e-5)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    iw = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    ih = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / (area - inter))


@pytest.mark.parametrize("kind", ref.KINDS)
def test_intermediates(models: dict, kind: str) -> None:
    model = _model(models, kind)
    n_stages = 3 if kind.startswith("cascade") else 1
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    rois = torch.tensor([[0.0, 10, 12, 80, 90], [0.0, 30.5, 5.25, 150, 120]])
    t0 = time.perf_counter()
    out = ref.mmdet_intermediates(model, img, rois)
    print(f"{kind}: mmdet_intermediates in {time.perf_counter() - t0:.2f}s")

    assert out["input"].shape == (1, 3, H, W)
    mean, std = torch.tensor(ref.MMDET_PIXEL_MEAN), torch.tensor(ref.MMDET_PIXEL_STD)
    expect_input = (torch.from_numpy(img).permute(2, 0, 1).float() - mean[:, None, None]) / std[
        :, None, None
    ]
    torch.testing.assert_close(out["input"][0], expect_input)
    strides = [4, 8, 16, 32]
    assert [tuple(t.shape) for t in out["backbone"]] == [
        (1, c, H // s, W // s) for c, s in zip((256, 512, 1024, 2048), strides, strict=True)
    ]
    levels = [(H // s, W // s) for s in strides] + [((H // 32 + 1) // 2, (W // 32 + 1) // 2)]
    assert [tuple(t.shape) for t in out["neck"]] == [(1, 256, h, w) for h, w in levels]
    assert [tuple(t.shape) for t in out["rpn_cls"]] == [(1, 3, h, w) for h, w in levels]
    assert [tuple(t.shape) for t in out["rpn_bbox"]] == [(1, 12, h, w) for h, w in levels]
    for key in ("backbone", "neck", "rpn_cls", "rpn_bbox"):
        assert all(torch.isfinite(t).all() for t in out[key]), key
    props, pscores = out["proposals"], out["proposal_scores"]
    assert props.shape[1] == 4 and 0 < len(props) <= 1000 and pscores.shape == (len(props),)
    assert (props[:, 2:] > props[:, :2]).all() and (props >= 0).all()
    assert (props[:, 2] <= W).all() and (props[:, 3] <= H).all()
    assert (pscores[:-1] >= pscores[1:]).all()

    assert len(out["cls_score"]) == len(out["bbox_pred"]) == len(out["mask_logits"]) == n_stages
    for cls, box, mask in zip(out["cls_score"], out["bbox_pred"], out["mask_logits"], strict=True):
        assert cls.shape == (2, 4)
        assert box.shape == ((2, 4) if n_stages == 3 else (2, 12))
        assert mask.shape == (2, 3, 28, 28)
        assert torch.isfinite(cls).all() and torch.isfinite(box).all()
        assert torch.isfinite(mask).all()
    if n_stages == 3:
        assert out["refined_rois"].shape == (2, 5)
        torch.testing.assert_close(out["refined_rois"][:, 0], rois[:, 0])
        assert out["refined_cls_score"].shape == (2, 4)
        assert out["refined_bbox_pred"].shape == (2, 4)

    det = out["detections"]
    n = len(det["scores"])
    assert 0 < n <= FAST_TEST_CFG["rcnn"]["max_per_img"]
    assert det["bboxes"].shape == (n, 4) and det["labels"].shape == (n,)
    assert det["masks"].shape == (n, H, W) and det["masks"].dtype == np.bool_
    assert np.isfinite(det["bboxes"]).all() and np.isfinite(det["scores"]).all()
    assert ((det["scores"] >= 0.05) & (det["scores"] <= 1)).all()
    assert set(det["labels"].tolist()) <= {0, 1, 2}
    assert det["masks"].any(), "random weights should give non-empty masks"


def test_checkpoint_round_trip(models: dict, tmp_path) -> None:
    model = _model(models, "cascade_mask_rcnn_x101_dcn_gc_r16")
    path = tmp_path / "ckpt.pth"
    ref.save_mmdet_checkpoint(model, str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    assert set(sd) == set(model.state_dict())
    for key in (
        "backbone.layer1.0.conv1.weight",
        "backbone.layer2.0.context_block.conv_mask.weight",
        "backbone.layer2.0.conv2.weight",
        "backbone.layer2.0.conv2.conv_offset.weight",
        "backbone.layer2.0.conv2.conv_offset.bias",
        "neck.lateral_convs.0.conv.weight",
        "rpn_head.rpn_conv.weight",
        "roi_head.bbox_head.0.shared_fcs.0.weight",
        "roi_head.bbox_head.2.fc_reg.weight",
        "roi_head.mask_head.2.convs.0.conv.weight",
    ):
        assert key in sd, key
    # every weight that mmcv/mmdet zero-initialise was randomised
    assert sd["backbone.layer2.0.conv2.conv_offset.weight"].abs().sum() > 0
    assert sd["backbone.layer3.0.context_block.channel_add_conv.3.weight"].abs().sum() > 0
    assert not torch.allclose(sd["backbone.bn1.running_var"], torch.ones(64))
    assert ckpt["meta"]["CLASSES"] == ("class0", "class1", "class2")
    assert ckpt["meta"]["mmdet_version"].startswith("3.")
