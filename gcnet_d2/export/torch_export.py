"""The ``torch.export`` routes: the backbone (bottom-up ResNet + FPN) as an ``ExportedProgram``
(``--export-method torch_export --format pt2``) or, through the dynamo exporter, as ONNX
(``--format onnx --part backbone``), H and W dynamic; and why the whole detector cannot go this
way (:func:`export_detector_program`).

The backbone's input and outputs are :mod:`.backbone_features`'. The batch size and H and W
(multiples of the size divisibility) are symbolic: the program runs at any of them, whatever
the sample's (a batch-1 sample is repeated to 2 for the export, since ``torch.export`` fixes a
size of 1).

ONNX goes through the dynamo exporter (``torch.export`` then onnxscript) at opset >= 19: the
first opset with ``DeformConv``, which torchvision's ``deform_conv2d`` becomes. The legacy
TorchScript-based exporter has no symbolic for ``torchvision::deform_conv2d`` (nor for
``aten::addmv``), so it is not offered for the backbone.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import torch
from detectron2.modeling import Backbone, GeneralizedRCNN

from .backbone_features import BackboneFeatures, backbone_inputs, size_divisibility
from .errors import ExportRouteError, require_package
from .onnxruntime_session import onnxruntime_session, run_onnxruntime
from .verify import ExportResult, check_features

MIN_OPSET = 19  # ONNX DeformConv appears in opset 19
MAX_BATCH = 64
MAX_UNITS = 256  # H and W up to 256 x size_divisibility (8192 px at stride 32)


def check_opset(opset: int) -> None:
    """Raise :class:`ExportRouteError` when the backbone cannot be written at ``opset``."""
    if opset < MIN_OPSET:
        raise ExportRouteError(
            f"ONNX opset {opset}: DeformConv, which deformable convolutions export to, exists "
            f"from opset {MIN_OPSET}; an older opset writes a file the ONNX checker rejects"
        )


def check_sample(backbone: Backbone, sample: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shape when ``sample`` cannot be a backbone input."""
    stride = size_divisibility(backbone)
    if sample.dim() != 4 or sample.shape[1] != 3:
        raise ValueError(f"backbone sample must be N x 3 x H x W, got {tuple(sample.shape)}")
    h, w = sample.shape[-2:]
    if h % stride or w % stride or h < 2 * stride or w < 2 * stride:
        raise ValueError(
            f"backbone sample H x W = {h} x {w} must be multiples of the size divisibility "
            f"{stride}, at least {2 * stride}"
        )


def dynamic_hw(backbone: Backbone) -> dict[str, dict[int, Any]]:
    """``dynamic_shapes`` for :class:`.BackboneFeatures`: any batch size, H and W free
    multiples of the stride."""
    stride = size_divisibility(backbone)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    h = torch.export.Dim("h_units", min=2, max=MAX_UNITS)
    w = torch.export.Dim("w_units", min=2, max=MAX_UNITS)
    return {"x": {0: batch, 2: stride * h, 3: stride * w}}


def _export_sample(sample: torch.Tensor) -> torch.Tensor:
    """``sample`` with at least 2 images: torch.export would fix a batch size of 1."""
    return sample.repeat(2, 1, 1, 1) if sample.shape[0] == 1 else sample


def backbone_program(backbone: Backbone, sample: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of the backbone in eval mode with dynamic H and W (see module doc)."""
    check_sample(backbone, sample)
    module = BackboneFeatures(backbone).eval()
    with torch.no_grad():
        return torch.export.export(
            module, (_export_sample(sample),), dynamic_shapes=dynamic_hw(backbone)
        )


def onnx_bytes(backbone: Backbone, sample: torch.Tensor, opset: int = MIN_OPSET) -> bytes:
    """The backbone as an ONNX file (dynamo exporter, dynamic H and W), after
    ``onnx.checker``'s full check (type and shape inference included)."""
    check_opset(opset)
    onnx = require_package("onnx")
    require_package("onnxscript")
    check_sample(backbone, sample)
    module = BackboneFeatures(backbone).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (_export_sample(sample),),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_hw(backbone),
            input_names=["image"],
            output_names=list(module.names),
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_backbone(
    model: GeneralizedRCNN,
    fmt: str,
    images: list[torch.Tensor],
    opset: int,
    result: ExportResult,
) -> bytes:
    """``model.backbone`` as a ``.pt2`` program (``fmt`` ``"pt2"``) or an ONNX file
    (``"onnx"``, run in onnxruntime), exported on the first sample's input, reloaded from the
    bytes and checked against eager at every sample's size and one more (into ``result``);
    the file's bytes."""
    inputs = backbone_inputs(model, images)
    if fmt == "pt2":
        buffer = io.BytesIO()
        torch.export.save(backbone_program(model.backbone, inputs[0]), buffer)
        data = buffer.getvalue()
        run = torch.export.load(io.BytesIO(data)).module()
    else:
        data = onnx_bytes(model.backbone, inputs[0], opset)
        session = onnxruntime_session(data)
        run = lambda x: run_onnxruntime(session, x)  # noqa: E731
    check_features(model.backbone, inputs, run, result)
    return data


def _first_location(e: BaseException) -> str:
    """``file:line`` and code of the call torch.export names in its error, if any."""
    m = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', str(e))
    return f" at {os.path.basename(m.group(1))}:{m.group(2)} `{m.group(3).strip()}`" if m else ""


def export_detector_program(model: GeneralizedRCNN, image: torch.Tensor) -> None:
    """Try ``torch.export`` of the whole detector; raise :class:`ExportRouteError` naming the
    construct that stops it (it does today: the numbers of proposals and detections after
    NMS are data-dependent, so :func:`.routes.check_route` refuses the route)."""

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
