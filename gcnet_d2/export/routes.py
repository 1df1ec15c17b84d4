"""The route table of ``tools/export_model.py``: which routes a model can take, and running
one (each lives in its own module), writing its file only when its check passed.

Routes (method x format x part):

- ``tracing`` x ``torchscript`` x ``detector``/``backbone``: ``torch.jit.trace``, the detector
  through detectron2's ``TracingAdapter`` (``model.ts``, :mod:`.torchscript`);
- ``tracing`` x ``onnx`` x ``detector``: the TorchScript-based ONNX exporter through
  ``TracingAdapter``, opset >= 16 (19 with DCN), dynamic H and W, metadata for
  ``deploy/onnx_predictor.py`` (``model.onnx``, :mod:`.onnx_detector`), run in onnxruntime to
  check;
- ``tracing`` or ``torch_export`` x ``onnx`` x ``backbone``: ``torch.export`` + the dynamo ONNX
  exporter, opset >= 19, dynamic H and W (``model.onnx``, :mod:`.torch_export`), run in
  onnxruntime to check;
- ``torch_export`` x ``pt2`` x ``backbone``: ``torch.export`` with dynamic H and W
  (``model.pt2``, :mod:`.torch_export`).

Everything else raises :class:`ExportRouteError` naming what stops it. The exported bytes are
kept in memory, reloaded from there and compared with the eager model on every sample image
(:mod:`.verify`); the file is written (atomically) only when every comparison is within
tolerance.
"""

from __future__ import annotations

import os

import torch
from detectron2.modeling import GeneralizedRCNN

from ..io import atomic_write_bytes
from . import onnx_detector, torch_export, torchscript
from .errors import ExportRouteError
from .verify import ExportResult

METHODS = ("tracing", "torch_export", "scripting", "caffe2_tracing")
FORMATS = ("torchscript", "onnx", "pt2", "caffe2")
PARTS = ("detector", "backbone")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "pt2": "model.pt2"}


def check_route(method: str, fmt: str, part: str, opset: int = torch_export.MIN_OPSET) -> None:
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
    if fmt == "onnx" and part == "backbone":
        torch_export.check_opset(opset)
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


def run_route(
    model: GeneralizedRCNN,
    method: str,
    fmt: str,
    part: str,
    images: list[torch.Tensor],
    output_dir: str,
    input_format: str = "RGB",
    opset: int = torch_export.MIN_OPSET,
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
        data = onnx_detector.export_detector(model, images, opset, onnx_metadata, result)
    elif part == "detector":
        data = torchscript.export_detector(model, images, input_format, result)
    elif fmt == "torchscript":
        data = torchscript.export_backbone(model, images, result)
    else:
        data = torch_export.export_backbone(model, fmt, images, opset, result)
    if result.ok or allow_mismatch:
        atomic_write_bytes(result.path, data)
    else:
        result.path = ""
    return result
