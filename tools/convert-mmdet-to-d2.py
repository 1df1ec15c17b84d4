#!/usr/bin/env python
"""Convert an mmdetection checkpoint (e.g. a released GCNet ``.pth``) or an ImageNet backbone
(torchvision / OpenMMLab) to a Detectron2 checkpoint for gcnet_d2's models.

    python tools/convert-mmdet-to-d2.py SRC.pth DST.pth [--config-file CFG] [KEY VALUE ...]

Without ``--config-file`` the shipped table config that fits the checkpoint is used (or a
base config with the overrides that make it fit). Prints what was converted, dropped and why.
Named like detectron2's ``tools/convert-torchvision-to-d2.py``.
``train_net.py`` also accepts SRC directly as MODEL.WEIGHTS: converting is optional.
"""

from __future__ import annotations

import argparse
import sys

from gcnet_d2.checkpoint.file_conversion import convert_checkpoint_file
from gcnet_d2.errors import KNOWN_ERRORS, one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="mmdetection / ImageNet checkpoint (.pth)")
    parser.add_argument("dst", help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--config-file", default=None, help="config of the target model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        report = convert_checkpoint_file(args.src, args.dst, args.config_file, args.opts)
    except (*KNOWN_ERRORS, FileNotFoundError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
