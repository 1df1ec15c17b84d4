"""The whole-detector ONNX route (``--export-method tracing --format onnx``): one ONNX file
that ONNX Runtime runs with its default options.

Traced (the TorchScript-based exporter, ``dynamo=False``): the numbers of proposals and
detections depend on the data, which ``torch.export`` cannot express but a trace records as
ONNX ops with dynamic shapes. Every step is a standard op: normalisation and padding, the
backbone (DCN v1 as ``DeformConv``, from opset 19; the exporter has no symbolic for
torchvision's ``deform_conv2d``, :func:`register_symbolics` adds one), the RPN (per-level
``TopK``, per-level NMS as one ``NonMaxSuppression`` with the level as its class), RoI
pooling (``RoiAlign``-16 with ``coordinate_transformation_mode="half_pixel"`` written out,
torchvision's ``aligned=True``), the box head(s) (Cascade: mmdetection's test path),
per-class NMS, the mask head(s).

The file (see docs/deploy.md):

- input ``image``: float32 3 x H x W (H, W free), channels in ``input_format``, 0..255,
  resized as the test loader resizes (metadata below);
- outputs ``boxes`` (N x 4, x1 y1 x2 y2 in the input's pixels), ``scores`` (N), ``classes``
  (N, int64) and, with a mask head, ``mask_probs`` (N x 1 x M x M, each RoI's mask
  probabilities): detectron2's detections before ``detector_postprocess``;
- metadata (``metadata_props``): :data:`FORMAT`, the resize (``min_size_test``,
  ``max_size_test``, ``resize_backend``), ``input_format``, ``mask_threshold``,
  ``class_names`` (JSON) — what ``deploy/onnx_predictor.py`` needs besides the graph.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances
from torch import nn
from torch.onnx import symbolic_helper

from ..layers import DeformConv2dWithOffset
from .errors import ExportRouteError, require_package
from .onnxruntime_session import onnxruntime_session, run_onnxruntime
from .tracing_adapter import check_traceable, detector_adapter, output_fields
from .verify import ExportResult, check_detections

FORMAT = "gcnet_d2 onnx detector v1"
MIN_OPSET = 16  # RoiAlign with coordinate_transformation_mode (torchvision's aligned=True)
DEFORM_OPSET = 19  # DeformConv
INPUT = "image"
# The file's outputs, in this order, and the adapter's fields (tracing_adapter) they are.
OUTPUTS = {
    "boxes": "pred_boxes",
    "scores": "scores",
    "classes": "pred_classes",
    "mask_probs": "pred_masks",
}


def output_names(model: GeneralizedRCNN) -> list[str]:
    """The file's output names, in order (``mask_probs`` with a mask head only)."""
    fields = output_fields(model)
    return [name for name, field in OUTPUTS.items() if field in fields]


class _NamedOutputs(nn.Module):
    """The adapter's outputs picked and ordered as the file's :func:`output_names`."""

    def __init__(self, adapter: TracingAdapter, model: GeneralizedRCNN) -> None:
        super().__init__()
        self.adapter = adapter
        fields = output_fields(model)
        self.picks = [fields.index(OUTPUTS[name]) for name in output_names(model)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.adapter(image)
        return tuple(outputs[i] for i in self.picks)


def has_deform_conv(model: nn.Module) -> bool:
    """Whether ``model`` has deformable convolutions (ONNX ``DeformConv``: opset 19)."""
    return any(isinstance(m, DeformConv2dWithOffset) for m in model.modules())


def check_opset(opset: int, deformable: bool = False) -> None:
    """Raise :class:`ExportRouteError` when a detector (``deformable``: with DCN) cannot be
    written at ``opset``."""
    if opset < MIN_OPSET:
        raise ExportRouteError(
            f"ONNX opset {opset}: the whole detector needs opset >= {MIN_OPSET} (RoiAlign's "
            "coordinate_transformation_mode; below it torchvision's aligned=True is dropped and "
            "every RoI is off by half a pixel)"
        )
    if opset < DEFORM_OPSET and deformable:
        raise ExportRouteError(
            f"ONNX opset {opset}: this model has deformable convolutions, and ONNX DeformConv "
            f"exists from opset {DEFORM_OPSET}"
        )


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d(
    g: Any,
    x: Any,
    weight: Any,
    offset: Any,
    mask: Any,
    bias: Any,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dil_h: int,
    dil_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
) -> Any:
    """``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (same offset layout)."""
    kernel = symbolic_helper._get_tensor_sizes(weight)[-2:]
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        dilations_i=[dil_h, dil_w],
        group_i=groups,
        kernel_shape_i=kernel,
        offset_group_i=offset_groups,
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        strides_i=[stride_h, stride_w],
    )


def register_symbolics() -> None:
    """Teach the TorchScript-based ONNX exporter torchvision's ``deform_conv2d``."""
    torch.onnx.register_custom_op_symbolic(
        "torchvision::deform_conv2d", _deform_conv2d, DEFORM_OPSET
    )


def metadata(
    input_format: str,
    min_size_test: int,
    max_size_test: int,
    resize_backend: str,
    class_names: list[str],
    mask_threshold: float = 0.5,
) -> dict[str, str]:
    """The ``metadata_props`` a runtime needs to prepare images and read the outputs."""
    if resize_backend != "cv2":
        raise ExportRouteError(
            f"INPUT.RESIZE_BACKEND {resize_backend!r}: the ONNX detector's runtime "
            "(deploy/onnx_predictor.py, no PyTorch, no PIL) resizes with OpenCV; export a "
            "config with INPUT.RESIZE_BACKEND cv2 (the table configs' setting)"
        )
    return {
        "gcnet_d2.format": FORMAT,
        "input_format": input_format,
        "min_size_test": str(int(min_size_test)),
        "max_size_test": str(int(max_size_test)),
        "resize_backend": resize_backend,
        "mask_threshold": repr(float(mask_threshold)),
        "class_names": json.dumps(list(class_names)),
    }


def detector_onnx_bytes(
    model: GeneralizedRCNN, image: torch.Tensor, opset: int, meta: dict[str, str]
) -> bytes:
    """The whole detector (eval mode) traced on ``image`` (3 x H x W, resized) as an ONNX
    file with dynamic H and W and ``meta`` as its metadata, after ``onnx.checker``."""
    onnx = require_package("onnx")
    check_traceable(model)
    check_opset(opset, has_deform_conv(model))
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"trace image must be 3 x H x W, got shape {tuple(image.shape)}")
    register_symbolics()
    names = output_names(model)
    module = _NamedOutputs(detector_adapter(model, image.float()), model).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (image.float(),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=names,
            dynamic_axes={INPUT: {1: "height", 2: "width"}} | {n: {0: "count"} for n in names},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class ONNXDetector:
    """An ONNX Runtime CPU session of a detector file (default options), run on one
    resized 3 x H x W image tensor, giving detectron2 ``Instances`` (before the final resize)
    to compare with the eager model's."""

    def __init__(self, model: str | bytes, threads: int | None = None) -> None:
        self.session = onnxruntime_session(model, threads)
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image: torch.Tensor) -> Instances:
        outputs = dict(zip(self.names, run_onnxruntime(self.session, image.float()), strict=True))
        inst = Instances(tuple(int(s) for s in image.shape[-2:]))
        inst.pred_boxes = Boxes(outputs["boxes"])
        inst.scores = outputs["scores"]
        inst.pred_classes = outputs["classes"]
        if "mask_probs" in outputs:
            inst.pred_masks = outputs["mask_probs"]
        return inst


def export_detector(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    opset: int,
    meta: dict[str, str],
    result: ExportResult,
) -> bytes:
    """The detector traced to ONNX on ``images[0]`` (:func:`detector_onnx_bytes`), run in
    ONNX Runtime and checked against eager on every image (into ``result``); the file's
    bytes."""
    data = detector_onnx_bytes(model, images[0], opset, meta)
    check_detections(model, images, ONNXDetector(data), result)
    return data
