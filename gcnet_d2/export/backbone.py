"""The backbone (bottom-up ResNet + FPN) through ``torch.export`` and ONNX, H and W dynamic.

Input: one normalised N x 3 x H x W float tensor (``(image - PIXEL_MEAN) / PIXEL_STD``, padded
to the backbone's ``size_divisibility``, 32 for the FPN), as ``GeneralizedRCNN`` feeds the
backbone. Output: the feature maps as a tuple in ``output_shape()`` order (p2 ... p6).
The batch size and H and W (multiples of the size divisibility) are symbolic: the program
runs at any of them, whatever the sample's (a batch-1 sample is repeated to 2 for the export,
since ``torch.export`` fixes a size of 1).

ONNX goes through the dynamo exporter (``torch.export`` then onnxscript) at opset >= 19: the
first opset with ``DeformConv``, which torchvision's ``deform_conv2d`` becomes. The legacy
TorchScript-based exporter has no symbolic for ``torchvision::deform_conv2d`` (nor for
``aten::addmv``), so it is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.modeling import Backbone
from torch import nn

from ..io import atomic_open, atomic_write_bytes
from .errors import ExportRouteError, require_package

MIN_OPSET = 19  # ONNX DeformConv appears in opset 19
MAX_BATCH = 64
MAX_UNITS = 256  # H and W up to 256 x size_divisibility (8192 px at stride 32)


class BackboneFeatures(nn.Module):
    """``backbone(x)`` as a tuple of tensors in ``output_shape()`` order (exportable form)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = tuple(backbone.output_shape())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return tuple(features[name] for name in self.names)


def _divisibility(backbone: Backbone) -> int:
    return max(1, int(getattr(backbone, "size_divisibility", 0) or 1))


def check_sample(backbone: Backbone, sample: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shape when ``sample`` cannot be a backbone input."""
    stride = _divisibility(backbone)
    if sample.dim() != 4 or sample.shape[1] != 3:
        raise ValueError(f"backbone sample must be N x 3 x H x W, got {tuple(sample.shape)}")
    h, w = sample.shape[-2:]
    if h % stride or w % stride or h < 2 * stride or w < 2 * stride:
        raise ValueError(
            f"backbone sample H x W = {h} x {w} must be multiples of the size divisibility "
            f"{stride}, at least {2 * stride}"
        )


def dynamic_hw(backbone: Backbone) -> dict[str, dict[int, Any]]:
    """``dynamic_shapes`` for :class:`BackboneFeatures`: any batch size, H and W free
    multiples of the stride."""
    stride = _divisibility(backbone)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    h = torch.export.Dim("h_units", min=2, max=MAX_UNITS)
    w = torch.export.Dim("w_units", min=2, max=MAX_UNITS)
    return {"x": {0: batch, 2: stride * h, 3: stride * w}}


def _export_sample(sample: torch.Tensor) -> torch.Tensor:
    """``sample`` with at least 2 images: torch.export would fix a batch size of 1."""
    return sample.repeat(2, 1, 1, 1) if sample.shape[0] == 1 else sample


def export_backbone(backbone: Backbone, sample: torch.Tensor) -> torch.export.ExportedProgram:
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
    if opset < MIN_OPSET:
        raise ExportRouteError(
            f"ONNX opset {opset}: DeformConv, which deformable convolutions export to, exists "
            f"from opset {MIN_OPSET}; an older opset writes a file the ONNX checker rejects"
        )
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


def export_backbone_onnx(
    backbone: Backbone, sample: torch.Tensor, path: str, opset: int = MIN_OPSET
) -> None:
    """Write :func:`onnx_bytes` to ``path`` atomically."""
    atomic_write_bytes(path, onnx_bytes(backbone, sample, opset))


def save_program(program: torch.export.ExportedProgram, path: str) -> None:
    """``torch.export.save`` to ``path`` atomically (``torch.export.load`` reads it)."""
    with atomic_open(path) as f:
        torch.export.save(program, f)


def onnxruntime_session(model: str | bytes) -> Any:
    """An onnxruntime CPU session of ``model`` (a path or the file's bytes) with
    onnxruntime's DEFAULT session options (all graph optimisations on), as users open it."""
    ort = require_package("onnxruntime")
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_onnxruntime(session: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """The session's outputs for one input tensor, as torch tensors."""
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy())})
    return [torch.from_numpy(o) for o in outputs]


def backbone_outputs(backbone: Backbone, x: torch.Tensor) -> Sequence[torch.Tensor]:
    """The eager backbone's features on ``x`` in the exported output order."""
    with torch.no_grad():
        return BackboneFeatures(backbone).eval()(x)
