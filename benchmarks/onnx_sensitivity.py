#!/usr/bin/env python
"""How far ONNX Runtime is from eager PyTorch, and eager from itself, on a full-width row.

    python benchmarks/onnx_sensitivity.py --kind cascade_mask_rcnn_x101_dcn_gc_r16 \\
        [--weights calibrated|mmdet_init]

The figures of docs/deploy.md "Numerically sensitive models": an mmdetection-format checkpoint
of the row (``calibrated``: ``tests/parity/mmdet_reference``'s seeded weights with calibrated
norms; ``mmdet_init``: mmdetection's own ``init_weights``), loaded through the export tool's
setup (``GCNetCheckpointer``, the config's speed-ups) at its real test size, on two blurred
mosaic images (480x640, 427x640); per image: the whole-detector ONNX file in ONNX Runtime vs
eager (2 threads), and eager with 1 thread vs 2 threads, as ``compare_instances`` summaries.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gcnet_d2.export import compare_instances, eager_detections  # noqa: E402
from gcnet_d2.export import onnx_detector as od  # noqa: E402
from tests.parity import mmdet_reference as ref  # noqa: E402
from tests.testing import REPO, export_tool  # noqa: E402

CONFIGS = {
    "mask_rcnn_r50_gc_r16": "mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml",
    "cascade_mask_rcnn_x101_gc_r4": (
        "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml"
    ),
    "cascade_mask_rcnn_x101_dcn_gc_r16": (
        "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco.yaml"
    ),
}


def mmdet_checkpoint(kind: str, weights: str, path: str) -> None:
    """An mmdetection-format checkpoint of ``kind`` (80 classes, seed 1) at ``path``."""
    if weights == "calibrated":
        model = ref.build_mmdet_model(kind, num_classes=80, seed=1)
    else:
        ref.mmdet_available()  # installs the mmcv op stubs mmdetection's modules import
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import ConfigDict

        register_all_modules(init_default_scope=True)
        cfg = ref.mmdet_model_cfg(kind, num_classes=80)
        torch.manual_seed(1)
        model = MODELS.build(ConfigDict(cfg))
        model.init_weights()
        model.gcnet_d2_cfg = cfg
    ref.save_mmdet_checkpoint(model.eval(), path)


def mosaic_images(folder: Path) -> list[str]:
    """Two blurred mosaics of random colours (blocks of 16 and 32 px), written as JPEG."""
    g = torch.Generator().manual_seed(3)
    paths = []
    for i, (h, w) in enumerate([(480, 640), (427, 640)]):
        b = 16 + 16 * i
        c = torch.randint(0, 256, (3, -(-h // b), -(-w // b)), generator=g, dtype=torch.uint8)
        image = c.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :h, :w].permute(1, 2, 0)
        paths.append(str(folder / f"mosaic{i}.jpg"))
        cv2.imwrite(paths[-1], cv2.GaussianBlur(np.ascontiguousarray(image.numpy()), (0, 0), 3))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=list(CONFIGS), default="mask_rcnn_r50_gc_r16")
    parser.add_argument("--weights", choices=("calibrated", "mmdet_init"), default="calibrated")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp, export_tool() as tool:
        folder = Path(tmp)
        mmdet_checkpoint(args.kind, args.weights, str(folder / "mmdet.pth"))
        config = str(REPO / "configs" / "gcnet" / CONFIGS[args.kind])
        opts = ["MODEL.WEIGHTS", str(folder / "mmdet.pth"), "MODEL.DEVICE", "cpu"]
        setup = tool.setup_yaml(config, opts)
        images = [tool.load_image(p, setup) for p in mosaic_images(folder)]
        opset = od.DEFORM_OPSET if od.has_deform_conv(setup.model) else od.MIN_OPSET
        session = od.ONNXDetector(od.detector_onnx_bytes(setup.model, images[0], opset, {}))
        print(f"{args.kind}, {args.weights} weights, 2 threads")
        for i, image in enumerate(images):
            size = "x".join(str(s) for s in image.shape[-2:])
            eager = eager_detections(setup.model, image)
            print(f"image {i} ({size}) ONNX Runtime vs eager: "
                  f"{compare_instances(eager, session(image)).summary()}")  # fmt: skip
            torch.set_num_threads(1)
            one_thread = eager_detections(setup.model, image)
            torch.set_num_threads(2)
            print(f"image {i} ({size}) eager 1 vs 2 threads: "
                  f"{compare_instances(eager, one_thread).summary()}")  # fmt: skip


if __name__ == "__main__":
    main()
