"""Small detectors with realistic random weights for the export tests (CPU, seconds).

"Realistic": GC blocks are not the identity, DCN offsets are non-zero and vary over the map,
norms have non-trivial statistics, and class scores are peaked (background favoured) so an
image gets a handful of confident detections whose number depends on its content.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.layers import ContextBlock, DeformConv2dWithOffset

# The three families the export routes support, one table row each.
FAMILIES = {
    "gc_mask": "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml",
    "gc_cascade": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml"
    ),
    "dcn_gc_cascade": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5"
        "_1x_coco.yaml"
    ),
}


FPN_OUTPUT_SCALE = 0.1


def tiny_cfg(name: str) -> CfgNode:
    """The row's config with few channels (architecture, GC/DCN placement and heads kept)."""
    cfg = gcnet_d2.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    res = cfg.MODEL.RESNETS
    res.DEPTH = 50
    res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS = 8, 32
    res.NUM_GROUPS, res.WIDTH_PER_GROUP = min(res.NUM_GROUPS, 2), 4
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 60
    cfg.TEST.DETECTIONS_PER_IMAGE = 60
    return cfg


def realistic_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give ``model`` (built with detectron2's init) the non-trivial parts a trained one has."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, ContextBlock):
                for p in module.parameters():
                    normal(p, 0.3)
                for seq in (module.channel_add_conv, module.channel_mul_conv):
                    if seq is not None:
                        normal(seq[1].weight, 0.2, 1.0)
            elif isinstance(module, DeformConv2dWithOffset):
                normal(module.conv_offset.weight, 0.002)
                normal(module.conv_offset.bias, 0.7)
            elif hasattr(module, "running_var") and "bottom_up" in name:
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                normal(module.running_mean, 0.1)
                normal(module.weight, 0.1, 1.0)
                normal(module.bias, 0.1)
        for name, module in model.backbone.named_children():
            if name.startswith("fpn_output"):  # features of unit scale, as trained FPNs give
                module.weight.mul_(FPN_OUTPUT_SCALE)
        for predictor in _box_predictors(model):
            normal(predictor.cls_score.weight, 0.3)
            bias = predictor.cls_score.bias
            normal(bias, 0.5)
            bias[-1] += 3.0  # background favoured: only some proposals score above threshold
    return model


def _box_predictors(model: torch.nn.Module) -> list[torch.nn.Module]:
    predictor = model.roi_heads.box_predictor
    return list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]


def tiny_detector(family: str, seed: int = 0) -> tuple[CfgNode, torch.nn.Module]:
    """``(cfg, eval-mode model)`` of a family of :data:`FAMILIES`, realistic random weights,
    with the speed-ups ``tools/export_model.py`` applies (:func:`gcnet_d2.fast.apply`)."""
    cfg = tiny_cfg(FAMILIES[family])
    torch.manual_seed(seed)
    model = realistic_weights(build_model(cfg), seed).eval()
    return cfg, fast.apply(model, cfg)


def sample_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A uint8 C x H x W image of a few flat rectangles on noise (content varies with seed)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    for _ in range(4):
        y0 = int(torch.randint(0, height // 2, (1,), generator=g))
        x0 = int(torch.randint(0, width // 2, (1,), generator=g))
        h = int(torch.randint(height // 6, height // 2, (1,), generator=g))
        w = int(torch.randint(width // 6, width // 2, (1,), generator=g))
        color = torch.randint(0, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
        image[:, y0 : y0 + h, x0 : x0 + w] = color
    return image
