"""The backbone (bottom-up ResNet + FPN) in the form every backbone route exports.

Input: one normalised N x 3 x H x W float tensor (``(image - PIXEL_MEAN) / PIXEL_STD``, padded
to the backbone's ``size_divisibility``, 32 for the FPN), as ``GeneralizedRCNN`` feeds the
backbone. Output: the feature maps as a tuple in ``output_shape()`` order (p2 ... p6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling import Backbone, GeneralizedRCNN
from torch import nn


class BackboneFeatures(nn.Module):
    """``backbone(x)`` as a tuple of tensors in ``output_shape()`` order (exportable form)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = tuple(backbone.output_shape())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return tuple(features[name] for name in self.names)


def size_divisibility(backbone: Backbone) -> int:
    """The multiple H and W of a backbone input must be (1 if it asks none)."""
    return max(1, int(getattr(backbone, "size_divisibility", 0) or 1))


def backbone_inputs(model: GeneralizedRCNN, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The backbone's inputs for the sample ``images`` (C x H x W, resized), then the first
    one grown by one size-divisibility step in H and W: a second size to check, whatever the
    samples are."""
    with torch.no_grad():
        inputs = [model.preprocess_image([{"image": image}]).tensor for image in images]
    stride = size_divisibility(model.backbone)
    larger = torch.nn.functional.pad(inputs[0], (0, stride, 0, stride), value=0.0)
    return [*inputs, larger]


def backbone_outputs(backbone: Backbone, x: torch.Tensor) -> Sequence[torch.Tensor]:
    """The eager backbone's features on ``x`` in the exported output order."""
    with torch.no_grad():
        return BackboneFeatures(backbone).eval()(x)
