"""IndexedBitMasks: the sampled RoIs' bitmap targets without per-RoI copies, identical to
detectron2's BitMasks targets, at a fraction of the memory."""

from __future__ import annotations

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances

from benchmarks.memory import LiveTensorBytes
from gcnet_d2.modeling.mmdet_recipe import IndexedBitMasks, MaxIoUMatcher
from gcnet_d2.modeling.mmdet_recipe.sampling import sample_with_gt_prepended


def _masks_and_boxes(g: int = 5, n: int = 64, h: int = 90, w: int = 120):
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(g, h, w, generator=gen) > 0.6
    source[:, :, -3:] = True  # mass at the right edge: RoIAlign's border handling matters
    index = torch.randint(0, g, (n,), generator=gen)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 40 + 1], 1)
    return source, index, boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_targets_equal_bitmasks_of_the_copied_rows(dtype):
    source, index, boxes = _masks_and_boxes()
    boxes = boxes.to(dtype)
    indexed = IndexedBitMasks(source, index)
    plain = BitMasks(source[index])
    assert len(indexed) == len(plain) and indexed.image_size == plain.image_size
    assert torch.equal(indexed.tensor, plain.tensor)
    assert torch.equal(indexed.crop_and_resize(boxes, 28), plain.crop_and_resize(boxes, 28))
    keep = torch.rand(len(index), generator=torch.Generator().manual_seed(1)) > 0.5
    sub = indexed[keep]
    assert isinstance(sub, IndexedBitMasks)
    assert torch.equal(
        sub.crop_and_resize(boxes[keep], 14), plain[keep].crop_and_resize(boxes[keep], 14)
    )
    assert torch.equal(indexed[3].tensor, plain[3].tensor)
    assert torch.equal(indexed.to("cpu").tensor, plain.tensor)


def test_peak_memory_is_the_gt_masks_not_the_rois():
    source, index, boxes = _masks_and_boxes(g=4, n=256, h=400, w=600)
    peaks = {}
    for name, masks in (("plain", None), ("indexed", IndexedBitMasks(source, index))):
        tracker = LiveTensorBytes()
        with tracker:
            m = BitMasks(source[index]) if masks is None else masks
            m.crop_and_resize(boxes, 28)
        peaks[name] = tracker.peak
    assert peaks["indexed"] * 10 < peaks["plain"], peaks


def test_sampler_hands_out_indexed_masks_with_the_right_targets():
    source, _, _ = _masks_and_boxes(g=3)
    targets = Instances((90, 120))
    targets.gt_boxes = Boxes(torch.tensor([[10.0, 10, 50, 60], [60, 20, 110, 80], [5, 40, 40, 88]]))
    targets.gt_classes = torch.tensor([0, 1, 2])
    targets.gt_masks = BitMasks(source)
    jitter = torch.randn(40, 4, generator=torch.Generator().manual_seed(2)) * 4
    proposals = Boxes(targets.gt_boxes.tensor.repeat(14, 1)[:40] + jitter)
    matcher = MaxIoUMatcher(thresholds=[0.5], labels=[0, 1], min_pos_iou=0.5)
    torch.manual_seed(0)
    sampled = sample_with_gt_prepended(proposals, targets, matcher, 32, 0.5, 3)
    assert isinstance(sampled.gt_masks, IndexedBitMasks)
    fg = sampled[sampled.gt_classes < 3]
    assert len(fg) > 3
    boxes = fg.proposal_boxes.tensor
    rows = fg.gt_masks.index
    expected = BitMasks(source[rows]).crop_and_resize(boxes, 28)
    assert torch.equal(fg.gt_masks.crop_and_resize(boxes, 28), expected)
    assert torch.equal(fg.gt_classes, targets.gt_classes[rows])
