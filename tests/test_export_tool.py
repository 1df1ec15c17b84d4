"""tools/export_model.py: detectron2's flags, mmdetection weights, verify-then-write, exit 2."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gcnet_d2.export import load_traced, run_traced
from tests import mmdet_reference as ref
from tests.export_helpers import realistic_weights, sample_image, tiny_cfg
from tests.helpers import REPO, run

TOOL = str(REPO / "tools" / "export_model.py")
R50_GC = "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    return env


def _write_image(path, height: int, width: int, seed: int) -> str:  # noqa: ANN001
    array = sample_image(height, width, seed).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A small DCN + GC cascade config (YAML) and its detectron2 checkpoint."""
    from detectron2.modeling import build_model

    folder = tmp_path_factory.mktemp("tiny_export")
    cfg = tiny_cfg(
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5"
        "_1x_coco.yaml"
    )
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 192
    (folder / "tiny.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    model = realistic_weights(build_model(cfg))
    torch.save({"model": model.state_dict()}, folder / "tiny.pth")
    images = [_write_image(folder / f"img{i}.png", 150 + 30 * i, 200, i) for i in range(2)]
    return folder, images


def test_backbone_to_pt2_through_the_tool(tiny_files, tmp_path):
    """The backbone route of the tool (ONNX itself: tests/test_export.py), DCN + GC cascade."""
    folder, images = tiny_files
    args = [TOOL, "--config-file", str(folder / "tiny.yaml"), "--export-method", "torch_export"]
    args += ["--format", "pt2", "--part", "backbone", "--output", str(tmp_path)]
    args += ["--sample-image", images[0], "--sample-image", images[1]]
    args += ["MODEL.WEIGHTS", str(folder / "tiny.pth")]
    proc = run(args, _env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("max relative difference") == 3, proc.stdout  # 2 + padded
    program = torch.export.load(str(tmp_path / "model.pt2"))
    x = torch.randn(1, 3, 96, 224)  # a size no sample had
    assert len(program.module()(x)) == 5


@pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason())
def test_traced_detector_from_an_mmdetection_checkpoint(tmp_path):
    """MODEL.WEIGHTS is an mmdetection file (converted on load); two sample images."""
    mm = ref.build_mmdet_model("mask_rcnn_r50_gc_r16", num_classes=3, seed=1)
    weights = tmp_path / "mmdet.pth"
    ref.save_mmdet_checkpoint(mm, str(weights))
    images = [_write_image(tmp_path / f"s{i}.png", 120 + 40 * i, 160, i) for i in range(2)]
    out = tmp_path / "out"
    args = [TOOL, "--config-file", R50_GC, "--export-method", "tracing", "--format"]
    args += ["torchscript", "--output", str(out), "--sample-image", images[0]]
    args += ["--sample-image", images[1], "MODEL.WEIGHTS", str(weights)]
    args += ["MODEL.ROI_HEADS.NUM_CLASSES", "3", *SMALL_TEST_SIZE]
    proc = run(args, _env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("classes equal") == 2, proc.stdout
    module, meta = load_traced(str(out / "model.ts"))
    inst = run_traced(module, meta, sample_image(128, 160, 5))
    assert inst.pred_boxes.tensor.shape[1] == 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--export-method", "scripting"], "scripting"),
        (["--format", "onnx"], "whole detector cannot go through torch.export"),
        (["--format", "onnx", "--part", "backbone", "--opset", "17"], "opset 17"),
        (["MODEL.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
        (["MODEL.WEIGHTS", "/nonexistent/weights.pth"], "no such file"),
    ],
)
def test_bad_routes_and_inputs_exit_2_naming_the_reason(extra, message, tmp_path):
    image = _write_image(tmp_path / "img.png", 64, 64, 0)
    args = [TOOL, "--config-file", R50_GC, "--sample-image", image, "--output"]
    args += [str(tmp_path / "out"), *extra, *SMALL_TEST_SIZE]
    proc = run(args, _env(), timeout=600)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    assert "export_model.py: error:" in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unreadable_sample_image_exits_2(tiny_files, tmp_path):
    folder, _ = tiny_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    args = [TOOL, "--config-file", str(folder / "tiny.yaml"), "--sample-image", str(bad)]
    args += ["--output", str(tmp_path / "out")]
    proc = run(args, _env(), timeout=600)
    assert proc.returncode == 2 and "broken.png" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "model.ts").exists()


def test_documented_commands_parse_and_take_a_route():
    import importlib.util

    from gcnet_d2.export.routes import check_route
    from tests.helpers import documented_commands

    spec = importlib.util.spec_from_file_location("export_model", TOOL)
    tool = importlib.util.module_from_spec(spec)
    sys.modules["export_model"] = tool  # its dataclass looks its module up
    spec.loader.exec_module(tool)
    commands = documented_commands("tools/export_model.py")
    assert len(commands) >= 6  # three routes, in README.md and docs/deploy.md
    for args in commands:
        parsed = tool.parse_args(args)
        assert (REPO / parsed.config_file).is_file(), parsed.config_file
        check_route(parsed.export_method, parsed.format, parsed.part, parsed.opset)


def test_backbone_from_a_lazyconfig(tmp_path):
    """A LazyConfig row (.py) with key=value overrides; weights from train.init_checkpoint."""
    from detectron2.config import instantiate

    import gcnet_d2

    lazy = gcnet_d2.get_config("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py")
    torch.manual_seed(0)
    torch.save({"model": instantiate(lazy.model).state_dict()}, tmp_path / "w.pth")
    image = _write_image(tmp_path / "img.png", 100, 140, 0)
    args = [TOOL, "--config-file", "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py"]
    args += ["--export-method", "tracing", "--format", "torchscript", "--part", "backbone"]
    args += ["--output", str(tmp_path / "out"), "--sample-image", image]
    args += [f"train.init_checkpoint={tmp_path / 'w.pth'}"]
    args += ["dataloader.test.mapper.augmentations.0.short_edge_length=[96]"]
    args += ["dataloader.test.mapper.augmentations.0.max_size=128"]
    proc = run(args, _env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initial weights" not in proc.stdout
    assert any((tmp_path / "out").iterdir())
