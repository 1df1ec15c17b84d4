"""demo/demo.py: inputs, outputs, montage and errors, on a tiny random-weight quick-start model."""

from __future__ import annotations

import importlib.util
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

import gcnet_d2
from gcnet_d2.data import SYNTHETIC_CLASSES, generate_synthetic_coco
from tests.testing import QUICKSTART_NAME as QUICKSTART
from tests.testing import REPO, TINY_OPTS, documented_commands

DEMO = REPO / "demo" / "demo.py"
# The quick-start architecture, narrowed so that building, saving and running it takes moments.
TINY = [
    *TINY_OPTS,
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "TEST.DETECTIONS_PER_IMAGE", "5",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


def load_demo():
    spec = importlib.util.spec_from_file_location("gcnet_d2_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run far faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two generated 96x128 val images and random weights of the tiny quick-start model."""
    root = tmp_path_factory.mktemp("demo")
    paths = generate_synthetic_coco(root / "ds", num_train=1, num_val=2, height=96, width=128)
    cfg = gcnet_d2.get_config(QUICKSTART)
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)  # module fixtures run before the per-test seed
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("random")
    config = gcnet_d2.get_config_file(QUICKSTART)
    return {
        "root": root,
        "val": Path(paths["val"].image_root),
        "train": Path(paths["train"].image_root),
        "args": ["--config-file", config],
        "opts": ["MODEL.WEIGHTS", str(root / "random.pth"), *TINY],
    }


def rgb(path: Path) -> np.ndarray:
    return read_image(str(path), format="RGB").astype(np.int16)


def test_folder_and_file_drawn_with_montage(setup: dict, tmp_path: Path, capsys) -> None:
    out, montage = tmp_path / "out", tmp_path / "docs" / "montage.png"
    train_image = setup["train"] / "000000.jpg"
    argv = [*setup["args"], "--input", str(setup["val"]), str(train_image)]
    argv += ["--output", str(out), "--confidence-threshold", "0.0", "--montage", str(montage)]
    assert demo.main([*argv, *setup["opts"]]) == 0

    # Same file names from two folders keep their folder's name.
    expected = ["train__000000.jpg", "val__000000.jpg", "val__000001.jpg"]
    assert sorted(os.listdir(out)) == expected  # no temporary files left behind
    for name, source in zip(
        expected,
        [train_image, setup["val"] / "000000.jpg", setup["val"] / "000001.jpg"],
        strict=True,
    ):
        drawn, original = rgb(out / name), rgb(source)
        assert drawn.shape == original.shape == (96, 128, 3)
        changed = (np.abs(drawn - original).max(axis=2) > 60).sum()
        assert changed > 50, f"{name}: detections at threshold 0 should be drawn"
    err = capsys.readouterr().err
    assert "5 detections" in err and "montage of 3 images" in err

    with Image.open(montage) as im:  # 2 columns of 320-wide tiles, 4 px gaps, palette PNG
        assert im.format == "PNG" and im.mode == "P"
        assert im.size == (2 * 320 + 4, 2 * 240 + 4)


def test_single_file_to_named_output_and_threshold(setup: dict, tmp_path: Path) -> None:
    source = setup["val"] / "000001.jpg"
    out = tmp_path / "picture.png"
    argv = [*setup["args"], "--input", str(source), "--output", str(out)]
    assert demo.main([*argv, "--confidence-threshold", "1.0", *setup["opts"]]) == 0
    assert os.listdir(tmp_path) == ["picture.png"]
    # Nothing reaches score 1.0: the picture is the input, pixel for pixel.
    np.testing.assert_array_equal(rgb(out), rgb(source))


def test_unreadable_image_named_others_written(setup: dict, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "in" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not a jpeg")
    argv = [*setup["args"], "--input", str(bad), str(setup["val"] / "000000.jpg")]
    argv += ["--output", str(tmp_path / "out"), *setup["opts"]]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "could not be read" in err
    assert os.listdir(tmp_path / "out") == ["000000.jpg"]


def test_input_errors_name_the_input(setup: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        str(tmp_path / "missing.jpg"): "no such file or folder",
        str(tmp_path / "empty"): "holds no image",
        str(tmp_path / "*.png"): "matches no image",
    }
    for item, message in cases.items():
        argv = [*setup["args"], "--input", item, "--output", str(tmp_path / "o"), *setup["opts"]]
        assert demo.main(argv) == 2
        err = capsys.readouterr().err
        assert item in err and message in err
    argv = [*setup["args"], "--output", str(tmp_path / "o"), "--input", str(setup["val"])]
    assert demo.main([*argv, "MODEL.WEIGHTS", "w.pth"]) == 2  # overrides swallowed by --input
    assert "go after all the options" in capsys.readouterr().err
    assert demo.main([*setup["args"], "--input", str(setup["val"]), *setup["opts"]]) == 2
    assert "--output and/or --montage" in capsys.readouterr().err
    argv = [*setup["args"], "--input", str(setup["val"]), "--output", str(tmp_path / "o")]
    assert demo.main(argv) == 2  # the quick-start config has no weights of its own
    assert "MODEL.WEIGHTS is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def one_error_line(err: str) -> str:
    """The single ``demo.py: error: ...`` line of ``err``, which must hold no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("demo.py: error: "), err
    return lines[0]


def test_config_errors_one_line_exit_2(setup: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    """A bad override or an unknown key (gcnet_d2's ConfigError): one line naming the key,
    exit status 2, nothing written; also through the script's ``__main__``."""
    out = tmp_path / "o"
    argv = [*setup["args"], "--input", str(setup["val"]), "--output", str(out), *setup["opts"]]
    cases = {
        ("MODEL.RESNETS.DEPTH", "51"): ("MODEL.RESNETS.DEPTH", "51", "command-line overrides"),
        ("MODEL.NO_SUCH_KEY", "1"): ("command-line override", "MODEL.NO_SUCH_KEY"),
    }
    for override, named in cases.items():
        assert demo.main([*argv, *override]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert all(n in line for n in named), line
    assert not out.exists()

    monkeypatch.setattr("sys.argv", [str(DEMO), *argv, "MODEL.RESNETS.DEPTH", "51"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(DEMO), run_name="__main__")
    assert e.value.code == 2
    assert "MODEL.RESNETS.DEPTH" in one_error_line(capsys.readouterr().err)


def write_mmdet_r101_checkpoint(path: Path, num_classes: int = 3) -> None:
    """An mmdetection detector checkpoint (``state_dict`` + ``meta``, mmdetection's key names)
    of another architecture than the quick-start model's: a narrow ResNet-101 Mask R-CNN
    (23 res4 blocks) without GC blocks. Small: widths 8 to 64, convolution weights only."""
    sd: dict[str, torch.Tensor] = {"backbone.conv1.weight": torch.zeros(8, 3, 7, 7)}
    in_ch = 8
    stages = zip((3, 4, 23, 3), (8, 16, 32, 64), strict=True)  # res4: 23 blocks, ResNet-101
    for stage, (blocks, width) in enumerate(stages, start=1):
        for i in range(blocks):
            p = f"backbone.layer{stage}.{i}."
            sd[p + "conv1.weight"] = torch.zeros(width, in_ch, 1, 1)
            sd[p + "conv2.weight"] = torch.zeros(width, width, 3, 3)
            sd[p + "conv3.weight"] = torch.zeros(4 * width, width, 1, 1)
            if i == 0:
                sd[p + "downsample.0.weight"] = torch.zeros(4 * width, in_ch, 1, 1)
            in_ch = 4 * width
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(32, 32, 1, 1)
    sd["rpn_head.rpn_conv.weight"] = torch.zeros(32, 32, 3, 3)
    sd["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(num_classes + 1, 64)
    sd["roi_head.mask_head.conv_logits.weight"] = torch.zeros(num_classes, 32, 1, 1)
    torch.save({"state_dict": sd, "meta": {"CLASSES": list(SYNTHETIC_CLASSES)}}, path)


def test_checkpoint_of_another_architecture_one_line_exit_2(
    setup: dict, tmp_path: Path, capsys
) -> None:
    """A checkpoint written for another architecture (gcnet_d2's CheckpointMismatchError)
    and a missing checkpoint (CheckpointLoadError): one line naming the file and the
    problem, exit status 2, nothing written."""
    ckpt = tmp_path / "r101.pth"
    write_mmdet_r101_checkpoint(ckpt)
    out = tmp_path / "o"
    argv = [*setup["args"], "--input", str(setup["val"]), "--output", str(out), *setup["opts"]]
    assert demo.main([*argv, "MODEL.WEIGHTS", str(ckpt)]) == 2  # the last MODEL.WEIGHTS wins
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and "ResNet-101" in line, line
    assert "depth: checkpoint 101, model 50" in line, line
    missing = tmp_path / "missing.pth"
    assert demo.main([*argv, "MODEL.WEIGHTS", str(missing)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {missing}: no such file" in line, line
    assert not out.exists()


def test_unexpected_errors_keep_their_traceback(setup: dict, tmp_path: Path, monkeypatch) -> None:
    """Only the known errors become one line: a bug still raises (with its traceback)."""

    def broken_predictor(cfg):  # noqa: ANN001, ANN202
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(demo, "GCNetPredictor", broken_predictor)
    argv = [*setup["args"], "--input", str(setup["val"]), "--output", str(tmp_path / "o")]
    with pytest.raises(KeyError, match="a bug"):
        demo.main([*argv, *setup["opts"]])


def test_expand_inputs_folders_globs_and_repeats(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "c.txt", "sub/d.jpeg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = demo.expand_inputs([str(tmp_path), str(tmp_path / "**" / "*.jp*g")])
    names = [str(Path(p).relative_to(tmp_path)) for p in found]
    assert names == ["a.png", "b.jpg", os.path.join("sub", "d.jpeg")]


def test_output_paths() -> None:
    assert demo.output_paths(["x/a.jpg"], "out.png") == ["out.png"]
    assert demo.output_paths(["x/a.jpg", "y/b.jpg"], "o") == ["o/a.jpg", "o/b.jpg"]
    assert demo.output_paths(["d/x/a.jpg", "d/y/a.jpg"], "o") == ["o/x__a.jpg", "o/y__a.jpg"]
    assert demo.output_paths(["a.jpg"], None) == [None]


def test_class_names_from_the_test_dataset() -> None:
    def classes(name: str) -> list[str]:
        cfg = gcnet_d2.get_config(name)
        return list(demo.get_metadata(cfg).thing_classes)

    assert classes(QUICKSTART) == list(SYNTHETIC_CLASSES)
    coco = classes("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    assert len(coco) == 80 and coco[:3] == ["person", "bicycle", "car"]


def test_documented_commands_parse() -> None:
    commands = documented_commands("demo/demo.py")
    assert commands, "docs/usage.md documents the demo"
    for argv in commands:
        args = demo.get_parser().parse_args(argv)
        cfg = gcnet_d2.add_gcnet_config(get_cfg())
        cfg.merge_from_file(str(REPO / args.config_file))
        cfg.merge_from_list(args.opts)  # known keys, one value each
        assert cfg.MODEL.WEIGHTS, argv
