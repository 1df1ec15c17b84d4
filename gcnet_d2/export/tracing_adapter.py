"""The whole detector as detectron2's ``TracingAdapter`` sees it, for every route that traces it.

One inference function (:func:`detector_inference`): detectron2's detections of one image
*before* the final resize (``do_postprocess=False``), which ``TracingAdapter`` flattens to a
tuple of tensors in :func:`output_fields` order. The TorchScript route keeps that tuple as the
file's outputs; the ONNX route picks and names some of them. :func:`eager_detections` gives
the eager model's detections in the same form, for the checks against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances
from torch import nn

from .errors import ExportRouteError


def check_traceable(model: nn.Module) -> None:
    """Raise :class:`ExportRouteError` when ``model`` cannot be traced whole."""
    if not isinstance(model, GeneralizedRCNN):
        raise ExportRouteError(
            f"whole-model tracing supports detectron2's GeneralizedRCNN (Mask / Cascade Mask "
            f"R-CNN), got {type(model).__name__}"
        )
    if model.proposal_generator is None:
        raise ExportRouteError("whole-model tracing needs the RPN (MODEL.PROPOSAL_GENERATOR)")


def detector_inference(model: GeneralizedRCNN, inputs: list[dict]) -> list[dict]:
    """``TracingAdapter``'s inference function: detections before the final resize."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def detector_adapter(model: GeneralizedRCNN, image: torch.Tensor) -> TracingAdapter:
    """``model`` (put in eval mode) behind a ``TracingAdapter`` taking one C x H x W image
    like ``image``; it runs the model under ``no_grad`` and makes ``len()`` of detectron2's
    structures symbolic."""
    check_traceable(model)
    return TracingAdapter(model.eval(), [{"image": image}], detector_inference)


def output_fields(model: GeneralizedRCNN) -> list[str]:
    """The names of the adapter's outputs, in order: ``TracingAdapter`` flattens the
    ``Instances`` fields in sorted name order, then appends the image size."""
    names = ["pred_boxes", "pred_classes", "scores"]
    if getattr(model.roi_heads, "mask_on", False):
        names.append("pred_masks")
    return [*sorted(names), "image_size"]


def outputs_to_instances(outputs: Sequence[torch.Tensor], field_names: Sequence[str]) -> Instances:
    """Rebuild ``Instances`` from the adapter's (or a traced file's) outputs and their names."""
    if len(outputs) != len(field_names):
        raise ValueError(
            f"expected {len(field_names)} outputs {list(field_names)}, got {len(outputs)}"
        )
    named = dict(zip(field_names, outputs, strict=True))
    size = named.pop("image_size")
    inst = Instances((int(size[0]), int(size[1])))
    for name, value in named.items():
        inst.set(name, Boxes(value) if name == "pred_boxes" else value)
    return inst


def eager_detections(model: GeneralizedRCNN, image: torch.Tensor) -> Instances:
    """The eager model's detections on ``image``, in the form the adapter flattens."""
    with torch.no_grad():
        return detector_inference(model.eval(), [{"image": image}])[0]["instances"]
