"""The export routes of ``tools/export_model.py``: which ones a model can take, running them,
checking the exported model against the eager one before anything is written.

Routes (method x format x part):

- ``tracing`` x ``torchscript`` x ``detector``/``backbone``: ``torch.jit.trace`` through
  detectron2's ``TracingAdapter`` (``model.ts``);
- ``tracing`` x ``onnx`` x ``detector``: the TorchScript-based ONNX exporter through
  ``TracingAdapter``, opset >= 16 (19 with DCN), dynamic H and W, metadata for
  ``deploy/onnx_predictor.py`` (``model.onnx``, :mod:`.onnx_detector`), run in onnxruntime to
  check;
- ``tracing`` or ``torch_export`` x ``onnx`` x ``backbone``: ``torch.export`` + the dynamo ONNX
  exporter, opset >= 19, dynamic H and W (``model.onnx``), run in onnxruntime to check;
- ``torch_export`` x ``pt2`` x ``backbone``: ``torch.export`` with dynamic H and W
  (``model.pt2``).

Everything else raises :class:`ExportRouteError` naming what stops it. The exported bytes are
kept in memory, reloaded from there and compared with the eager model on every sample image;
the file is written (atomically) only when every comparison is within tolerance.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances

from ..io import atomic_write_bytes
from . import backbone as bb
from . import onnx_detector, tracing
from .compare import compare_instances, relative_error
from .errors import ExportRouteError

METHODS = ("tracing", "torch_export", "scripting", "caffe2_tracing")
FORMATS = ("torchscript", "onnx", "pt2", "caffe2")
PARTS = ("detector", "backbone")
BACKBONE_RTOL = 1e-4
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "pt2": "model.pt2"}


@dataclass
class ExportResult:
    """What a route wrote and how far the exported model is from eager, per sample."""

    path: str = ""
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def check_route(method: str, fmt: str, part: str, opset: int = bb.MIN_OPSET) -> None:
    """Raise :class:`ExportRouteError` for a route no gcnet_d2 model can take, naming why."""
    if method not in METHODS or fmt not in FORMATS or part not in PARTS:
        raise ExportRouteError(
            f"unknown route {method}/{fmt}/{part}: methods {METHODS}, formats {FORMATS}, "
            f"parts {PARTS}"
        )
    if method == "caffe2_tracing" or fmt == "caffe2":
        raise ExportRouteError("Caffe2 export: Caffe2 is no longer part of PyTorch")
    if method == "scripting":
        raise ExportRouteError(
            "scripting: detectron2 does not script Cascade R-CNN, and torch.jit.script cannot "
            "compile the GC block (Python-only constructs such as functools.partial); use "
            "--export-method tracing"
        )
    if fmt == "torchscript" and method != "tracing":
        raise ExportRouteError("TorchScript is written by --export-method tracing")
    if fmt == "pt2" and method != "torch_export":
        raise ExportRouteError("a .pt2 ExportedProgram is written by --export-method torch_export")
    if fmt == "onnx" and part == "backbone" and opset < bb.MIN_OPSET:
        raise ExportRouteError(
            f"ONNX opset {opset}: DeformConv, which deformable convolutions export to, exists "
            f"from opset {bb.MIN_OPSET}; an older opset writes a file the ONNX checker rejects"
        )
    if part == "detector" and fmt == "onnx":
        onnx_detector.check_opset(opset)  # DCN's opset is checked with the model
    if part == "detector" and (fmt == "pt2" or (fmt == "onnx" and method != "tracing")):
        raise ExportRouteError(
            "the whole detector cannot go through torch.export: the numbers of proposals and "
            "detections after NMS are data-dependent; export it to ONNX by tracing "
            "(--export-method tracing --format onnx), trace it to TorchScript "
            "(--format torchscript), or export the backbone (--part backbone). "
            "See docs/deploy.md"
        )


def _first_location(e: BaseException) -> str:
    """``file:line`` and code of the call torch.export names in its error, if any."""
    m = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', str(e))
    return f" at {os.path.basename(m.group(1))}:{m.group(2)} `{m.group(3).strip()}`" if m else ""


def export_detector_program(model: GeneralizedRCNN, image: torch.Tensor) -> None:
    """Try ``torch.export`` of the whole detector; raise :class:`ExportRouteError` naming the
    construct that stops it (it does today, see :func:`check_route`)."""

    class _Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            inst = self.model.inference([{"image": x}], do_postprocess=False)[0]
            return inst.pred_boxes.tensor, inst.scores, inst.pred_classes

    try:
        with torch.no_grad():
            torch.export.export(_Detector().eval(), (image,))
    except Exception as e:  # noqa: BLE001 - the message is the finding
        raise ExportRouteError(
            f"torch.export of the whole detector failed: {type(e).__name__}"
            f"{_first_location(e)}: {str(e).splitlines()[0][:200]}"
        ) from None


def _backbone_input(model: GeneralizedRCNN, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.preprocess_image([{"image": image}]).tensor


def _larger(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``x`` grown by one size-divisibility step in H and W (a second size to check)."""
    return torch.nn.functional.pad(x, (0, stride, 0, stride), value=0.0)


def run_route(
    model: GeneralizedRCNN,
    method: str,
    fmt: str,
    part: str,
    images: list[torch.Tensor],
    output_dir: str,
    input_format: str = "RGB",
    opset: int = bb.MIN_OPSET,
    allow_mismatch: bool = False,
    onnx_metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` (eval mode) by the route, check it on ``images`` (C x H x W, already
    resized), write ``output_dir/<file>`` when the check passes (or ``allow_mismatch``).
    ``onnx_metadata``: the whole-detector ONNX file's metadata
    (:func:`.onnx_detector.metadata`), required for that route."""
    check_route(method, fmt, part, opset)
    if not images:
        raise ValueError("no sample image: the route traces and checks on at least one")
    model.eval()
    result = ExportResult(path=os.path.join(output_dir, FILE_NAMES[fmt]))
    if part == "detector" and fmt == "onnx":
        if onnx_metadata is None:
            raise ValueError("the whole-detector ONNX route needs onnx_metadata")
        data = _onnx_detector(model, images, opset, onnx_metadata, result)
    elif part == "detector":
        data = _trace_detector(model, images, input_format, result)
    else:
        data = _export_backbone(model, fmt, images, opset, result)
    if result.ok or allow_mismatch:
        atomic_write_bytes(result.path, data)
    else:
        result.path = ""
    return result


def _trace_detector(
    model: GeneralizedRCNN, images: list[torch.Tensor], input_format: str, result: ExportResult
) -> bytes:
    traced, _ = tracing.trace_detector(model, images[0])
    data = tracing.traced_bytes(traced, model, input_format)
    loaded, meta = tracing.load_traced(io.BytesIO(data), images[0].device)
    _check_detections(model, images, lambda image: tracing.run_traced(loaded, meta, image), result)
    return data


def _onnx_detector(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    opset: int,
    meta: dict[str, str],
    result: ExportResult,
) -> bytes:
    data = onnx_detector.detector_onnx_bytes(model, images[0], opset, meta)
    _check_detections(model, images, onnx_detector.ONNXDetector(data), result)
    return data


def _check_detections(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    exported: Callable[[torch.Tensor], Instances],
    result: ExportResult,
) -> None:
    """Compare the exported detector with eager on every image, a line each; after a failing
    one, how far eager is from itself there (:func:`eager_spread`)."""
    for i, image in enumerate(images):
        expected = tracing.eager_detections(model, image)
        diff = compare_instances(expected, exported(image))
        size = "x".join(str(s) for s in image.shape[-2:])
        result.lines.append(f"sample {i} ({size}): {diff.summary()}")
        result.ok &= diff.ok
        if not diff.ok:
            spread = eager_spread(model, image, expected)
            result.lines.append(f"  eager itself on sample {i}, {spread}")


def eager_spread(model: GeneralizedRCNN, image: torch.Tensor, expected: Instances) -> str:
    """How far the eager model is from its detections ``expected`` on ``image`` when run with
    one thread instead of the current number (two if that is one): the rounding noise that
    any other runtime's kernels add too, amplified by the model. A summary line."""
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        again = tracing.eager_detections(model, image)
    finally:
        torch.set_num_threads(threads)
    return f"{other} vs {threads} threads: {compare_instances(expected, again).summary()}"


def _export_backbone(
    model: GeneralizedRCNN,
    fmt: str,
    images: list[torch.Tensor],
    opset: int,
    result: ExportResult,
) -> bytes:
    backbone = model.backbone
    stride = max(1, int(backbone.size_divisibility or 1))
    inputs = [_backbone_input(model, image) for image in images]
    inputs.append(_larger(inputs[0], stride))  # a second size, whatever the samples are
    if fmt == "torchscript":
        module = bb.BackboneFeatures(backbone).eval()
        with torch.no_grad():
            traced = torch.jit.trace(module, (inputs[0],), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        run = lambda x: loaded(x)  # noqa: E731
        data = buffer.getvalue()
    elif fmt == "pt2":
        program = bb.export_backbone(backbone, inputs[0])
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        loaded = torch.export.load(buffer).module()
        run = lambda x: loaded(x)  # noqa: E731
        data = buffer.getvalue()
    else:
        data = bb.onnx_bytes(backbone, inputs[0], opset)
        session = bb.onnxruntime_session(data)
        run = lambda x: bb.run_onnxruntime(session, x)  # noqa: E731
    for i, x in enumerate(inputs):
        expected = bb.backbone_outputs(backbone, x)
        with torch.no_grad():
            got = run(x)
        worst = max(relative_error(e, g) for e, g in zip(expected, got, strict=True))
        size = "x".join(str(s) for s in x.shape[-2:])
        what = f"sample {i}" if i < len(images) else "sample 0 padded"
        result.lines.append(
            f"{what} ({size}): max relative difference of the {len(expected)} feature maps "
            f"{worst:.3g}"
        )
        result.ok &= worst <= BACKBONE_RTOL
    return data
