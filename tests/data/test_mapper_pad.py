"""The training mapper's GT bitmaps (``INPUT.MASK_RASTER: mmdet``, ``MASK_PAD: image``) are
zero-padded per image to ``MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR``, as the config documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode

from gcnet_d2 import add_gcnet_config
from gcnet_d2.data.mapper import MASK_PAD_DIVISOR, MMDetMaskMapper, build_gcnet_mapper
from tests.testing import write_image

H0, W0 = 45, 61  # resized to short side 80 -> 80 x 108 (no flip)
SHORT = 80


def _cfg(pad_size_divisor: int | None = None):
    cfg = add_gcnet_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MASK_RASTER = "mmdet"
    cfg.INPUT.MIN_SIZE_TRAIN = (SHORT,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.RANDOM_FLIP = "none"
    if pad_size_divisor is not None:
        cfg.MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR = pad_size_divisor
    return cfg


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 45 x 61 image with a triangle touching the bottom-right corner."""
    path = Path(tmp_path_factory.mktemp("pad")) / "img.png"
    rgb = np.random.default_rng(0).integers(0, 256, (H0, W0, 3), dtype=np.uint8)
    write_image(path, rgb)
    anno = {
        "bbox": [20.0, 10.0, W0 - 20.0, H0 - 10.0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "segmentation": [[20, H0, W0, 10, W0, H0]],
        "iscrowd": 0,
    }
    return {"file_name": str(path), "height": H0, "width": W0, "image_id": 1, "annotations": [anno]}


def _gt_masks(cfg, record: dict) -> tuple[torch.Tensor, tuple[int, int]]:
    mapper = build_gcnet_mapper(cfg, True)
    assert type(mapper) is MMDetMaskMapper
    instances = mapper(dict(record, annotations=[dict(a) for a in record["annotations"]]))
    return instances["instances"].gt_masks.tensor, instances["instances"].image_size


@pytest.mark.parametrize(("divisor", "padded"), [(64, (128, 128)), (32, (96, 128)), (1, None)])
def test_bitmaps_padded_to_the_configured_divisor(record: dict, divisor: int, padded) -> None:
    masks, (h, w) = _gt_masks(_cfg(divisor), record)
    assert (h, w) == (80, 108)
    padded = padded or (h, w)  # divisor 1: no padding
    assert masks.shape == (1, *padded)
    assert masks.shape[1] % divisor == 0 and masks.shape[2] % divisor == 0
    # The mask reaches the image's bottom-right corner; the padding is zeros.
    assert masks[0, h - 1, w - 1] and not masks[0, h:].any() and not masks[0, :, w:].any()


def test_default_divisor_is_32(record: dict) -> None:
    assert MASK_PAD_DIVISOR == 32
    assert _cfg().MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR == 32
    masks, _ = _gt_masks(_cfg(), record)
    assert masks.shape == (1, 96, 128)
    # A config without the MMDET_TRAIN node (or without the key) keeps 32.
    for drop_node in (True, False):
        cfg = _cfg()
        cfg.defrost()
        if drop_node:
            del cfg.MODEL["MMDET_TRAIN"]
        else:
            del cfg.MODEL.MMDET_TRAIN["PAD_SIZE_DIVISOR"]
        assert MMDetMaskMapper(cfg, True).mask_pad_divisor == MASK_PAD_DIVISOR
    # Built without a config (LazyConfig rows), the default is 32 too.
    mapper = MMDetMaskMapper(
        is_train=True,
        augmentations=[],
        image_format="RGB",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    assert mapper.mask_pad_divisor == MASK_PAD_DIVISOR


def test_bad_divisor_named() -> None:
    kwargs = {"is_train": True, "augmentations": [], "image_format": "RGB"}
    for bad in (0, -32, 2.5):
        with pytest.raises(ValueError, match="mask_pad_divisor"):
            MMDetMaskMapper(**kwargs, mask_pad_divisor=bad)
