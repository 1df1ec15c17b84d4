"""Deterministic generator of a tiny COCO-format instance-segmentation dataset.

The quick start and the test-suite need a dataset that exists everywhere, costs nothing to
download and is small enough to train a Mask R-CNN on a couple of CPU cores for a few minutes.
This module draws simple filled shapes ("rectangle", "ellipse", "triangle") on a noisy,
textured background and writes them as a regular COCO dataset::

    root/
      manifest.json                    # written last; marks the dataset as complete
      train/000000.jpg ...
      val/000000.jpg ...
      annotations/instances_train.json
      annotations/instances_val.json

Design notes:

* Every shape is painted through the rasterised mask of the very polygon stored in its
  annotation (:mod:`.shapes`), so each polygon is exactly the object's visible mask.
* Output is a pure function of the parameters: every image gets its own random generator seeded
  by ``(seed, split, index)``, JSON is serialised with a fixed layout and JPEG quality is fixed.
* Generation is guarded by iopath's ``file_lock`` on ``root/.generate.lock`` (the lock
  detectron2 uses for its COCO cache): concurrent generators wait for each other, and the
  second one finds the dataset done and reuses it. The manifest is written last, atomically;
  a dataset without it (an interrupted run) is never trusted and is generated again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from iopath.common.file_io import file_lock

from ..io import atomic_write_text
from .shapes import SHAPES, polygon_area, render_image

__all__ = [
    "SYNTHETIC_CLASSES",
    "SplitPaths",
    "default_synthetic_root",
    "ensure_synthetic_generated",
    "generate_synthetic_coco",
    "register_synthetic_datasets",
]

logger = logging.getLogger(__name__)

#: Category names; COCO category ids are ``1..3`` in this order.
SYNTHETIC_CLASSES: tuple[str, ...] = SHAPES

#: Bump whenever the drawing algorithm changes, so stale datasets are detected as mismatching.
GENERATOR_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST_NAME = "manifest.json"
_MANIFEST_FORMAT = "gcnet_synthetic_coco"
# iopath's file_lock(path) locks path + ".lock".
_LOCK_NAME = ".generate"
_LOCK_FILE = _LOCK_NAME + ".lock"
_KNOWN_ENTRIES = frozenset({*SPLITS, "annotations", MANIFEST_NAME, _LOCK_FILE})
_GEN_KWARGS = frozenset({"num_train", "num_val", "height", "width", "seed", "overwrite"})

_JPEG_QUALITY = 95

# Registered synthetic splits: dataset name -> (resolved root, split, generation kwargs).
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {}


class SplitPaths(NamedTuple):
    """Where one split lives on disk: the COCO annotation file and the directory of its images."""

    json_file: str
    image_root: str


def default_synthetic_root() -> str:
    """Return the directory used when no explicit dataset root is given.

    ``$GCNET_SYNTH_ROOT`` wins if set; otherwise the dataset lives next to detectron2's other
    builtin datasets, in ``$DETECTRON2_DATASETS/gcnet_synthetic`` (``datasets/gcnet_synthetic``
    relative to the current directory when that variable is unset).
    """
    explicit = os.environ.get("GCNET_SYNTH_ROOT")
    if explicit:
        return explicit
    return os.path.join(os.environ.get("DETECTRON2_DATASETS") or "datasets", "gcnet_synthetic")


def _split_paths(root: Path) -> dict[str, SplitPaths]:
    return {
        split: SplitPaths(
            json_file=str(root / "annotations" / f"instances_{split}.json"),
            image_root=str(root / split),
        )
        for split in SPLITS
    }


def _write_split(
    out_dir: Path,
    split: str,
    num_images: int,
    height: int,
    width: int,
    seed: int,
) -> None:
    """Render and write the images and COCO JSON of one split below ``out_dir``."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    split_code = SPLITS.index(split)
    for index in range(num_images):
        # One generator per image: images are independent of each other and of the split sizes.
        rng = np.random.default_rng([seed, split_code, index])
        img, objects = render_image(height, width, rng)
        file_name = f"{index:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"could not encode {image_dir / file_name}")
        (image_dir / file_name).write_bytes(encoded.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, poly in objects:
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "segmentation": [[float(v) for v in poly.reshape(-1)]],
                    "area": round(polygon_area(poly), 4),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": f"gcnet_d2 synthetic shapes, {split} split",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SYNTHETIC_CLASSES)
        ],
    }
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(exist_ok=True)
    with open(ann_dir / f"instances_{split}.json", "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Atomic, idempotent generation
# --------------------------------------------------------------------------------------------


def _params(num_train: int, num_val: int, height: int, width: int, seed: int) -> dict[str, int]:
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "height": height,
        "width": width,
        "seed": seed,
    }
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{key} must be an int, got {value!r}")
    if num_train < 1 or num_val < 1:
        raise ValueError("num_train and num_val must both be >= 1")
    if min(height, width) < 64:
        raise ValueError(f"images must be at least 64x64 pixels, got {height}x{width}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return {key: int(value) for key, value in params.items()}


def _manifest(params: dict[str, int]) -> dict[str, Any]:
    return {"format": _MANIFEST_FORMAT, "generator_version": GENERATOR_VERSION, "params": params}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """Return the manifest of ``root`` if it is one of ours, else None."""
    try:
        with open(root / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    return manifest


def _files_complete(root: Path, params: dict[str, int]) -> bool:
    """Cheap completeness check of a dataset whose manifest matches ``params``."""
    for split, paths in _split_paths(root).items():
        if not os.path.isfile(paths.json_file):
            return False
        expected = {f"{i:06d}.jpg" for i in range(params[f"num_{split}"])}
        try:
            present = set(os.listdir(paths.image_root))
        except OSError:
            return False
        if not expected <= present:
            return False
    return True


def _describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )


def _is_complete(root: Path, wanted: dict[str, Any], params: dict[str, int]) -> bool:
    return _read_manifest(root) == wanted and _files_complete(root, params)


def _clear(root: Path) -> None:
    """Delete what a generator writes under ``root`` (the lock file stays)."""
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # first: the rest is no longer trusted
    for entry in root.iterdir():
        if entry.name == _LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def generate_synthetic_coco(
    root: str | os.PathLike[str],
    num_train: int = 60,
    num_val: int = 12,
    height: int = 240,
    width: int = 320,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, SplitPaths]:
    """Generate the synthetic shapes dataset under ``root`` unless it is already there.

    Returns ``{"train": SplitPaths, "val": SplitPaths}``.

    The call is idempotent: a complete dataset generated with the same parameters (recorded in
    ``root/manifest.json``) is reused without touching it. A directory without a valid manifest
    is considered a leftover of an interrupted run and is regenerated, provided it contains only
    entries this generator would write. Generation holds a file lock (``root/.generate.lock``),
    so concurrent calls generate once; the manifest is written last, so a killed run is never
    mistaken for a complete dataset.

    Raises:
        ValueError: ``root`` holds a dataset generated with different parameters, or unrelated
            files, and ``overwrite`` is False. With ``overwrite=True`` it is replaced (a
            complete dataset with matching parameters is still reused: it would come out
            byte-identical anyway).
    """
    params = _params(num_train, num_val, height, width, seed)
    root = Path(root).absolute()
    paths = _split_paths(root)
    wanted = _manifest(params)
    if root.is_dir() and _is_complete(root, wanted, params):
        return paths  # the common case: no lock file to create (root may be read-only)
    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise ValueError(f"synthetic dataset root '{root}' exists and is not a directory")

    with file_lock(str(root / _LOCK_NAME)):  # creates root; blocks while another generates
        if _is_complete(root, wanted, params):
            return paths  # another process generated it while this one waited
        manifest = _read_manifest(root)
        if not overwrite:
            if manifest is not None and manifest != wanted:
                raise ValueError(
                    f"synthetic dataset in '{root}' was generated with different parameters "
                    f"({_describe_diff(_flatten(manifest), _flatten(wanted))}); pass "
                    "overwrite=True to regenerate it or use another directory"
                )
            unknown = sorted(set(os.listdir(root)) - _KNOWN_ENTRIES)
            if manifest is None and unknown:
                raise ValueError(
                    f"'{root}' is not a complete synthetic dataset and contains unrelated "
                    f"entries {unknown[:5]}; pass overwrite=True to replace it or use another "
                    "directory"
                )
        start = time.perf_counter()
        _clear(root)
        try:
            for split in SPLITS:
                _write_split(root, split, params[f"num_{split}"], height, width, params["seed"])
        except BaseException:
            _clear(root)  # leave no partial split behind (a killed run leaves no manifest)
            raise
        # The manifest is written last: its presence certifies the files above are complete.
        atomic_write_text(str(root / MANIFEST_NAME), json.dumps(wanted, indent=2, sort_keys=True))
    logger.info(
        "Generated synthetic COCO dataset in %s (%d train, %d val images) in %.1f s",
        root,
        num_train,
        num_val,
        time.perf_counter() - start,
    )
    return paths


def _flatten(manifest: dict[str, Any]) -> dict[str, Any]:
    flat = {"generator_version": manifest.get("generator_version")}
    params = manifest.get("params")
    if isinstance(params, dict):
        flat.update(params)
    return flat


# --------------------------------------------------------------------------------------------
# detectron2 registration
# --------------------------------------------------------------------------------------------


def register_synthetic_datasets(
    root: str | os.PathLike[str] | None = None,
    names: Sequence[str] = ("gcnet_synthetic_train", "gcnet_synthetic_val"),
    **gen_kwargs: Any,
) -> dict[str, SplitPaths]:
    """Register the train and val splits in detectron2's DatasetCatalog and MetadataCatalog.

    Registration is lazy and cheap: nothing is generated until ``DatasetCatalog.get(name)`` (or
    :func:`ensure_synthetic_generated`) is called, so this can run at import time. The metadata
    (``json_file``, ``image_root``, ``evaluator_type="coco"``, ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id``) is set immediately because it is known statically.

    Names that are already registered are skipped, which makes repeated calls (e.g. a module
    imported twice) harmless.

    Args:
        root: dataset directory; defaults to :func:`default_synthetic_root`. Relative paths are
            resolved against the current directory now, not at generation time.
        names: dataset names of the train and the val split, in that order.
        **gen_kwargs: forwarded to :func:`generate_synthetic_coco` (``num_train``, ``num_val``,
            ``height``, ``width``, ``seed``, ``overwrite``).

    Returns:
        ``{name: SplitPaths}`` for both names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(names, str) or len(names) != len(SPLITS):
        raise ValueError(f"names must hold exactly {len(SPLITS)} names (train, val), got {names!r}")
    unknown = set(gen_kwargs) - _GEN_KWARGS
    if unknown:
        raise TypeError(f"unexpected generation arguments: {sorted(unknown)}")
    resolved = Path(root if root is not None else default_synthetic_root()).absolute()
    paths = _split_paths(resolved)
    registered = set(DatasetCatalog.list())
    result: dict[str, SplitPaths] = {}
    for name, split in zip(names, SPLITS, strict=True):
        result[name] = paths[split]
        if name in registered:
            existing = MetadataCatalog.get(name).get("json_file")
            if existing is not None and existing != paths[split].json_file:
                logger.warning(
                    "Dataset '%s' is already registered with json_file=%s; keeping it",
                    name,
                    existing,
                )
            continue
        _REGISTRY[name] = (str(resolved), split, dict(gen_kwargs))
        DatasetCatalog.register(name, lambda name=name: _load_registered(name))
        MetadataCatalog.get(name).set(
            json_file=paths[split].json_file,
            image_root=paths[split].image_root,
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTHETIC_CLASSES))},
        )
    return result


def ensure_synthetic_generated(name: str) -> SplitPaths:
    """Generate (if needed) the data behind a registered synthetic split and return its paths.

    Call this before building anything that reads the files directly rather than through the
    DatasetCatalog, e.g. detectron2's ``COCOEvaluator`` which opens ``json_file`` itself.

    Raises:
        KeyError: ``name`` was not registered by :func:`register_synthetic_datasets`.
    """
    try:
        root, split, gen_kwargs = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"'{name}' is not a synthetic dataset registered by register_synthetic_datasets"
        ) from None
    return generate_synthetic_coco(root, **gen_kwargs)[split]


def _load_registered(name: str) -> list[dict[str, Any]]:
    from detectron2.data.datasets import load_coco_json

    paths = ensure_synthetic_generated(name)
    return load_coco_json(paths.json_file, paths.image_root, dataset_name=name)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: ``python -m gcnet_d2.data.synthetic [--root DIR] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_synthetic_root())
    parser.add_argument("--num-train", type=int, default=60)
    parser.add_argument("--num-val", type=int, default=12)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    paths = generate_synthetic_coco(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        height=args.height,
        width=args.width,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    for split, split_paths in paths.items():
        print(f"{split}: {split_paths.json_file} (images in {split_paths.image_root})")


if __name__ == "__main__":
    main()
