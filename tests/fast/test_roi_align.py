"""ParallelROIAlign (``gcnet_d2/fast/roi_align.py``): the same tensor as detectron2's ROIAlign,
bit for bit, on the paths that take threads (eager CPU inference and training), the same
gradient up to float rounding in training, and the plain path everywhere else; switched into
every ``ROIPooler`` of a built model by ``enable_parallel_roi_align`` (``fast.apply``)."""

from __future__ import annotations

import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from gcnet_d2 import fast
from gcnet_d2.fast import roi_align
from gcnet_d2.fast.roi_align import (
    ParallelROIAlign,
    disable_parallel_roi_align,
    enable_parallel_roi_align,
    uses_parallel_roi_align,
)
from tests.testing import realistic_weights, tiny_cfg


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pool_calls(monkeypatch):
    """Counts the calls that went through the thread pool."""
    calls = []
    real = roi_align._executor

    def counting(workers: int):
        calls.append(workers)
        return real(workers)

    monkeypatch.setattr(roi_align, "_executor", counting)
    return calls


def _inputs(n: int = 300, images: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 8, 40, 56, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([200.0, 140.0])
    wh = torch.rand(n, 2, generator=g) * 100 + 2
    idx = torch.randint(0, images, (n, 1), generator=g).float()
    return x, torch.cat([idx, xy, xy + wh], 1)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("aligned", [True, False])
def test_threaded_inference_equals_roi_align_bit_for_bit(two_threads, pool_calls, mode, aligned):
    x, rois = _inputs()
    plain = ROIAlign((7, 7), 0.25, 0, aligned)
    threaded = ParallelROIAlign((7, 7), 0.25, 0, aligned)
    with getattr(torch, mode)():
        expected, got = plain(x, rois), threaded(x, rois)
    assert pool_calls == [2]
    assert torch.equal(got, expected)


@pytest.mark.parametrize("aligned", [True, False])
def test_threaded_training_matches_roi_align_values_and_gradient(two_threads, pool_calls, aligned):
    """With a gradient: forward bit for bit, backward = the serial kernel's gradient up to the
    order of the float additions (each chunk's gradient is summed into the feature map)."""
    x, rois = _inputs()
    plain = ROIAlign((14, 14), 0.25, 0, aligned)
    threaded = ParallelROIAlign((14, 14), 0.25, 0, aligned)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    grad = torch.randn(rois.shape[0], 8, 14, 14, generator=torch.Generator().manual_seed(1))
    expected, got = plain(x1, rois), threaded(x2, rois)
    expected.backward(grad)
    got.backward(grad)
    assert pool_calls == [2, 2]  # forward and backward went through the threads
    assert torch.equal(got, expected)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    assert x1.grad.abs().sum() > 0


def test_plain_path_with_too_few_boxes_or_one_thread(two_threads, pool_calls):
    x, rois = _inputs()
    threaded = ParallelROIAlign((7, 7), 0.25, 0, True)
    with torch.no_grad():
        threaded(x, rois[: 2 * roi_align.MIN_BOXES_PER_THREAD - 1])
    torch.set_num_threads(1)  # two_threads restores the count
    threaded(x.requires_grad_(True), rois).sum().backward()
    assert pool_calls == []


def test_trace_records_forks_equal_to_the_plain_kernel(two_threads, pool_calls):
    """A trace pools in TorchScript forks (no Python thread pool): equal to the plain kernel
    at other box counts (none and one included) and with gradients."""
    x, rois = _inputs()
    threaded = ParallelROIAlign((7, 7), 0.25, 0, True)
    plain = ROIAlign((7, 7), 0.25, 0, True)
    with torch.no_grad():
        traced = torch.jit.trace(threaded, (x, rois), check_trace=False)
    assert pool_calls == []
    graph = str(traced.inlined_graph)
    assert graph.count("aten::wait(") == roi_align.TRACE_PARTS, graph
    for n in (500, 1, 0):
        x2, rois2 = _inputs(n=n, images=2)
        with torch.no_grad():
            assert torch.equal(traced(x2, rois2), plain(x2, rois2)), n
    x3 = x.clone().requires_grad_(True)
    traced(x3, rois).square().sum().backward()
    x4 = x.clone().requires_grad_(True)
    plain(x4, rois).square().sum().backward()
    torch.testing.assert_close(x3.grad, x4.grad, rtol=1e-5, atol=1e-5)


def test_pooler_swap_keeps_settings_and_leaves_other_poolers():
    pooler = ROIPooler((7, 7), (1 / 4, 1 / 8), sampling_ratio=0, pooler_type="ROIAlignV2")
    levels = list(pooler.level_poolers)
    assert enable_parallel_roi_align(pooler) is pooler
    assert all(type(p) is ParallelROIAlign for p in pooler.level_poolers)
    assert all(a is b for a, b in zip(pooler.level_poolers, levels, strict=True))  # in place
    assert [p.spatial_scale for p in pooler.level_poolers] == [1 / 4, 1 / 8]
    assert all(p.aligned and p.sampling_ratio == 0 for p in pooler.level_poolers)
    other = ROIPooler((7, 7), (1 / 4,), sampling_ratio=0, pooler_type="ROIPool")
    enable_parallel_roi_align(torch.nn.ModuleList([other]))  # found inside any module
    assert type(other.level_poolers[0]) is not ParallelROIAlign
    assert disable_parallel_roi_align(pooler) is pooler
    assert all(type(p) is ROIAlign for p in pooler.level_poolers)
    assert [p.spatial_scale for p in pooler.level_poolers] == [1 / 4, 1 / 8]


def _model(row: str, parallel: bool):
    # 100 proposals: more than the 2 x 16 boxes per pooler call that take the threads
    cfg = tiny_cfg(row, "MODEL.RPN.POST_NMS_TOPK_TEST", "100", depth=50)
    cfg.FAST.PARALLEL_ROI_ALIGN = parallel
    model = build_model(cfg).eval()
    assert not uses_parallel_roi_align(model)  # the built model is plain
    return fast.apply(model, cfg)


@pytest.mark.parametrize(
    "row",
    [
        "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml",
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml",
    ],
)
def test_detector_detections_equal_with_and_without(row, two_threads, pool_calls):
    """The table configs' RoI heads pool with ParallelROIAlign (box and mask); the detector's
    output is the plain one's, bit for bit; the key switches it off."""
    plain, threaded = _model(row, False), _model(row, True)
    assert not uses_parallel_roi_align(plain)
    for pooler in (threaded.roi_heads.box_pooler, threaded.roi_heads.mask_pooler):
        assert all(type(p) is ParallelROIAlign for p in pooler.level_poolers)
    g = torch.Generator().manual_seed(1)
    image = (torch.rand(3, 192, 256, generator=g) * 255).round()
    realistic_weights(plain, image)  # detections exist
    threaded.load_state_dict(plain.state_dict())
    with torch.inference_mode():
        a = plain([{"image": image}])[0]["instances"]
        b = threaded([{"image": image}])[0]["instances"]
    assert pool_calls, "the threaded path ran"
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    assert isinstance(a.pred_boxes, Boxes)
