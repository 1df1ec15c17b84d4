"""The TorchScript route (``--export-method tracing --format torchscript``): the whole detector
through detectron2's ``TracingAdapter`` (one image per call), or the backbone alone.

The traced detector takes one image tensor, C x H x W in ``cfg.INPUT.FORMAT`` channel order
(uint8 or float, 0..255), already resized as the test pipeline resizes it; H and W are free
(any size, not only the trace image's). It returns detectron2's flattened ``Instances``
*before* the final resize, as a tuple in field-name order:
``pred_boxes`` (N x 4, input-image pixels), ``pred_classes`` (N), ``pred_masks``
(N x 1 x M x M RoI mask probabilities, Mask R-CNN only), ``scores`` (N), and the image size.
:func:`.tracing_adapter.outputs_to_instances` rebuilds the ``Instances``; detectron2's
``detector_postprocess`` then rescales the boxes and pastes the masks at any output size.

The saved file carries ``gcnet_d2_export.json`` (an extra file) naming the output fields and
the input format, so :func:`load_traced` / :func:`run_traced` need nothing but the file.

The traced backbone takes and returns what :mod:`.backbone_features` describes.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances

from ..io import atomic_write_bytes
from .backbone_features import BackboneFeatures, backbone_inputs
from .errors import ExportRouteError
from .tracing_adapter import detector_adapter, output_fields, outputs_to_instances
from .verify import ExportResult, check_detections, check_features

META_FILE = "gcnet_d2_export.json"


def _python_ops(graph: torch._C.Graph) -> list[str]:
    """Names of Python autograd Functions recorded in a trace (``prim::PythonOp``)."""
    found = []
    for node in graph.nodes():
        if node.kind() == "prim::PythonOp":
            found.append(node.pyname())
        for block in node.blocks():
            found.extend(_python_ops(block))
    return found


def trace_detector(model: GeneralizedRCNN, image: torch.Tensor) -> tuple[Any, TracingAdapter]:
    """Trace ``model`` (put in eval mode) on one C x H x W ``image``.

    Returns ``(traced module, adapter)``; ``adapter.outputs_schema`` turns the traced
    module's outputs back into detectron2's structures. Works with grad mode on or off
    (``TracingAdapter`` runs the model under ``no_grad``).
    """
    adapter = detector_adapter(model, image)
    if image.dim() != 3:
        raise ValueError(f"trace image must be C x H x W, got shape {tuple(image.shape)}")
    traced = torch.jit.trace(adapter, (image,), check_trace=False)
    python_ops = _python_ops(traced.inlined_graph)
    if python_ops:
        raise ExportRouteError(
            "the trace recorded Python autograd Functions (prim::PythonOp: "
            f"{sorted(set(python_ops))}), which torch.jit.save cannot store"
        )
    return traced, adapter


def metadata(model: GeneralizedRCNN, input_format: str) -> dict:
    """What :func:`run_traced` needs to read the outputs: field names and input format."""
    return {
        "format": "gcnet_d2 traced detector v1",
        "input": f"one C x H x W image, {input_format}, 0..255, resized as the test pipeline",
        "input_format": input_format,
        "outputs": output_fields(model),
    }


def traced_bytes(traced: Any, model: GeneralizedRCNN, input_format: str) -> bytes:
    """The ``torch.jit.save`` file of ``traced``, with :func:`metadata` as an extra file."""
    buffer = io.BytesIO()
    meta = json.dumps(metadata(model, input_format))
    torch.jit.save(traced, buffer, _extra_files={META_FILE: meta})
    return buffer.getvalue()


def save_traced(traced: Any, path: str, model: GeneralizedRCNN, input_format: str) -> None:
    """Write :func:`traced_bytes` to ``path`` atomically."""
    atomic_write_bytes(path, traced_bytes(traced, model, input_format))


def load_traced(path: str | io.BytesIO, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """``(module, metadata)`` of a file (or buffer) written by :func:`save_traced`."""
    extra = {META_FILE: ""}
    # Load on the CPU, then move parameters and buffers: ``map_location`` would also move the
    # trace's constants (e.g. the padding divisor) while shapes read under tracing stay CPU
    # tensors, and the first op mixing them fails on CUDA.
    module = torch.jit.load(path, map_location="cpu", _extra_files=extra).to(device)
    if not extra[META_FILE]:
        raise ValueError(f"{path}: not a gcnet_d2 traced detector (no {META_FILE} inside)")
    return module, json.loads(extra[META_FILE])


def run_traced(module: Any, meta: dict, image: torch.Tensor) -> Instances:
    """Detections of a loaded traced detector on one C x H x W image (before the resize)."""
    return outputs_to_instances(module(image), meta["outputs"])


def export_detector(
    model: GeneralizedRCNN, images: list[torch.Tensor], input_format: str, result: ExportResult
) -> bytes:
    """The detector traced on ``images[0]``, saved, reloaded from the bytes and checked
    against eager on every image (into ``result``); the file's bytes."""
    traced, _ = trace_detector(model, images[0])
    data = traced_bytes(traced, model, input_format)
    loaded, meta = load_traced(io.BytesIO(data), images[0].device)
    check_detections(model, images, lambda image: run_traced(loaded, meta, image), result)
    return data


def export_backbone(
    model: GeneralizedRCNN, images: list[torch.Tensor], result: ExportResult
) -> bytes:
    """``model.backbone`` traced on the first sample's input, saved, reloaded and checked
    against eager at every sample's size and one more (into ``result``); the file's bytes."""
    inputs = backbone_inputs(model, images)
    module = BackboneFeatures(model.backbone).eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, (inputs[0],), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    data = buffer.getvalue()
    loaded = torch.jit.load(io.BytesIO(data))
    check_features(model.backbone, inputs, loaded, result)
    return data
