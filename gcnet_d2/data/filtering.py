"""Which training images and boxes are used: mmdetection's rules (``GCNET_DATA.FILTER: mmdet``).

mmdetection's ``CocoDataset`` (``parse_data_info`` and ``filter_data`` with the COCO configs'
``filter_cfg=dict(filter_empty_gt=True, min_size=32)``; 2.x ``_parse_ann_info`` and
``_filter_imgs`` are the same rules):

- an image is kept when its annotation file lists at least one annotation for it, of any
  kind (``filter_empty_gt``): so images whose only annotations are crowd regions, or boxes
  dropped below, are kept and train as images without ground truth;
- an image is dropped when its shorter side is under 32 px (``min_size``);
- an annotation is dropped when its box has ``w < 1`` or ``h < 1``, does not overlap the
  image, or its ``area`` is ``<= 0`` (when the record carries ``area``: detectron2's COCO
  loader keeps it only if asked, ``extra_annotation_keys=["area"]``).

detectron2's ``filter_empty`` instead drops every image without a non-crowd annotation, keeps
boxes narrower than a pixel and drops only boxes that are empty after the transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from detectron2.data import get_detection_dataset_dicts
from detectron2.structures import BoxMode

__all__ = [
    "DATASET_FILTERS",
    "MMDET_MIN_IMAGE_SIZE",
    "filter_like_mmdet",
    "get_mmdet_filtered_dicts",
]

logger = logging.getLogger(__name__)

DATASET_FILTERS = ("detectron2", "mmdet")
MMDET_MIN_IMAGE_SIZE = 32  # mmdetection's filter_cfg min_size in its COCO dataset configs


def _keep_annotation(anno: dict, width: int, height: int) -> bool:
    x, y, w, h = BoxMode.convert(list(anno["bbox"])[:4], anno["bbox_mode"], BoxMode.XYWH_ABS)
    overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
    overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
    if overlap_w * overlap_h == 0 or w < 1 or h < 1:
        return False
    return "area" not in anno or anno["area"] > 0


def filter_like_mmdet(
    dicts: list[dict], *, filter_empty: bool = True, min_size: int = MMDET_MIN_IMAGE_SIZE
) -> list[dict]:
    """Training records filtered as mmdetection filters COCO (see the module docstring).

    Records are not modified: kept ones with dropped annotations are shallow copies.
    """
    kept, dropped_images, dropped_annos = [], 0, 0
    for record in dicts:
        annos = record.get("annotations", [])
        if (filter_empty and not annos) or min(record["height"], record["width"]) < min_size:
            dropped_images += 1
            continue
        good = [a for a in annos if _keep_annotation(a, record["width"], record["height"])]
        if len(good) != len(annos):
            dropped_annos += len(annos) - len(good)
            record = {**record, "annotations": good}
        kept.append(record)
    logger.info(
        "Dataset filter 'mmdet': kept %d of %d images (dropped %d without annotations or under "
        "%d px), dropped %d annotations with a box under 1 px or outside the image",
        len(kept),
        len(dicts),
        dropped_images,
        min_size,
        dropped_annos,
    )
    return kept


def get_mmdet_filtered_dicts(
    names: str | Sequence[str], *, filter_empty: bool = True, min_size: int = MMDET_MIN_IMAGE_SIZE
) -> list[dict]:
    """The registered datasets ``names``, filtered as mmdetection filters them: the LazyConfig
    counterpart of ``GCNET_DATA.FILTER: mmdet`` (detectron2's own filter is not applied)."""
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    return filter_like_mmdet(dicts, filter_empty=filter_empty, min_size=min_size)
