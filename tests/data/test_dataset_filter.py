"""Dataset filtering as mmdetection (``GCNET_DATA.FILTER: mmdet``).

One small COCO file with every case: an ordinary image, one without annotations, one whose
only annotation is a crowd region, one with a sub-pixel-wide box, a box outside the image and
a zero-area one beside a good box, and an image under 32 px. The images and annotations kept
equal those of mmdetection's own ``CocoDataset`` with its COCO config's ``filter_cfg``, and a
two-iteration training on them runs (empty, crowd-only and degenerate-box images included).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json

from gcnet_d2 import add_gcnet_config
from gcnet_d2.data.filtering import filter_like_mmdet
from gcnet_d2.data.mapper import MMDetMaskMapper
from gcnet_d2.engine import GCNetTrainer
from tests.parity import mmdet_reference as ref
from tests.testing import QUICKSTART, TINY_OPTS, box_annotation, write_coco, write_image

H, W = 64, 80


def _ann(image_id: int, bbox: list[float], **extra) -> dict:
    return box_annotation(image_id, bbox, **extra)


# (file name, height, width, annotations)
IMAGES = [
    ("ordinary.png", H, W, [_ann(1, [10, 12, 30, 25])]),
    ("no_annotations.png", H, W, []),
    ("crowd_only.png", H, W, [_ann(3, [5, 5, 40, 30], iscrowd=1)]),
    (
        "degenerate.png",
        H,
        W,
        [
            _ann(4, [20, 20, 0.5, 30]),  # w < 1
            _ann(4, [30, 10, 12, 0.9]),  # h < 1
            _ann(4, [W + 5, 10, 10, 10]),  # outside the image
            _ann(4, [8, 8, 20, 20], area=0.0),  # zero area
            _ann(4, [40, 30, 25, 20]),  # kept
        ],
    ),
    ("too_small.png", 28, W, [_ann(5, [10, 5, 20, 15])]),
]


def _write_dataset(root: Path) -> tuple[str, str]:
    """Write the images and COCO file; register it; return (name, json path)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for file_name, h, w, _ in IMAGES:
        write_image(root / file_name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    images = [(file_name, h, w) for file_name, h, w, _ in IMAGES]
    annotations = [anno for *_, annos in IMAGES for anno in annos]
    name, json_file = write_coco(root, images, annotations, prefix="filter_test")
    return name, str(json_file)


def _kept(dicts: list[dict]) -> dict[str, list[tuple[float, ...]]]:
    """file name -> boxes (XYWH) of its non-crowd annotations."""
    return {
        os.path.basename(r["file_name"]): sorted(
            tuple(a["bbox"]) for a in r["annotations"] if not a.get("iscrowd", 0)
        )
        for r in dicts
    }


def test_filter_rules(tmp_path: Path) -> None:
    name, json_file = _write_dataset(tmp_path)
    dicts = load_coco_json(json_file, str(tmp_path), name, extra_annotation_keys=["area"])
    kept = _kept(filter_like_mmdet(dicts))
    assert kept == {
        "ordinary.png": [(10, 12, 30, 25)],
        "crowd_only.png": [],
        "degenerate.png": [(40, 30, 25, 20)],
    }
    assert "no_annotations.png" in _kept(filter_like_mmdet(dicts, filter_empty=False))
    # without "area" in the records (detectron2's default loading) the zero-area box stays
    no_area = _kept(filter_like_mmdet(DatasetCatalog.get(name)))
    assert no_area["degenerate.png"] == [(8, 8, 20, 20), (40, 30, 25, 20)]
    # the records given are not modified
    assert len(dicts[3]["annotations"]) == 5


@pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason())
def test_same_images_and_boxes_as_mmdetection(tmp_path: Path) -> None:
    """mmdetection's CocoDataset with the filter_cfg of its own COCO instance config."""
    import mmdet
    from mmdet.datasets import CocoDataset
    from mmengine.config import Config

    name, json_file = _write_dataset(tmp_path)
    cfg_file = os.path.join(
        os.path.dirname(mmdet.__file__), ".mim", "configs", "_base_", "datasets", "coco_instance.py"
    )
    filter_cfg = Config.fromfile(cfg_file).train_dataloader.dataset.filter_cfg
    assert filter_cfg == {"filter_empty_gt": True, "min_size": 32}
    theirs = CocoDataset(
        ann_file=json_file,
        data_prefix={"img": str(tmp_path)},
        metainfo={"classes": ("thing",)},
        filter_cfg=filter_cfg,
        pipeline=[],
    )
    expected = {
        os.path.basename(info["img_path"]): sorted(
            (x1, y1, x2 - x1, y2 - y1)
            for inst in info["instances"]
            if not inst["ignore_flag"]
            for x1, y1, x2, y2 in [inst["bbox"]]
        )
        for info in (theirs.get_data_info(i) for i in range(len(theirs)))
    }
    dicts = load_coco_json(json_file, str(tmp_path), name, extra_annotation_keys=["area"])
    assert _kept(filter_like_mmdet(dicts)) == expected
    assert len(expected) == 3


def test_trains_on_empty_crowd_only_and_degenerate_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two iterations of two images see all four kept images (one aspect-ratio group)."""
    name, _ = _write_dataset(tmp_path / "data")
    cfg = add_gcnet_config(get_cfg())
    cfg.merge_from_file(QUICKSTART, allow_unsafe=False)
    cfg.merge_from_list(TINY_OPTS)
    assert cfg.GCNET_DATA.FILTER == "mmdet" and cfg.INPUT.MASK_RASTER == "mmdet"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # keep the image without annotations
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = 2
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    seen: list[str] = []
    mapper_call = MMDetMaskMapper.__call__

    def recording(self: MMDetMaskMapper, record: dict) -> dict:
        seen.append(os.path.basename(record["file_name"]))
        return mapper_call(self, record)

    monkeypatch.setattr(MMDetMaskMapper, "__call__", recording)
    trainer = GCNetTrainer(cfg)
    trainer.train()
    assert trainer.iter == 2  # both iterations ran
    assert set(seen) == {"ordinary.png", "no_annotations.png", "crowd_only.png", "degenerate.png"}
    weights = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
