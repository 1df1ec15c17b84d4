"""deploy/onnx_predictor.py, the torch-free ONNX runtime: its pieces against gcnet_d2's and
detectron2's, on tiny hand-built ONNX files that satisfy the exporter's contract.

- the resize (size and pixels) equals ``MMDetResizeShortestEdge`` + ``CV2ResizeTransform``;
- box scaling / clipping / empty-box filter and mask pasting equal detectron2's
  ``detector_postprocess`` (masks bit-exact; the pasted probabilities equal
  ``_do_paste_mask``'s to 1e-6, bit-exact on a torch whose CPU kernel fuses multiply-adds);
- ``ONNXPredictor`` on a model whose outputs are known equals ``GCNetPredictor``'s own
  ``__call__`` on a torch model with the same outputs (RGB and BGR models);
- no detections, no mask head, bad input and bad metadata;
- the module imports only stdlib / numpy / cv2 / onnxruntime and runs, predictor and CLI, in a
  child process where ``import torch`` fails;
- the CLI: JSON + picture per image (RLE decodes back to the mask), one-line errors with
  status 2 and no partial files.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from gcnet_d2 import GCNetPredictor
from gcnet_d2.data.transforms import MMDetResizeShortestEdge
from tests.missing_packages import require
from tests.testing import REPO, run_python

onnx = require("onnx", "the `export` extra, requirements-dev.txt")
require("onnxruntime", "the `export` extra, requirements-dev.txt")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

MODULE = REPO / "deploy" / "onnx_predictor.py"
F32 = np.float32


def load_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("onnx_predictor_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


op = load_module()


# --------------------------------------------------------------------------------------------
# tiny contract-satisfying ONNX files
# --------------------------------------------------------------------------------------------
def fixed_outputs(n: int, seed: int = 0, m: int = 28) -> dict[str, np.ndarray]:
    """Detections relative to the image size (some partly outside it, the last one outside:
    empty once clipped), scores, classes and smooth mask probabilities."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.05, 0.7, (n, 2))
    rel = np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (n, 2))], axis=1).astype(F32)
    if n:
        rel[-1] = [1.05, 0.2, 1.3, 0.4]
    probs = rng.uniform(0, 1, (n, 1, m, m)).astype(F32)
    probs = np.stack([cv2.GaussianBlur(p[0], (5, 5), 0)[None] for p in probs]) if n else probs
    return {
        "rel": rel,
        "scores": np.sort(rng.uniform(0.05, 1, n)).astype(F32)[::-1].copy(),
        "classes": rng.integers(0, 3, n).astype(np.int64),
        "mask_probs": probs.astype(F32),
    }


def write_onnx(path: Path, outputs: dict[str, np.ndarray], masks: bool = True, **meta: str) -> str:
    """An ONNX file whose ``boxes`` are ``outputs["rel"] * (W, H, W, H)`` of its input image
    and whose other outputs are constants; gcnet_d2's metadata updated with ``meta``."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "H", "W"])

    def const(name: str, value: np.ndarray) -> helper.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))

    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        const("order", np.array([2, 1, 2, 1], np.int64)),
        helper.make_node("Gather", ["shape", "order"], ["whwh_i"], axis=0),
        helper.make_node("Cast", ["whwh_i"], ["whwh"], to=TensorProto.FLOAT),
        const("rel", outputs["rel"].reshape(-1, 4)),
        helper.make_node("Mul", ["rel", "whwh"], ["boxes"]),
        const("scores", outputs["scores"]),
        const("classes", outputs["classes"]),
    ]
    names = [("boxes", TensorProto.FLOAT), ("scores", TensorProto.FLOAT)]
    names.append(("classes", TensorProto.INT64))
    if masks:
        nodes.append(const("mask_probs", outputs["mask_probs"]))
        names.append(("mask_probs", TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "tiny", [image], [helper.make_tensor_value_info(n, t, None) for n, t in names]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    metadata = {
        "gcnet_d2.format": "gcnet_d2 onnx detector v1",
        "input_format": "BGR",
        "min_size_test": "64",
        "max_size_test": "96",
        "resize_backend": "cv2",
        "mask_threshold": "0.5",
        "class_names": json.dumps(["cat", "dog", "bird"]),
    }
    metadata.update(meta)
    helper.set_model_props(model, {k: v for k, v in metadata.items() if v is not None})
    path.write_bytes(model.SerializeToString())
    return str(path)


def noisy_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (3, 3), 0)


# --------------------------------------------------------------------------------------------
# pre-processing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, short, max_size",
    [
        ((480, 640), 800, 1333),  # landscape, upscaled
        ((1024, 683), 800, 1333),  # portrait, downscaled
        ((427, 1000), 800, 1333),  # long side capped
        ((800, 1333), 800, 1333),  # exactly at both limits
        ((750, 1250), 800, 1333),  # the cap and the short side nearly tie
        ((3, 5), 800, 1333),  # tiny
        ((150, 200), 64, 96),
        ((61, 97), 64, 96),
    ],
)
def test_resize_equals_gcnet_resize(shape, short, max_size):
    image = noisy_image(*shape)
    transform = MMDetResizeShortestEdge(short, max_size, "cv2").get_transform(image)
    assert op.resized_size(*shape, short, max_size) == (transform.new_h, transform.new_w)
    ours = op.preprocess(image, "BGR", short, max_size)
    theirs = transform.apply_image(image).astype(F32).transpose(2, 0, 1)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(op.preprocess(image, "RGB", short, max_size), theirs[::-1])


# --------------------------------------------------------------------------------------------
# post-processing
# --------------------------------------------------------------------------------------------
def random_raw(n: int, resized_hw: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """Raw detections on a resized image: random boxes (some partly outside it, one outside
    it: empty after clipping, one very thin), noisy or smooth mask probabilities, one mask
    of 0.5 everywhere (many pasted values exactly at the threshold)."""
    rng = np.random.default_rng(seed)
    rh, rw = resized_hw
    xy = rng.uniform(-0.2, 1.0, (n, 2)) * [rw, rh]
    boxes = np.concatenate([xy, xy + rng.uniform(0.01, 0.7, (n, 2)) * [rw, rh]], 1).astype(F32)
    boxes[0] = [rw + 1, 3, rw + 7, 12]
    boxes[1] = [2.3, 4.7, 2.3004, rh * 0.6]
    probs = rng.uniform(0, 1, (n, 1, 28, 28)).astype(F32)
    if seed % 2:
        probs = np.stack([cv2.GaussianBlur(p[0], (7, 7), 0)[None] for p in probs])
    probs[2] = 0.5
    return {
        "boxes": boxes,
        "scores": rng.uniform(0, 1, n).astype(F32),
        "classes": rng.integers(0, 80, n).astype(np.int64),
        "mask_probs": probs,
    }


SIZES = [  # (resized, original): upscaling, downscaling, unchanged, mixed ratios
    ((64, 96), (100, 150)),
    ((96, 64), (40, 27)),
    ((800, 1199), (480, 719)),
    ((50, 70), (50, 70)),
    ((128, 160), (333, 417)),
]


def test_postprocess_equals_detector_postprocess():
    exact = total = 0
    for k, (resized, original) in enumerate(SIZES):
        for seed in (2 * k, 2 * k + 1):
            raw = random_raw(14, resized, seed)
            instances = Instances(
                resized,
                pred_boxes=Boxes(torch.from_numpy(raw["boxes"].copy())),
                scores=torch.from_numpy(raw["scores"]),
                pred_classes=torch.from_numpy(raw["classes"]),
                pred_masks=torch.from_numpy(raw["mask_probs"]),
            )
            threshold = 0.3 if k == 1 else 0.5
            ref = detector_postprocess(instances, *original, mask_threshold=threshold)
            ours = op.postprocess(
                **raw, resized_hw=resized, original_hw=original, mask_threshold=threshold
            )
            assert len(ref) < 14 and len(ours["boxes"]) == len(ref)  # the empty box dropped
            # the same float32 operations: equal, not just within 1e-4 px
            np.testing.assert_array_equal(ours["boxes"], ref.pred_boxes.tensor.numpy())
            np.testing.assert_array_equal(ours["scores"], ref.scores.numpy())
            np.testing.assert_array_equal(ours["classes"], ref.pred_classes.numpy())
            assert ours["scores"].dtype == np.float32 and ours["classes"].dtype == np.int64
            ref_masks = ref.pred_masks.numpy()
            assert ours["masks"].shape == ref_masks.shape == (len(ref), *original)
            assert ours["masks"].dtype == bool
            for a, b in zip(ours["masks"], ref_masks, strict=True):
                union = (a | b).sum()
                assert union == 0 or (a & b).sum() / union >= 0.99
                exact += bool(np.array_equal(a, b))
                total += 1
    print(f"masks equal to detectron2's bit for bit: {exact} / {total}")
    assert exact == total


def test_mask_region_values_equal_detectron2_paste():
    """The sampled probabilities themselves (before the threshold) and the pasted region: bit
    for bit where torch's vectorised x86 kernel (compiled with fused multiply-adds, which
    mask_region reproduces) samples; elsewhere to 1e-6."""
    fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    rng = np.random.default_rng(7)
    exact = 0
    for k in range(60):
        h, w = (int(v) for v in rng.integers(20, 300, 2))
        x0, y0 = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
        x1 = x0 + 1e-3 if k % 10 == 0 else rng.uniform(x0 + 1e-3, w)
        box = np.array([x0, y0, x1, rng.uniform(y0 + 1e-3, h)], F32)
        probs = rng.uniform(0, 1, (28, 28)).astype(F32)
        ref, (rows, cols) = _do_paste_mask(
            torch.from_numpy(probs)[None, None], torch.from_numpy(box)[None], h, w
        )
        values, region = op.mask_region(probs, box, (h, w))
        assert region == (
            slice(int(rows.start), int(rows.stop)),
            slice(int(cols.start), int(cols.stop)),
        )
        np.testing.assert_allclose(values, ref[0].numpy(), rtol=0, atol=1e-6)
        exact += bool(np.array_equal(values, ref[0].numpy()))
    print(f"pasted probabilities equal to detectron2's bit for bit: {exact} / 60")
    assert exact == 60 or not fused


def test_no_detections_give_empty_arrays(tmp_path):
    raw = {k: v[:0] for k, v in random_raw(3, (64, 96), 0).items()}
    out = op.postprocess(**raw, resized_hw=(64, 96), original_hw=(30, 45))
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["scores"].shape == (0,) and out["scores"].dtype == np.float32
    assert out["classes"].shape == (0,) and out["classes"].dtype == np.int64
    assert out["masks"].shape == (0, 30, 45) and out["masks"].dtype == bool
    predictor = op.ONNXPredictor(write_onnx(tmp_path / "empty.onnx", fixed_outputs(0)))
    out = predictor(noisy_image(30, 45))
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "boxes": ((0, 4), np.float32),
        "scores": ((0,), np.float32),
        "classes": ((0,), np.int64),
        "masks": ((0, 30, 45), bool),
    }


# --------------------------------------------------------------------------------------------
# the predictor against GCNetPredictor
# --------------------------------------------------------------------------------------------
class FixedDetector(torch.nn.Module):
    """A detector with the tiny ONNX file's outputs, post-processed as GeneralizedRCNN does;
    records the image tensor it is given."""

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.outputs = {k: torch.from_numpy(v) for k, v in outputs.items()}
        self.seen: torch.Tensor | None = None

    def forward(self, inputs: list[dict]) -> list[dict]:
        (item,) = inputs
        self.seen = item["image"]
        h, w = item["image"].shape[1:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        raw = Instances(
            (h, w),
            pred_boxes=Boxes(self.outputs["rel"] * scale),
            scores=self.outputs["scores"],
            pred_classes=self.outputs["classes"],
            pred_masks=self.outputs["mask_probs"],
        )
        return [{"instances": detector_postprocess(raw, item["height"], item["width"])}]


@pytest.mark.parametrize("input_format, shape", [("RGB", (150, 110)), ("BGR", (40, 57))])
def test_predictor_equals_gcnet_predictor(tmp_path, input_format, shape):
    outputs = fixed_outputs(6, seed=3)
    model = write_onnx(tmp_path / "m.onnx", outputs, input_format=input_format, class_names="[]")
    predictor = op.ONNXPredictor(model, threads=1)
    assert predictor.class_names == [] and predictor.class_name(2) == "2"
    # GCNetPredictor's own __call__ (DefaultPredictor's) around the torch twin of the file
    reference = GCNetPredictor.__new__(GCNetPredictor)
    reference.cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(DEVICE="cpu"))
    reference.model = FixedDetector(outputs)
    reference.aug = MMDetResizeShortestEdge(64, 96, "cv2")
    reference.input_format = input_format
    reference.precision = "fp32"  # the file is float32: compare with GCNetPredictor in fp32
    image = noisy_image(*shape, seed=5)
    ref = reference(image)["instances"]
    ours = predictor(image)
    np.testing.assert_array_equal(
        op.preprocess(image, input_format, 64, 96), reference.model.seen.numpy()
    )
    assert len(ref) == len(outputs["rel"]) - 1  # the box outside the image is dropped
    np.testing.assert_array_equal(ours["boxes"], ref.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(ours["scores"], ref.scores.numpy())
    np.testing.assert_array_equal(ours["classes"], ref.pred_classes.numpy())
    np.testing.assert_array_equal(ours["masks"], ref.pred_masks.numpy())
    assert ours["masks"].any()


def test_predictor_without_mask_head_and_bad_input(tmp_path):
    predictor = op.ONNXPredictor(write_onnx(tmp_path / "m.onnx", fixed_outputs(4), masks=False))
    out = predictor(noisy_image(70, 50))
    assert set(out) == {"boxes", "scores", "classes"} and len(out["boxes"]) == 3
    for bad in (
        np.zeros((20, 30, 3), F32),
        np.zeros((20, 30), np.uint8),
        np.zeros((20, 30, 4), np.uint8),
    ):
        with pytest.raises(
            ValueError, match=rf"shape \({bad.shape[0]}, {bad.shape[1]}.*{bad.dtype}"
        ):
            predictor(bad)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"gcnet_d2.format": None}, "not a 'gcnet_d2 onnx detector v1' ONNX file"),
        ({"gcnet_d2.format": "gcnet_d2 onnx detector v2"}, "detector v2"),
        ({"resize_backend": "pil"}, "resize_backend 'pil' is not supported"),
        ({"input_format": "YUV"}, "input_format must be RGB or BGR"),
        ({"max_size_test": None}, "missing gcnet_d2 metadata"),
    ],
)
def test_predictor_refuses_other_files(tmp_path, meta, message):
    model = write_onnx(tmp_path / "other.onnx", fixed_outputs(2), **meta)
    with pytest.raises(ValueError, match=message) as info:
        op.ONNXPredictor(model)
    assert model in str(info.value)


# --------------------------------------------------------------------------------------------
# torch-free, CLI
# --------------------------------------------------------------------------------------------
def test_imports_only_stdlib_numpy_cv2_onnxruntime():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "cv2", "onnxruntime"}
    assert "__import__" not in MODULE.read_text(encoding="utf-8")
    assert "importlib" not in imported


CHILD = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import importlib.util, json
import numpy as np
module_path, model, tmp = sys.argv[1:]
spec = importlib.util.spec_from_file_location("onnx_predictor", module_path)
op = importlib.util.module_from_spec(spec)
spec.loader.exec_module(op)
import cv2
image = cv2.imread(tmp + "/in.png")
x = op.preprocess(image, "RGB", 64, 96)
pasted = op.paste_masks(np.full((1, 1, 28, 28), 0.9, np.float32),
                        np.array([[10, 10, 30, 40]], np.float32), (60, 80), 0.5)
out = op.ONNXPredictor(model, threads=1)(image)
rc = op.main([model, tmp + "/in.png", "--output", tmp + "/out", "--threads", "1"])
print(json.dumps({"input": list(x.shape), "pasted": int(pasted.sum()), "n": len(out["boxes"]),
                  "masks": list(out["masks"].shape), "rc": rc,
                  "torch_blocked": sys.modules["torch"] is None}))
"""


def test_runs_without_torch_predictor_and_cli(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", fixed_outputs(5, seed=1))
    image = noisy_image(90, 120, seed=2)
    assert cv2.imwrite(str(tmp_path / "in.png"), image)
    proc = run_python(["-c", CHILD, str(MODULE), model, str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "input": [3, 64, 85],
        "pasted": 20 * 30,  # the pixel centres inside the box
        "n": 4,
        "masks": [4, 90, 120],
        "rc": 0,
        "torch_blocked": True,
    }
    expected = op.ONNXPredictor(model)(image)
    record = json.loads((tmp_path / "out" / "in.json").read_text())
    assert (record["image"], record["height"], record["width"]) == (
        str(tmp_path / "in.png"),
        90,
        120,
    )
    assert len(record["detections"]) == 4
    for i, det in enumerate(record["detections"]):
        assert det["class"] == int(expected["classes"][i])
        assert det["name"] == ["cat", "dog", "bird"][det["class"]]
        assert det["score"] == pytest.approx(float(expected["scores"][i]))
        assert det["box"] == pytest.approx(expected["boxes"][i].tolist())
        rle = mask_util.frPyObjects(det["segmentation"], 90, 120)
        np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), expected["masks"][i])
    picture = cv2.imread(str(tmp_path / "out" / "in.jpg"))
    assert picture.shape == image.shape
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in.jpg", "in.json"]


def test_rle_encode_decodes_back():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 5)) < 0.5, np.zeros((4, 6), bool), np.ones((3, 2), bool)]
    masks.append(np.pad(np.ones((2, 2), bool), 1))
    masks[0][0, 0] = True  # a first run of ones: counts start with 0
    for mask in masks:
        rle = op.rle_encode(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        decoded = mask_util.decode(mask_util.frPyObjects(rle, *mask.shape)).astype(bool)
        np.testing.assert_array_equal(decoded, mask)
    assert op.rle_encode(masks[0])["counts"][0] == 0


def test_cli_errors_one_line_status_2_no_partial_files(tmp_path, capsys):
    model = write_onnx(tmp_path / "m.onnx", fixed_outputs(3))
    good, bad = tmp_path / "good.png", tmp_path / "broken.png"
    assert cv2.imwrite(str(good), noisy_image(40, 50))
    bad.write_bytes(good.read_bytes()[:200])  # truncated
    out = tmp_path / "out"

    def run(*argv: str) -> str:
        assert op.main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("onnx_predictor.py: error: "), err
        return err

    assert str(bad) in run(model, str(good), str(bad), "--output", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg", "good.json"]  # good stays
    assert str(tmp_path / "gone.png") in run(
        model, str(tmp_path / "gone.png"), "--output", str(out)
    )
    # the script itself: OpenCV's own warnings ("can't open/read file") add no lines
    for image in (bad, tmp_path / "gone.png"):
        proc = run_python([str(MODULE), model, str(image), "--output", str(out)], timeout=60)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"onnx_predictor.py: error: {image}: ")
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg", "good.json"]
    probe = tmp_path / "probe"
    probe.write_text("")  # written files get the permissions any new file gets
    assert (out / "good.json").stat().st_mode == probe.stat().st_mode

    other = write_onnx(tmp_path / "other.onnx", fixed_outputs(3), **{"gcnet_d2.format": None})
    assert str(other) in run(other, str(good), "--output", str(tmp_path / "out2"))
    assert str(tmp_path / "missing.onnx") in run(
        str(tmp_path / "missing.onnx"), str(good), "--output", str(tmp_path / "out2")
    )
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00garbage")
    assert str(garbage) in run(str(garbage), str(good), "--output", str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()
    blocked = good / "sub"  # a folder under a file cannot be made
    assert str(blocked) in run(model, str(good), "--output", str(blocked))


# --------------------------------------------------------------------------------------------
# the picture: what a person reads
# --------------------------------------------------------------------------------------------
def detections(boxes: list[list[float]], scores: list[float], classes: list[int]) -> dict:
    return {
        "boxes": np.array(boxes, F32).reshape(-1, 4),
        "scores": np.array(scores, F32),
        "classes": np.array(classes, np.int64),
    }


def test_picture_draws_only_detections_at_or_above_the_threshold():
    """Five boxes far apart on a flat image, scores on both sides of 0.5: the three at or
    above it are drawn (box and label change their pixels), the two below leave theirs."""
    boxes = [[20, 30, 60, 70], [120, 30, 160, 70], [220, 30, 260, 70]]
    boxes += [[40, 150, 80, 190], [180, 150, 220, 190]]
    result = detections(boxes, [0.9, 0.6, 0.5, 0.49, 0.1], [0, 1, 2, 0, 1])
    names = ["cat", "dog", "bird", "cat", "dog"]
    image = np.full((240, 320, 3), 40, np.uint8)
    drawn = op.picture_layout(result, names, image.shape[:2])  # default threshold: 0.5
    assert [d.index for d in drawn] == [0, 1, 2]
    assert [d.text for d in drawn] == ["cat 0.90", "dog 0.60", "bird 0.50"]
    picture = op.draw_detections(image, result, names)
    changed = (picture != image).any(axis=2)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        around = changed[y0 - 2 : y1 + 3, x0 - 2 : x1 + 3]
        assert around.any() == (i < 3), i
    every = op.picture_layout(result, names, image.shape[:2], score_threshold=0.0)
    assert len(every) == 5 and every[-1].text == "dog 0.10"


def test_crowded_labels_do_not_overprint_each_other():
    """14 boxes on 4 objects (the quick start's picture before), and 40 on one: every label
    inside the picture, over no other label, drawn where the layout says."""
    rng = np.random.default_rng(0)
    objects = np.array([[30, 40, 120, 110], [100, 60, 200, 150], [180, 20, 300, 100]], F32)
    objects = np.concatenate([objects, [[60, 150, 160, 230]]])
    boxes = objects[rng.integers(0, 4, 14)] + rng.normal(0, 3, (14, 4)).astype(F32)
    cases = [
        (boxes, rng.uniform(0.5, 1, 14)),
        (np.tile([[100, 100, 180, 160]], (40, 1)), np.linspace(1, 0.5, 40)),
    ]
    for boxes, scores in cases:
        classes = rng.integers(0, 3, len(boxes))
        result = detections(boxes.tolist(), scores.tolist(), classes.tolist())
        names = [["cat", "dog", "bird"][c] for c in classes]
        image = np.full((240, 320, 3), 40, np.uint8)
        drawn = op.picture_layout(result, names, image.shape[:2])
        assert len(drawn) == len(boxes)
        labels = [d.label for d in drawn if d.label is not None]
        assert len(labels) >= 14  # all of the first case's; a column of them in the second
        for k, (x0, y0, x1, y1) in enumerate(labels):
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            for a0, b0, a1, b1 in labels[:k]:
                assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0, "labels overlap"
        picture = op.draw_detections(image, result, names)
        for d in drawn:  # each label's background is its class colour where the layout says
            if d.label is not None:
                x0, y0 = d.label[:2]
                color = op._color(int(result["classes"][d.index]))
                assert tuple(int(v) for v in picture[y0, x0]) == color


def test_cli_threshold_and_same_file_names_in_different_folders(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", fixed_outputs(5, seed=1))
    scores = fixed_outputs(5, seed=1)["scores"][:4]  # the 5th box is outside every image
    assert (scores < 0.5).any() and (scores >= 0.5).any()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    assert cv2.imwrite(str(first), noisy_image(90, 120, seed=2))
    assert cv2.imwrite(str(second), noisy_image(60, 80, seed=3))
    out = tmp_path / "out"
    assert op.main([model, str(first), str(second), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x-1.jpg", "x-1.json", "x.jpg", "x.json"]
    for stem, image, height in (("x", first, 90), ("x-1", second, 60)):
        record = json.loads((out / f"{stem}.json").read_text())
        assert (record["image"], record["height"]) == (str(image), height)
        assert len(record["detections"]) == 4  # the JSON keeps those below the threshold
        assert cv2.imread(str(out / f"{stem}.jpg")).shape[0] == height
    # nothing scores 1: the picture is the image itself, the JSON unchanged
    assert op.main([model, str(first), "--output", str(out), "--score-threshold", "1"]) == 0
    _, plain = cv2.imencode(".jpg", cv2.imread(str(first)))
    assert (out / "x.jpg").read_bytes() == plain.tobytes()
    assert len(json.loads((out / "x.json").read_text())["detections"]) == 4
    assert op.output_stems(["a/x.png", "b/x.png", "x-1.png", "c/X.jpg", "y.png"]) == [
        "x", "x-1", "x-1-1", "X-2", "y",
    ]  # fmt: skip


def test_cli_refuses_a_threshold_outside_0_1(tmp_path, capsys):
    model = write_onnx(tmp_path / "m.onnx", fixed_outputs(2))
    assert cv2.imwrite(str(tmp_path / "in.png"), noisy_image(40, 50))
    argv = [model, str(tmp_path / "in.png"), "--output", str(tmp_path / "out")]
    assert op.main([*argv, "--score-threshold", "1.5"]) == 2
    assert capsys.readouterr().err == (
        "onnx_predictor.py: error: --score-threshold must be in [0, 1], got 1.5\n"
    )
    assert not (tmp_path / "out").exists()
