"""GC bottlenecks: placement after conv3 + norm, and the folded path (``enable_gc_fold``)
against the plain bottleneck."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BottleneckBlock

from gcnet_d2.fast.gc_fold import FoldedGCBottleneckBlock, enable_gc_fold
from gcnet_d2.layers import FrozenStatsBatchNorm2d
from gcnet_d2.modeling import DeformGCBottleneckBlock, GCBottleneckBlock
from tests.testing import randomize as randomize_module

NORMS = ["FrozenBN", FrozenStatsBatchNorm2d, "BN"]


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    return randomize_module(module, std=0.3, conv_std=0.1)


def make_block(norm, fusion=("channel_add",), in_ch=64, stride=1, deform=False, groups=1):
    cls = DeformGCBottleneckBlock if deform else GCBottleneckBlock
    return randomize(
        cls(
            in_ch,
            128,
            bottleneck_channels=32,
            stride=stride,
            num_groups=groups,
            norm=norm,
            gc_ratio=1 / 4,
            gc_fusion=fusion,
        )
    )


def folded_copy(block: GCBottleneckBlock) -> GCBottleneckBlock:
    """A deep copy of the plain ``block`` with the fold applied (same weights and mode)."""
    folded = enable_gc_fold(copy.deepcopy(block))
    assert type(folded) is FoldedGCBottleneckBlock and type(block) is GCBottleneckBlock
    return folded


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    "fusion", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]
)
@pytest.mark.parametrize("training", [False, True])
def test_folded_matches_plain(norm, fusion, training):
    block = make_block(norm, fusion).train(training)
    folded = folded_copy(block)
    x = torch.randn(2, 64, 10, 12)
    torch.testing.assert_close(folded(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["FrozenBN", FrozenStatsBatchNorm2d])
def test_folded_gradients_match_plain(norm):
    block = make_block(norm, ("channel_add", "channel_mul"), stride=2).train()
    folded = folded_copy(block)
    x = torch.randn(2, 64, 10, 12)
    grad_out = torch.randn(2, 128, 5, 6)
    x1 = x.clone().requires_grad_()
    (folded(x1) * grad_out).sum().backward()
    x2 = x.clone().requires_grad_()
    (block(x2) * grad_out).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    plain = dict(block.named_parameters())
    for name, p in folded.named_parameters():
        # conv_mask's bias cannot change a softmax: its gradient is 0 up to rounding
        want = torch.zeros_like(p) if plain[name].grad is None else plain[name].grad
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_fresh_gc_block_equals_plain_bottleneck():
    """Identity at init: a GC bottleneck computes what detectron2's bottleneck computes."""
    torch.manual_seed(1)
    plain = BottleneckBlock(64, 128, bottleneck_channels=32, stride=2, norm="FrozenBN")
    gc = GCBottleneckBlock(64, 128, bottleneck_channels=32, stride=2, norm="FrozenBN")
    missing, unexpected = gc.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("context_block.") for k in missing)
    x = torch.randn(1, 64, 16, 16)
    torch.testing.assert_close(gc(x), plain(x), rtol=1e-5, atol=1e-5)


def test_context_block_sits_after_conv3_norm():
    """Hook order: conv3 (with its norm) runs, then the block sees exactly its output (the
    plain bottleneck calls both modules in any mode)."""
    block = make_block("BN").eval()
    seen = {}
    block.conv3.register_forward_hook(lambda m, i, o: seen.setdefault("conv3", o))
    block.context_block.register_forward_hook(lambda m, i, o: seen.setdefault("gc_in", i[0]))
    block(torch.randn(2, 64, 8, 8))
    assert torch.equal(seen["conv3"], seen["gc_in"])


def test_deform_bottleneck_layout_and_zero_offsets():
    block = make_block("FrozenBN", deform=True, groups=4, stride=2)
    keys = set(block.state_dict())
    assert {"conv2.weight", "conv2.conv_offset.weight", "conv2.conv_offset.bias"} <= keys
    assert "conv2.norm.running_mean" in keys
    assert block.conv2.weight.shape == (32, 8, 3, 3)
    assert block.conv2.conv_offset.out_channels == 18
    with torch.no_grad():
        block.conv2.conv_offset.weight.zero_()
        block.conv2.conv_offset.bias.zero_()
    x = torch.randn(1, 64, 12, 12)
    # zero offsets: the deformable conv is the regular grouped conv
    out = F.relu(block.conv1(x))
    expect = block.conv2.norm(F.conv2d(out, block.conv2.weight, stride=2, padding=1, groups=4))
    torch.testing.assert_close(block.conv2(out), expect, rtol=1e-5, atol=1e-5)


def test_frozen_norm_kept_frozen():
    block = make_block("FrozenBN")
    assert isinstance(block.conv3.norm, FrozenBatchNorm2d)
    assert not any("norm" in n for n, _ in block.named_parameters())
