"""Deployment routes for gcnet_d2 detectors: the whole detector to ONNX for ONNX Runtime
(:mod:`.onnx_detector`; ``deploy/onnx_predictor.py`` runs it without PyTorch) or to
TorchScript, both traced through detectron2's ``TracingAdapter``; the backbone alone through
``torch.export`` or to ONNX (dynamo exporter), H and W dynamic. ``tools/export_model.py`` is
the command line; see docs/deploy.md for what each route supports and what stops the others.
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
