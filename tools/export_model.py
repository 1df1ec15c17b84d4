#!/usr/bin/env python
"""Export a gcnet_d2 detector (or its backbone) for deployment; detectron2's flags.

    python tools/export_model.py --config-file configs/gcnet/<row>.yaml \\
        --export-method tracing --format torchscript --sample-image img.jpg \\
        --output out/ MODEL.WEIGHTS <detectron2 or mmdetection .pth>

Routes: ``tracing``/``torchscript`` (whole detector, or ``--part backbone``); ``--part
backbone`` with ``--format onnx`` (dynamo exporter, opset >= 19, dynamic H and W) or
``--export-method torch_export --format pt2``. ``MODEL.WEIGHTS`` takes whatever
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

import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

import gcnet_d2  # noqa: F401  (registers the backbones)
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.config_loading import load_config
from gcnet_d2.data.transforms import build_gcnet_augmentations
from gcnet_d2.errors import KNOWN_ERRORS, one_line
from gcnet_d2.export import routes
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
    parser.add_argument("--opset", type=int, default=19, help="ONNX opset (>= 19)")
    parser.add_argument(
        "--allow-mismatch", action="store_true", help="write even if outputs differ from eager"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def load_image(path: str, cfg) -> torch.Tensor:  # noqa: ANN001 - a detectron2 CfgNode
    """``path`` read in ``cfg.INPUT.FORMAT``, resized as the test loader does, C x H x W."""
    try:
        image = read_image(path, format=cfg.INPUT.FORMAT)
    except (OSError, ValueError) as e:
        raise ExportRouteError(f"sample image {path}: cannot be read ({e})") from None
    (resize,) = build_gcnet_augmentations(cfg, is_train=False)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.transpose(2, 0, 1).copy())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    routes.check_route(args.export_method, args.format, args.part, args.opset)  # before slow work
    cfg = load_config(args.config_file, args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        GCNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        print("export_model.py: warning: MODEL.WEIGHTS is empty, exporting initial weights")
    images = [load_image(p, cfg).to(cfg.MODEL.DEVICE) for p in args.sample_image]
    result = routes.run_route(
        model,
        args.export_method,
        args.format,
        args.part,
        images,
        args.output,
        input_format=cfg.INPUT.FORMAT,
        opset=args.opset,
        allow_mismatch=args.allow_mismatch,
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
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ExportRouteError, *KNOWN_ERRORS) as e:
        print(f"export_model.py: error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_KNOWN_ERROR)
