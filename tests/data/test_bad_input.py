"""Bad input fails loudly and clearly, or is skipped on request; odd-but-valid input works.

Datasets here are a handful of 64x80 images written by the tests, registered with detectron2's
``register_coco_instances`` and read through ``GCNetTrainer``'s loaders (the training path).
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import SizeMismatchError
from PIL import Image, UnidentifiedImageError

import train_net
from gcnet_d2.config import add_gcnet_config
from gcnet_d2.data.validation import SKIP_HINT, validate_coco_json
from gcnet_d2.engine import GCNetTrainer
from gcnet_d2.errors import DatasetError, one_line
from tests.testing import (
    QUICKSTART,
    TINY_OPTS,
    box_annotation,
    python_env,
    run_python,
    write_coco,
)

H, W = 64, 80
BOX = [10.0, 12.0, 30.0, 20.0]


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _write(root: Path, name: str, kind: str, seed: int = 0) -> None:
    """Write image file ``name`` of the given kind under ``root``."""
    path = root / name
    rgb = Image.fromarray(_pixels(seed))
    if kind == "rgb":
        rgb.save(path, quality=95)
    elif kind == "gray":
        rgb.convert("L").save(path)
    elif kind == "rgba":
        rgb.convert("RGBA").save(path)
    elif kind == "palette":
        rgb.convert("P").save(path)
    elif kind == "gray16":
        Image.fromarray(_pixels(seed)[..., 0].astype(np.uint16) * 200).save(path)
    elif kind == "truncated":
        rgb.save(path, quality=95)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image, just text " * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "small":  # decodes to 40x50 while its annotation says 64x80
        Image.fromarray(_pixels(seed)[:40, :50]).save(path)
    elif kind != "missing":
        raise ValueError(kind)


def make_dataset(root: Path, images: list[tuple[str, str]], unannotated: tuple[str, ...] = ()):
    """Write images (``(file name, kind)``, all said to be H x W) and a COCO file with one
    box per image but ``unannotated``; register it under a fresh name; return the name."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, kind) in enumerate(images, start=1):
        _write(root, name, kind, seed=i)
    annotations = [
        box_annotation(i, BOX)
        for i, (name, _) in enumerate(images, start=1)
        if name not in unannotated
    ]
    name, _ = write_coco(root, [(f, H, W) for f, _ in images], annotations, prefix="bad_input")
    return name


def make_cfg(name: str, *, skip: bool = False, workers: int = 0, filter_empty: bool = True):
    cfg = add_gcnet_config(get_cfg())
    cfg.merge_from_file(QUICKSTART, allow_unsafe=False)
    cfg.merge_from_list(TINY_OPTS)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = filter_empty
    cfg.GCNET_DATA.SKIP_BAD_IMAGES = skip
    return cfg


def take(loader, batches: int) -> list[dict]:  # noqa: ANN001
    out = []
    for batch in loader:
        out.extend(batch)
        if len(out) >= 2 * batches:
            return out
    return out


GOOD = [(f"good{i}.jpg", "rgb") for i in range(4)]


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """caplog for gcnet_d2's warnings, also after train_net's setup_logger stopped propagation."""
    monkeypatch.setattr(logging.getLogger("gcnet_d2"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="gcnet_d2")
    return caplog


# --------------------------------------------------------------------------------------------
# Odd but valid input works
# --------------------------------------------------------------------------------------------


def test_gray_rgba_palette_16bit_and_unannotated_images_work(tmp_path: Path):
    kinds = ["rgb", "gray", "rgba", "palette", "gray16"]
    images = [(f"{k}.png", k) for k in kinds] + [("no_boxes.jpg", "rgb")]
    name = make_dataset(tmp_path, images, unannotated=("no_boxes.jpg",))
    cfg = make_cfg(name, filter_empty=False)

    seen = take(GCNetTrainer.build_train_loader(cfg), batches=6)  # two epochs
    assert {Path(d["file_name"]).name for d in seen} == {n for n, _ in images}
    for d in seen:
        assert d["image"].shape[0] == 3 and d["image"].dtype.is_floating_point is False
        boxes = len(d["instances"])
        assert boxes == (0 if d["file_name"].endswith("no_boxes.jpg") else 1)

    tested = [d for batch in GCNetTrainer.build_test_loader(cfg, name) for d in batch]
    assert len(tested) == len(images) and all(d["image"].shape[0] == 3 for d in tested)

    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # detectron2's default: dropped, no error
    seen = take(GCNetTrainer.build_train_loader(cfg), batches=3)
    assert not any(d["file_name"].endswith("no_boxes.jpg") for d in seen)


# --------------------------------------------------------------------------------------------
# Broken files: clear errors naming the file
# --------------------------------------------------------------------------------------------


def test_missing_folder_and_empty_files_are_named_before_training(tmp_path: Path):
    bad = [("missing.jpg", "missing"), ("a_folder.jpg", "folder"), ("empty.jpg", "empty")]
    name = make_dataset(tmp_path, GOOD[:2] + bad)
    with pytest.raises(DatasetError) as info:
        GCNetTrainer.build_train_loader(make_cfg(name))
    assert str(info.value) == (
        f"3 of 5 images of training set [{name!r}] cannot be used: "
        f"{tmp_path / 'missing.jpg'}: no such file; "
        f"{tmp_path / 'a_folder.jpg'}: not a regular file; "
        f"{tmp_path / 'empty.jpg'}: empty file (0 bytes). Fix or remove them; {SKIP_HINT}"
    )


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = make_dataset(tmp_path, [*GOOD[:2], ("locked.jpg", "rgb")])
    locked = tmp_path / "locked.jpg"
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads files whatever their permission bits: ask os.access
        access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode, **kw: path != str(locked) and access(path, mode, **kw)
        )
    with pytest.raises(DatasetError) as info:
        GCNetTrainer.build_train_loader(make_cfg(name))
    assert str(info.value) == (
        f"1 of 3 images of training set [{name!r}] cannot be used: "
        f"{locked}: not readable (permission denied). Fix or remove them; {SKIP_HINT}"
    )


@pytest.mark.parametrize(
    ("kind", "problem", "cause"),
    [
        # the decoder's own words for a cut-off JPEG vary with the Pillow version
        ("truncated", r"cannot be decoded \(OSError: [^()]+\)", OSError),
        (
            "garbage",
            re.escape(
                "cannot be decoded (UnidentifiedImageError: not an image file PIL can identify)"
            ),
            UnidentifiedImageError,
        ),
        # detectron2 reports (width, height): decoded 50x40, annotated 80x64
        (
            "small",
            r"size disagrees with its annotation \(Mismatched image shape .*"
            + re.escape("got (50, 40), expect (80, 64).")
            + r".*\)",
            SizeMismatchError,
        ),
    ],
    ids=["truncated", "garbage", "small"],
)
def test_undecodable_or_mismatched_image_is_named_when_read(tmp_path: Path, kind, problem, cause):  # noqa: ANN001
    name = make_dataset(tmp_path, [("broken.jpg", kind)] + GOOD[:1])
    loader = GCNetTrainer.build_train_loader(make_cfg(name))
    with pytest.raises(DatasetError) as info:
        take(loader, batches=2)
    broken = re.escape(str(tmp_path / "broken.jpg"))
    assert re.fullmatch(rf"image {broken}: {problem}; {re.escape(SKIP_HINT)}", str(info.value))
    assert type(info.value.__cause__) is cause


def test_worker_errors_reach_the_user_as_one_line(tmp_path: Path):
    """A DataLoader worker process (DATALOADER.NUM_WORKERS 1) decodes the broken image: torch
    re-raises its error in the main process with the worker's traceback in the message; the
    one line the entry points print names the file as with no worker."""
    name = make_dataset(tmp_path, [("broken.jpg", "truncated")] + GOOD[:1])
    loader = GCNetTrainer.build_train_loader(make_cfg(name, workers=1))
    with pytest.raises(DatasetError) as info:
        take(loader, batches=2)
    assert "in DataLoader worker process 0" in str(info.value)
    assert "Original Traceback" in str(info.value)
    line = one_line(info.value)
    broken = re.escape(str(tmp_path / "broken.jpg"))
    problem = rf"cannot be decoded \(OSError: [^()]+\); {re.escape(SKIP_HINT)}"
    assert re.fullmatch(rf"image {broken}: {problem}", line), line


def test_evaluation_never_skips(tmp_path: Path):
    name = make_dataset(tmp_path, [("broken.jpg", "truncated")] + GOOD[:1])
    loader = GCNetTrainer.build_test_loader(make_cfg(name, skip=True), name)
    with pytest.raises(DatasetError) as info:
        list(loader)
    broken = re.escape(str(tmp_path / "broken.jpg"))
    assert re.fullmatch(
        rf"image {broken}: cannot be decoded \(OSError: [^()]+\); evaluation needs every image",
        str(info.value),
    )
    name = make_dataset(tmp_path / "b", [("missing.jpg", "missing")] + GOOD[:1])
    with pytest.raises(DatasetError) as info:
        GCNetTrainer.build_test_loader(make_cfg(name, skip=True), name)
    assert str(info.value) == (
        f"1 of 2 images of test set {name!r} cannot be used: {tmp_path / 'b' / 'missing.jpg'}: "
        "no such file. Fix or remove them; evaluation needs every image"
    )


# --------------------------------------------------------------------------------------------
# Skipping broken images in training
# --------------------------------------------------------------------------------------------

BROKEN = [
    ("missing.jpg", "missing"),
    ("empty.jpg", "empty"),
    ("truncated.jpg", "truncated"),
    ("garbage.jpg", "garbage"),
    ("small.jpg", "small"),
]
# What the skip warning says about each of BROKEN[2:], found only when decoded.
SKIP_REASON = {
    "truncated.jpg": r"cannot be decoded \(OSError: [^()]+\)",
    "garbage.jpg": re.escape("cannot be decoded (UnidentifiedImageError: not an image file"),
    "small.jpg": re.escape("size disagrees with its annotation (Mismatched image shape"),
}


def test_skip_bad_images_logs_and_counts_them(tmp_path: Path, warnings_log):  # noqa: ANN001
    caplog = warnings_log
    name = make_dataset(tmp_path, GOOD + BROKEN)
    loader = GCNetTrainer.build_train_loader(make_cfg(name, skip=True))
    seen = take(loader, batches=12)  # six passes over the 4 usable images
    assert {Path(d["file_name"]).name for d in seen} == {n for n, _ in GOOD}

    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if m.startswith("Skipping 2 of 9 images")]
    assert dropped == [  # missing + empty, dropped before training, each with its reason
        f"Skipping 2 of 9 images of training set [{name!r}] cannot be used: "
        f"{tmp_path / 'missing.jpg'}: no such file; {tmp_path / 'empty.jpg'}: empty file "
        "(0 bytes) (GCNET_DATA.SKIP_BAD_IMAGES)"
    ]
    for file, reason in SKIP_REASON.items():  # met when read (six times), logged once
        pattern = rf"Skipping image {re.escape(str(tmp_path / file))}: {reason}.*"
        assert sum(bool(re.fullmatch(pattern, m)) for m in messages) == 1, (file, messages)
    counts = [m for m in messages if m.startswith("Skipping image ")]
    assert len(counts) == 3 and counts[-1].endswith("(3 image(s) skipped so far in this process)")


def test_training_with_skip_runs_through_broken_images(tmp_path: Path, warnings_log):  # noqa: ANN001
    caplog = warnings_log
    name = make_dataset(tmp_path, GOOD + BROKEN)
    cfg = make_cfg(name, skip=True)
    cfg.merge_from_list(["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()"])
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = GCNetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 3  # all iterations ran
    assert (tmp_path / "out" / "model_final.pth").is_file()
    skipped = {}
    for record in caplog.records:
        found = re.fullmatch(
            r"Skipping image (\S+): (.*) \(\d image\(s\) skipped .*", record.getMessage()
        )
        if found:
            skipped[Path(found[1]).name] = found[2]
    assert skipped, "no broken image met in 3 iterations"
    for file, reason in skipped.items():  # only the ones broken on decoding, each as such
        assert re.match(SKIP_REASON[file], reason), (file, reason)


# --------------------------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------------------------


def _coco_variant(kind: str) -> str:
    """One image with two annotations (ids 1 and 2); ``kind`` breaks the file or the second."""
    good = {
        "images": [{"id": 1, "file_name": "good0.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 30, 20, 10], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    if kind == "list":
        return json.dumps([good])
    if kind == "not_json":
        return json.dumps(good)[:-20]
    if kind == "no_images":
        return json.dumps({k: v for k, v in good.items() if k != "images"})
    if kind == "no_file_name":
        del good["images"][0]["file_name"]
    if kind == "zero_height":
        good["images"][0]["height"] = 0
    if kind == "bad_category":
        good["annotations"][1]["category_id"] = 7
    if kind in BAD_BOXES:
        good["annotations"][1]["bbox"] = BAD_BOXES[kind]
    return json.dumps(good)


BAD_BOXES = {
    "short_bbox": [1, 2, 3],
    "text_in_bbox": [1, 2, "3", 4],
    "negative_width": [1, 2, -3, 4],
    "negative_height": [1, 2, 3, -4],
}
NOT_COCO = "not a COCO instances file: "
BOX_RULE = "needs 'bbox' [x, y, width >= 0, height >= 0], got"

# kind -> (what validate_coco_json says after "annotation file <json>: " (a regex),
#          what training says: "file" = the same, prefixed by the dataset's name, as the
#          annotation file is checked when detectron2 cannot load it; else the problem of
#          the image record, which detectron2 loaded and gcnet_d2 checks before training)
ANNOTATION_CASES = {
    "missing": (re.escape("no such file"), "file"),
    "list": (
        re.escape(
            f"{NOT_COCO}the top level is a JSON list, expected an object with 'images', "
            "'annotations' and 'categories'"
        ),
        "file",
    ),
    "not_json": (r"not valid JSON \([^()]+ at line 1, column \d+\)", "file"),
    "no_images": (
        re.escape(
            f"{NOT_COCO}missing top-level key(s) ['images'] (found ['annotations', 'categories'])"
        ),
        "file",
    ),
    "no_file_name": (re.escape(f"{NOT_COCO}images[0] (id 1) needs a 'file_name'"), "file"),
    "zero_height": (
        re.escape(f"{NOT_COCO}images[0] (good0.jpg) needs a positive integer 'height'"),
        "'height' must be a positive integer, got 0",
    ),
    "bad_category": (
        re.escape(f"{NOT_COCO}annotations[1] refers to category_id 7, not in 'categories'"),
        "file",
    ),
    "short_bbox": (
        re.escape(f"{NOT_COCO}annotations[1] {BOX_RULE} [1, 2, 3]"),
        "annotation 1: 'bbox' must be 4 finite numbers, got [1, 2, 3]",
    ),
    "text_in_bbox": (
        re.escape(f"{NOT_COCO}annotations[1] {BOX_RULE} [1, 2, '3', 4]"),
        "annotation 1: 'bbox' must be 4 finite numbers, got [1, 2, '3', 4]",
    ),
}


def _register_variant(root: Path, kind: str) -> tuple[str, Path]:
    """Image good0.jpg and the annotation file of ``kind`` (none for "missing"), registered."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root, "good0.jpg", "rgb")
    json_file = root / "instances.json"
    if kind != "missing":
        json_file.write_text(_coco_variant(kind))
    name = f"bad_json_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    return name, json_file


@pytest.mark.parametrize("kind", [*ANNOTATION_CASES, "negative_width", "negative_height"])
def test_annotation_file_check_names_file_entry_and_problem(tmp_path: Path, kind: str):
    _, json_file = _register_variant(tmp_path, kind)
    with pytest.raises(DatasetError) as info:
        validate_coco_json(str(json_file))
    if kind in BAD_BOXES:
        expected = re.escape(f"{NOT_COCO}annotations[1] {BOX_RULE} {BAD_BOXES[kind]!r}")
    else:
        expected = ANNOTATION_CASES[kind][0]
    prefix = re.escape(f"annotation file {json_file}: ")
    assert re.fullmatch(prefix + expected, str(info.value))


@pytest.mark.parametrize("kind", list(ANNOTATION_CASES))
def test_training_on_a_bad_annotation_file_names_it(tmp_path: Path, kind: str):
    name, json_file = _register_variant(tmp_path, kind)
    with pytest.raises(DatasetError) as info:
        GCNetTrainer.build_train_loader(make_cfg(name))
    validate_says, record_problem = ANNOTATION_CASES[kind]
    if record_problem == "file":
        expected = re.escape(f"dataset {name!r}: annotation file {json_file}: ") + validate_says
    else:
        expected = re.escape(
            f"1 of 1 images of training set [{name!r}] cannot be used: "
            f"{tmp_path / 'good0.jpg'}: {record_problem}. Fix or remove them; {SKIP_HINT}"
        )
    assert re.fullmatch(expected, str(info.value)), str(info.value)


@pytest.mark.parametrize("kind", ["negative_width", "negative_height"])
def test_training_names_a_box_of_negative_size(tmp_path: Path, kind: str):
    name, _ = _register_variant(tmp_path, kind)
    box = re.escape(repr(BAD_BOXES[kind]))
    with pytest.raises(DatasetError, match=rf"good0\.jpg: annotation 1: .*{box}"):
        GCNetTrainer.build_train_loader(make_cfg(name))


def test_unregistered_dataset_name():
    with pytest.raises(DatasetError) as info:
        GCNetTrainer.build_train_loader(make_cfg("no_such_dataset"))
    assert str(info.value) == (
        "dataset 'no_such_dataset' is not registered; register it with detectron2's "
        "DatasetCatalog (e.g. register_coco_instances) before training"
    )


# --------------------------------------------------------------------------------------------
# train_net.py: one clear line, exit status 2; other errors keep their traceback
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_loggers():
    """train_net's default_setup adds handlers bound to this test's captured streams; remove
    them afterwards so later tests do not log into closed streams."""
    names = ("detectron2", "d2", "fvcore", "gcnet_d2")
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }
    yield
    for name, (handlers, propagate) in saved.items():
        log = logging.getLogger(name)
        for handler in log.handlers[:]:
            if handler not in handlers:
                log.removeHandler(handler)
        log.propagate = propagate


def _cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        train_net.cli(argv)
    assert info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train_net.py:")]
    assert len(lines) == 1
    return lines[0]


def test_cli_unwritable_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _cli_error(
        capsys, ["--config-file", QUICKSTART, "OUTPUT_DIR", str(blocker / "out"), *TINY_OPTS]
    )
    out = re.escape(str(blocker / "out"))
    assert re.fullmatch(rf"train_net.py: error: OUTPUT_DIR {out}: not writable \([^()]+\)", line)


def test_cli_truncated_weights(tmp_path: Path, capsys: pytest.CaptureFixture):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    argv = ["--eval-only", "--config-file", QUICKSTART, "MODEL.WEIGHTS", str(weights)]
    line = _cli_error(capsys, [*argv, "OUTPUT_DIR", str(tmp_path / "out"), *TINY_OPTS])
    assert line.startswith(
        f"train_net.py: error: checkpoint {weights}: truncated or corrupt PyTorch zip archive ("
    )


def test_cli_bad_config_value(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = ["--config-file", QUICKSTART, "MODEL.GCNET.RATIO", "0.0"]
    line = _cli_error(capsys, [*argv, "OUTPUT_DIR", str(tmp_path / "out")])
    assert line == (
        f"train_net.py: error: config {QUICKSTART} with command-line overrides: "
        "MODEL.GCNET.RATIO: GC block ratio must be in (0, 1], got 0.0"
    )


def test_cli_bad_annotation_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    name, json_file = _register_variant(tmp_path / "data", "bad_category")
    argv = ["--config-file", QUICKSTART, "OUTPUT_DIR", str(tmp_path / "out"), *TINY_OPTS]
    line = _cli_error(capsys, [*argv, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"])
    assert line == (
        f"train_net.py: error: dataset {name!r}: annotation file {json_file}: not a COCO "
        "instances file: annotations[1] refers to category_id 7, not in 'categories'"
    )


def test_cli_unknown_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch):
    def boom(args):  # noqa: ANN001, ANN202
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(train_net, "main", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        train_net.cli(["--config-file", QUICKSTART])


@pytest.mark.slow
def test_cli_broken_image_mid_training_is_one_line_without_traceback(tmp_path_factory, tmp_path):  # noqa: ANN001
    root = tmp_path / "data"
    make_dataset(root, [("broken.jpg", "truncated")])  # registered in this process only
    script = (
        "import sys, train_net\n"
        "from detectron2.data.datasets import register_coco_instances\n"
        f"register_coco_instances('broken_ds', {{}}, {str(root / 'instances.json')!r}, "
        f"{str(root)!r})\n"
        "train_net.cli(sys.argv[1:])\n"
    )
    argv = ["--config-file", QUICKSTART, "OUTPUT_DIR", str(tmp_path / "out"), *TINY_OPTS]
    argv += ["DATASETS.TRAIN", "('broken_ds',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "1"]
    argv += ["DATALOADER.NUM_WORKERS", "1"]  # the error comes from a worker, traceback and all
    proc = run_python(["-c", script, *argv], python_env(str(tmp_path / "synth")), timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("train_net.py: error")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"train_net.py: error: image {root / 'broken.jpg'}: cannot be decoded (OSError: "
    )
    assert errors[0].endswith("set GCNET_DATA.SKIP_BAD_IMAGES True to train without such images")
