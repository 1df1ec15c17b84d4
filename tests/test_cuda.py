"""The same checks on CUDA: DCN, the GC block, the GC bottleneck fold and all 19 table rows.

Skipped without a GPU (CI has none); run on a lent GPU machine with
``python -m pytest tests/test_cuda.py``. TF32 is switched off so fp32 comparisons are exact
to rounding.
"""

from __future__ import annotations

import pytest
import torch

from gcnet_d2.layers import ContextBlock, DeformConv2dWithOffset
from tests.configs.test_configs import check_row_builds_trains_and_infers
from tests.fast.test_gc_fold import FUSIONS, build, grads, plain_copy, randomize
from tests.testing import table_config_names

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_tf32"),
]
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _to_cuda(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).cuda()


DCN_CASES = [(1, 1, 1), (4, 2, 2)]  # (groups, deform_groups, stride)


def _dcn(groups: int, deform_groups: int, stride: int, offset_std: float) -> DeformConv2dWithOffset:
    layer = DeformConv2dWithOffset(
        8, 16, 3, stride=stride, groups=groups, deform_groups=deform_groups
    )
    with torch.no_grad():  # real offsets, varying over the map
        layer.conv_offset.weight.normal_(0, 0.05)
        layer.conv_offset.bias.normal_(0, offset_std)
    return layer


@pytest.mark.parametrize("groups,deform_groups,stride", DCN_CASES)
def test_deform_conv_cuda_forward_equals_cpu(groups, deform_groups, stride):
    layer = _dcn(groups, deform_groups, stride, offset_std=1.0)  # offsets of several pixels
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(_to_cuda(layer)(x.cuda()).cpu(), layer(x), **TOL)


@pytest.mark.parametrize("groups,deform_groups,stride", DCN_CASES)
def test_deform_conv_cuda_gradcheck(groups, deform_groups, stride):
    """torchvision's CUDA backward against finite differences (float64)."""
    layer = _to_cuda(_dcn(groups, deform_groups, stride, offset_std=0.3)).double()
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    # nondet_tol: the CUDA backward accumulates with atomics, so two runs differ by rounding.
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-5, nondet_tol=1e-10)


@pytest.mark.parametrize("groups,deform_groups,stride", DCN_CASES)
@pytest.mark.parametrize("offset_std", [0.3, 1.0])
def test_deform_conv_cuda_grads_equal_cpu(groups, deform_groups, stride, offset_std):
    layer = _dcn(groups, deform_groups, stride, offset_std).double()
    x = torch.randn(2, 8, 11, 13, dtype=torch.float64)
    g = torch.randn_like(layer(x))
    results = []
    for mod, device in ((layer, "cpu"), (_to_cuda(layer), "cuda")):
        xi = x.to(device).requires_grad_()
        got = grads((mod(xi) * g.to(device)).sum(), {"x": xi, **dict(mod.named_parameters())})
        results.append({k: v.cpu() for k, v in got.items()})
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_context_block_cuda_equals_cpu(pooling, fusion):
    """The plain block on CUDA against the same block on the CPU: values and gradients."""
    block = randomize(ContextBlock(64, 1 / 4, pooling, fusion))
    on_gpu = _to_cuda(block)
    x = torch.randn(2, 64, 9, 14)
    g = torch.randn(2, 64, 9, 14)
    results = []
    for mod, device in ((block, "cpu"), (on_gpu, "cuda")):
        xi = x.to(device).requires_grad_()
        out = mod(xi)
        got = grads((out * g.to(device)).sum(), {"x": xi, **dict(mod.named_parameters())})
        results.append((out.detach().cpu(), {k: v.cpu() for k, v in got.items()}))
    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = results
    torch.testing.assert_close(gpu_out, cpu_out, **TOL)
    assert gpu_grads.keys() == cpu_grads.keys()
    for name in cpu_grads:
        torch.testing.assert_close(gpu_grads[name], cpu_grads[name], msg=name, **TOL)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "BN-eval"])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_bottleneck_cuda_matches_plain(norm, fusion, memory_format):
    """The folded bottleneck (``enable_gc_fold``) against its plain copy, both on CUDA."""
    block = build(norm, fusion, stride=2).cuda()
    plain = plain_copy(block)
    x = torch.randn(2, 16, 10, 8, device="cuda").contiguous(memory_format=memory_format)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = block(x1)
    expect = plain(x2)
    torch.testing.assert_close(out, expect, **TOL)
    with torch.no_grad():  # inference takes the unfolded path on a GPU
        torch.testing.assert_close(block(x), expect.detach(), **TOL)
    g = torch.randn_like(expect)
    got = grads((out * g).sum(), {"x": x1, **dict(block.named_parameters())})
    want = grads((expect * g).sum(), {"x": x2, **dict(plain.named_parameters())})
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], msg=name, **TOL)


def test_bottleneck_bf16_autocast_cuda_is_close_to_fp32():
    block = build("FrozenBN", ("channel_add", "channel_mul")).cuda()
    x = torch.randn(2, 16, 8, 8, device="cuda")
    expect = plain_copy(block)(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = block(x)
    assert ((out.float() - expect).norm() / expect.norm()) < 2e-2


@pytest.mark.parametrize("name", table_config_names(), ids=lambda n: n.split("/")[-1])
def test_row_builds_trains_and_infers_on_cuda(name):
    check_row_builds_trains_and_infers(name, "cuda")
