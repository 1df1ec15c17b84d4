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
  annotation, and objects never touch each other (rejection sampling keeps a small gap), so each
  polygon is exactly the object's visible mask.
* Output is a pure function of the parameters: every image gets its own random generator seeded
  by ``(seed, split, index)``, JSON is serialised with a fixed layout and JPEG quality is fixed.
* Generation is atomic: files are written into a temporary sibling directory which is renamed
  into place only after the manifest has been written, so an interrupted run can never leave a
  half-written dataset that a later run would trust.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

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
SYNTHETIC_CLASSES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")

#: Bump whenever the drawing algorithm changes, so stale datasets are detected as mismatching.
GENERATOR_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST_NAME = "manifest.json"
_MANIFEST_FORMAT = "gcnet_synthetic_coco"
_KNOWN_ENTRIES = frozenset({*SPLITS, "annotations", MANIFEST_NAME})
_GEN_KWARGS = frozenset({"num_train", "num_val", "height", "width", "seed", "overwrite"})

_JPEG_QUALITY = 95
_MIN_OBJECT_SIZE = 20.0  # pixels, diameter of the smallest shapes
_MAX_OBJECT_FRACTION = 0.45  # largest shapes span this fraction of the shorter image side
_MAX_OBJECTS = 4
_PLACEMENT_TRIES = 100
_GAP = 3  # minimal distance in pixels between two objects
_BORDER = 2.0  # minimal distance in pixels between an object and the image border
_ELLIPSE_VERTICES = 32
_SUBPIXEL_BITS = 4  # polygon vertices are quantised to 1/16 pixel (short, exact JSON floats)
_CATEGORY_HUES = (0.0, 1.0 / 3.0, 2.0 / 3.0)  # red-ish, green-ish, blue-ish base hues
_HUE_JITTER = 0.07

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


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _quantize(points: np.ndarray) -> np.ndarray:
    """Snap coordinates to the sub-pixel grid so JSON and drawing use identical vertices."""
    scale = float(1 << _SUBPIXEL_BITS)
    return np.round(points * scale) / scale


def _shape_polygon(category: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Return an ``(N, 2)`` polygon of the given category centred on the origin.

    ``size`` bounds the shape's diameter (largest distance between two of its points), so a
    shape never spans more than ``size`` pixels in any direction, whatever its rotation.
    """
    angle = rng.uniform(0.0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if category == 0:  # rectangle
        aspect = rng.uniform(0.4, 1.0)
        half_w = size / 2.0 / np.hypot(1.0, aspect)  # the diagonal has length ``size``
        half_h = half_w * aspect
        pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif category == 1:  # ellipse
        semi_a = size / 2.0
        semi_b = semi_a * rng.uniform(0.45, 1.0)
        t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
        pts = np.stack([semi_a * np.cos(t), semi_b * np.sin(t)], axis=1)
    elif category == 2:  # triangle: jittered vertices on a circle, never degenerate
        t = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0 + rng.uniform(-0.35, 0.35, size=3)
        radius = size / 2.0 * rng.uniform(0.8, 1.0, size=3)
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown category index {category}")
    return pts @ rot.T


def _rasterize(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary ``(H, W)`` uint8 mask of a polygon in COCO coordinates.

    Uses pycocotools' polygon rasteriser, the one behind both detectron2's training targets
    (``polygons_to_bitmask``) and COCO mask evaluation, so the drawn pixels are exactly the
    annotation's mask. (``cv2.fillPoly`` includes boundary pixels and paints about half a pixel
    outside the polygon, which costs several IoU points on 20 px objects.)
    """
    rles = mask_util.frPyObjects([poly.reshape(-1).tolist()], height, width)
    return mask_util.decode(mask_util.merge(rles))


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Low-saturation background with smooth colour blotches and medium-scale texture."""
    base = rng.uniform(70.0, 180.0) + rng.uniform(-20.0, 20.0, size=3)
    coarse = rng.uniform(-30.0, 30.0, size=(3, 4, 3)).astype(np.float32)
    fine = rng.uniform(-12.0, 12.0, size=(height // 12 + 1, width // 12 + 1, 3)).astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = base
    img += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    return img


def _shape_color(category: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Saturated colour with a category-specific (but jittered) hue, in BGR order."""
    hue = (_CATEGORY_HUES[category] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return (b * 255.0, g * 255.0, r * 255.0)


def _render_image(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image; return it (BGR uint8) and its objects as ``(category, polygon)``."""
    img = _background(height, width, rng)
    occupied = np.zeros((height, width), np.uint8)  # objects dilated by the gap
    kernel = np.ones((2 * _GAP + 1, 2 * _GAP + 1), np.uint8)
    max_size = max(_MIN_OBJECT_SIZE, _MAX_OBJECT_FRACTION * min(height, width))
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        category = int(rng.integers(len(SYNTHETIC_CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            shape = _shape_polygon(category, rng.uniform(_MIN_OBJECT_SIZE, max_size), rng)
            lo, hi = shape.min(axis=0), shape.max(axis=0)
            x = rng.uniform(_BORDER - lo[0], width - _BORDER - hi[0])
            y = rng.uniform(_BORDER - lo[1], height - _BORDER - hi[1])
            poly = _quantize(shape + np.array([x, y]))
            mask = _rasterize(poly, height, width)
            if mask.any() and not (mask & occupied).any():
                break
        else:  # no free spot for this object; the image simply gets fewer objects
            continue
        occupied |= cv2.dilate(mask, kernel)
        img[mask.astype(bool)] = _shape_color(category, rng)
        objects.append((category, poly))
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


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
    image_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    split_code = SPLITS.index(split)
    for index in range(num_images):
        # One generator per image: images are independent of each other and of the split sizes.
        rng = np.random.default_rng([seed, split_code, index])
        img, objects = _render_image(height, width, rng)
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
                    "area": round(_polygon_area(poly), 4),
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


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _temp_prefix(root: Path) -> str:
    return f".{root.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temp_dirs(root: Path) -> None:
    """Delete temporary siblings left behind by crashed runs of this host (best effort).

    They are never read, so this is only housekeeping. Directories whose creating process is
    still alive (or that were created on another host) are left alone.
    """
    prefix = _temp_prefix(root)
    try:
        candidates = [p for p in root.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for path in candidates:
        parts = path.name[len(prefix) :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            shutil.rmtree(path, ignore_errors=True)


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
    entries this generator would write. Data is written into a temporary sibling directory and
    renamed into place, so ``root`` is either absent, left as it was, or complete.

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

    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise ValueError(f"synthetic dataset root '{root}' exists and is not a directory")
        manifest = _read_manifest(root)
        if manifest is not None and manifest == wanted and _files_complete(root, params):
            return paths
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

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(root)
    start = time.perf_counter()
    tmp = Path(
        tempfile.mkdtemp(prefix=f"{_temp_prefix(root)}{_HOST}-{os.getpid()}-", dir=root.parent)
    )
    try:
        for split in SPLITS:
            _write_split(tmp, split, params[f"num_{split}"], height, width, params["seed"])
        # The manifest is written last: its presence certifies the files above are complete.
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)
        _move_into_place(tmp, root, wanted, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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


def _move_into_place(tmp: Path, root: Path, wanted: dict[str, Any], params: dict[str, int]) -> None:
    """Rename the finished ``tmp`` directory to ``root``, replacing an existing ``root``."""
    old = None
    if root.exists() or root.is_symlink():
        # A directory cannot be replaced by rename unless it is empty: move it aside first.
        old = root.parent / f"{_temp_prefix(root)}{_HOST}-{os.getpid()}-old{uuid.uuid4().hex}"
        os.rename(root, old)
    try:
        os.replace(tmp, root)
    except OSError:
        # Most likely a concurrent process finished the same dataset first; accept it if valid.
        if _read_manifest(root) == wanted and _files_complete(root, params):
            return
        if old is not None and not (root.exists() or root.is_symlink()):
            os.rename(old, root)  # put back what was there before
            old = None
        raise
    finally:
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


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
