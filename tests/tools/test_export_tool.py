"""tools/export_model.py: detectron2's flags, mmdetection weights, verify-then-write, exit 2.

The tool runs in this process through its ``main(argv)`` (the exit status it returns, its
output captured); one test runs the script itself, to check what its ``__main__`` does.
"""

from __future__ import annotations

import pytest
import torch

from gcnet_d2.export import compare_instances, eager_detections, load_traced, run_traced
from tests.parity import mmdet_reference as ref
from tests.testing import (
    REPO,
    export_cfg,
    export_tool,
    realistic_export_model,
    run_python,
    sample_image,
    write_image,
)

TOOL = str(REPO / "tools" / "export_model.py")
R50_GC = str(REPO / "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


@pytest.fixture(scope="module")
def tool():
    """tools/export_model.py as a module."""
    with export_tool() as module:
        yield module


def export(tool, capsys, args: list[str]) -> tuple[int, str, str]:  # noqa: ANN001
    """``(exit status, stdout, stderr)`` of the tool on ``args``."""
    capsys.readouterr()
    status = tool.main(args)
    out, err = capsys.readouterr()
    return status, out, err


def _write_image(path, height: int, width: int, seed: int) -> str:  # noqa: ANN001
    return write_image(path, sample_image(height, width, seed).permute(1, 2, 0).numpy())


def assert_weights_are_the_checkpoints(
    exported: dict, checkpoint: str, part: str = "", prefix: str = ""
) -> None:
    """Every tensor of the checkpoint (those whose names start with ``part``) is in the
    exported module's ``state_dict()`` under ``prefix`` + its name, and equal: the export
    holds the weights it was given, not the initial ones."""
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    weights = {name: w for name, w in weights.items() if name.startswith(part)}
    assert len(weights) > 50, sorted(weights)[:5]
    for name, tensor in weights.items():
        assert prefix + name in exported, (name, sorted(exported)[:5])
        assert torch.equal(exported[prefix + name], tensor), name


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A small DCN + GC cascade config (YAML) and its detectron2 checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_export")
    cfg = export_cfg("dcn_gc_cascade")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 192
    (folder / "tiny.yaml").write_text(cfg.dump())
    model = realistic_export_model(cfg)
    torch.save({"model": model.state_dict()}, folder / "tiny.pth")
    images = [_write_image(folder / f"img{i}.png", 150 + 30 * i, 200, i) for i in range(2)]
    return folder, images, model


@pytest.mark.slow
def test_backbone_to_pt2_through_the_tool(tool, capsys, tiny_files, tmp_path):
    """The backbone route of the tool (ONNX itself: tests/export/test_export.py), DCN + GC
    cascade; the reloaded program at a size no sample had equals the eager backbone there."""
    from gcnet_d2.export.backbone_features import backbone_outputs
    from gcnet_d2.export.compare import relative_error

    folder, images, model = tiny_files
    args = ["--config-file", str(folder / "tiny.yaml"), "--export-method", "torch_export"]
    args += ["--format", "pt2", "--part", "backbone", "--output", str(tmp_path)]
    args += ["--sample-image", images[0], "--sample-image", images[1]]
    args += ["MODEL.WEIGHTS", str(folder / "tiny.pth")]
    status, out, err = export(tool, capsys, args)
    assert status == 0, err[-3000:]
    assert out.count("max relative difference") == 3, out  # 2 + padded
    program = torch.export.load(str(tmp_path / "model.pt2"))
    x = torch.randn(1, 3, 96, 224)  # a size no sample had
    expected = backbone_outputs(model.backbone, x)
    got = program.module()(x)
    assert len(got) == len(expected) == 5
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape and relative_error(e, g) <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason())
def test_onnx_detector_from_an_mmdetection_checkpoint(tool, capsys, tmp_path):
    """MODEL.WEIGHTS is an mmdetection file (converted on load), full width; two sample
    images; the whole detector to ONNX, then run in ONNX Runtime at another size and compared
    with the eager model (as the tool loads it) there."""
    from gcnet_d2.export.onnx_detector import ONNXDetector

    mm = ref.build_mmdet_model("mask_rcnn_r50_gc_r16", num_classes=3, seed=1)
    weights = tmp_path / "mmdet.pth"
    ref.save_mmdet_checkpoint(mm, str(weights))
    images = [_write_image(tmp_path / f"s{i}.png", 120 + 40 * i, 160, i) for i in range(2)]
    out = tmp_path / "out"
    args = ["--config-file", R50_GC, "--export-method", "tracing", "--format", "onnx"]
    args += ["--output", str(out), "--sample-image", images[0]]
    opts = ["MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.NUM_CLASSES", "3", *SMALL_TEST_SIZE]
    args += ["--sample-image", images[1], *opts]
    status, stdout, err = export(tool, capsys, args)
    assert status == 0, err[-3000:]
    assert stdout.count("classes equal") == 2, stdout
    image = sample_image(128, 160, 5)  # a size no sample had
    inst = ONNXDetector(str(out / "model.onnx"))(image)
    eager = tool.setup_yaml(R50_GC, opts).model
    diff = compare_instances(eager_detections(eager, image), inst)
    assert diff.ok and len(inst) > 0, diff.summary()


def test_traced_detector_through_the_tool(tool, capsys, tiny_files, tmp_path):
    """The whole detector to TorchScript through the tool (small DCN + GC cascade), reloaded
    and run at another size: equal to eager there; the file holds the checkpoint's weights."""
    folder, images, model = tiny_files
    args = ["--config-file", str(folder / "tiny.yaml"), "--format", "torchscript"]
    args += ["--output", str(tmp_path), "--sample-image", images[0], "--sample-image", images[1]]
    args += ["MODEL.WEIGHTS", str(folder / "tiny.pth")]
    status, out, err = export(tool, capsys, args)
    assert status == 0, err[-3000:]
    assert out.count("classes equal") == 2, out
    module, meta = load_traced(str(tmp_path / "model.ts"))
    image = sample_image(128, 160, 5)  # a size no sample had
    inst = run_traced(module, meta, image)
    diff = compare_instances(eager_detections(model, image), inst)
    assert diff.ok and len(inst) > 0, diff.summary()
    state = module.state_dict()  # names under the TracingAdapter's ``model``
    assert_weights_are_the_checkpoints(state, str(folder / "tiny.pth"), prefix="model.")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--export-method", "scripting"], "scripting"),
        (["--export-method", "torch_export", "--format", "onnx"], "cannot go through torch.export"),
        (["--format", "onnx", "--opset", "15"], "opset 15"),
        (["--format", "onnx", "--part", "backbone", "--opset", "17"], "opset 17"),
        (["MODEL.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
        (["MODEL.WEIGHTS", "/nonexistent/weights.pth"], "no such file"),
    ],
)
def test_bad_routes_and_inputs_exit_2_naming_the_reason(tool, capsys, extra, message, tmp_path):
    image = _write_image(tmp_path / "img.png", 64, 64, 0)
    args = ["--config-file", R50_GC, "--sample-image", image, "--output"]
    args += [str(tmp_path / "out"), *extra, *SMALL_TEST_SIZE]
    status, out, err = export(tool, capsys, args)
    assert status == 2, (out, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("export_model.py: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_the_script_exits_2_with_one_line_and_no_traceback(tmp_path):
    """``python tools/export_model.py``: the status and the line of ``main``, nothing else."""
    image = _write_image(tmp_path / "img.png", 64, 64, 0)
    args = [TOOL, "--config-file", R50_GC, "--sample-image", image]
    args += ["--output", str(tmp_path / "out"), "--export-method", "scripting"]
    proc = run_python(args, timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    assert proc.stderr.startswith("export_model.py: error:") and "scripting" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unreadable_sample_image_exits_2(tool, capsys, tiny_files, tmp_path):
    folder, _, _ = tiny_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    args = ["--config-file", str(folder / "tiny.yaml"), "--sample-image", str(bad)]
    args += ["--output", str(tmp_path / "out")]
    status, _, err = export(tool, capsys, args)
    assert status == 2 and "broken.png" in err, err[-2000:]
    assert not (tmp_path / "out" / "model.ts").exists()


def test_documented_commands_parse_and_take_a_route(tool):
    from gcnet_d2.export.routes import check_route
    from tests.testing import documented_commands

    commands = documented_commands("tools/export_model.py")
    assert len(commands) >= 6  # three routes, in README.md and docs/deploy.md
    for args in commands:
        parsed = tool.parse_args(args)
        assert (REPO / parsed.config_file).is_file(), parsed.config_file
        check_route(parsed.export_method, parsed.format, parsed.part, parsed.opset)


@pytest.mark.slow
def test_backbone_from_a_lazyconfig(tool, capsys, tmp_path):
    """A LazyConfig row (.py) with key=value overrides; weights from train.init_checkpoint:
    the traced backbone holds them."""
    from detectron2.config import instantiate

    import gcnet_d2

    lazy = gcnet_d2.get_config("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py")
    torch.manual_seed(0)
    torch.save({"model": instantiate(lazy.model).state_dict()}, tmp_path / "w.pth")
    image = _write_image(tmp_path / "img.png", 100, 140, 0)
    config = str(REPO / "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py")
    args = ["--config-file", config]
    args += ["--export-method", "tracing", "--format", "torchscript", "--part", "backbone"]
    args += ["--output", str(tmp_path / "out"), "--sample-image", image]
    args += [f"train.init_checkpoint={tmp_path / 'w.pth'}"]
    args += ["dataloader.test.mapper.augmentations.0.short_edge_length=[96]"]
    args += ["dataloader.test.mapper.augmentations.0.max_size=128"]
    status, out, err = export(tool, capsys, args)
    assert status == 0, err[-3000:]
    assert "initial weights" not in out
    traced = torch.jit.load(str(tmp_path / "out" / "model.ts"))
    assert_weights_are_the_checkpoints(traced.state_dict(), str(tmp_path / "w.pth"), "backbone.")
