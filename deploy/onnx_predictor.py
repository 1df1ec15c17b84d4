"""Torch-free runtime for a gcnet_d2 Mask R-CNN / Cascade Mask R-CNN detector exported to ONNX.

Copy this one file onto a serving machine; it needs Python 3.10+, numpy, OpenCV and
onnxruntime::

    pip install onnxruntime opencv-python-headless numpy

Usage (the output is what ``gcnet_d2.GCNetPredictor`` gives, as numpy arrays)::

    import cv2
    from onnx_predictor import ONNXPredictor
    predictor = ONNXPredictor("model.onnx")
    out = predictor(cv2.imread("image.jpg"))  # BGR uint8 H x W x 3
    out["boxes"], out["scores"], out["classes"], out.get("masks")

or from a shell: ``python onnx_predictor.py model.onnx a.jpg b.jpg --output out/`` (per image a
picture with the detections scoring >= ``--score-threshold`` (0.5) drawn, labels never over
one another, and a JSON file with every detection, masks as COCO RLE).

The ONNX contract (what gcnet_d2's exporter writes):

- input ``image``: float32 [3, H, W] (dynamic H, W), channels in metadata ``input_format``
  order, values 0..255, already resized (mmdetection's keep-ratio resize with OpenCV bilinear,
  sized by ``min_size_test`` / ``max_size_test``); no batch dimension;
- outputs, by name: ``boxes`` float32 [N, 4] (x1, y1, x2, y2 in the resized image's pixels),
  ``scores`` float32 [N], ``classes`` int64 [N] (contiguous ids) and, with a mask head,
  ``mask_probs`` float32 [N, 1, M, M] (per-RoI mask probabilities);
- metadata: ``gcnet_d2.format`` = ``gcnet_d2 onnx detector v1``, ``input_format``
  ("RGB"/"BGR"), ``min_size_test``, ``max_size_test``, ``resize_backend`` ("cv2"),
  ``mask_threshold``, ``class_names`` (a JSON list, "[]" for none).

The pre- and post-processing reproduce detectron2's ``DefaultPredictor`` with gcnet_d2's resize
and detectron2's ``detector_postprocess`` (CPU mask pasting) in float32, so boxes and masks
equal the PyTorch predictor's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import onnxruntime as ort

__all__ = [
    "FORMAT", "DrawnDetection", "ONNXPredictor", "draw_detections", "main", "mask_region",
    "output_stems", "paste_masks", "picture_layout", "postprocess", "preprocess",
    "resized_size", "rle_encode", "scale_boxes",
]  # fmt: skip

FORMAT = "gcnet_d2 onnx detector v1"
PROG = "onnx_predictor.py"
F32 = np.float32


# pre-processing: gcnet_d2's MMDetResizeShortestEdge + CV2ResizeTransform
def resized_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """The (height, width) mmcv's ``rescale_size`` gives: the short side to ``short`` unless
    the long side would pass ``max_size``; sides rounded half up (Python float math)."""
    scale = min(short / min(height, width), max_size / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(bgr_image: np.ndarray, input_format: str, short: int, max_size: int) -> np.ndarray:
    """The model's input for ``bgr_image``: channels in ``input_format`` order (flipped before
    resizing, as ``DefaultPredictor`` does), resized by cv2 bilinear on uint8, float32 3xHxW."""
    image = bgr_image[:, :, ::-1] if input_format == "RGB" else bgr_image
    new_h, new_w = resized_size(image.shape[0], image.shape[1], short, max_size)
    image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image.astype(F32).transpose(2, 0, 1))


# post-processing: detectron2's detector_postprocess on the CPU
def scale_boxes(
    boxes: np.ndarray, resized_hw: tuple[int, int], original_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` (N x 4, resized image's pixels) scaled to the original image, clipped to it,
    in float32; and the boolean mask of the boxes still non-empty (width and height > 0)."""
    (rh, rw), (oh, ow) = resized_hw, original_hw
    out = np.array(boxes, dtype=F32).reshape(-1, 4)
    # torch's in-place multiply by a Python float: float32 product, factor rounded to float32
    out[:, 0::2] *= F32(ow / rw)
    out[:, 1::2] *= F32(oh / rh)
    out[:, 0::2] = np.minimum(np.maximum(out[:, 0::2], F32(0)), F32(ow))
    out[:, 1::2] = np.minimum(np.maximum(out[:, 1::2], F32(0)), F32(oh))
    keep = (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)
    return out, keep


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once to float32: a fused multiply-add, which torch's vectorised
    CPU grid_sample kernels compile to (the float64 product of two float32 is exact)."""
    out = np.multiply(a, b, dtype=np.float64)
    out += c
    return out.astype(F32)


def _sample_axis(centres: np.ndarray, lo: F32, hi: F32, size: int) -> tuple[np.ndarray, ...]:
    """For pixel centres along one axis of a box from ``lo`` to ``hi``: the index of the lower
    neighbour in the mask zero-padded by one, and the lower and upper neighbours' weights, as
    detectron2's grid (``(p - lo) / (hi - lo) * 2 - 1``) and grid_sample (align_corners=False)
    compute them in float32."""
    grid = (centres - lo) / (hi - lo) * F32(2) - F32(1)
    src = _fma(grid + F32(1), F32(size / 2), F32(-0.5))
    # Beyond [-1, size] both neighbours are outside the mask and read zeros whatever the
    # weights; clipping keeps the indices in the padded mask (and NaN from 0 * inf out).
    src = np.nan_to_num(np.clip(src, F32(-1), F32(size)), nan=-1.0).astype(F32)
    low = np.floor(src)
    upper = src - low
    return low.astype(np.intp) + 1, F32(1) - upper, upper


def mask_region(
    mask_prob: np.ndarray, box: np.ndarray, image_hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """One mask's probabilities (Mh x Mw) sampled where detectron2's CPU paste samples them:
    float32 values at the pixel centres of the box's integer region (floor(x0) - 1 to
    ceil(x1) + 1, likewise in y, inside the image), and that region as (rows, columns) slices.

    Bilinear with zeros outside the mask, in torch's operation order and roundings (its CPU
    kernel's fused multiply-adds included), so the values equal detectron2's.
    """
    img_h, img_w = image_hw
    x0, y0, x1, y1 = (F32(v) for v in np.asarray(box, dtype=F32).reshape(4))
    c0, r0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    c1, r1 = min(int(np.ceil(x1)) + 1, img_w), min(int(np.ceil(y1)) + 1, img_h)
    region = (slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
    if c1 <= c0 or r1 <= r0:
        return np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=F32), region
    m_h, m_w = mask_prob.shape[-2:]
    padded = np.zeros((m_h + 3, m_w + 3), dtype=F32)  # 1 zero before, 2 after, each axis
    padded[1 : m_h + 1, 1 : m_w + 1] = np.asarray(mask_prob, dtype=F32).reshape(m_h, m_w)
    xi, e, w = _sample_axis(np.arange(c0, c1, dtype=F32) + F32(0.5), x0, x1, m_w)
    yi, s, n = _sample_axis(np.arange(r0, r1, dtype=F32) + F32(0.5), y0, y1, m_h)
    upper_rows, lower_rows = padded[yi], padded[yi + 1]  # gather rows, then columns
    s, n, e, w = s[:, None], n[:, None], e[None, :], w[None, :]
    value = upper_rows.take(xi, axis=1) * (s * e)  # torch's order: nw, ne, sw, se
    value = _fma(upper_rows.take(xi + 1, axis=1), s * w, value)
    value = _fma(lower_rows.take(xi, axis=1), n * e, value)
    value = _fma(lower_rows.take(xi + 1, axis=1), n * w, value)
    return value, region


def paste_masks(
    mask_probs: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float
) -> np.ndarray:
    """Per-RoI mask probabilities (N x [1 x] Mh x Mw) pasted into an image of ``image_hw`` at
    ``boxes`` (N x 4, clipped, non-empty) and binarised at ``>= threshold``: N x H x W bool,
    as detectron2's ``paste_masks_in_image`` on the CPU (:func:`mask_region`); pixels outside
    a box's region stay False."""
    probs = np.asarray(mask_probs, dtype=F32)
    boxes = np.asarray(boxes, dtype=F32).reshape(-1, 4)
    out = np.zeros((len(boxes), *image_hw), dtype=bool)
    for i, box in enumerate(boxes):
        value, region = mask_region(probs[i], box, image_hw)
        out[(i, *region)] = value >= F32(threshold)
    return out


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    mask_probs: np.ndarray | None,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
    mask_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """The model's outputs on the resized image as detections on the original image: boxes
    scaled and clipped, empty ones dropped, masks pasted (key ``masks`` only with
    ``mask_probs``)."""
    boxes, keep = scale_boxes(boxes, resized_hw, original_hw)
    result = {
        "boxes": boxes[keep],
        "scores": np.asarray(scores, dtype=F32).reshape(-1)[keep],
        "classes": np.asarray(classes, dtype=np.int64).reshape(-1)[keep],
    }
    if mask_probs is not None:
        probs = np.asarray(mask_probs, dtype=F32)[keep]
        result["masks"] = paste_masks(probs, result["boxes"], original_hw, mask_threshold)
    return result


# the predictor
class ONNXPredictor:
    """A gcnet_d2 ONNX detector: BGR uint8 H x W x 3 in, ``{"boxes", "scores", "classes"
    [, "masks"]}`` numpy arrays out in the image's pixels, as ``GCNetPredictor`` gives."""

    def __init__(
        self,
        path_to_model_onnx: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.path = str(path_to_model_onnx)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such model file")
        options = ort.SessionOptions()  # default graph optimisations
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(self.path, options, providers=list(providers))
        except Exception as e:  # onnxruntime's errors derive from Exception only
            reason = " ".join(str(e).split())
            raise ValueError(f"{self.path}: onnxruntime cannot load it: {reason}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gcnet_d2.format") != FORMAT:
            found = meta.get("gcnet_d2.format")
            raise ValueError(f"{self.path}: not a {FORMAT!r} ONNX file (gcnet_d2.format={found!r})")
        try:
            self.input_format = meta["input_format"]
            self.min_size = int(meta["min_size_test"])
            self.max_size = int(meta["max_size_test"])
            backend = meta["resize_backend"]
            self.mask_threshold = float(meta["mask_threshold"])
            self.class_names = [str(n) for n in json.loads(meta["class_names"])]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{self.path}: bad or missing gcnet_d2 metadata: {e}") from e
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"{self.path}: input_format must be RGB or BGR, got {self.input_format!r}"
            )
        if backend != "cv2":
            raise ValueError(
                f"{self.path}: resize_backend {backend!r} is not supported (only 'cv2')"
            )
        self.output_names = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["image"] or not {"boxes", "scores", "classes"} <= set(self.output_names):
            raise ValueError(
                f"{self.path}: expects input 'image' and outputs 'boxes', 'scores', 'classes'; "
                f"has inputs {inputs} and outputs {self.output_names}"
            )
        self.has_masks = "mask_probs" in self.output_names

    def class_name(self, class_id: int) -> str:
        """The name of contiguous class ``class_id`` (its id as a string when unnamed)."""
        names = self.class_names
        return names[class_id] if 0 <= class_id < len(names) else str(class_id)

    def __call__(self, bgr_image: np.ndarray) -> dict[str, np.ndarray]:
        """Detections on ``bgr_image`` (uint8 H x W x 3, BGR as cv2.imread gives)."""
        if not (
            isinstance(bgr_image, np.ndarray)
            and bgr_image.dtype == np.uint8
            and bgr_image.ndim == 3
            and bgr_image.shape[2] == 3
            and min(bgr_image.shape[:2]) > 0
        ):
            shape, dtype = getattr(bgr_image, "shape", None), getattr(bgr_image, "dtype", None)
            raise ValueError(f"expected a uint8 H x W x 3 BGR image, got shape {shape} {dtype}")
        image = preprocess(bgr_image, self.input_format, self.min_size, self.max_size)
        outputs = dict(
            zip(self.output_names, self.session.run(None, {"image": image}), strict=True)
        )
        return postprocess(
            outputs["boxes"],
            outputs["scores"],
            outputs["classes"],
            outputs.get("mask_probs") if self.has_masks else None,
            image.shape[1:],
            bgr_image.shape[:2],
            self.mask_threshold,
        )


# command line: pictures and JSON
def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a H x W bool mask: run lengths of the column-major pixels,
    alternating, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _color(class_id: int) -> tuple[int, int, int]:
    """A fixed, distinct-ish BGR colour per class (light: black label text reads on it)."""
    rng = np.random.default_rng(class_id)
    return tuple(int(c) for c in rng.integers(64, 256, size=3))


FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4
Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, half-open: [x0, x1) x [y0, y1)


class DrawnDetection(NamedTuple):
    """A detection the picture shows: its index in the result, its label text, and where
    the label goes (``None``: no free place left in the picture; the box is still drawn)."""

    index: int
    text: str
    label: Rect | None


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_label(
    box: Rect, size: tuple[int, int], image_hw: tuple[int, int], taken: list[Rect]
) -> Rect | None:
    """Where a label of ``size`` (w, h) goes for ``box``: above the box, else inside its top,
    else below it, else the nearest place down, then up, past the labels in the way; inside
    the image and over no rectangle of ``taken``; None when no such place is left."""
    (w, h), (img_h, img_w) = size, image_hw
    if w > img_w or h > img_h:
        return None
    x = min(max(box[0], 0), img_w - w)

    def in_the_way(y: int) -> list[Rect]:
        return [t for t in taken if _overlaps((x, y, x + w, y + h), t)]

    for y in (box[1] - h, box[1], box[3]):
        if 0 <= y <= img_h - h and not in_the_way(y):
            return (x, y, x + w, y + h)
    for down in (True, False):  # from above the box, past the labels in the way
        y = min(max(box[1] - h, 0), img_h - h)
        while 0 <= y <= img_h - h:
            labels = in_the_way(y)
            if not labels:
                return (x, y, x + w, y + h)
            y = max(t[3] for t in labels) if down else min(t[1] for t in labels) - h
    return None


def picture_layout(
    result: dict[str, np.ndarray],
    names: Sequence[str],
    image_hw: tuple[int, int],
    score_threshold: float = 0.5,
) -> list[DrawnDetection]:
    """What :func:`draw_detections` draws: the detections scoring ``>= score_threshold``,
    best first, each labelled "name score" where no earlier label is (:func:`_place_label`)."""
    scores = np.asarray(result["scores"], dtype=F32)
    order = sorted(np.flatnonzero(scores >= F32(score_threshold)), key=lambda i: (-scores[i], i))
    drawn, taken = [], []
    for i in order:
        text = f"{names[i]} {float(scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
        box = tuple(int(round(float(v))) for v in result["boxes"][i])
        label = _place_label(box, (tw + 4, th + baseline + 4), image_hw, taken)
        if label is not None:
            taken.append(label)
        drawn.append(DrawnDetection(int(i), text, label))
    return drawn


def draw_detections(
    bgr_image: np.ndarray,
    result: dict[str, np.ndarray],
    names: Sequence[str],
    score_threshold: float = 0.5,
) -> np.ndarray:
    """A copy of ``bgr_image`` with the detections of :func:`picture_layout` drawn: mask
    tinted, box outlined, label (black on the class colour) where it hides no other label;
    ``names[i]`` names detection i."""
    canvas = bgr_image.copy()
    masks = result.get("masks")
    drawn = picture_layout(result, names, bgr_image.shape[:2], score_threshold)
    for item in drawn:
        color = _color(int(result["classes"][item.index]))
        if masks is not None:
            region = canvas[masks[item.index]].astype(F32)
            canvas[masks[item.index]] = (0.5 * region + 0.5 * np.array(color, F32)).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(float(v))) for v in result["boxes"][item.index])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, 2)
    for item in drawn:  # labels last: no box line crosses a label
        if item.label is not None:
            x0, y0, x1, y1 = item.label
            color = _color(int(result["classes"][item.index]))
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, cv2.FILLED)
            (_, th), _ = cv2.getTextSize(item.text, FONT, FONT_SCALE, 1)
            cv2.putText(canvas, item.text, (x0 + 2, y0 + 2 + th), FONT, FONT_SCALE, (0, 0, 0), 1)
    return canvas


def output_stems(image_paths: Sequence[str]) -> list[str]:
    """The output name (``<stem>.jpg`` / ``.json``) of each input: its file's stem, and for
    a stem met before (a/x.png, b/x.png; case-insensitively) ``<stem>-1``, ``<stem>-2``, ...,
    the first suffix no other output has; so no output overwrites another."""
    taken: set[str] = set()
    stems = []
    for path in image_paths:
        stem = candidate = Path(path).stem
        k = 0
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{stem}-{k}"
        taken.add(candidate.casefold())
        stems.append(candidate)
    return stems


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same folder: never half-written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:  # the usual permissions (mkstemp's would be 0600)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _predict_file(
    predictor: ONNXPredictor, image_path: str, out_dir: Path, stem: str, score_threshold: float
) -> None:
    """Detections on one image file: all of them in ``out_dir/<stem>.json``, those scoring
    ``>= score_threshold`` drawn in ``out_dir/<stem>.jpg``."""
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        why = "not an image OpenCV decodes" if os.path.isfile(image_path) else "no such file"
        raise ValueError(f"{image_path}: cannot read the image ({why})")
    result = predictor(image)  # cv2.imread gives uint8 H x W x 3
    names = [predictor.class_name(int(c)) for c in result["classes"]]
    detections = []
    for i, name in enumerate(names):
        detection = {
            "class": int(result["classes"][i]),
            "name": name,
            "score": float(result["scores"][i]),
            "box": [float(v) for v in result["boxes"][i]],
        }
        if "masks" in result:
            detection["segmentation"] = rle_encode(result["masks"][i])
        detections.append(detection)
    height, width = image.shape[:2]
    record = {"image": image_path, "height": height, "width": width, "detections": detections}
    ok, picture = cv2.imencode(".jpg", draw_detections(image, result, names, score_threshold))
    if not ok:
        raise ValueError(f"{image_path}: cannot encode the drawn picture")
    _write_atomically(out_dir / f"{stem}.jpg", picture.tobytes())
    _write_atomically(out_dir / f"{stem}.json", json.dumps(record).encode())


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the ONNX detector on images, write pictures and JSON; 0 or 2."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a gcnet_d2 ONNX detector file")
    parser.add_argument("images", nargs="+", help="image files (anything cv2.imread reads)")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for <stem>.jpg (the picture) and <stem>.json (every detection) per image; "
        "images sharing a file stem (a/x.png, b/x.png) get x, x-1, x-2, ... in the order given",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="draw only detections scoring at least this (default 0.5); the JSON keeps all",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    cv_logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if cv_logging is not None:  # no decoder warnings: an unreadable image is our one line
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)
    try:
        if not 0 <= args.score_threshold <= 1:
            raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
        predictor = ONNXPredictor(args.model, threads=args.threads)
        out_dir = Path(args.output)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{out_dir}: cannot create the output folder: {e.strerror}") from e
        for image_path, stem in zip(args.images, output_stems(args.images), strict=True):
            try:
                _predict_file(predictor, image_path, out_dir, stem, args.score_threshold)
            except OSError as e:
                raise ValueError(f"{e.filename or image_path}: {e.strerror or e}") from e
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
