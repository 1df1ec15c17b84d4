"""The inference options of ``MODEL.GCNET`` applied to a built backbone.

* ``FOLD_NORMS`` (default on): frozen norms folded into their convolutions when that is the
  same function (inference: eval mode, no gradient, not traced / compiled / exported), see
  :mod:`gcnet_d2.modeling.inference_fusion`;
* ``CONV1X1_GEMM`` (default on): 1x1 convolutions on large maps as matrix products at
  inference (:mod:`gcnet_d2.modeling.conv1x1_gemm`; it acts through the fold's conv class, so
  only with ``FOLD_NORMS``);
* ``COMPILE`` (default off): a ``torch.compile`` backend name (``"inductor"``,
  ``"aot_eager"``, ...) with which the backbone (bottom-up and FPN) is compiled in place
  (``nn.Module.compile``: parameters and state-dict keys unchanged). The detector's heads stay
  eager: their box counts are data dependent. Check the output on your device first
  (``tools/compile_check.py``): docs/benchmark.md reports a wrong GC backbone from inductor on
  CUDA with torch 2.11.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from torch import nn

from .conv1x1_gemm import set_conv1x1_gemm
from .inference_fusion import disable_norm_folding, enable_norm_folding
from .roi_align_parallel import use_parallel_roi_align

FLAGS = ("FOLD_NORMS", "CONV1X1_GEMM", "PARALLEL_ROI_ALIGN")


def flag(cfg: CfgNode, key: str) -> bool:
    """``MODEL.GCNET.<key>``, which must be a bool (the error names the key)."""
    value = cfg.MODEL.GCNET[key]
    if not isinstance(value, bool):
        raise ValueError(f"MODEL.GCNET.{key} must be true or false, got {value!r}")
    return value


def validate_inference_options(cfg: CfgNode) -> None:
    gc = cfg.MODEL.GCNET
    for key in FLAGS:
        flag(cfg, key)
    if not isinstance(gc.COMPILE, str):
        raise ValueError(
            f"MODEL.GCNET.COMPILE must be a torch.compile backend name or '' (off), "
            f"got {gc.COMPILE!r}"
        )
    if gc.COMPILE:
        import torch._dynamo

        if gc.COMPILE not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(
                f"MODEL.GCNET.COMPILE: unknown torch.compile backend {gc.COMPILE!r}; "
                f"available: {torch._dynamo.list_backends()}"
            )


def apply_inference_options(backbone: nn.Module, cfg: CfgNode, compile_: bool = True) -> nn.Module:
    """Apply ``MODEL.GCNET.FOLD_NORMS`` and (with ``compile_``) ``MODEL.GCNET.COMPILE`` to
    ``backbone`` in place; returns it."""
    validate_inference_options(cfg)
    gc = cfg.MODEL.GCNET
    if gc.FOLD_NORMS:
        enable_norm_folding(backbone)
    else:
        disable_norm_folding(backbone)
    set_conv1x1_gemm(backbone, gc.FOLD_NORMS and gc.CONV1X1_GEMM)
    if compile_ and gc.COMPILE:
        backbone.compile(backend=gc.COMPILE)
    return backbone


def roi_heads_options(cfg: CfgNode) -> dict[str, bool]:
    """The RoI heads' share of the options: ``PARALLEL_ROI_ALIGN`` and, with the fold,
    ``CONV1X1_GEMM`` (the mask logits), as keyword arguments of gcnet_d2's RoI heads."""
    return {
        "parallel_roi_align": flag(cfg, "PARALLEL_ROI_ALIGN"),
        "conv1x1_gemm": flag(cfg, "FOLD_NORMS") and flag(cfg, "CONV1X1_GEMM"),
    }


def apply_roi_heads_options(heads: nn.Module, parallel_roi_align: bool, conv1x1_gemm: bool) -> None:
    """Threaded RoIAlign in the box / mask poolers and the mask head's 1x1 logits as a product
    (:mod:`.roi_align_parallel`, :mod:`.conv1x1_gemm`), in place on detectron2-style heads."""
    if parallel_roi_align:
        use_parallel_roi_align(heads.box_pooler)
        use_parallel_roi_align(getattr(heads, "mask_pooler", None))
    if getattr(heads, "mask_head", None) is not None:
        set_conv1x1_gemm(enable_norm_folding(heads.mask_head), conv1x1_gemm)


__all__ = [
    "apply_inference_options",
    "apply_roi_heads_options",
    "flag",
    "roi_heads_options",
    "validate_inference_options",
]
