#!/usr/bin/env python
"""Run a gcnet_d2 model on images and draw its detections with detectron2's Visualizer.

    python demo/demo.py --config-file configs/gcnet/<row>.yaml \\
        --input photo.jpg folder/ 'more/*.png' --output out/ \\
        [--confidence-threshold 0.5] [--montage overview.png] MODEL.WEIGHTS <checkpoint>

``--input`` takes image files, folders (their images, not recursive) and quoted glob patterns
(``**`` recursive). Each picture is written to ``--output`` under its own file name (format
from its extension); with a single input, ``--output`` may also name the output file.
``--montage`` additionally tiles the first few pictures into one PNG. Trailing ``KEY VALUE``
pairs override the config, as in ``train_net.py``; ``MODEL.WEIGHTS`` takes detectron2 and
mmdetection checkpoints (read by ``GCNetCheckpointer``, which never unpickles code);
``TEST.PRECISION bf16`` runs the detector in bfloat16 on a CPU that has it (docs/precision.md).

Class names come from ``MetadataCatalog.get(cfg.DATASETS.TEST[0])``: COCO's for the table
configs, rectangle / ellipse / triangle for the quick-start config.
"""

# ruff: noqa: E402 (imports follow the sys.path fallback below)
from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

if importlib.util.find_spec("gcnet_d2") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image
from tqdm import tqdm

from gcnet_d2 import GCNetPredictor
from gcnet_d2.config_loading import load_config
from gcnet_d2.errors import KNOWN_ERRORS, one_line
from gcnet_d2.io import atomic_write_bytes

logger = logging.getLogger("gcnet_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = frozenset("*?[")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class DemoError(Exception):
    """A problem with the user's inputs, reported as one line and a non-zero exit status."""


#: Errors reported as one ``demo.py: error: ...`` line and exit status 2: the demo's own and
#: gcnet_d2's (bad config or override, unreadable or mismatched checkpoint, ...), whose
#: messages name the file or key and the problem. Anything else keeps its traceback.
REPORTED_ERRORS: tuple[type[BaseException], ...] = (DemoError, *KNOWN_ERRORS)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Draw a gcnet_d2 model's detections on images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files, folders of images and/or quoted glob patterns",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="folder for the drawn images (created); with one input, may be the image file",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the detections drawn (default: 0.5)",
    )
    parser.add_argument(
        "--montage",
        metavar="PNG",
        help="also tile the first --montage-max drawn images into this one PNG",
    )
    parser.add_argument(
        "--montage-max", type=int, default=4, help="images in the montage (default: 4)"
    )
    parser.add_argument(
        "--montage-cols", type=int, default=2, help="images per montage row (default: 2)"
    )
    parser.add_argument(
        "--montage-width",
        type=int,
        default=320,
        help="width in pixels of each montage tile (default: 320)",
    )
    parser.add_argument(
        "--montage-colors",
        type=int,
        default=256,
        help="palette size of the montage PNG, at most 256; 0 keeps full colour (default: 256)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config from file + overrides, CPU when CUDA is absent, score threshold applied."""
    cfg = load_config(args.config_file, list(args.opts))  # safe YAML, validated values
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    thr = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = thr
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = thr
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = thr
    cfg.freeze()
    return cfg


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


def _is_image(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files, folders (their images) and glob patterns -> image paths, in order, no repeats.

    Raises ``DemoError`` naming the first item that is missing or matches no image.
    """
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item))
            found = [p for p in found if _is_image(p)]
            what = f"folder {item!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        elif os.path.isfile(item):
            found = [item]
        elif _GLOB_CHARS & set(item):
            found = sorted(p for p in glob.glob(os.path.expanduser(item), recursive=True))
            found = [p for p in found if _is_image(p)]
            what = f"pattern {item!r} matches no image file"
        else:
            hint = ""
            if _CONFIG_KEY.match(item):
                hint = " (config overrides such as MODEL.WEIGHTS go after all the options)"
            raise DemoError(f"input {item!r}: no such file or folder{hint}")
        if not found:
            raise DemoError(what)
        paths.extend(found)
    unique: dict[str, str] = {}
    for p in paths:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def output_paths(inputs: Sequence[str], output: str | None) -> list[str | None]:
    """Where each drawn image goes: ``output/<file name>``, or ``output`` itself for one input
    when it ends in an image extension. Equal file names from different folders keep their
    folders' names (``val__000000.jpg``) so that no picture overwrites another."""
    if output is None:
        return [None] * len(inputs)
    if len(inputs) == 1 and output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        return [output]
    names = [os.path.basename(p) for p in inputs]
    if len(set(names)) != len(names):
        absolute = [os.path.abspath(p) for p in inputs]
        common = os.path.commonpath([os.path.dirname(p) for p in absolute])
        names = [os.path.relpath(p, common).replace(os.sep, "__") for p in absolute]
    return [os.path.join(output, n) for n in names]


def write_image_atomic(path: str, rgb: np.ndarray) -> None:
    """Write an RGB image, in the format of ``path``'s extension, atomically."""
    suffix = Path(path).suffix.lower() or ".png"
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DemoError(f"{path}: OpenCV cannot write {suffix!r} images")
    atomic_write_bytes(path, encoded.tobytes())


def write_png_atomic(path: str, rgb: np.ndarray, colors: int = 0) -> None:
    """Write an RGB image as PNG atomically; ``colors`` > 0 makes it a (much smaller)
    palette PNG of at most that many colours, dithered."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if colors > 0:
        image = image.quantize(colors=min(colors, 256), dither=Image.Dither.FLOYDSTEINBERG)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())


def make_montage(images: Sequence[np.ndarray], cols: int, tile_width: int) -> np.ndarray:
    """Tile RGB images, each resized to ``tile_width`` wide, row by row on a white canvas."""
    if not images:
        raise ValueError("make_montage needs at least one image")
    cols = max(1, min(cols, len(images)))
    tiles = []
    for img in images:
        h, w = img.shape[:2]
        height = max(1, round(h * tile_width / w))
        interp = cv2.INTER_AREA if tile_width < w else cv2.INTER_LINEAR
        tiles.append(cv2.resize(img, (tile_width, height), interpolation=interp))
    rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
    gap = 4
    row_heights = [max(t.shape[0] for t in row) for row in rows]
    canvas = np.full(
        (sum(row_heights) + gap * (len(rows) - 1), cols * tile_width + gap * (cols - 1), 3),
        255,
        np.uint8,
    )
    y = 0
    for row, row_height in zip(rows, row_heights, strict=True):
        for j, tile in enumerate(row):
            x = j * (tile_width + gap)
            canvas[y : y + tile.shape[0], x : x + tile_width] = tile
        y += row_height + gap
    return canvas


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_predictor(cfg: CfgNode) -> GCNetPredictor:
    """:class:`gcnet_d2.GCNetPredictor` (resizes as evaluation does). gcnet_d2's checkpoint
    errors pass unchanged (they name the file); other weight errors become DemoError."""
    if not cfg.MODEL.WEIGHTS:
        raise DemoError(
            "MODEL.WEIGHTS is empty: append `MODEL.WEIGHTS <checkpoint>` to the command"
        )
    try:
        return GCNetPredictor(cfg)
    except KNOWN_ERRORS:
        raise
    except (OSError, RuntimeError, AssertionError) as e:
        raise DemoError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: {e}") from None


def get_metadata(cfg: CfgNode):
    """Metadata (class names, colours) of the config's first test dataset."""
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__gcnet_d2_demo_unnamed"
    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes", None)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if classes is None:
        logger.warning("dataset %r has no thing_classes: labels will be class ids", name)
    elif len(classes) != num_classes:
        logger.warning(
            "dataset %r names %d classes but MODEL.ROI_HEADS.NUM_CLASSES is %d",
            name,
            len(classes),
            num_classes,
        )
    return metadata


def draw(rgb: np.ndarray, instances: Instances, metadata, seed: int = 0) -> np.ndarray:
    """Boxes, masks, class names and scores on ``rgb`` (colours fixed by ``seed``)."""
    state = np.random.get_state()  # the Visualizer picks instance colours with np.random
    np.random.seed(seed)
    try:
        vis = Visualizer(rgb, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
        return vis.draw_instance_predictions(instances).get_image()
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """One line on stderr that does not break the progress bar."""
    tqdm.write(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.output is None and args.montage is None:
        raise DemoError("nothing to write: give --output and/or --montage")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise DemoError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
        )
    if args.montage is not None:
        if not args.montage.lower().endswith(".png"):
            raise DemoError(f"--montage {args.montage!r}: the montage is a PNG, name it *.png")
        if min(args.montage_max, args.montage_cols, args.montage_width) < 1:
            raise DemoError("--montage-max, --montage-cols and --montage-width must be >= 1")
        if not 0 <= args.montage_colors <= 256:
            raise DemoError(f"--montage-colors must be in [0, 256], got {args.montage_colors}")
    inputs = expand_inputs(args.input)
    outputs = output_paths(inputs, args.output)
    cfg = setup_cfg(args)
    metadata = get_metadata(cfg)
    predictor = build_predictor(cfg)
    threshold = args.confidence_threshold

    drawn: list[np.ndarray] = []
    failed: list[str] = []
    bar = tqdm(inputs, desc="demo", unit="img", disable=len(inputs) < 2, file=sys.stderr)
    for path, out in zip(bar, outputs, strict=True):
        try:
            image = read_image(path, format="BGR")  # the predictor's input, as detectron2's
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            failed.append(path)
            say(f"ERROR {path}: cannot read image ({type(e).__name__}: {e})")
            continue
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= threshold]
        elapsed = time.perf_counter() - start
        picture = draw(convert_image_to_rgb(image, "BGR"), instances, metadata)
        if out is not None:
            write_image_atomic(out, picture)
        if len(drawn) < args.montage_max:
            drawn.append(picture)
        target = f" -> {out}" if out else ""
        say(f"{path}: {len(instances)} detections in {elapsed:.2f}s{target}")
    if args.montage is not None and drawn:
        montage = make_montage(drawn, args.montage_cols, args.montage_width)
        write_png_atomic(args.montage, montage, args.montage_colors)
        say(f"montage of {len(drawn)} images -> {args.montage}")
    if failed:
        print(
            f"demo: {len(failed)} of {len(inputs)} images could not be read: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 all written, 1 unreadable images, 2 a usage,
    config or checkpoint error (:data:`REPORTED_ERRORS`), printed as one
    ``demo.py: error: ...`` line on stderr. Other exceptions propagate with their traceback."""
    args = get_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except REPORTED_ERRORS as e:
        print(f"demo.py: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
