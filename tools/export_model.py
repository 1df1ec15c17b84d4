#!/usr/bin/env python
"""Export a gcnet_d2 detector (or its backbone) for deployment; detectron2's flags.

    python tools/export_model.py --config-file configs/gcnet/<row>.yaml \\
        --export-method tracing --format torchscript --sample-image img.jpg \\
        --output out/ MODEL.WEIGHTS <detectron2 or mmdetection .pth>

Routes: ``tracing``/``torchscript`` (whole detector, or ``--part backbone``);
``tracing``/``onnx`` (whole detector, opset >= 16, 19 with DCN, dynamic H and W; run it with
``deploy/onnx_predictor.py``, no PyTorch needed); ``--part backbone`` with ``--format onnx``
(dynamo exporter, opset >= 19, dynamic H and W) or ``--export-method torch_export --format
pt2``. ``--config-file`` is a YAML config (with
``KEY VALUE`` overrides) or a LazyConfig ``.py`` (``key=value`` overrides, weights from
``train.init_checkpoint``; it runs when loaded, so trusted files only). The weights take whatever
``GCNetCheckpointer`` takes (detectron2 files, mmdetection detector checkpoints, converted on
load). The sample image(s) are resized as the test loader resizes; the exported model is
reloaded and compared with the eager one on each (largest differences of boxes, scores, masks
or feature maps printed), and written to ``--output`` (atomically) only when they agree
(``--allow-mismatch`` writes anyway). A route the model cannot take, a bad config, checkpoint
or image prints one ``export_model.py: error:`` line naming the reason and exits with status 2;
a mismatch exits with status 1. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

import gcnet_d2  # noqa: F401  (registers the backbones)
from gcnet_d2 import fast
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.config_loading import load_config
from gcnet_d2.data.transforms import MMDetResizeShortestEdge, build_gcnet_augmentations
from gcnet_d2.errors import KNOWN_ERRORS, ConfigError, one_line
from gcnet_d2.export import onnx_detector, quantize, routes
from gcnet_d2.export.errors import ExportRouteError

EXIT_MISMATCH, EXIT_KNOWN_ERROR = 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--export-method", choices=routes.METHODS, default="tracing")
    parser.add_argument("--format", choices=routes.FORMATS, default="torchscript")
    parser.add_argument("--part", choices=routes.PARTS, default="detector", help="what to export")
    parser.add_argument(
        "--sample-image",
        action="append",
        required=True,
        metavar="IMAGE",
        help="image to trace on and check against eager; repeat to check more images",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--opset",
        type=int,
        default=19,
        help="ONNX opset: >= 19 for a backbone or a detector with DCN, >= 16 otherwise",
    )
    parser.add_argument(
        "--allow-mismatch", action="store_true", help="write even if outputs differ from eager"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig .py)",
    )
    quantize.add_arguments(parser)
    return parser.parse_args(argv)


@dataclass
class Setup:
    """What the export needs from a config: the model (weights loaded), its input format,
    the test loader's resize, the device and the test dataset's class names (if known)."""

    model: torch.nn.Module
    input_format: str
    resize: object  # a detectron2 Augmentation
    device: str
    class_names: list[str]


def _device(device: str) -> str:
    return "cpu" if device.startswith("cuda") and not torch.cuda.is_available() else device


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    if weights:
        GCNetCheckpointer(model).load(weights)
    else:
        print("export_model.py: warning: no weights given, exporting initial weights")


def setup_yaml(config_file: str, opts: list[str]) -> Setup:
    """A YAML config (read safely) with ``KEY VALUE`` overrides; ``MODEL.WEIGHTS``."""
    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = _device(cfg.MODEL.DEVICE)
    model = fast.apply(build_model(cfg), cfg)
    _load_weights(model, cfg.MODEL.WEIGHTS)
    (resize,) = build_gcnet_augmentations(cfg, is_train=False)
    return Setup(model, cfg.INPUT.FORMAT, resize, cfg.MODEL.DEVICE, _class_names(cfg.DATASETS.TEST))


def setup_lazy(config_file: str, opts: list[str]) -> Setup:
    """A LazyConfig ``.py`` (it runs when loaded: trusted files only) with ``key=value``
    overrides; weights from ``train.init_checkpoint``."""
    from detectron2.config import LazyConfig, instantiate

    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), opts)
    except FileNotFoundError as e:
        raise ConfigError(f"config {config_file}: no such file") from e
    except (KeyError, ValueError, AttributeError, SyntaxError) as e:
        raise ConfigError(f"config {config_file} with overrides {opts}: {e}") from e
    device = _device(str(cfg.train.get("device", "cpu")))
    model = fast.apply(instantiate(cfg.model), cfg).to(device)
    _load_weights(model, cfg.train.get("init_checkpoint", ""))
    mapper = cfg.dataloader.test.mapper
    (resize,) = instantiate(mapper.augmentations)
    names = cfg.dataloader.test.dataset.get("names", ())
    names = [names] if isinstance(names, str) else list(names)
    return Setup(model, str(mapper.image_format), resize, device, _class_names(names))


def _class_names(datasets: list[str] | tuple[str, ...]) -> list[str]:
    """The first test dataset's ``thing_classes`` (e.g. COCO's 80 names), or none."""
    from detectron2.data import MetadataCatalog

    if not datasets:
        return []
    return list(MetadataCatalog.get(datasets[0]).get("thing_classes", []) or [])


def onnx_metadata(setup: Setup) -> dict[str, str]:
    """The whole-detector ONNX file's metadata: the test resize, the input format, the
    class names when they match the model's number of classes."""
    resize = setup.resize
    if not isinstance(resize, MMDetResizeShortestEdge) or len(resize.short_edge_length) != 1:
        raise ExportRouteError(
            f"the ONNX detector's runtime resizes as gcnet_d2's test loader (one shorter-side "
            f"size, mmcv rounding); this config's test resize is {resize}"
        )
    names = setup.class_names
    num_classes = getattr(setup.model.roi_heads, "num_classes", len(names))
    return onnx_detector.metadata(
        setup.input_format,
        resize.short_edge_length[0],
        resize.max_size,
        resize.backend,
        names if len(names) == num_classes else [],
    )


def load_image(path: str, setup: Setup) -> torch.Tensor:
    """``path`` read in the model's input format, resized as the test loader does, C x H x W."""
    try:
        image = read_image(path, format=setup.input_format)
    except (OSError, ValueError) as e:
        raise ExportRouteError(f"sample image {path}: cannot be read ({e})") from None
    image = setup.resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.transpose(2, 0, 1).copy()).to(setup.device)


def main(argv: list[str] | None = None) -> int:
    """The command with ``argv``; returns the exit status: 0, :data:`EXIT_MISMATCH`, or
    :data:`EXIT_KNOWN_ERROR` after one ``export_model.py: error:`` line on stderr."""
    args = parse_args(argv)
    try:
        return export(args)
    except (ExportRouteError, *KNOWN_ERRORS) as e:
        print(f"export_model.py: error: {one_line(e)}", file=sys.stderr)
        return EXIT_KNOWN_ERROR


def export(args: argparse.Namespace) -> int:
    routes.check_route(args.export_method, args.format, args.part, args.opset)  # before slow work
    int8 = quantize.plan_from_args(args)  # None without --quantize
    is_lazy = args.config_file.endswith(".py")
    setup = (setup_lazy if is_lazy else setup_yaml)(args.config_file, args.opts)
    images = [load_image(p, setup) for p in args.sample_image]
    is_onnx_detector = args.format == "onnx" and args.part == "detector"
    meta = onnx_metadata(setup) if is_onnx_detector else None
    result = routes.run_route(
        setup.model,
        args.export_method,
        args.format,
        args.part,
        images,
        args.output,
        input_format=setup.input_format,
        opset=args.opset,
        allow_mismatch=args.allow_mismatch,
        onnx_metadata=meta,
    )
    print(f"{args.export_method}/{args.format}/{args.part}, exported vs eager:")
    for line in result.lines:
        print(f"  {line}")
    if result.path:
        print(f"wrote {result.path}")
    if not result.ok:
        print(
            "export_model.py: the exported model differs from eager beyond tolerance"
            + ("" if result.path else "; nothing written (--allow-mismatch writes anyway)"),
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    if int8 is not None:
        quantized = quantize.run_plan(int8, result.path)
        print("\n".join(quantized.lines) + (f"\nwrote {quantized.path}" if quantized.path else ""))
        if not quantized.ok:
            print("export_model.py: int8 AP drop beyond --max-ap-drop", file=sys.stderr)
            return EXIT_MISMATCH
    return 0


if __name__ == "__main__":
    sys.exit(main())
