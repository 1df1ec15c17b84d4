"""Deployment routes for gcnet_d2 detectors: whole-model TorchScript through detectron2's
``TracingAdapter``, ``torch.export`` of the backbone with dynamic H and W, and ONNX (opset 19,
dynamo exporter) run in onnxruntime. ``tools/export_model.py`` is the command line; see
docs/deploy.md for what each route supports and what stops the others.
"""

from .compare import InstancesDiff, compare_instances, relative_error
from .errors import ExportRouteError
from .tracing import (
    eager_detections,
    load_traced,
    outputs_to_instances,
    run_traced,
    save_traced,
    trace_detector,
)

__all__ = [
    "ExportRouteError",
    "InstancesDiff",
    "compare_instances",
    "eager_detections",
    "load_traced",
    "outputs_to_instances",
    "relative_error",
    "run_traced",
    "save_traced",
    "trace_detector",
]
