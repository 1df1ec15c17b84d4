"""The ``recipe`` section: what mmdetection's training components cost (target <= 1.03x of
Detectron2's stock components).

One training iteration (forward, backward, SGD step) of GC r16 Mask R-CNN R-50-FPN as the table
configs train it (``MODEL.MMDET_TRAIN.*``: MaxIoU anchor and RoI assignment, valid anchors,
GTs prepended; bitmap mask targets, ``INPUT.MASK_RASTER: mmdet``) against the same model with
Detectron2's stock components (``RPN``, ``StandardROIHeads``, polygon mask targets), the same
weights and the same images and ground truth. The two images have different sizes, so the
smaller one is padded in the batch and the valid-anchor flags have work to do. Both models
have ``gcnet_d2.fast.apply(model, cfg)``, as ``train_net.py`` trains them.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks
from torch import nn

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.config import DETECTRON2_TRAINING_COMPONENTS
from gcnet_d2.data.mapper import pad_bitmasks, rasterize_segmentation

from .fixtures import (
    CONFIGS,
    R16,
    calibrate_norms,
    inference_inputs,
    peaked_class_scores,
    randomize_context_blocks,
    training_inputs,
)
from .report import make_row, print_row
from .sections import Settings, peak_memory_of_steps, training_steps
from .timing import Timer

MMDET, D2 = "mmdetection components", "Detectron2 components"


def recipe_model(components: str, device: torch.device) -> nn.Module:
    """The R-50 GC r16 Mask R-CNN with the named training components, in train mode, with
    its config's speed-ups (``gcnet_d2.fast.apply``, as ``train_net.py`` builds it)."""
    cfg = gcnet_d2.get_config(CONFIGS["r50"][R16])
    if components == D2:
        cfg.merge_from_list([x for item in DETECTRON2_TRAINING_COMPONENTS.items() for x in item])
    cfg.MODEL.DEVICE = str(device)
    return fast.apply(build_model(cfg), cfg).to(device).train()


def recipe_inputs(
    sizes: tuple[tuple[int, int], ...], device: torch.device, bitmasks: bool
) -> list[dict]:
    """One image per size, 6 GTs each (``training_inputs``); with ``bitmasks`` the masks are
    what ``MMDetMaskMapper`` hands the model: image-size bitmaps padded to a multiple of 32."""
    batch = []
    for size in sizes:
        (item,) = training_inputs(size, torch.device("cpu"), n=1)
        inst = item["instances"]
        if bitmasks:
            h, w = size
            masks = [rasterize_segmentation(p, h, w) for p in inst.gt_masks.polygons]
            bitmap = BitMasks(torch.from_numpy(np.stack(masks)).bool())
            inst.gt_masks = pad_bitmasks(bitmap)
        item["image"] = item["image"].to(device)
        item["instances"] = inst.to(device)
        batch.append(item)
    return batch


def section_recipe(s: Settings, timer: Timer) -> list[dict]:
    """Iteration time and peak memory, mmdetection's training components vs Detectron2's."""
    sizes = ((256, 384), (224, 352)) if s.quick else ((800, 1216), (800, 1066))
    torch.manual_seed(0)
    models = {D2: recipe_model(D2, s.device), MMDET: recipe_model(MMDET, s.device)}
    d2 = models[D2]
    calibrate_norms(d2, partial(d2, inference_inputs(sizes[0], s.device)))
    peaked_class_scores(d2)
    randomize_context_blocks(d2)
    models[MMDET].load_state_dict(d2.state_dict())  # strict: the same parameters
    if s.quick:  # smoke-test size: fewer sampled RoIs (the recipe samples 512 per image)
        for m in models.values():
            m.roi_heads.batch_size_per_image = 128
    batches = {
        D2: recipe_inputs(sizes, s.device, bitmasks=False),
        MMDET: recipe_inputs(sizes, s.device, bitmasks=True),
    }
    steps = training_steps(models, batches)
    memory = peak_memory_of_steps(steps, D2, s)
    res = timer.compare(steps, D2, s.rounds(7, 1), warmup=0, min_sample_s=0.0)
    shape = " + ".join(f"{h}x{w}" for h, w in sizes)
    row = make_row("training components, GC r16 Mask R-CNN", shape, 2, res, D2, memory=memory)
    print_row(row)
    return [row]
