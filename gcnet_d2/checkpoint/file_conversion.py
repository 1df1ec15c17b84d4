"""File conversion: an mmdetection / ImageNet checkpoint file in, a Detectron2 checkpoint file
out (behind ``tools/convert-mmdet-to-d2.py``). The key renaming itself is
:mod:`.state_dict_conversion`'s."""

from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from ..config import add_gcnet_config
from ..config_loading import load_config
from ..errors import CheckpointLoadError
from ..io import atomic_torch_save
from ..model_zoo import get_config, get_config_file
from .mmdet_layout import read_architecture
from .safe_load import load_checkpoint_file
from .state_dict_conversion import (
    LAYOUT_BACKBONE,
    LAYOUT_D2,
    ConversionReport,
    convert_state_dict,
    detect_layout,
    matching_configs,
)


def config_for_checkpoint(data: dict, config_file: str | None, opts: Sequence[str]) -> CfgNode:
    """The config to build the target model from: ``config_file`` if given, else the first
    shipped table config that fits the checkpoint, else a base config with overrides that
    make it fit (e.g. the R-50 based 2020-05 DCN cascade files)."""
    layout, sd = detect_layout(data)
    arch = read_architecture(sd, layout == LAYOUT_BACKBONE)
    if config_file:
        cfg = load_config(config_file)
    else:
        fits = matching_configs(arch)
        if fits:
            cfg = get_config(fits[0])
        else:
            base = (
                "Base-GCNet-Cascade-RCNN-FPN.yaml"
                if arch.cascade_stages
                else "Base-GCNet-RCNN-FPN.yaml"
            )
            cfg = add_gcnet_config(get_cfg())
            cfg.merge_from_file(get_config_file(base))
            cfg.merge_from_list(arch.config_overrides())
        if arch.num_classes is not None:
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = arch.num_classes
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def convert_checkpoint_file(
    src: str, dst: str, config_file: str | None = None, opts: Sequence[str] = ()
) -> ConversionReport:
    """Convert ``src`` (mmdetection detector or ImageNet backbone) to a Detectron2 checkpoint
    at ``dst``, which ``DetectionCheckpointer(model).load(dst)`` loads with no missing and no
    unexpected keys. ``dst`` is written atomically: a failure leaves no file behind."""
    data = load_checkpoint_file(src)
    if detect_layout(data)[0] == LAYOUT_D2:
        raise CheckpointLoadError(
            f"checkpoint {src}: already in Detectron2's layout (or not an mmdetection / ImageNet "
            "checkpoint): nothing to convert"
        )
    cfg = config_for_checkpoint(data, config_file, opts)
    model = build_model(cfg)
    state, report = convert_state_dict(data, model, source=src)
    payload = {
        "model": state,
        "__author__": f"gcnet_d2, converted from {report.layout}",
        "matching_heuristics": False,
        "gcnet_d2": {
            "source": os.path.basename(src),
            "architecture": report.architecture.describe(),
        },
    }
    atomic_torch_save(payload, dst)
    return report
