"""Training and test loaders with checked data: detectron2's loaders, plus

- the records checked first (:mod:`.validation`): a missing or unreadable image file is a
  :class:`~gcnet_d2.errors.DatasetError` naming it, or, with ``GCNET_DATA.SKIP_BAD_IMAGES``,
  dropped from training before it starts;
- :class:`RobustMapper`: an image that is empty, truncated or not an image, or whose decoded
  size disagrees with the ``height``/``width`` of its annotation, raises a DatasetError naming
  the file; with ``GCNET_DATA.SKIP_BAD_IMAGES`` training skips it instead (logged once,
  counted; detectron2's ``MapDataset`` then takes another image). Evaluation never skips;
- a resumable training sampler (:class:`~gcnet_d2.data.samplers.ResumableSampler`) with its own
  seeded generator.

Images without annotations, grayscale, palette, RGBA and 16-bit images work (detectron2
converts them to the config's ``INPUT.FORMAT``; training drops images without annotations when
``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is set, as detectron2 does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.data.samplers import InferenceSampler, TrainingSampler
from detectron2.utils import comm
from PIL import Image

from ..errors import DatasetError
from .filtering import DATASET_FILTERS, filter_like_mmdet
from .samplers import ResumableSampler
from .validation import SKIP_HINT, check_records, load_dataset_dicts

__all__ = ["RobustMapper", "build_test_loader", "build_train_loader", "resumable_train_loader"]

logger = logging.getLogger(__name__)


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
        hint: str = SKIP_HINT,
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
    :class:`~gcnet_d2.data.samplers.ResumableSampler`, reachable as ``loader.resumable_sampler``.
    The loader has its own seeded generator, so building or iterating it does not draw from
    torch's global RNG (which a resumed run restores from the checkpoint).
    """
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
    # detectron2's own choice of sampler etc. (DATALOADER.SAMPLER_TRAIN), through the public
    # from_config of its configurable loader builder.
    kwargs = build_detection_train_loader.from_config(cfg, mapper=robust, dataset=dicts)
    return resumable_train_loader(cfg.SEED, **kwargs)


def resumable_train_loader(seed: int, **kwargs: Any) -> Any:
    """detectron2's ``build_detection_train_loader(**kwargs)`` with its sampler (``sampler``,
    or detectron2's default ``TrainingSampler``) wrapped in a
    :class:`~gcnet_d2.data.samplers.ResumableSampler`, reachable as ``loader.resumable_sampler``.
    The loader has its own generator, seeded from ``seed`` (random when negative) and the rank,
    so building or iterating it does not draw from torch's global RNG (which a resumed run
    restores from the checkpoint)."""
    sampler = kwargs.pop("sampler", None)
    sampler = ResumableSampler(
        TrainingSampler(len(kwargs["dataset"])) if sampler is None else sampler
    )
    base = seed if seed >= 0 else int(np.random.randint(2**31))
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
