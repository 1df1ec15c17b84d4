"""mmdetection 3.3's initialisation of the layers trained from scratch (``HEAD_INIT: mmdet``).

Read off mmdetection's models built from its own configs (``init_cfg`` and the modules'
``init_weights``), layer by layer against Detectron2's:

- FPN lateral and output convs: ``xavier_uniform`` (gain 1), bias 0. Detectron2's
  ``c2_xavier_fill`` (bound sqrt(3 / fan_in)) is the same only for square convs;
- box head FCs (``shared_fcs``): ``xavier_uniform``, bias 0 (fc6 bound ~0.021 vs ~0.015);
- mask logits conv: ``kaiming_normal`` (fan_out, relu), bias 0 (Detectron2: normal(0.001)).

Equal already, so untouched: RPN convs (normal 0.01), box classifier / regressor (normal
0.01 / 0.001), mask convs and deconv (kaiming_normal fan_out = ``c2_msra_fill``).

The init is part of the model: :class:`~.fpn.MMDetFPN` and the recipe's RoI heads
(:class:`~.roi_heads_recipe.ROIHeadsRecipeMixin`) take a ``head_init`` argument and apply it
in their constructors, right after their layers draw Detectron2's initial weights.
``build_model(cfg)`` (``MODEL.MMDET_TRAIN.HEAD_INIT``) and ``instantiate(cfg.model)`` (the
LazyConfigs' ``head_init=``) then draw the same numbers in the same order: with one seed, the
same initial model.
"""

from __future__ import annotations

from detectron2.modeling.backbone import FPN
from torch import nn

HEAD_INITS = ("detectron2", "mmdet")


def check_head_init(head_init: str) -> None:
    """Raise ``ValueError`` unless ``head_init`` is one of :data:`HEAD_INITS`."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")


def _xavier_uniform_(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def init_fpn_like_mmdet(fpn: FPN) -> None:
    """xavier_uniform on every lateral and output conv of ``fpn``."""
    for conv in [*fpn.lateral_convs, *fpn.output_convs]:
        _xavier_uniform_(conv)


def init_box_head_like_mmdet(box_head: nn.Module) -> None:
    """xavier_uniform on the FCs of a ``FastRCNNConvFCHead`` (its convs already match)."""
    for fc in getattr(box_head, "fcs", []):
        _xavier_uniform_(fc)


def init_mask_head_like_mmdet(mask_head: nn.Module) -> None:
    """kaiming_normal (fan_out, relu) on the mask predictor of a ``MaskRCNNConvUpsampleHead``."""
    predictor = mask_head.predictor
    nn.init.kaiming_normal_(predictor.weight, mode="fan_out", nonlinearity="relu")
    if predictor.bias is not None:
        nn.init.zeros_(predictor.bias)


def _as_list(heads: nn.Module | None) -> list[nn.Module]:
    if heads is None:
        return []
    return list(heads) if isinstance(heads, nn.ModuleList) else [heads]


def init_roi_heads(roi_heads: nn.Module, head_init: str) -> None:
    """With ``head_init="mmdet"``: the box head(s) and mask head(s) of detectron2-style RoI
    heads (one, or one per cascade stage) initialised as above; "detectron2": untouched."""
    check_head_init(head_init)
    if head_init != "mmdet":
        return
    for head in _as_list(roi_heads.box_head):
        init_box_head_like_mmdet(head)
    for head in _as_list(getattr(roi_heads, "mask_head", None)):
        init_mask_head_like_mmdet(head)


def init_like_mmdet(model: nn.Module) -> nn.Module:
    """Every FPN, box head and mask head of ``model`` initialised as above; returns ``model``.

    For a model assembled from detectron2's own classes; the recipe's FPN and RoI heads do
    this themselves with ``head_init="mmdet"``.
    """
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead

    for module in model.modules():
        if isinstance(module, FPN):
            init_fpn_like_mmdet(module)
        elif isinstance(module, FastRCNNConvFCHead):
            init_box_head_like_mmdet(module)
        elif isinstance(module, MaskRCNNConvUpsampleHead):
            init_mask_head_like_mmdet(module)
    return model
