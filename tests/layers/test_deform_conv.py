"""DCN v1 against a direct, slow, readable statement of deformable sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gcnet_d2.modeling import DeformConv2dWithOffset


def bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Sample a H x W map at real (y, x); zero outside the map (per-corner)."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return img.new_zeros(())
    y, x = float(y), float(x)
    y0, x0 = math.floor(y), math.floor(x)
    total = img.new_zeros(())
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total = total + img[yy, xx] * wy * wx
    return total


@torch.no_grad()
def reference_deform_conv(x, offset, weight, stride, pad, dil, deform_groups):
    """out[o, i, j] = sum over in-channels c of o's group and taps k of
    w[o, c, k] * x[c](p0 + p_k + (dy, dx)), offsets stored as (dy, dx) per group and tap."""
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    h_out = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = x.new_zeros(n, c_out, h_out, w_out)
    ch_per_dg = c_in // deform_groups
    for b in range(n):
        for o in range(c_out):
            g = o // (c_out // groups)
            for i in range(h_out):
                for j in range(w_out):
                    acc = x.new_zeros(())
                    for ci in range(c_per_group):
                        c = g * c_per_group + ci
                        dg = c // ch_per_dg
                        for ki in range(kh):
                            for kj in range(kw):
                                k = ki * kw + kj
                                dy = offset[b, 2 * (dg * kh * kw + k), i, j]
                                dx = offset[b, 2 * (dg * kh * kw + k) + 1, i, j]
                                y = i * stride - pad + ki * dil + dy
                                xx = j * stride - pad + kj * dil + dx
                                acc = acc + weight[o, ci, ki, kj] * bilinear(x[b, c], y, xx)
                    out[b, o, i, j] = acc
    return out


@pytest.mark.parametrize(
    "stride,dil,groups,deform_groups",
    [(1, 1, 1, 1), (2, 1, 2, 1), (1, 2, 1, 2), (2, 1, 2, 2)],
)
def test_matches_direct_sampling(stride, dil, groups, deform_groups):
    torch.manual_seed(0)
    layer = DeformConv2dWithOffset(
        4,
        4,
        3,
        stride=stride,
        padding=dil,
        dilation=dil,
        groups=groups,
        deform_groups=deform_groups,
    ).double()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_offset.bias.normal_(0, 1.0)
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64)
    offset = layer.conv_offset(x)
    expect = reference_deform_conv(x, offset, layer.weight, stride, dil, dil, deform_groups)
    torch.testing.assert_close(layer(x), expect, rtol=1e-9, atol=1e-9)


def test_offset_channels_are_dy_then_dx():
    """Shifting every tap by dx=+1 equals a conv whose window starts one column later."""
    layer = DeformConv2dWithOffset(3, 5, 3, padding=1).double()
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        layer.conv_offset.bias[1::2] = 1.0  # odd channels: dx
    # output column j then reads input columns j .. j+2 (zero beyond the right edge)
    expect = F.conv2d(F.pad(x, (0, 2, 1, 1)), layer.weight)
    torch.testing.assert_close(layer(x), expect, rtol=1e-9, atol=1e-9)


def test_zero_offsets_equal_plain_grouped_conv():
    layer = DeformConv2dWithOffset(64, 64, 3, stride=2, padding=1, groups=32)
    x = torch.randn(2, 64, 9, 9)
    expect = F.conv2d(x, layer.weight, stride=2, padding=1, groups=32)
    torch.testing.assert_close(layer(x), expect, rtol=1e-4, atol=1e-4)


def test_backward_reaches_input_weight_and_offsets():
    layer = DeformConv2dWithOffset(8, 8, 3, padding=1, groups=2).double()
    with torch.no_grad():
        layer.conv_offset.bias.normal_(0, 0.5)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    for t in (x.grad, layer.weight.grad, layer.conv_offset.weight.grad):
        assert t is not None and t.abs().sum() > 0


def test_gradcheck_small():
    layer = DeformConv2dWithOffset(2, 2, 3, padding=1).double()
    with torch.no_grad():
        layer.conv_offset.bias.uniform_(-0.4, 0.4)  # keep samples off integer grid points
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-5)


def test_bad_groups_are_reported():
    with pytest.raises(ValueError, match="groups=3"):
        DeformConv2dWithOffset(8, 8, groups=3)
    with pytest.raises(ValueError, match="deform_groups=3"):
        DeformConv2dWithOffset(8, 8, deform_groups=3)
