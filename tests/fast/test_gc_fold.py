"""The GC bottleneck's fold (``gcnet_d2/fast/gc_fold.py``) against the plain bottleneck.

The fold: the frozen ``conv3`` norm and the GC terms folded into one GEMM with a per-sample
bias, the context pooled from ``conv3``'s input (``pool_projected``, built on
``attention_pool``), the transforms as linear layers (``fusion_vectors``). The reference is
the plain :class:`GCBottleneckBlock` (a deep copy switched back by ``disable_gc_fold``):
mmcv's ``bn3(conv3(.))`` -> conv_mask -> softmax -> weighted sum -> transforms -> fuse.
Tracing, ``torch.export`` and ``torch.compile`` take the plain, batched code: traced at one
batch size, run at another, saved with grad mode on or off.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.fast.gc_fold import (
    FoldedDeformGCBottleneckBlock,
    FoldedGCBottleneckBlock,
    attention_pool,
    conv1x1_per_sample,
    disable_gc_fold,
    enable_gc_fold,
    foldable,
    fusion_vectors,
    pool_projected,
)
from gcnet_d2.layers import ContextBlock, FrozenStatsBatchNorm2d
from gcnet_d2.modeling import (
    DeformGCBottleneckBlock,
    GCBottleneckBlock,
    build_gcnet_resnet_backbone,
)
from tests.fast.fold_probe import kinds, record_unfolded
from tests.testing import randomize

FUSIONS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]
CL = torch.channels_last
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}
GC_R50 = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
FOLDED_CLASSES = (FoldedGCBottleneckBlock, FoldedDeformGCBottleneckBlock)


def plain_attention_pool(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    attention = torch.einsum("c,ncl->nl", weight, flat).softmax(dim=-1)
    return torch.einsum("ncl,nl->nc", flat, attention)


def grads(loss: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of ``loss`` w.r.t. ``tensors`` (zeros where a tensor is not reached)."""
    named = list(tensors.items())
    got = torch.autograd.grad(loss, [t for _, t in named], allow_unused=True)
    return {
        name: torch.zeros_like(t) if g is None else g
        for (name, t), g in zip(named, got, strict=True)
    }


def assert_same_grads(fast_grads: dict, plain_grads: dict, tol: dict = GRAD_TOL) -> None:
    assert fast_grads.keys() == plain_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], msg=name, **tol)


def assert_close_scaled(got: dict, want: dict) -> None:
    """Random weights grow the activations: tolerance relative to each map's scale."""
    assert got.keys() == want.keys()
    for key in want:
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * scale, msg=key)


# --- attention pooling --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_attention_pool_values_and_grads(n, memory_format):
    x = torch.randn(n, 16, 5, 7).contiguous(memory_format=memory_format).requires_grad_()
    weight = torch.randn(16, requires_grad=True)
    out = attention_pool(x, weight)
    torch.testing.assert_close(out, plain_attention_pool(x, weight), **TOL)
    g = torch.randn_like(out)
    got = grads((out * g).sum(), {"x": x, "weight": weight})
    want = grads((plain_attention_pool(x, weight) * g).sum(), {"x": x, "weight": weight})
    assert_same_grads(got, want)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_attention_pool_gradcheck(memory_format):
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64).contiguous(memory_format=memory_format)
    weight = torch.randn(6, dtype=torch.float64)
    bias = torch.randn(1, dtype=torch.float64)
    inputs = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(attention_pool, inputs, eps=1e-6, atol=1e-6)


def test_attention_pool_is_softmax_weighted_not_mean():
    """Guards the test above against a pooling that ignores the logits."""
    x = torch.randn(2, 8, 4, 4)
    weight = torch.randn(8) * 3
    assert (attention_pool(x, weight) - x.mean(dim=(2, 3))).abs().max() > 1e-2


def test_attention_pool_without_grad_matches_the_plain_blocks_pooling():
    """The per-sample inference rows against :meth:`ContextBlock.spatial_pool`."""
    block = randomize(ContextBlock(8, 1 / 4))
    x = torch.randn(2, 8, 6, 6)
    weight = block.conv_mask.weight.detach().reshape(8)
    with torch.inference_mode():
        out = attention_pool(x, weight, block.conv_mask.bias)
        want = block.spatial_pool(x).reshape(2, 8)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(out, plain_attention_pool(x, weight), **TOL)


# --- pieces of the fold against the plain block --------------------------------------------


@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_pool_projected_equals_pooling_the_conv_output(pooling):
    block = randomize(ContextBlock(24, 1 / 4, pooling))
    h = torch.randn(2, 6, 5, 7, requires_grad=True)
    weight = torch.randn(24, 6, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    got = pool_projected(block, h, weight, bias)
    want = block.spatial_pool(F.conv2d(h, weight.reshape(24, 6, 1, 1), bias)).reshape(2, 24)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(want)
    tensors = {"h": h, "weight": weight, "bias": bias, **dict(block.named_parameters())}
    assert_same_grads(grads((got * g).sum(), tensors), grads((want * g).sum(), tensors))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_vectors_equal_the_plain_transforms(fusion):
    """The transforms as linear layers on an N x C vector vs the block's 1x1 conv Sequentials."""
    block = randomize(ContextBlock(24, 1 / 4, fusion=fusion))
    context = torch.randn(3, 24)
    gate, addend = fusion_vectors(block, context)
    pixel = context.reshape(3, 24, 1, 1)
    if "channel_mul" in fusion:
        want = torch.sigmoid(block.channel_mul_conv(pixel)).reshape(3, 24)
        torch.testing.assert_close(gate, want, **TOL)
    else:
        assert gate is None
    if "channel_add" in fusion:
        torch.testing.assert_close(addend, block.channel_add_conv(pixel).reshape(3, 24), **TOL)
    else:
        assert addend is None


# --- the per-sample 1x1 conv --------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("per_sample_bias", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_conv1x1_per_sample(n, gated, per_sample_bias, memory_format):
    x = torch.randn(n, 6, 4, 5).contiguous(memory_format=memory_format).requires_grad_()
    weight = torch.randn(10, 6, requires_grad=True)
    bias = torch.randn(n, 10) if per_sample_bias else torch.randn(10)
    bias.requires_grad_()
    gate = torch.rand(n, 10, requires_grad=True) if gated else None
    out = conv1x1_per_sample(x, weight, bias, gate)
    expect = F.conv2d(x, weight.reshape(10, 6, 1, 1))
    if gate is not None:
        expect = expect * gate.reshape(n, 10, 1, 1)
    expect = expect + bias.reshape(-1, 10, 1, 1)
    torch.testing.assert_close(out, expect, **TOL)
    assert out.is_contiguous(memory_format=memory_format)
    g = torch.randn_like(expect)
    tensors = {"x": x, "weight": weight, "bias": bias}
    if gate is not None:
        tensors["gate"] = gate
    assert_same_grads(grads((out * g).sum(), tensors), grads((expect * g).sum(), tensors))


# --- the GC bottleneck --------------------------------------------------------------------


def make_block(norm, fusion=("channel_add",), *, stride=1, gc=True, deform=False, pooling="att"):
    """A plain GC bottleneck with random weights."""
    cls = DeformGCBottleneckBlock if deform else GCBottleneckBlock
    block = cls(
        16,
        64,
        bottleneck_channels=16,
        stride=stride,
        norm=norm,
        gc_ratio=1 / 4 if gc else None,
        gc_pooling=pooling,
        gc_fusion=fusion,
    )
    return randomize(block, std=0.15)


FOLDED = ["FrozenBN", FrozenStatsBatchNorm2d, "BN-eval"]


def build(norm, *args, **kwargs):
    """``make_block`` with the fold applied (``enable_gc_fold``); "BN-eval": BN in eval mode."""
    block = enable_gc_fold(make_block("BN" if norm == "BN-eval" else norm, *args, **kwargs))
    assert type(block) in FOLDED_CLASSES
    return block.eval() if norm == "BN-eval" else block.train()


def run_folded(block: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``block(*args)``, asserting the fold ran: ``conv3`` and the context block not called."""
    with record_unfolded(block) as calls:
        out = block(*args)
    assert "gc" not in kinds(calls), calls
    return out


def run_unfolded(block: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``block(*args)``, asserting the plain path ran: ``conv3`` and the block were called."""
    with record_unfolded(block) as calls:
        out = block(*args)
    assert "gc" in kinds(calls), calls
    return out


def plain_copy(block: torch.nn.Module) -> torch.nn.Module:
    """The reference: a deep copy of ``block`` in its plain class (same weights and mode)."""
    plain = disable_gc_fold(copy.deepcopy(block))
    assert type(plain) in (GCBottleneckBlock, DeformGCBottleneckBlock)
    return plain


def test_enable_and_disable_switch_classes_in_place():
    """Only GC bottlenecks switch (detectron2's own bottleneck stays); state dict unchanged."""
    net = torch.nn.Sequential(
        make_block("FrozenBN"),
        make_block("FrozenBN", deform=True),
        BottleneckBlock(64, 64, bottleneck_channels=16, norm="FrozenBN"),
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modules = list(net)
    enable_gc_fold(enable_gc_fold(net))  # idempotent
    assert [type(m) for m in net] == [
        FoldedGCBottleneckBlock,
        FoldedDeformGCBottleneckBlock,
        BottleneckBlock,
    ]
    assert all(a is b for a, b in zip(net, modules, strict=True))  # in place
    assert list(net.state_dict()) == list(before)
    disable_gc_fold(net)
    assert [type(m) for m in net] == [GCBottleneckBlock, DeformGCBottleneckBlock, BottleneckBlock]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("norm", FOLDED)
def test_folded_path_is_taken(norm):
    """The fold never runs conv3's module (conv + norm) nor the block: a hook would see them;
    the plain copy runs both."""
    block = build(norm)
    plain = plain_copy(block)
    calls = []
    for net, tag in ((block, "fold"), (plain, "plain")):
        net.conv3.register_forward_hook(lambda *a, t=tag: calls.append((t, "conv3")))
        net.context_block.register_forward_hook(lambda *a, t=tag: calls.append((t, "gc")))
    x = torch.randn(1, 16, 6, 6)
    block(x)
    assert calls == []
    assert foldable(block, torch.zeros(1))
    plain(x)
    assert calls == [("plain", "conv3"), ("plain", "gc")]


def test_gpu_inference_does_not_fold():
    """Off the CPU the fold is taken only while a gradient is recorded (meta stands in for a
    GPU tensor here; tests/test_cuda.py checks both paths' values on a real GPU)."""
    block = build("FrozenBN")
    gpu_like = torch.empty(1, device="meta")
    assert foldable(block, gpu_like)
    with torch.no_grad():
        assert not foldable(block, gpu_like)
        assert foldable(block, torch.zeros(1))


def test_unfoldable_norm_takes_the_plain_path():
    """BN in training mode (batch statistics, not a fixed affine) is not folded: the folded
    class runs conv3 + norm and the block, which is the plain bottleneck's computation."""
    block = build("BN")
    assert type(block) is FoldedGCBottleneckBlock and block.training
    assert not foldable(block, torch.zeros(1))
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(run_unfolded(block, x), plain_copy(block)(x), **TOL)


@pytest.mark.parametrize("norm", FOLDED)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("n", [1, 3])
def test_bottleneck_values_match_plain(norm, fusion, n):
    block = build(norm, fusion, stride=2)
    x = torch.randn(n, 16, 10, 8)
    torch.testing.assert_close(run_folded(block, x), plain_copy(block)(x), **TOL)


@pytest.mark.parametrize("norm", ["FrozenBN", FrozenStatsBatchNorm2d])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_bottleneck_grads_match_plain(norm, fusion, n, memory_format):
    block = build(norm, fusion)
    plain = plain_copy(block)
    x = torch.randn(n, 16, 7, 9).contiguous(memory_format=memory_format)
    g = torch.randn(n, 64, 7, 9)
    x1 = x.clone().requires_grad_()
    out = run_folded(block, x1)
    assert out.is_contiguous(memory_format=memory_format)
    got = grads((out * g).sum(), {"x": x1, **dict(block.named_parameters())})
    x2 = x.clone().requires_grad_()
    want = grads((plain(x2) * g).sum(), {"x": x2, **dict(plain.named_parameters())})
    assert_same_grads(got, want)
    if norm is FrozenStatsBatchNorm2d:  # the folded norm's affine still learns
        assert got["conv3.norm.weight"].abs().sum() > 0


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_every_trainable_parameter_gets_a_gradient(norm):
    """DDP without find_unused_parameters needs a gradient for each one, conv_mask.bias too
    (whose true gradient is zero: a softmax ignores a constant shift): on the folded path
    (FrozenBN) and on the plain one the folded class takes for BN in training mode."""
    block = build(norm, ("channel_add", "channel_mul"))
    run = run_folded if norm == "FrozenBN" else run_unfolded
    run(block, torch.randn(2, 16, 6, 6)).square().sum().backward()
    missing = [n for n, p in block.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert block.context_block.conv_mask.bias.grad.abs().item() < 1e-4


def test_conv_mask_bias_cannot_change_the_output():
    """The fold adds conv_mask's bias to its logits; a softmax ignores it, as in the plain block."""
    block = build("FrozenBN", ("channel_add", "channel_mul"))
    x = torch.randn(2, 16, 5, 5)
    out = run_folded(block, x)
    with torch.no_grad():
        block.context_block.conv_mask.bias.add_(7.0)
    torch.testing.assert_close(run_folded(block, x), out, **TOL)
    torch.testing.assert_close(plain_copy(block)(x), out, **TOL)


def test_folded_bottleneck_does_not_modify_its_input():
    block = build("FrozenBN", ("channel_add", "channel_mul"))
    x = torch.randn(2, 16, 5, 5)
    before = x.clone()
    with torch.inference_mode():
        block(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("norm", FOLDED)
def test_bottleneck_without_context_block_matches_plain(norm):
    """gc_ratio=None: the same folded conv3, no GC (the benchmark's cost-attribution control)."""
    block = build(norm, gc=False)
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(run_folded(block, x), plain_copy(block)(x), **TOL)
    assert foldable(block, torch.zeros(1))


def test_bottleneck_without_context_block_equals_detectron2s():
    block = build("FrozenBN", gc=False)
    plain = BottleneckBlock(16, 64, bottleneck_channels=16, norm="FrozenBN")
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(run_folded(block, x), plain(x), **TOL)


def test_bottleneck_avg_pooling_matches_plain():
    block = build("FrozenBN", ("channel_add", "channel_mul"), pooling="avg")
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(run_folded(block, x), plain_copy(block)(x), **TOL)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_deform_bottleneck_matches_plain(memory_format):
    block = build("FrozenBN", deform=True, stride=2)
    assert type(block) is FoldedDeformGCBottleneckBlock
    with torch.no_grad():  # real (non-zero) offsets
        block.conv2.conv_offset.weight.normal_(0, 0.05)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=memory_format)
    torch.testing.assert_close(run_folded(block, x), plain_copy(block)(x), **TOL)


def test_bottleneck_under_bf16_autocast_is_close_to_fp32():
    block = build("FrozenBN", ("channel_add", "channel_mul"))
    x = torch.randn(2, 16, 8, 8)
    expect = plain_copy(block)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run_folded(block, x)
    rel = (out.float() - expect).norm() / expect.norm()
    assert rel < 2e-2


def test_state_dict_keys_are_detectron2_plus_mmcv_block():
    plain = BottleneckBlock(16, 64, bottleneck_channels=16, norm="FrozenBN")
    block = build("FrozenBN", ("channel_add", "channel_mul"))
    extra = set(block.state_dict()) - set(plain.state_dict())
    expect = {"context_block.conv_mask.weight", "context_block.conv_mask.bias"}
    for prefix in ("channel_add_conv", "channel_mul_conv"):
        for idx in (0, 1, 3):
            expect |= {f"context_block.{prefix}.{idx}.weight", f"context_block.{prefix}.{idx}.bias"}
    assert extra == expect
    assert set(plain.state_dict()) <= set(block.state_dict())
    assert list(block.state_dict()) == list(plain_copy(block).state_dict())


@pytest.mark.parametrize("training", [False, True])
def test_no_graph_breaks_under_torch_compile(training):
    torch._dynamo.reset()
    block = build(FrozenStatsBatchNorm2d, ("channel_add", "channel_mul")).train(training)
    x = torch.randn(2, 16, 6, 6, requires_grad=training)
    explanation = torch._dynamo.explain(block)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# --- a whole backbone ---------------------------------------------------------------------


def gc_resnet() -> torch.nn.Module:
    """A GC r16 c3-c5 R-50 (FrozenStatsBN), plain as built, random weights, eval."""
    cfg = gcnet_d2.get_config(GC_R50)
    return randomize(build_gcnet_resnet_backbone(cfg, ShapeSpec(channels=3)), 0.05).eval()


def test_gc_backbone_matches_plain_model():
    """``fast.apply`` on a copy vs the plain backbone as built."""
    plain = gc_resnet()
    assert not any(isinstance(m, FOLDED_CLASSES) for m in plain.modules())
    folded = fast.apply(copy.deepcopy(plain))
    assert any(type(m) is FoldedGCBottleneckBlock for m in folded.modules())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), record_unfolded(folded) as skipped, record_unfolded(plain) as ran:
        assert_close_scaled(folded(x), plain(x))
    assert skipped == []  # every frozen norm and every GC middle folded
    assert kinds(ran) == {"norm", "gc"}
    assert any(isinstance(m, FrozenBatchNorm2d | FrozenStatsBatchNorm2d) for m in plain.modules())


# --- tracing, export and compile take the plain, batched path ------------------------------


def test_disable_switches_back_to_the_plain_code():
    """``disable_gc_fold`` runs conv3 and the block again (the folded class does not)."""
    block = build("FrozenBN", ("channel_add", "channel_mul"))
    calls = []
    block.conv3.register_forward_hook(lambda *a: calls.append("conv3"))
    block.context_block.register_forward_hook(lambda *a: calls.append("gc"))
    x = torch.randn(2, 16, 6, 6)
    folded = block(x)
    assert calls == []  # folded: neither module ran
    disable_gc_fold(block)
    assert type(block) is GCBottleneckBlock
    plain = block(x)
    assert calls == ["conv3", "gc"]
    torch.testing.assert_close(folded, plain, **TOL)


def _trace_nodes(traced: torch.jit.ScriptModule) -> set[str]:
    return {node.kind() for node in traced.inlined_graph.nodes()}


@pytest.mark.parametrize("grad", [False, True])
def test_traced_bottleneck_runs_at_another_batch_size_and_saves(grad, tmp_path):
    block = build("FrozenBN", ("channel_add", "channel_mul"), stride=2).eval()
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(block, torch.randn(1, 16, 10, 8), check_trace=False)
    kinds = _trace_nodes(traced)
    assert "prim::PythonOp" not in kinds and "aten::addmv" not in kinds, kinds
    path = tmp_path / "bottleneck.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 16, 12, 6)
    with torch.set_grad_enabled(grad):
        out = loaded(x)
    torch.testing.assert_close(out, plain_copy(block)(x), **TOL)


@pytest.mark.parametrize("grad", [False, True])
def test_traced_gc_resnet_runs_at_batch_2_and_saves(grad, tmp_path):
    """A GC ResNet (R-50 stem and stages, c3-c5 blocks, FrozenStatsBN) with ``fast.apply``,
    traced at batch 1, against the plain model (``fast.remove``)."""
    backbone = fast.apply(gc_resnet())
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(
            backbone, torch.randn(1, 3, 64, 64), strict=False, check_trace=False
        )
    assert "prim::PythonOp" not in _trace_nodes(traced)
    torch.jit.save(traced, str(tmp_path / "backbone.pt"))
    loaded = torch.jit.load(str(tmp_path / "backbone.pt"))
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        got = loaded(x)
        expect = fast.remove(backbone)(x)
    assert not any(isinstance(m, FOLDED_CLASSES) for m in backbone.modules())
    assert_close_scaled(got, expect)


@pytest.mark.parametrize("fusion", [("channel_add",), ("channel_add", "channel_mul")])
def test_folded_bottleneck_exports_with_dynamic_height_and_width(fusion):
    block = build("FrozenBN", fusion).eval()
    h, w = torch.export.Dim("h", min=2, max=256), torch.export.Dim("w", min=2, max=256)
    program = torch.export.export(
        block, (torch.randn(2, 16, 8, 12),), dynamic_shapes=({2: h, 3: w},)
    )
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("addmv" in t for t in targets), targets
    x = torch.randn(2, 16, 13, 7)
    torch.testing.assert_close(program.module()(x), plain_copy(block)(x), **TOL)


@pytest.mark.parametrize("training", [False, True])
def test_torch_compile_equals_eager(training):
    """``aot_eager`` (inductor's C++ build is too slow for CI): values and gradients of the
    compiled folded block (which runs the plain code) against the eager fold."""
    torch._dynamo.reset()
    block = build(FrozenStatsBatchNorm2d, ("channel_add", "channel_mul")).train(training)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 16, 6, 6)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expect = compiled(x1), block(x2)
    torch.testing.assert_close(out, expect, **TOL)
    g = torch.randn_like(expect)
    tensors = dict(block.named_parameters())
    got = grads((out * g).sum(), {"x": x1, **tensors})
    assert_same_grads(got, grads((expect * g).sum(), {"x": x2, **tensors}))
