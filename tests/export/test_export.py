"""Export routes for the three families, on small models with realistic weights.

- whole-detector TorchScript through ``TracingAdapter``: traced at one size with grad mode
  on, saved, reloaded, run at other sizes on images whose detection counts differ from the
  trace image's; equal to eager (classes, boxes 1e-3 scale-relative, scores, masks 1e-4);
- ``torch.export`` of the backbone with dynamic H and W, at two sizes;
- ONNX opset 19 (dynamo exporter, full checker) run in onnxruntime with its DEFAULT session
  options at two sizes, relative 1e-4;
- what stops the whole detector from going through ``torch.export`` (pinned, as the docs say).
"""

from __future__ import annotations

import io
import re

import pytest
import torch

from gcnet_d2.export import (
    ExportRouteError,
    compare_instances,
    eager_detections,
    load_traced,
    relative_error,
    run_traced,
    save_traced,
    trace_detector,
)
from gcnet_d2.export.backbone_features import backbone_outputs
from gcnet_d2.export.onnxruntime_session import onnxruntime_session, run_onnxruntime
from gcnet_d2.export.routes import check_route
from gcnet_d2.export.torch_export import backbone_program, export_detector_program, onnx_bytes
from gcnet_d2.modeling import ContextBlock, DeformConv2dWithOffset
from tests.missing_packages import require
from tests.testing import FAMILIES, sample_image, tiny_detector

TRACE_IMAGE = (128, 160, 0)  # height, width, seed
CHECK_IMAGES = [(160, 224, 1), (96, 128, 3), (192, 256, 2)]


def _needs(module: str):
    return require(module, "the `export` extra, requirements-dev.txt")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    cfg, model = tiny_detector(request.param)
    return request.param, model


def assert_realistic(model: torch.nn.Module, image: torch.Tensor) -> None:
    """GC blocks change their input; DCN offsets are non-zero and vary over the map."""
    seen: dict[str, list] = {"gc": [], "offsets": []}

    def gc_hook(module, args, out):  # noqa: ANN001, ANN202
        seen["gc"].append(float((out - args[0]).abs().mean() / args[0].abs().mean()))

    def offset_hook(module, args, out):  # noqa: ANN001, ANN202
        seen["offsets"].append((float(out.abs().mean()), float(out.std(dim=(2, 3)).mean())))

    handles = []
    for m in model.modules():
        if isinstance(m, ContextBlock):
            handles.append(m.register_forward_hook(gc_hook))
        if isinstance(m, DeformConv2dWithOffset):
            handles.append(m.conv_offset.register_forward_hook(offset_hook))
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image([{"image": image}]).tensor)
            for block in (m for m in model.modules() if isinstance(m, ContextBlock)):
                x = torch.randn(1, block.channels, 6, 7)  # the GC fold skips the hook
                gc_hook(block, (x,), block(x))
    finally:
        for h in handles:
            h.remove()
    assert seen["gc"] and min(seen["gc"]) > 1e-2
    if any(isinstance(m, DeformConv2dWithOffset) for m in model.modules()):
        assert seen["offsets"] and all(mean > 0.1 and std > 1e-3 for mean, std in seen["offsets"])


def test_traced_detector_equals_eager_at_other_sizes_and_counts(family, tmp_path):
    name, model = family
    trace_image = sample_image(*TRACE_IMAGE)
    assert_realistic(model, trace_image)
    with torch.enable_grad():  # the trace must not depend on grad mode
        traced, _ = trace_detector(model, trace_image)
    path = str(tmp_path / "model.ts")
    save_traced(traced, path, model, "RGB")
    loaded, meta = load_traced(path)
    assert meta["outputs"] == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]

    trace_count = len(eager_detections(model, trace_image))
    counts = []
    for i, (h, w, seed) in enumerate(CHECK_IMAGES):
        image = sample_image(h, w, seed)
        expected = eager_detections(model, image)
        with torch.set_grad_enabled(i % 2 == 0):
            got = run_traced(loaded, meta, image)
        diff = compare_instances(expected, got)
        assert diff.ok, f"{name} {h}x{w}: {diff.summary()}"
        assert got.pred_masks.shape[1:] == (1, 28, 28)
        counts.append(len(got))
    assert trace_count > 0 and min(counts) > 0
    assert any(c != trace_count for c in counts), (trace_count, counts)


@pytest.mark.slow
def test_backbone_torch_export_dynamic_batch_hw(family):
    name, model = family
    backbone = model.backbone
    program = backbone_program(backbone, torch.randn(1, 3, 128, 160))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    module = torch.export.load(buffer).module()
    for n, h, w in ((1, 128, 160), (2, 96, 224)):  # batch, H and W all dynamic
        x = torch.randn(n, 3, h, w)
        expected = backbone_outputs(backbone, x)
        got = module(x)
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape
            assert relative_error(e, g) <= 1e-5, (name, h, w)


@pytest.mark.slow
def test_backbone_onnx_runs_in_onnxruntime_with_default_options(family):
    _needs("onnx"), _needs("onnxscript"), _needs("onnxruntime")
    import onnx

    name, model = family
    data = onnx_bytes(model.backbone, torch.randn(1, 3, 128, 160), opset=19)
    proto = onnx.load_from_string(data)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    ops = {n.op_type for n in proto.graph.node}
    assert ("DeformConv" in ops) == (name == "dcn_gc_cascade")
    session = onnxruntime_session(data)  # onnxruntime's DEFAULT session options
    for n, h, w in ((1, 128, 160), (2, 96, 224)):
        x = torch.randn(n, 3, h, w)
        expected = backbone_outputs(model.backbone, x)
        got = run_onnxruntime(session, x)
        worst = max(relative_error(e, g) for e, g in zip(expected, got, strict=True))
        assert worst <= 1e-4, (name, h, w, worst)


def test_onnx_below_opset_19_is_refused():
    with pytest.raises(ExportRouteError, match="opset 17.*DeformConv"):
        check_route("tracing", "onnx", "backbone", opset=17)


@pytest.mark.parametrize(
    "route,reason",
    [
        (("scripting", "torchscript", "detector"), "Cascade"),
        (("torch_export", "onnx", "detector"), "data-dependent"),
        (("tracing", "onnx", "detector", 15), "opset >= 16"),
        (("torch_export", "pt2", "detector"), "data-dependent"),
        (("caffe2_tracing", "caffe2", "detector"), "Caffe2"),
    ],
)
def test_routes_a_model_cannot_take_name_the_reason(route, reason):
    with pytest.raises(ExportRouteError, match=reason):
        check_route(*route)


@pytest.mark.slow
def test_whole_detector_torch_export_stops_where_the_docs_say():
    """docs/deploy.md says why: a guard on a data-dependent size (the number of boxes left
    after a filter); this pins it (update both if it moves)."""
    _, model = tiny_detector("gc_mask")
    with pytest.raises(ExportRouteError) as info:
        export_detector_program(model, sample_image(*TRACE_IMAGE))
    assert "GuardOnDataDependentSymNode" in str(info.value), info.value


@pytest.mark.parametrize("groups,deform_groups,offset_std", [(1, 1, 0.7), (2, 2, 3.0)])
def test_onnxruntime_runs_deform_conv_like_torchvision(groups, deform_groups, offset_std):
    """ONNX DeformConv (opset 19) in onnxruntime's CPU provider, default options."""
    _needs("onnxscript"), _needs("onnxruntime")
    layer = DeformConv2dWithOffset(8, 16, 3, groups=groups, deform_groups=deform_groups).eval()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.05)
        layer.conv_offset.bias.normal_(0, offset_std)  # offsets of up to several pixels
    x = torch.randn(1, 8, 20, 24)
    with torch.no_grad():
        program = torch.onnx.export(layer, (x,), dynamo=True, opset_version=19)
    assert "DeformConv" in {n.op_type for n in program.model_proto.graph.node}
    session = onnxruntime_session(program.model_proto.SerializeToString())
    with torch.no_grad():
        expected = layer(x)
    assert relative_error(expected, run_onnxruntime(session, x)[0]) <= 1e-5


def test_onnxruntime_matmul_transpose_repro_runs():
    """The reproduction in docs/investigations/onnxruntime_matmul_transpose.md runs and prints
    both errors; with the fusion disabled the graph is right (the bug may be fixed or not)."""
    _needs("onnx"), _needs("onnxruntime")
    from tests.testing import REPO, run_python

    doc = REPO / "docs" / "investigations" / "onnxruntime_matmul_transpose.md"
    (code,) = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    _default, disabled = (float(v) for v in re.findall(r"relative error (\S+)", proc.stdout))
    assert disabled < 1e-6  # the graph itself is right
