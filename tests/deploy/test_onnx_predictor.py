"""The whole detector through ``tools/export_model.py --format onnx`` and run by
``deploy/onnx_predictor.py`` with PyTorch unimportable equals ``GCNetPredictor``.

For each family (GC Mask R-CNN, GC Cascade, DCN + GC Cascade; small widths, realistic random
weights, a detectron2 checkpoint and a YAML config as a user has them) on three images: one
with many detections (> 50), one with a few, one with none. The same number of detections
and, for each (paired by class and nearest box), the same class, boxes within 0.5 px, scores
within 1e-4, mask IoU >= 0.98. The file itself: opset, dynamic H and W, RoiAlign's
``half_pixel`` written out, NMS as ``NonMaxSuppression``, DCN as ``DeformConv``, metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gcnet_d2.export.compare import pair_detections
from tests.missing_packages import require
from tests.testing import (
    EXPORT_OPTS,
    FAMILIES,
    REPO,
    export_tool,
    peaked_class_scores,
    python_env,
    realistic_export_model,
    run_python,
    tiny_cfg,
)

onnx = require("onnx", "the `export` extra, requirements-dev.txt")
require("onnxruntime", "the `export` extra, requirements-dev.txt")

RUNTIME = REPO / "deploy" / "onnx_predictor.py"
# Up to 300 proposals and 200 detections on a 128 x 192 input (the original images are
# larger: the runtime resizes them).
DEPLOY_OPTS = [
    "MODEL.RPN.POST_NMS_TOPK_TEST", "300",
    "TEST.DETECTIONS_PER_IMAGE", "200",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "192",
]  # fmt: skip
FLAT_SIZE, MOSAIC_SIZE, MOSAIC_BLOCK, TRACE_SIZE = (160, 240), (192, 288), 12, (240, 300)


@dataclass(frozen=True)
class Case:
    """A family's background logit (how rarely anything is detected) and its three images:
    ``("flat", k)`` is the k-th flat colour of :func:`flat_image`, ``("mosaic", seed)`` a
    :func:`mosaic` (found by trying a few of each)."""

    background: float
    many: tuple[str, int]
    few: tuple[str, int]
    none: tuple[str, int]


# The opset each family is exported at: the lowest the tool allows (16; 19 with DCN), and 17.
OPSETS = {"gc_mask": 16, "gc_cascade": 17, "dcn_gc_cascade": 19}

CASES = {
    "gc_mask": Case(4.5, ("mosaic", 1), ("flat", 6), ("flat", 10)),
    "gc_cascade": Case(9.0, ("flat", 3), ("flat", 6), ("flat", 4)),
    "dcn_gc_cascade": Case(5.0, ("flat", 3), ("flat", 4), ("flat", 2)),
}

CHILD = r"""
import importlib.util, sys
sys.modules["torch"] = None  # `import torch` fails from here on
import cv2, numpy as np
spec = importlib.util.spec_from_file_location("onnx_predictor", sys.argv[1])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
predictor = runtime.ONNXPredictor(sys.argv[2])
results = {}
for i, path in enumerate(sys.argv[4:]):
    for key, value in predictor(cv2.imread(path)).items():
        results[f"{i}/{key}"] = value
np.savez(sys.argv[3], **results)
print("torch importable:", importlib.util.find_spec("torch") is not None and
      sys.modules.get("torch", 0) is not None)
"""


def flat_image(k: int) -> torch.Tensor:
    """The k-th of a fixed sequence of flat-coloured images (3 x 160 x 240, uint8)."""
    g = torch.Generator().manual_seed(0)
    colours = [
        torch.randint(0, 256, (3, 1, 1), generator=g, dtype=torch.uint8) for _ in range(k + 1)
    ]
    return colours[k].expand(3, *FLAT_SIZE).contiguous()


def mosaic(seed: int, size: tuple[int, int] = MOSAIC_SIZE) -> torch.Tensor:
    """Blocks of random flat colours (3 x H x W, uint8): many object-like regions."""
    g = torch.Generator().manual_seed(seed)
    (h, w), b = size, MOSAIC_BLOCK
    colours = torch.randint(0, 256, (3, -(-h // b), -(-w // b)), generator=g, dtype=torch.uint8)
    blocks = colours.repeat_interleave(b, dim=1).repeat_interleave(b, dim=2)
    return blocks[:, :h, :w].contiguous()


def case_image(kind: str, index: int) -> torch.Tensor:
    return flat_image(index) if kind == "flat" else mosaic(index)


@dataclass
class Deployed:
    family: str
    images: list[str]
    onnx_path: Path
    tool_status: int
    tool_out: str
    expected: list[dict]  # GCNetPredictor's, per image: numpy fields
    got: list[dict]  # ONNXPredictor's, from the torch-free child


@pytest.fixture(scope="module", params=list(FAMILIES))
def deployed(request, tmp_path_factory) -> Deployed:
    from gcnet_d2.predictor import GCNetPredictor

    family, case = request.param, CASES[request.param]
    folder = tmp_path_factory.mktemp(f"deploy_{family}")
    cfg = tiny_cfg(FAMILIES[family], *EXPORT_OPTS, *DEPLOY_OPTS, depth=50)
    model = realistic_export_model(cfg)
    peaked_class_scores(model, background=case.background, class_std=0.5, weight_gain=1.0)
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    cfg.MODEL.WEIGHTS = str(folder / "model.pth")
    (folder / "config.yaml").write_text(cfg.dump())
    images = []
    for name, (kind, index) in (("many", case.many), ("few", case.few), ("none", case.none)):
        pixels = case_image(kind, index).permute(1, 2, 0).numpy()[:, :, ::-1]  # BGR
        images.append(str(folder / f"{name}.png"))
        cv2.imwrite(images[-1], np.ascontiguousarray(pixels))
    # The tool traces on its first sample: another size (resized to 128 x 160, the others to
    # 128 x 192), so the file runs at sizes it was not traced at.
    trace = str(folder / "trace.png")
    cv2.imwrite(trace, np.ascontiguousarray(mosaic(0, TRACE_SIZE).permute(1, 2, 0).numpy()))

    args = ["--config-file", str(folder / "config.yaml"), "--format", "onnx"]
    args += ["--opset", str(OPSETS[family])]
    args += ["--output", str(folder / "out")]
    for image in [trace, *images]:
        args += ["--sample-image", image]
    stdout = io.StringIO()
    with export_tool() as tool, contextlib.redirect_stdout(stdout):
        status = tool.main(args)
    out = stdout.getvalue()

    predictor = GCNetPredictor(cfg)
    expected = []
    for image in images:
        inst = predictor(cv2.imread(image))["instances"]
        expected.append(
            {
                "boxes": inst.pred_boxes.tensor.numpy(),
                "scores": inst.scores.numpy(),
                "classes": inst.pred_classes.numpy(),
                "masks": inst.pred_masks.numpy(),
            }
        )
    onnx_path = folder / "out" / "model.onnx"
    results = folder / "runtime.npz"
    proc = run_python(
        ["-c", CHILD, str(RUNTIME), str(onnx_path), str(results), *images],
        env=python_env(pythonpath=None),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch importable: False" in proc.stdout
    with np.load(results) as saved:
        got = [{k: saved[f"{i}/{k}"] for k in expected[0]} for i in range(len(images))]
    return Deployed(family, images, onnx_path, status, out, expected, got)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_runtime_equals_gcnet_predictor_on_many_few_and_none(deployed):
    counts = [len(e["scores"]) for e in deployed.expected]
    assert counts[0] > 50 and 1 <= counts[1] <= 10 and counts[2] == 0, counts
    for name, expected, got in zip(
        ("many", "few", "none"), deployed.expected, deployed.got, strict=True
    ):
        where = f"{deployed.family} {name}"
        assert len(got["scores"]) == len(expected["scores"]), where
        assert got["boxes"].dtype == np.float32 and got["scores"].dtype == np.float32, where
        assert got["classes"].dtype == np.int64 and got["masks"].dtype == bool, where
        assert got["boxes"].shape == expected["boxes"].shape, where
        assert got["masks"].shape == expected["masks"].shape, where
        pairs = pair_detections(
            torch.from_numpy(expected["boxes"]),
            torch.from_numpy(expected["classes"]),
            torch.from_numpy(got["boxes"]),
            torch.from_numpy(got["classes"]),
        ).numpy()
        assert (pairs >= 0).all(), f"{where}: a detection without a partner of its class"
        box = np.abs(got["boxes"][pairs] - expected["boxes"]).max(initial=0)
        score = np.abs(got["scores"][pairs] - expected["scores"]).max(initial=0)
        ious = [mask_iou(e, g) for e, g in zip(expected["masks"], got["masks"][pairs], strict=True)]
        print(  # the figures docs/deploy.md quotes (pytest -s)
            f"{where}: {len(pairs)} detections, max |d box| {box:.3g} px, max |d score| "
            f"{score:.3g}, min mask IoU {min(ious, default=1.0):.4f}, masks equal "
            f"{sum(i == 1.0 for i in ious)}/{len(ious)}"
        )
        assert box <= 0.5 and score <= 1e-4, where
        assert min(ious, default=1.0) >= 0.98, (where, min(ious))


def test_the_tool_checked_every_sample_and_wrote_a_complete_file(deployed):
    assert deployed.tool_status == 0, deployed.tool_out
    assert deployed.tool_out.count("classes equal") == 4, deployed.tool_out
    assert "sample 0 (128x160)" in deployed.tool_out, deployed.tool_out  # the trace image
    assert deployed.tool_out.count("(128x192)") == 3, deployed.tool_out  # many, few, none
    assert deployed.tool_out.count(": 0 detections") == 1, deployed.tool_out  # none
    model = onnx.load(str(deployed.onnx_path))
    (opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert opset == OPSETS[deployed.family]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:1]] == [3] and all(d.dim_param for d in dims[1:])
    ops = {n.op_type: n for n in model.graph.node}
    modes = {a.name: a.s for a in ops["RoiAlign"].attribute}
    assert modes["coordinate_transformation_mode"] == b"half_pixel"
    assert "NonMaxSuppression" in ops
    assert ("DeformConv" in ops) == (deployed.family == "dcn_gc_cascade")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["gcnet_d2.format"] == "gcnet_d2 onnx detector v1"
    assert (meta["min_size_test"], meta["max_size_test"]) == ("128", "192")
    assert meta["input_format"] == "RGB" and meta["resize_backend"] == "cv2"
    assert json.loads(meta["class_names"]) == []  # 3 classes, COCO's 80 names dropped
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "classes", "mask_probs"]
