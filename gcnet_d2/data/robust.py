"""Dataset robustness: clear errors for broken datasets, optional skipping of broken images.

What can go wrong, and what gcnet_d2 does about it (training and evaluation loaders built by
:func:`build_train_loader` / :func:`build_test_loader`, which ``GCNetTrainer`` uses):

- annotation file missing, not JSON, or JSON that is not COCO: :class:`DatasetError` naming the
  file and the first problem found (:func:`validate_coco_json`);
- an image file that is missing, unreadable (a folder, no permission), empty, truncated or not
  an image, or whose decoded size disagrees with the ``height``/``width`` of its annotation:
  :class:`DatasetError` naming the file and the problem. With ``GCNET_DATA.SKIP_BAD_IMAGES``
  training skips such images instead (each one logged once with its reason; counted); files
  that are missing or unreadable are dropped before training starts, the others when they are
  first read (detectron2's ``MapDataset`` then takes another image). Evaluation never skips;
- images without annotations, grayscale, palette, RGBA and 16-bit images work (detectron2
  converts them to the config's ``INPUT.FORMAT``; training drops images without annotations
  when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is set, as detectron2 does).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from PIL import Image

from ..resume import ResumableSampler
from .filtering import DATASET_FILTERS, filter_like_mmdet

__all__ = [
    "DatasetError",
    "RobustMapper",
    "build_test_loader",
    "build_train_loader",
    "check_records",
    "load_dataset_dicts",
    "validate_coco_json",
]

logger = logging.getLogger(__name__)

_SKIP_HINT = "set GCNET_DATA.SKIP_BAD_IMAGES True to train without such images"
_MAX_LISTED = 5


class DatasetError(RuntimeError):
    """A dataset that cannot be used as it is; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------------------------


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
        category = ann.get("category_id")
        if category is not None and (not _is_id(category) or category < 0):
            return f"annotation {i}: 'category_id' must be a non-negative int, got {category!r}"
    return None


def check_records(
    dicts: list[dict], *, skip_bad: bool, what: str = "the dataset", hint: str = _SKIP_HINT
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


# --------------------------------------------------------------------------------------------
# Image reading
# --------------------------------------------------------------------------------------------

# What reading/decoding a broken image raises (PIL raises OSError subclasses, or SyntaxError
# for some broken PNG chunks); not programming errors.
_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    SizeMismatchError,
    Image.DecompressionBombError,
)


def _image_problem(e: BaseException, file_name: str) -> str:
    other = getattr(e, "filename", None)
    if isinstance(e, OSError) and other and str(other) != file_name:
        # Another file of the record (e.g. a segmentation map) failed: name that one.
        return f"{other}: {e.strerror or type(e).__name__}"
    if isinstance(e, SizeMismatchError):
        return f"size disagrees with its annotation ({str(e).strip()})"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(e, PermissionError):
        return "not readable (permission denied)"
    detail = str(e).strip()
    if "cannot identify image file" in detail:
        detail = "not an image file PIL can identify"
    return f"cannot be decoded ({type(e).__name__}: {detail})"


class RobustMapper:
    """Wraps a dataset mapper: broken images raise a DatasetError, or are skipped.

    With ``skip_bad`` the mapper returns None for a broken image (detectron2's ``MapDataset``
    then serves another image), logs it once and counts it in :attr:`skipped`.
    """

    def __init__(
        self,
        mapper: Callable[[dict], Any],
        *,
        skip_bad: bool,
        num_images: int | None = None,
        hint: str = _SKIP_HINT,
    ) -> None:
        self.mapper = mapper
        self.skip_bad = skip_bad
        self.num_images = num_images
        self.hint = hint
        self.skipped: dict[str, str] = {}

    def __call__(self, dataset_dict: dict) -> Any:
        try:
            return self.mapper(dataset_dict)
        except _IMAGE_ERRORS as e:
            file_name = str(dataset_dict.get("file_name", "<record without file_name>"))
            problem = _image_problem(e, file_name)
            if not self.skip_bad:
                hint = f"; {self.hint}" if self.hint else ""
                raise DatasetError(f"image {file_name}: {problem}{hint}") from e
            if file_name not in self.skipped:
                self.skipped[file_name] = problem
                logger.warning(
                    "Skipping image %s: %s (%d image(s) skipped so far in this process)",
                    file_name,
                    problem,
                    len(self.skipped),
                )
            if self.num_images is not None and len(self.skipped) >= self.num_images:
                raise DatasetError(
                    f"all {self.num_images} training images failed to load; last: "
                    f"{file_name}: {problem}"
                ) from e
            return None


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def build_train_loader(cfg: CfgNode, mapper: Callable[[dict], Any] | None = None) -> Any:
    """detectron2's training loader with checked data and a resumable sampler.

    The sampler is detectron2's choice (``DATALOADER.SAMPLER_TRAIN``) wrapped in a
    :class:`~gcnet_d2.resume.ResumableSampler`, reachable as ``loader.resumable_sampler``.
    The loader has its own seeded generator, so building or iterating it does not draw from
    torch's global RNG (which a resumed run restores from the checkpoint).
    """
    from detectron2.data.build import _train_loader_from_config  # detectron2's sampler choice

    skip_bad = bool(cfg.GCNET_DATA.SKIP_BAD_IMAGES) if "GCNET_DATA" in cfg else False
    names = list(cfg.DATASETS.TRAIN)
    filter_mode = (
        cfg.GCNET_DATA.get("FILTER", "detectron2") if "GCNET_DATA" in cfg else "detectron2"
    )
    if filter_mode not in DATASET_FILTERS:
        raise ValueError(f"GCNET_DATA.FILTER must be one of {DATASET_FILTERS}, got {filter_mode!r}")
    dicts = load_dataset_dicts(
        names,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and filter_mode == "detectron2",
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON
        else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    dicts, _ = check_records(dicts, skip_bad=skip_bad, what=f"training set {names}")
    if filter_mode == "mmdet":
        dicts = filter_like_mmdet(dicts, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        if not dicts:
            raise DatasetError(
                f"training set {names}: no image left by GCNET_DATA.FILTER 'mmdet' (all "
                "without annotations or under 32 px)"
            )
    robust = RobustMapper(
        mapper if mapper is not None else DatasetMapper(cfg, True),
        skip_bad=skip_bad,
        num_images=len(dicts),
    )
    kwargs = _train_loader_from_config(cfg, mapper=robust, dataset=dicts)
    sampler = ResumableSampler(kwargs.pop("sampler"))
    base = cfg.SEED if cfg.SEED >= 0 else int(np.random.randint(2**31))
    loader = build_detection_train_loader(
        sampler=sampler, seed=(base + comm.get_rank()) % 2**31, **kwargs
    )
    loader.resumable_sampler = sampler
    return loader


def build_test_loader(
    cfg: CfgNode, dataset_name: str, mapper: Callable[[dict], Any] | None = None
) -> torchdata.DataLoader:
    """detectron2's test loader with checked data; a broken image is always an error."""
    dicts = load_dataset_dicts(
        [dataset_name],
        filter_empty=False,
        proposal_files=[
            cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]
        ]
        if cfg.MODEL.LOAD_PROPOSALS
        else None,
    )
    dicts, _ = check_records(
        dicts,
        skip_bad=False,
        what=f"test set {dataset_name!r}",
        hint="evaluation needs every image",
    )
    robust = RobustMapper(
        mapper if mapper is not None else DatasetMapper(cfg, False),
        skip_bad=False,
        hint="evaluation needs every image",
    )
    return build_detection_test_loader(
        dicts,
        mapper=robust,
        sampler=InferenceSampler(len(dicts)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
