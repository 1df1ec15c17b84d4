"""``LeanFPN``: detectron2's ``FPN`` whose eager inference holds fewer feature maps at once.

detectron2's FPN keeps every bottom-up feature map until the end of its forward and forms
each top-down sum as a new tensor next to its two operands. At the finest level (p2 of an
800x1344 image: 256 x 200 x 336 floats, 69 MB) that is three maps of that size at once plus
``res2``; it sets the detector's peak memory (0.41 GiB of live tensors against mmdetection's
0.35 GiB for GC r16 Mask R-CNN, docs/benchmark.md). Here, at eager inference, each bottom-up
map is released once its lateral conv has read it and the upsampled coarser level is added
into the lateral result in place. Same operations on the same values: the output is the
plain forward's bit for bit (``tests/test_fpn.py``).

Training, tracing, scripting, compiling and exporting run detectron2's own ``FPN.forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import FPN

from .context_block_fast import eager
from .conv1x1_gemm import set_conv1x1_gemm
from .inference_fusion import enable_norm_folding


class LeanFPN(FPN):
    """detectron2's ``FPN`` (same arguments, modules and state dict); see the module doc.
    Its 1x1 lateral convs on large maps run as matrix products at inference
    (:mod:`.conv1x1_gemm`; ``conv1x1_gemm=False`` or ``MODEL.GCNET.CONV1X1_GEMM`` off: not)."""

    def __init__(self, *args: object, conv1x1_gemm: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        for conv in self.lateral_convs:  # a list (registered as fpn_lateral*), no ModuleList
            set_conv1x1_gemm(enable_norm_folding(conv), conv1x1_gemm)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled() or not eager():
            return super().forward(x)
        features = self.bottom_up(x)
        top = self.top_block
        keep = top.in_feature if top is not None and top.in_feature in features else None
        outputs: list[torch.Tensor] = []
        coarser = None
        # lateral_convs / output_convs run from the coarsest level to the finest
        for name, lateral_conv, output_conv in zip(
            reversed(self.in_features), self.lateral_convs, self.output_convs, strict=True
        ):
            level = lateral_conv(features[name] if name == keep else features.pop(name))
            if coarser is not None:
                level += F.interpolate(coarser, scale_factor=2.0, mode="nearest")
                if self._fuse_type == "avg":
                    level /= 2
            outputs.insert(0, output_conv(level))
            coarser = level
        del coarser, level
        if top is not None:
            if keep is not None:
                source = features[keep]
            else:
                source = outputs[self._out_features.index(top.in_feature)]
            outputs.extend(top(source))
        return dict(zip(self._out_features, outputs, strict=True))


__all__ = ["LeanFPN"]
