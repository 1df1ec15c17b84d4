"""Tests of the synthetic COCO shapes dataset (gcnet_d2.data.synthetic)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from gcnet_d2.data import (
    SYNTHETIC_CLASSES,
    SplitPaths,
    default_synthetic_root,
    ensure_synthetic_generated,
    generate_synthetic_coco,
    register_synthetic_datasets,
    synthetic,
)
from tests.testing import PYTHON, python_env

SMALL = {"num_train": 6, "num_val": 2}


def _load(paths: SplitPaths) -> COCO:
    return COCO(paths.json_file)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SplitPaths]:
    return generate_synthetic_coco(tmp_path_factory.mktemp("synth") / "ds", **SMALL, seed=3)


def test_layout_and_coco_contents(small_dataset: dict[str, SplitPaths]) -> None:
    assert set(small_dataset) == {"train", "val"}
    for split, num_images in (("train", 6), ("val", 2)):
        paths = small_dataset[split]
        assert Path(paths.json_file).name == f"instances_{split}.json"
        assert Path(paths.image_root).name == split
        coco = _load(paths)
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(
            SYNTHETIC_CLASSES
        )
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert len(coco.imgs) == num_images
        assert len(os.listdir(paths.image_root)) == num_images
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(ann_ids) == len(set(ann_ids)) and min(ann_ids) >= 1
        for image_id, info in coco.imgs.items():
            img = cv2.imread(os.path.join(paths.image_root, info["file_name"]))
            assert img is not None and img.shape == (info["height"], info["width"], 3)
            assert (info["height"], info["width"]) == (240, 320)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(anns) <= 4
            for ann in anns:
                assert ann["iscrowd"] == 0
                assert ann["category_id"] in (1, 2, 3)
                assert len(ann["segmentation"]) == 1
                pts = np.asarray(ann["segmentation"][0], dtype=np.float64).reshape(-1, 2)
                if ann["category_id"] == 2:  # ellipse
                    assert len(pts) >= 24
                else:
                    assert len(pts) == (4 if ann["category_id"] == 1 else 3)
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0
                # The box contains the polygon and is tight around it.
                assert pts[:, 0].min() == pytest.approx(x) and pts[:, 1].min() == pytest.approx(y)
                assert pts[:, 0].max() == pytest.approx(x + w)
                assert pts[:, 1].max() == pytest.approx(y + h)
                assert 0 <= x <= x + w <= info["width"]
                assert 0 <= y <= y + h <= info["height"]
                # Shape diameters lie between ~20 px and 45% of the shorter image side.
                diameter = np.linalg.norm(pts[:, None] - pts[None], axis=-1).max()
                assert 13 <= diameter <= 0.45 * 240 + 0.5
                # "area" is the polygon's area, which matches its rasterisation closely.
                assert ann["area"] > 0
                mask_area = coco.annToMask(ann).sum()
                assert mask_area == pytest.approx(ann["area"], rel=0.1)


def test_masks_match_drawn_shapes(small_dataset: dict[str, SplitPaths]) -> None:
    """Pixels inside each annotation mask look like one flat shape that differs from its
    surroundings, and a nearest-colour segmentation around it recovers the mask."""
    kernel = np.ones((3, 3), np.uint8)
    ious = []
    for paths in small_dataset.values():
        coco = _load(paths)
        for image_id, info in coco.imgs.items():
            img = cv2.imread(os.path.join(paths.image_root, info["file_name"])).astype(np.float32)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            masks = [coco.annToMask(a) for a in anns]
            others_near = cv2.dilate(np.any(masks, axis=0).astype(np.uint8), kernel, iterations=2)
            for mask in masks:
                near = cv2.dilate(mask, kernel, iterations=2)
                around = cv2.dilate(mask, kernel, iterations=6)
                inner = cv2.erode(mask, kernel).astype(bool)
                ring = around.astype(bool) & ~others_near.astype(bool)
                assert inner.sum() >= 10 and ring.sum() >= 20
                mean_in, mean_ring = img[inner].mean(axis=0), img[ring].mean(axis=0)
                assert np.linalg.norm(mean_in - mean_ring) > 30
                assert img[inner].std(axis=0).max() < 20  # flat colour plus a little noise
                # Classify the neighbourhood (minus other objects) by nearest mean colour.
                region = around.astype(bool) & ~(others_near.astype(bool) & ~near.astype(bool))
                pix = img[region]
                pred = np.linalg.norm(pix - mean_in, axis=1) < np.linalg.norm(
                    pix - mean_ring, axis=1
                )
                gt = mask.astype(bool)[region]
                ious.append((pred & gt).sum() / (pred | gt).sum())
    assert min(ious) > 0.8
    assert np.mean(ious) > 0.95


def test_deterministic_given_seed(tmp_path: Path) -> None:
    a = generate_synthetic_coco(tmp_path / "a", **SMALL, seed=7)
    b = generate_synthetic_coco(tmp_path / "b", **SMALL, seed=7)
    c = generate_synthetic_coco(tmp_path / "c", **SMALL, seed=8)
    for split in ("train", "val"):
        json_a = Path(a[split].json_file).read_bytes()
        assert json_a == Path(b[split].json_file).read_bytes()
        assert json_a != Path(c[split].json_file).read_bytes()
        for name in sorted(os.listdir(a[split].image_root)):
            image_a = Path(a[split].image_root, name).read_bytes()
            assert image_a == Path(b[split].image_root, name).read_bytes()


def test_idempotent_and_parameter_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    paths = generate_synthetic_coco(root, **SMALL)
    json_file = Path(paths["train"].json_file)
    stamp = json_file.stat().st_mtime_ns
    os.utime(json_file, ns=(stamp - 10**9, stamp - 10**9))  # detect any rewrite
    assert generate_synthetic_coco(root, **SMALL) == paths
    assert json_file.stat().st_mtime_ns == stamp - 10**9

    with pytest.raises(ValueError, match="different parameters") as excinfo:
        generate_synthetic_coco(root, num_train=7, num_val=2)
    assert str(root) in str(excinfo.value) and "num_train" in str(excinfo.value)
    assert len(_load(paths["train"]).imgs) == 6  # untouched

    generate_synthetic_coco(root, num_train=7, num_val=2, overwrite=True)
    assert len(_load(paths["train"]).imgs) == 7
    assert len(os.listdir(paths["train"].image_root)) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporaries left behind


def test_partial_directory_without_manifest_is_regenerated(tmp_path: Path) -> None:
    """A half-written dataset (no manifest) must never be trusted."""
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "train" / "000000.jpg").write_bytes(b"not a jpeg")
    (root / "annotations" / "instances_train.json").write_text("{")
    (root / "train" / "000099.jpg").write_bytes(b"left by a bigger crashed run")

    paths = generate_synthetic_coco(root, **SMALL)
    coco = _load(paths["train"])
    assert len(coco.imgs) == 6
    assert cv2.imread(os.path.join(paths["train"].image_root, "000000.jpg")) is not None
    assert not (root / "train" / "000099.jpg").exists()  # the old contents were cleared
    # Identical to a dataset generated from scratch.
    fresh = generate_synthetic_coco(tmp_path / "fresh", **SMALL)
    assert Path(paths["val"].json_file).read_bytes() == Path(fresh["val"].json_file).read_bytes()


def test_incomplete_dataset_with_manifest_is_regenerated(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path / "ds", **SMALL)
    missing = Path(paths["val"].image_root, "000001.jpg")
    missing.unlink()
    generate_synthetic_coco(tmp_path / "ds", **SMALL)
    assert missing.is_file()


def test_unrelated_directory_is_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="unrelated"):
        generate_synthetic_coco(root, **SMALL)
    assert (root / "precious.txt").read_text() == "keep me"
    generate_synthetic_coco(root, **SMALL, overwrite=True)
    assert not (root / "precious.txt").exists()
    assert (root / "manifest.json").is_file()


def test_interrupted_generation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_split = synthetic._write_split

    def crash_on_val(out_dir: Path, split: str, *args: object) -> None:
        if split == "val":
            raise KeyboardInterrupt
        real_write_split(out_dir, split, *args)

    monkeypatch.setattr(synthetic, "_write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_coco(tmp_path / "ds", **SMALL)
    # Only the (released) lock file is left: no manifest, no half-written split.
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [".generate.lock"]

    monkeypatch.setattr(synthetic, "_write_split", real_write_split)
    paths = generate_synthetic_coco(tmp_path / "ds", **SMALL)
    assert len(_load(paths["val"]).imgs) == 2


def test_invalid_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_coco(tmp_path / "ds", num_train=0)
    with pytest.raises(ValueError):
        generate_synthetic_coco(tmp_path / "ds", height=32)
    assert not (tmp_path / "ds").exists()


def test_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCNET_SYNTH_ROOT", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert default_synthetic_root() == os.path.join("datasets", "gcnet_synthetic")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert default_synthetic_root() == os.path.join("/data/d2", "gcnet_synthetic")
    monkeypatch.setenv("GCNET_SYNTH_ROOT", "/elsewhere/synth")
    assert default_synthetic_root() == "/elsewhere/synth"


@pytest.fixture
def dataset_names():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    suffix = uuid.uuid4().hex[:8]
    names = (f"test_synth_train_{suffix}", f"test_synth_val_{suffix}")
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        synthetic._REGISTRY.pop(name, None)


def test_register_lazily_and_twice(tmp_path: Path, dataset_names: tuple[str, str]) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = tmp_path / "ds"
    first = register_synthetic_datasets(root, names=dataset_names, **SMALL)
    second = register_synthetic_datasets(root, names=dataset_names, **SMALL)  # must not raise
    assert first == second
    assert not root.exists()  # registration alone generates nothing

    train_name, val_name = dataset_names
    meta = MetadataCatalog.get(val_name)
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == list(SYNTHETIC_CLASSES)
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.json_file == str(root / "annotations" / "instances_val.json")
    assert meta.image_root == str(root / "val")

    dicts = DatasetCatalog.get(train_name)
    assert len(dicts) == 6
    assert (root / "manifest.json").is_file()
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        assert (record["height"], record["width"]) == (240, 320)
        assert record["annotations"]
        for obj in record["annotations"]:
            assert obj["category_id"] in (0, 1, 2)
            assert obj["segmentation"] and len(obj["segmentation"][0]) >= 6

    val_paths = ensure_synthetic_generated(val_name)
    assert val_paths == first[val_name]
    assert len(_load(val_paths).imgs) == 2


def test_ensure_unknown_name_raises() -> None:
    with pytest.raises(KeyError, match="not a synthetic dataset"):
        ensure_synthetic_generated("no_such_synthetic_dataset")


def test_dataset_files_are_valid_json(small_dataset: dict[str, SplitPaths]) -> None:
    manifest = json.loads(
        (Path(small_dataset["train"].json_file).parent.parent / "manifest.json").read_text()
    )
    assert manifest["params"] == {
        "num_train": 6,
        "num_val": 2,
        "height": 240,
        "width": 320,
        "seed": 3,
    }


def test_coco_evaluator_scores_ground_truth_perfectly(
    tmp_path: Path, dataset_names: tuple[str, str]
) -> None:
    """The files satisfy detectron2's COCOEvaluator: feeding it the ground truth gives AP 100."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances
    from detectron2.structures.masks import polygons_to_bitmask

    _, val_name = dataset_names
    register_synthetic_datasets(tmp_path / "ds", names=dataset_names, **SMALL)
    ensure_synthetic_generated(val_name)  # the evaluator reads json_file itself
    evaluator = COCOEvaluator(val_name, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(val_name):
        objs = record["annotations"]
        height, width = record["height"], record["width"]
        instances = Instances((height, width))
        boxes = [BoxMode.convert(o["bbox"], o["bbox_mode"], BoxMode.XYXY_ABS) for o in objs]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(objs))
        instances.pred_classes = torch.tensor([o["category_id"] for o in objs])
        masks = [polygons_to_bitmask(o["segmentation"], height, width) for o in objs]
        instances.pred_masks = torch.from_numpy(np.stack(masks))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


@pytest.mark.slow
def test_generation_waits_for_a_concurrent_generator_and_reuses_its_dataset(
    tmp_path: Path,
) -> None:
    """A generator that finds the lock taken waits, then reuses the finished dataset."""
    from iopath.common.file_io import file_lock

    done = generate_synthetic_coco(tmp_path / "done", **SMALL)
    root = tmp_path / "ds"
    code = (
        "import sys; from gcnet_d2.data import generate_synthetic_coco; "
        "print('imported', flush=True); "
        f"generate_synthetic_coco(sys.argv[1], num_train={SMALL['num_train']}, "
        f"num_val={SMALL['num_val']})"
    )
    with file_lock(str(root / ".generate")):  # this process is "generating"
        other = subprocess.Popen(
            [PYTHON, "-c", code, str(root)], env=python_env(), stdout=subprocess.PIPE, text=True
        )
        try:
            ready = selectors.DefaultSelector()
            ready.register(other.stdout, selectors.EVENT_READ)
            assert ready.select(timeout=120), "the other generator did not start"
            assert other.stdout.readline().strip() == "imported"
            with pytest.raises(subprocess.TimeoutExpired):
                other.wait(timeout=3)  # imported, now blocked on the lock
            assert not (root / "manifest.json").exists()
            # Finish "generating": the other process must take this dataset as it is.
            for entry in Path(done["train"].json_file).parents[1].iterdir():
                if entry.is_dir():
                    shutil.copytree(entry, root / entry.name)
            (root / "manifest.json").write_bytes((tmp_path / "done/manifest.json").read_bytes())
            json_file = root / "annotations/instances_train.json"
            os.utime(json_file, ns=(10**9, 10**9))
        except BaseException:
            other.kill()
            raise
    assert other.wait(timeout=120) == 0
    other.stdout.close()
    assert json_file.stat().st_mtime_ns == 10**9  # reused, not regenerated
