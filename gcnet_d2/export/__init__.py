"""Deployment routes for gcnet_d2 detectors, one module each: the whole detector to ONNX for
ONNX Runtime (:mod:`.onnx_detector`; ``deploy/onnx_predictor.py`` runs it without PyTorch) or
to TorchScript (:mod:`.torchscript`, also the backbone alone), both traced through detectron2's
``TracingAdapter`` (:mod:`.tracing_adapter`); the backbone alone through ``torch.export`` or to
ONNX (dynamo exporter), H and W dynamic (:mod:`.torch_export`). :mod:`.routes` is the table
``tools/export_model.py`` (the command line) picks from; see docs/deploy.md for what each route
supports and what stops the others.
"""

from .compare import InstancesDiff, compare_instances, relative_error
from .errors import ExportRouteError
from .torchscript import load_traced, run_traced, save_traced, trace_detector
from .tracing_adapter import eager_detections, outputs_to_instances

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
