"""The GC block (``gcnet_d2.layers.ContextBlock``, the plain module every speed-up is tested
against): identity at init, gradients, agreement with the paper's formula written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gcnet_d2.layers import ContextBlock, context_arg_errors, validate_context_args
from tests.testing import randomize  # every parameter ~ N(0, 0.2), zero-initialised convs too

FUSIONS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]


def test_fresh_add_block_is_identity():
    block = ContextBlock(64, 1 / 16)
    x = torch.randn(2, 64, 9, 7)
    assert torch.equal(block(x), x)


def test_fresh_mul_block_gates_by_half():
    block = ContextBlock(32, 1 / 4, fusion=("channel_mul",))
    x = torch.randn(1, 32, 5, 5)
    torch.testing.assert_close(block(x), x * 0.5)


def test_layout_matches_mmcv_names():
    block = ContextBlock(64, 1 / 4, fusion=("channel_add", "channel_mul"))
    keys = set(block.state_dict())
    for prefix in ("channel_add_conv", "channel_mul_conv"):
        for idx in (0, 1, 3):
            assert f"{prefix}.{idx}.weight" in keys
            assert f"{prefix}.{idx}.bias" in keys
    assert {"conv_mask.weight", "conv_mask.bias"} <= keys
    assert isinstance(block.channel_add_conv[1], nn.LayerNorm)
    assert block.channel_add_conv[1].normalized_shape == (16, 1, 1)
    assert block.channel_add_conv[0].out_channels == 16


def paper_formula(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """GCNet's block on ``block``'s weights, written out with einsum on N x C vectors:
    ``x * sigmoid(T_mul(ctx)) + T_add(ctx)``, ``ctx = sum_p softmax_p(W_k x_p + b_k) x_p``
    (or the mean), ``T = W_2 ReLU(LN(W_1 ctx + b_1)) + b_2``."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    if block.pooling == "att":
        logits = torch.einsum("c,ncl->nl", block.conv_mask.weight.reshape(c), flat)
        attention = (logits + block.conv_mask.bias).softmax(dim=-1)
        context = torch.einsum("ncl,nl->nc", flat, attention)
    else:
        context = flat.mean(dim=-1)

    def transform(seq: nn.Sequential) -> torch.Tensor:
        first, norm, last = seq[0], seq[1], seq[3]
        p = first.out_channels
        y = torch.einsum("pc,nc->np", first.weight.reshape(p, c), context) + first.bias
        y = F.layer_norm(y, (p,), norm.weight.reshape(p), norm.bias.reshape(p), norm.eps)
        return torch.einsum("cp,np->nc", last.weight.reshape(c, p), y.relu()) + last.bias

    out = x
    if "channel_mul" in block.fusion:
        out = out * torch.sigmoid(transform(block.channel_mul_conv)).reshape(n, c, 1, 1)
    if "channel_add" in block.fusion:
        out = out + transform(block.channel_add_conv).reshape(n, c, 1, 1)
    return out


@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_matches_the_paper_formula(pooling, fusion):
    block = randomize(ContextBlock(48, 1 / 4, pooling, fusion))
    x = torch.randn(3, 48, 11, 6)
    torch.testing.assert_close(block(x), paper_formula(block, x), rtol=1e-5, atol=1e-5)


def test_block_does_not_modify_its_input():
    block = randomize(ContextBlock(16, 1 / 4, fusion=("channel_add", "channel_mul")))
    x = torch.randn(2, 16, 5, 5)
    before = x.clone()
    with torch.inference_mode():
        block(x)
    assert torch.equal(x, before)


def test_context_is_global():
    """Changing one far-away position changes the output everywhere (global context)."""
    block = randomize(ContextBlock(16, 1 / 4))
    x = torch.randn(1, 16, 8, 8)
    y = x.clone()
    y[:, :, 7, 7] += 5.0
    diff = (block(y) - block(x))[:, :, 0, 0].abs().max()
    assert diff > 1e-4


def test_gradients_reach_every_parameter():
    block = randomize(ContextBlock(32, 1 / 8, fusion=("channel_add", "channel_mul")))
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    (block(x) ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        if name == "conv_mask.bias":  # softmax is shift-invariant: its gradient is exactly 0
            assert p.grad is None or p.grad.abs().max() < 1e-5
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fresh_block_trains_away_from_identity():
    """At init the last conv is zero, yet it gets a gradient, so the block can learn."""
    block = ContextBlock(16, 1 / 4)
    x = torch.randn(2, 16, 5, 5)
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.channel_add_conv[3].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "ratio,pooling,fusion,match",
    [
        (0.0, "att", ["channel_add"], "ratio"),
        (1.5, "att", ["channel_add"], "ratio"),
        (-0.25, "att", ["channel_add"], "ratio"),
        ("x", "att", ["channel_add"], "ratio"),
        (0.25, "max", ["channel_add"], "pooling"),
        (0.25, "att", [], "fusion"),
        (0.25, "att", ["channel_sub"], "channel_sub"),
        (0.25, "att", "channel_add", "fusion"),
    ],
)
def test_bad_arguments_name_the_problem(ratio, pooling, fusion, match):
    with pytest.raises(ValueError, match=match):
        validate_context_args(ratio, pooling, fusion)
    with pytest.raises(ValueError, match=match):
        ContextBlock(64, ratio, pooling, fusion)


def test_errors_are_reported_per_argument():
    """Each unusable argument under its own name, so a caller can name its own source."""
    assert context_arg_errors(0.25, "att", ["channel_add"]) == {}
    errors = context_arg_errors(2.0, "max", ["channel_add", "channel_add"])
    assert sorted(errors) == ["fusion", "pooling", "ratio"]
    assert "2.0" in errors["ratio"] and "'max'" in errors["pooling"]
    assert "repeat" in errors["fusion"]
    assert list(context_arg_errors(0.5, "avg", ["channel_sum"])) == ["fusion"]


def test_ratio_too_small_for_channels():
    with pytest.raises(ValueError, match="no channel"):
        ContextBlock(8, 1 / 16)
