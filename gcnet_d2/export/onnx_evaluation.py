"""Box and mask AP of a gcnet_d2 ONNX detector file on a COCO-format dataset, run by the
torch-free runtime ``deploy/onnx_predictor.py`` exactly as it serves (its resize, its mask
paste), scored by pycocotools' ``COCOeval``.

Used by ``tools/export_model.py --quantize int8 --evaluate-on`` to compare the fp32 file with
its int8 twin through the same runtime, so the difference is the quantization's alone.
Detections are converted to COCO results: contiguous class ``i`` is the ``i``-th category id
in increasing order (detectron2's mapping of a COCO json), boxes as x, y, w, h, masks as
compressed RLE.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ..data.validation import validate_coco_json
from ..errors import DatasetError

__all__ = ["CocoSet", "evaluate_onnx", "load_coco_set", "read_bgr", "runtime_module"]

RUNTIME_PATH = Path(__file__).resolve().parents[2] / "deploy" / "onnx_predictor.py"


def runtime_module() -> ModuleType:
    """``deploy/onnx_predictor.py`` of this checkout, loaded once as ``gcnet_d2_onnx_runtime``
    (it is a copy-me file, not a package module)."""
    name = "gcnet_d2_onnx_runtime"
    if name in sys.modules:
        return sys.modules[name]
    if not RUNTIME_PATH.is_file():
        raise FileNotFoundError(f"{RUNTIME_PATH}: the ONNX runtime file is missing")
    spec = importlib.util.spec_from_file_location(name, RUNTIME_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def read_bgr(path: str, what: str = "image") -> np.ndarray:
    """The BGR uint8 image at ``path`` (as the runtime takes it); :class:`DatasetError`
    naming ``what`` and the file when OpenCV cannot decode it."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{what} {path}: not an image OpenCV decodes")
    return image


@dataclass(frozen=True)
class CocoSet:
    """A COCO-format evaluation set, checked: the annotation file, the image folder, the
    images (id, path) and the category ids in contiguous order."""

    annotations: str
    image_dir: str
    images: tuple[tuple[int, str], ...]
    category_ids: tuple[int, ...]


def load_coco_set(annotations: str, image_dir: str) -> CocoSet:
    """Read and check ``annotations`` (a COCO instances file: :func:`validate_coco_json`) and
    ``image_dir``: every listed image must be a file there, and there must be images,
    categories and annotations. Raises :class:`~gcnet_d2.errors.DatasetError` naming the file
    and the problem."""
    data = validate_coco_json(annotations)
    for key in ("images", "annotations", "categories"):
        if not data.get(key):
            raise DatasetError(f"annotation file {annotations}: no {key}")
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder {image_dir}: no such folder")
    images = tuple((im["id"], os.path.join(image_dir, im["file_name"])) for im in data["images"])
    category_ids = tuple(sorted(c["id"] for c in data["categories"]))
    missing = [path for _, path in images if not os.path.isfile(path)]
    if missing:
        raise DatasetError(
            f"annotation file {annotations}: {len(missing)} of its images are not in "
            f"{image_dir} (first: {missing[0]})"
        )
    return CocoSet(annotations, image_dir, images, category_ids)


def coco_results(
    image_id: int, detections: dict[str, np.ndarray], category_ids: tuple[int, ...]
) -> list[dict]:
    """One image's detections (``ONNXPredictor``'s output) as COCO result entries."""
    from pycocotools import mask as mask_util

    results = []
    masks = detections.get("masks")
    for i, (box, score, cls) in enumerate(
        zip(detections["boxes"], detections["scores"], detections["classes"], strict=True)
    ):
        x0, y0, x1, y1 = (float(v) for v in box)
        entry = {
            "image_id": image_id,
            "category_id": category_ids[int(cls)],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            entry["segmentation"] = rle
        results.append(entry)
    return results


def evaluate_onnx(
    model_path: str | os.PathLike, coco: CocoSet, threads: int | None = None
) -> dict[str, float]:
    """AP (COCO's AP@[.5:.95], in percent) of the ONNX detector file ``model_path`` on
    ``coco``: ``{"bbox": ..., "segm": ...}`` (``segm`` only for a file with masks; 0.0 when
    nothing is detected at all)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    predictor = runtime_module().ONNXPredictor(model_path, threads=threads)
    results = []
    for image_id, path in coco.images:
        results += coco_results(image_id, predictor(read_bgr(path)), coco.category_ids)
    kinds = ("bbox", "segm") if predictor.has_masks else ("bbox",)
    if not results:
        return dict.fromkeys(kinds, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(coco.annotations)
        detections = truth.loadRes(results)
        aps = {}
        for kind in kinds:
            evaluation = COCOeval(truth, detections, kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            aps[kind] = float(evaluation.stats[0]) * 100.0
    return aps
