"""Dataset validation: is a COCO annotation file usable, are its records trainable.

Each check raises a :class:`~gcnet_d2.errors.DatasetError` naming the file and the first
problem found, instead of the KeyError or assertion detectron2 would meet later:

- :func:`validate_coco_json`: annotation file missing, not JSON, or JSON that is not COCO;
- :func:`load_dataset_dicts`: detectron2's ``get_detection_dataset_dicts`` with its failures
  explained (unregistered name, bad annotation file, empty dataset);
- :func:`check_records`: image files missing, unreadable or empty, malformed size fields or
  boxes; with ``skip_bad`` such records are dropped and logged instead.

Images that turn out broken only when decoded are :mod:`.loaders`' concern.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.structures import BoxMode

from ..errors import DatasetError

__all__ = ["SKIP_HINT", "check_records", "load_dataset_dicts", "validate_coco_json"]

logger = logging.getLogger(__name__)

#: What a DatasetError about a training image suggests.
SKIP_HINT = "set GCNET_DATA.SKIP_BAD_IMAGES True to train without such images"
_MAX_LISTED = 5


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool) and np.isfinite(v)


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _coco_problem(data: object) -> str | None:
    """The first reason ``data`` is not a COCO instances dict, or None."""
    if not isinstance(data, dict):
        return (
            f"the top level is a JSON {type(data).__name__}, expected an object with "
            "'images', 'annotations' and 'categories'"
        )
    missing = [k for k in ("images", "categories") if k not in data]
    if missing:
        return f"missing top-level key(s) {missing} (found {sorted(data)[:8]})"
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            return f"'{key}' is a {type(data[key]).__name__}, expected a list"
    category_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or "name" not in cat:
            return f"categories[{i}] needs an integer 'id' and a 'name', got {cat!r:.120}"
        category_ids.add(cat["id"])
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            return f"images[{i}] is a {type(img).__name__}, expected an object"
        if not _is_id(img.get("id")):
            return f"images[{i}] needs an integer 'id', got {img.get('id')!r}"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            return f"images[{i}] (id {img['id']}) needs a 'file_name'"
        for dim in ("height", "width"):
            if not _is_id(img.get(dim)) or img[dim] <= 0:
                return f"images[{i}] ({img['file_name']}) needs a positive integer '{dim}'"
        if img["id"] in image_ids:
            return f"images[{i}] repeats image id {img['id']}"
        image_ids.add(img["id"])
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            return f"annotations[{i}] is a {type(ann).__name__}, expected an object"
        if ann.get("image_id") not in image_ids:
            return f"annotations[{i}] refers to image_id {ann.get('image_id')!r}, not in 'images'"
        if ann.get("category_id") not in category_ids:
            return (
                f"annotations[{i}] refers to category_id {ann.get('category_id')!r}, "
                "not in 'categories'"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(_is_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            return f"annotations[{i}] needs 'bbox' [x, y, width >= 0, height >= 0], got {bbox!r}"
        seg = ann.get("segmentation")
        if seg is not None and not isinstance(seg, list | dict):
            return f"annotations[{i}] has a 'segmentation' of type {type(seg).__name__}"
    return None


def validate_coco_json(json_file: str) -> dict[str, Any]:
    """Load ``json_file`` and check it is a COCO instances file; return the parsed dict.

    Raises:
        DatasetError: naming the file and the first problem (missing, unreadable, not JSON,
            not COCO: missing keys, wrong types, dangling image/category ids, bad boxes).
    """
    if not os.path.exists(json_file):
        raise DatasetError(f"annotation file {json_file}: no such file")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {json_file}: not valid JSON ({e.msg} at line {e.lineno}, "
            f"column {e.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
        raise DatasetError(f"annotation file {json_file}: cannot be read ({reason})") from None
    problem = _coco_problem(data)
    if problem:
        raise DatasetError(f"annotation file {json_file}: not a COCO instances file: {problem}")
    return data


def _diagnose(names: Sequence[str], error: BaseException) -> None:
    """Raise a DatasetError saying why loading ``names`` failed, when it can be told."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise DatasetError(
                f"dataset {name!r} is not registered; register it with detectron2's "
                "DatasetCatalog (e.g. register_coco_instances) before training"
            ) from None
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file:
            try:
                validate_coco_json(json_file)
            except DatasetError as e:
                raise DatasetError(f"dataset {name!r}: {e}") from None
    text = str(error)
    if isinstance(error, AssertionError) and "is empty" in text:
        raise DatasetError(f"datasets {list(names)}: no images ({text})") from None


def load_dataset_dicts(names: Sequence[str], **kwargs: Any) -> list[dict]:
    """detectron2's ``get_detection_dataset_dicts`` with loading failures explained.

    ``kwargs`` are passed on (``filter_empty``, ``min_keypoints``, ``proposal_files``...).
    A failure caused by an unregistered name, a missing or non-COCO annotation file or an
    empty dataset becomes a :class:`DatasetError`; any other failure propagates unchanged.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise DatasetError("no dataset to load: DATASETS.TRAIN (or TEST) is empty")
    try:
        return get_detection_dataset_dicts(list(names), **kwargs)
    except Exception as e:
        _diagnose(names, e)
        raise


def _file_problem(file_name: object) -> str | None:
    if not isinstance(file_name, str) or not file_name:
        return "the record has no 'file_name'"
    try:
        st = os.stat(file_name)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be accessed ({e.strerror})"
    if not os.path.isfile(file_name):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(file_name, os.R_OK):
        return "not readable (permission denied)"
    return None


def _summary(problems: list[tuple[str, str]], total: int, what: str) -> str:
    listed = "; ".join(f"{f}: {p}" for f, p in problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{len(problems)} of {total} images of {what} cannot be used: {listed}{more}"


def _negative_size(values: list, mode: object) -> bool:
    """Whether a 4-number box has a negative side: ``w``/``h`` for COCO's XYWH (the default),
    ``x1 > x0`` / ``y1 > y0`` violated for XYXY."""
    if mode in (BoxMode.XYXY_ABS, BoxMode.XYXY_ABS.value):
        return values[2] < values[0] or values[3] < values[1]
    return values[2] < 0 or values[3] < 0


def _record_problem(record: dict) -> str | None:
    """Why a dataset record cannot be trained on: its file, size fields or annotations."""
    problem = _file_problem(record.get("file_name"))
    if problem is not None:
        return problem
    for dim in ("height", "width"):
        if dim in record and (not _is_id(record[dim]) or record[dim] <= 0):
            return f"'{dim}' must be a positive integer, got {record[dim]!r}"
    annotations = record.get("annotations", [])
    if not isinstance(annotations, list):
        return f"'annotations' is a {type(annotations).__name__}, expected a list"
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            return f"annotation {i} is a {type(ann).__name__}, expected a dict"
        bbox = ann.get("bbox")
        if bbox is not None:
            values = list(bbox) if isinstance(bbox, list | tuple | np.ndarray) else []
            if len(values) not in (4, 5) or not all(_is_number(v) for v in values):
                return f"annotation {i}: 'bbox' must be 4 finite numbers, got {bbox!r}"
            if len(values) == 4 and _negative_size(values, ann.get("bbox_mode")):
                return f"annotation {i}: 'bbox' has a negative width or height, got {bbox!r}"
        category = ann.get("category_id")
        if category is not None and (not _is_id(category) or category < 0):
            return f"annotation {i}: 'category_id' must be a non-negative int, got {category!r}"
    return None


def check_records(
    dicts: list[dict], *, skip_bad: bool, what: str = "the dataset", hint: str = SKIP_HINT
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Check every record: image file present, non-empty and readable; sane size fields and
    annotations (finite 4-number boxes, integer categories). One ``stat`` per image.

    Returns ``(usable records, [(file, problem), ...])``. Without ``skip_bad`` any problem
    raises a :class:`DatasetError` listing the first few files and the count; with it the bad
    records are dropped and logged.
    """
    good, problems = [], []
    for record in dicts:
        problem = _record_problem(record)
        if problem is None:
            good.append(record)
        else:
            problems.append((str(record.get("file_name")), problem))
    if problems and not skip_bad:
        raise DatasetError(
            f"{_summary(problems, len(dicts), what)}. Fix or remove them"
            + (f"; {hint}" if hint else "")
        )
    if problems:
        logger.warning(
            "Skipping %s (GCNET_DATA.SKIP_BAD_IMAGES)", _summary(problems, len(dicts), what)
        )
    if not good:
        raise DatasetError(f"no usable image left in {what} ({len(dicts)} records)")
    return good, problems
