"""``FAST.CHANNELS_LAST``: convolution weights in channels-last order; the detector computes the
same function, its convolutions really run on channels-last maps, state dicts are unchanged,
and fp32 / bf16 / training all work on it."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, pairwise_iou
from detectron2.utils.events import EventStorage

from gcnet_d2 import fast, precision
from gcnet_d2.fast import FastOptions
from gcnet_d2.fast.channels_last import (
    disable_channels_last,
    enable_channels_last,
    is_channels_last,
)
from tests.testing import realistic_weights, tiny_cfg

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return (torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(1)) * 255).round()


@pytest.fixture(scope="module")
def plain(image) -> torch.nn.Module:  # noqa: ANN001
    cfg = tiny_cfg(CONFIG)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, True]  # DCN on a CL map
    torch.manual_seed(0)
    return realistic_weights(build_model(cfg).eval(), image)


def conv_formats(model: torch.nn.Module, image: torch.Tensor, autocast: bool = False) -> dict:
    """Each Conv2d's name -> whether its output map was channels-last, on one forward."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            hook = lambda m, i, o, name=name: seen.__setitem__(name, is_channels_last(o))  # noqa: E731
            handles.append(m.register_forward_hook(hook))
    try:
        detections(model, image, autocast)
    finally:
        for h in handles:
            h.remove()
    return seen


def detections(model: torch.nn.Module, image: torch.Tensor, autocast: bool = False):  # noqa: ANN201
    with (
        torch.inference_mode(),
        precision.inference_precision(model, "bf16" if autocast else "fp32", "cpu"),
    ):
        return model([{"image": image}])[0]["instances"]


def test_is_channels_last_reads_strides_of_one_by_one_kernels():
    w = torch.randn(8, 4, 1, 1)
    assert w.is_contiguous(memory_format=torch.channels_last)  # why strides are compared
    assert not is_channels_last(w)
    converted = enable_channels_last(torch.nn.Conv2d(4, 8, 1)).weight
    assert is_channels_last(converted) and converted.stride() == (4, 1, 4, 4)
    conv = enable_channels_last(torch.nn.Conv2d(4, 8, 3))
    storage = conv.weight.data_ptr()
    assert enable_channels_last(conv).weight.data_ptr() == storage  # twice: nothing copied
    assert not is_channels_last(torch.randn(8, 4)) and not is_channels_last(torch.randn(2, 3, 4))


def test_only_cpu_weights_change_order():
    """The measured reason is the CPU's: weights elsewhere (here the meta device, as a GPU's
    would) keep their order."""
    conv = torch.nn.Conv2d(4, 8, 3, device="meta")
    assert not is_channels_last(enable_channels_last(conv).weight)
    assert is_channels_last(enable_channels_last(torch.nn.Conv2d(4, 8, 3)).weight)


def test_every_convolution_runs_channels_last_and_detections_agree(plain, image):
    """On: every conv weight channels-last, every conv output of the detector channels-last
    (the first one reorders the image); off: none. Same detections up to float rounding."""
    on = fast.apply(copy.deepcopy(plain), FastOptions(channels_last=True))
    off = fast.apply(copy.deepcopy(plain), FastOptions(channels_last=False))
    convs = [m for m in on.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(is_channels_last(m.weight) for m in convs)
    assert not any(is_channels_last(m.weight) for m in off.modules() if hasattr(m, "weight"))
    formats_on, formats_off = conv_formats(on, image), conv_formats(off, image)
    assert formats_on and all(formats_on.values()), [n for n, v in formats_on.items() if not v]
    assert not any(formats_off.values())
    a, b = detections(on, image), detections(off, image)
    assert len(a) == len(b) > 0 and torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-2)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-4)
    assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3


def test_bf16_runs_channels_last_and_close_to_fp32(plain, image):
    """Under bf16 autocast the convolutions run channels-last too; detections stay close to
    the fp32 ones (the bounds of tests/precision: same classes for the confident ones)."""
    on = fast.apply(copy.deepcopy(plain), FastOptions(channels_last=True))
    formats = conv_formats(on, image, autocast=True)
    assert formats and all(formats.values())
    got, want = detections(on, image, autocast=True), detections(on, image)
    assert got.pred_boxes.tensor.dtype == torch.float32 and len(got) > 0
    top = want.scores > 0.5
    assert top.any()
    matched = pairwise_iou(want.pred_boxes[top], got.pred_boxes).max(dim=1).values
    assert (matched > 0.9).float().mean() >= 0.8, matched


def test_state_dict_and_loading_are_unchanged(plain):
    model = fast.apply(copy.deepcopy(plain))
    a, b = model.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    fresh = fast.apply(build_model(tiny_cfg(CONFIG)).eval())
    fresh.load_state_dict(plain.state_dict(), strict=False)  # a plain checkpoint loads ...
    convs = [m for m in fresh.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(is_channels_last(m.weight) for m in convs)  # ... keeping the order
    disable_channels_last(model)
    assert not any(is_channels_last(m.weight) for m in model.modules() if hasattr(m, "weight"))


def test_training_step_matches_nchw(plain, image):
    """One training forward / backward on channels-last weights: the losses equal NCHW's up
    to float rounding; the backbone's weight gradients within 2 % of their largest entry
    (measured 0.5 %: proposals that differ by a rounding change which boxes the heads sample,
    so the heads' gradients are left out); every gradient finite."""
    inst = detections(plain, image)[:3]  # ground truth: three of its own detections
    inst.gt_boxes, inst.gt_classes = inst.pred_boxes, inst.pred_classes
    inst.gt_masks = BitMasks(inst.pred_masks)
    for name in ("pred_boxes", "pred_classes", "pred_masks", "scores"):
        inst.remove(name)
    inputs = [{"image": image, "instances": inst}]
    results = {}
    for on in (False, True):
        model = fast.apply(copy.deepcopy(plain), FastOptions(channels_last=on)).train()
        torch.manual_seed(3)
        with EventStorage():
            losses = model(inputs)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads and all(torch.isfinite(g).all() for g in grads.values())
        results[on] = ({k: v.detach() for k, v in losses.items()}, grads)
    (loss_off, g_off), (loss_on, g_on) = results[False], results[True]
    for k in loss_off:
        torch.testing.assert_close(loss_on[k], loss_off[k], rtol=1e-4, atol=1e-5, msg=k)
    backbone = [n for n in g_off if n.startswith("backbone.") and n.endswith(".weight")]
    assert len(backbone) > 50
    for n in backbone:
        error = (g_on[n] - g_off[n]).abs().max() / g_off[n].abs().max().clamp_min(1e-12)
        assert error < 2e-2, (n, error.item())
