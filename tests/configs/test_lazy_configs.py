"""The LazyConfigs (configs/gcnet/<row>.py) against their YAML twins, read from the YAML each
time: same model (modules, settings, state-dict keys and shapes; outputs on the same weights),
same data pipeline, same optimizer settings and the same LR at every iteration. A key a YAML
changes that these comparisons do not cover fails the test (tests/configs/lazy_compare.py)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import get_detection_dataset_dicts
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier
from detectron2.structures import BoxMode
from omegaconf import OmegaConf

import gcnet_d2
from gcnet_d2.data.filtering import get_mmdet_filtered_dicts
from gcnet_d2.data.mapper import build_gcnet_mapper
from gcnet_d2.engine import GCNetTrainer
from tests.configs.lazy_compare import (
    LAZY_TO_YAML,
    first_difference,
    module_settings,
    normalize,
    unchecked_yaml_keys,
)
from tests.testing import randomize, table_config_names

ROWS = [name[: -len(".yaml")] for name in table_config_names()]
OUTPUT_ROWS = [
    "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
    "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco",
]


def yaml_cfg(row: str, device: str = "cpu"):  # noqa: ANN201
    cfg = gcnet_d2.get_config(row + ".yaml")
    cfg.MODEL.DEVICE = device
    return cfg


def both_models(row: str, device: str):  # noqa: ANN201
    with torch.device(device):
        return build_model(yaml_cfg(row, device)), instantiate(
            gcnet_d2.get_config(row + ".py").model
        )


def test_every_row_has_a_lazyconfig():
    assert len(ROWS) == 19
    assert gcnet_d2.list_configs(".py") == sorted(row + ".py" for row in ROWS)


@pytest.mark.parametrize("row", ROWS)
def test_yaml_keys_are_all_mirrored(row):
    assert unchecked_yaml_keys(yaml_cfg(row)) == [], (
        f"{row}.yaml sets keys the LazyConfig comparison does not cover: mirror them in "
        f"{row}.py (or configs/common/) and check them in tests/configs/lazy_compare.py"
    )


@pytest.mark.parametrize("row", ROWS)
def test_model_optimizer_and_settings_match_yaml(row):
    cfg, lazy = yaml_cfg(row, "meta"), gcnet_d2.get_config(row + ".py")
    ymodel, lmodel = both_models(row, "meta")
    # modules and every plain setting they hold (thresholds, loss betas, box weights, ...)
    ys, ls = module_settings(ymodel), module_settings(lmodel)
    assert list(ys) == list(ls)
    for name in ys:
        assert (diff := first_difference(ys[name], ls[name], name or "model")) is None, diff
    yshapes = {k: tuple(v.shape) for k, v in ymodel.state_dict().items()}
    assert yshapes == {k: tuple(v.shape) for k, v in lmodel.state_dict().items()}
    # optimizer: the same lr / weight decay / momentum for every named parameter
    lazy.optimizer.params.model = lmodel
    yopt, lopt = GCNetTrainer.build_optimizer(cfg, ymodel), instantiate(lazy.optimizer)
    assert type(yopt) is type(lopt)
    assert param_hyperparams(yopt, ymodel) == param_hyperparams(lopt, lmodel)
    # one-by-one keys
    for path, key in LAZY_TO_YAML.items():
        lazy_value = OmegaConf.select(lazy, path)
        yaml_value = functools.reduce(getattr, key.split("."), cfg)
        if key == "MODEL.DEVICE":  # both fall back to the CPU without CUDA
            yaml_value = gcnet_d2.get_config(row + ".yaml").MODEL.DEVICE
        if isinstance(lazy_value, str) and isinstance(yaml_value, tuple | list):
            lazy_value = [lazy_value]  # a dataset name or a list of them
        assert normalize(lazy_value) == normalize(yaml_value), f"{path} != {key}"
    assert cfg.GCNET_DATA.SKIP_BAD_IMAGES is False  # LazyConfig loaders never skip


def param_hyperparams(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    out = {}
    for group in optimizer.param_groups:
        settings = {k: normalize(v) for k, v in group.items() if k != "params"}
        settings.setdefault("lr", optimizer.defaults["lr"])
        for p in group["params"]:
            out[names[id(p)]] = settings
    assert len(out) == len(names)
    return out


@functools.cache
def yaml_lr_curve(solver_dump: str) -> tuple[float, ...]:
    cfg = yaml_cfg(ROWS[0])
    cfg.SOLVER = cfg.SOLVER.load_cfg(solver_dump)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    return lr_curve(GCNetTrainer.build_lr_scheduler(cfg, opt), cfg.SOLVER.MAX_ITER)


def lr_curve(scheduler: torch.optim.lr_scheduler.LRScheduler, max_iter: int) -> tuple:
    lrs = []
    for _ in range(max_iter):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.step()
    return tuple(lrs)


@pytest.mark.parametrize("row", ROWS)
def test_lr_at_every_iteration_matches_yaml(row):
    """Curves are computed once per distinct schedule (all rows share the 1x one)."""
    cfg, lazy = yaml_cfg(row), gcnet_d2.get_config(row + ".py")
    yaml_lrs = yaml_lr_curve(cfg.SOLVER.dump())
    lazy_lrs = _lazy_curve(OmegaConf.to_yaml(lazy.lr_multiplier), row)
    assert len(lazy_lrs) == len(yaml_lrs)
    bad = [i for i, (a, b) in enumerate(zip(lazy_lrs, yaml_lrs, strict=True)) if a != b]
    assert not bad, f"LR differs at {len(bad)} iterations, first at {bad[0]}"


_LAZY_CURVES: dict[tuple, tuple[float, ...]] = {}


def _lazy_curve(multiplier_yaml: str, row: str) -> tuple[float, ...]:
    lazy = gcnet_d2.get_config(row + ".py")
    key = (multiplier_yaml, float(lazy.optimizer.lr), int(lazy.train.max_iter))
    if key not in _LAZY_CURVES:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lazy.optimizer.lr)
        # what detectron2's LRScheduler hook builds from lr_multiplier
        sched = LRMultiplier(opt, instantiate(lazy.lr_multiplier), max_iter=lazy.train.max_iter)
        _LAZY_CURVES[key] = lr_curve(sched, lazy.train.max_iter)
    return _LAZY_CURVES[key]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:  # noqa: ANN001
    """One image with two instances, as a COCO dataset record."""
    path = Path(tmp_path_factory.mktemp("img")) / "img.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))
    annos = [
        {"bbox": [10, 12, 40, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
         "segmentation": [[10, 12, 50, 12, 50, 42, 10, 42]], "iscrowd": 0},
        {"bbox": [60, 30, 50, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2,
         "segmentation": [[60, 30, 110, 30, 85, 70]], "iscrowd": 0},
    ]  # fmt: skip
    return {"file_name": str(path), "height": 90, "width": 130, "image_id": 1, "annotations": annos}


@pytest.mark.parametrize("row", ROWS)
def test_data_pipeline_matches_yaml(row, record):
    cfg, lazy = yaml_cfg(row), gcnet_d2.get_config(row + ".py")
    for is_train, split in ((True, "train"), (False, "test")):
        ymapper = build_gcnet_mapper(cfg, is_train)  # what GCNetTrainer's loaders use
        lmapper = instantiate(lazy.dataloader[split].mapper)
        assert type(ymapper) is type(lmapper), split
        diff = first_difference(normalize(vars(ymapper)), normalize(vars(lmapper)), split)
        assert diff is None, diff
        for seed in range(3):  # flips both ways
            np.random.seed(seed)
            yout = ymapper(copy.deepcopy(record))
            np.random.seed(seed)
            lout = lmapper(copy.deepcopy(record))
            assert torch.equal(yout["image"], lout["image"])
            if is_train:
                yi, li = yout["instances"], lout["instances"]
                assert torch.equal(yi.gt_boxes.tensor, li.gt_boxes.tensor)
                assert torch.equal(yi.gt_classes, li.gt_classes)
                assert type(yi.gt_masks) is type(li.gt_masks)
                if hasattr(yi.gt_masks, "tensor"):  # bitmaps
                    assert torch.equal(yi.gt_masks.tensor, li.gt_masks.tensor)
                else:
                    assert normalize(yi.gt_masks.polygons) == normalize(li.gt_masks.polygons)
    dataset_fn = {"mmdet": get_mmdet_filtered_dicts, "detectron2": get_detection_dataset_dicts}
    assert lazy.dataloader.train.dataset._target_ is dataset_fn[cfg.GCNET_DATA.FILTER]


def test_initialisation_matches_yaml_bit_for_bit():
    """The head init is part of the model: with one seed, ``instantiate(cfg.model)`` starts
    exactly where ``build_model(cfg)`` does (mmdetection's init of the FPN, box FCs and mask
    logits included), so detectron2's own ``tools/lazyconfig_train_net.py`` trains the
    YAML's recipe."""
    row = OUTPUT_ROWS[0]
    torch.manual_seed(0)
    ymodel = build_model(yaml_cfg(row))
    torch.manual_seed(0)
    lmodel = instantiate(gcnet_d2.get_config(row + ".py").model)
    ystate, lstate = ymodel.state_dict(), lmodel.state_dict()
    assert list(ystate) == list(lstate)
    differ = [k for k in ystate if not torch.equal(ystate[k], lstate[k])]
    assert not differ, f"{len(differ)} tensors start differently, e.g. {differ[:5]}"
    logits = lmodel.roi_heads.mask_head.predictor.weight  # kaiming fan_out, not normal(0.001)
    assert float(logits.std()) > 0.1


def test_cascade_initialisation_matches_yaml_in_distribution():
    """Cascade: detectron2 builds the YAML's stage heads interleaved with their predictors,
    a LazyConfig all heads first, so the draws differ; every layer trained from scratch must
    still come from the same distribution (mmdetection's init when the YAML says so)."""
    row = "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco"
    torch.manual_seed(0)
    ystate = build_model(yaml_cfg(row)).state_dict()
    lstate = instantiate(gcnet_d2.get_config(row + ".py").model).state_dict()
    assert list(ystate) == list(lstate)
    compared = 0
    for name, y in ystate.items():
        if name.startswith("backbone.bottom_up") or not y.is_floating_point() or y.numel() < 256:
            continue
        lz = lstate[name]
        assert float(lz.std()) == pytest.approx(float(y.std()), rel=0.1, abs=1e-6), name
        compared += 1
    assert compared >= 30  # FPN 8, RPN 3, 3 x (box head 2, predictor 2, mask head 6)


@pytest.mark.slow
@pytest.mark.parametrize("row", OUTPUT_ROWS)
def test_outputs_match_yaml_on_the_same_weights(row):
    ymodel, lmodel = both_models(row, "cpu")
    randomize(ymodel, std=0.02)
    lmodel.load_state_dict(ymodel.state_dict())
    for name, buf in ymodel.named_buffers():  # non-persistent ones too (pixel mean, anchors)
        assert torch.equal(buf, dict(lmodel.named_buffers())[name]), name
    ymodel.eval(), lmodel.eval()
    for model in (ymodel, lmodel):
        for m in model.modules():
            if hasattr(m, "test_score_thresh"):
                m.test_score_thresh = 0.0  # random weights: keep every detection
        # 100 proposals (not 1000): both sides alike, far less head work on the CPU
        model.proposal_generator.pre_nms_topk[False] = 200
        model.proposal_generator.post_nms_topk[False] = 100
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        yout = ymodel([{"image": image, "height": 96, "width": 128}])[0]["instances"]
        lout = lmodel([{"image": image, "height": 96, "width": 128}])[0]["instances"]
    assert len(yout) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = yout.get(field), lout.get(field)
        a, b = getattr(a, "tensor", a), getattr(b, "tensor", b)
        assert torch.equal(a, b), field


def test_lazyconfig_round_trips_through_yaml_dump(tmp_path):
    """``default_setup`` saves the config it ran; it must load back to the same model."""
    lazy = gcnet_d2.get_config(ROWS[0] + ".py")
    LazyConfig.save(lazy, str(tmp_path / "config.yaml"))
    again = LazyConfig.load(str(tmp_path / "config.yaml"))
    with torch.device("meta"):
        built, rebuilt = instantiate(lazy.model), instantiate(again.model)
    assert module_settings(built) == module_settings(rebuilt)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("model.backbone.bottom_up.stages.gc_ratoi", 0.25, "gc_ratoi"),  # misspelt argument
        ("model.backbone.bottom_up.stages.gc_pooling", "max", "gc_pooling"),  # unknown option
        ("model.backbone.bottom_up.stages.gc_fusion", ["channel_sum"], "gc_fusion"),
        ("model.backbone.bottom_up.stages.gc_ratio", 2.0, "gc_ratio"),
        ("model.backbone.bottom_up.stages.gc_stages", [True, True], "gc_stages"),
        ("model.backbone.bottom_up.stages.depth", 34, "depth"),
        ("model.backbone.bottom_up.stages.norm", "SuperBN", "norm"),
        ("model.roi_heads.num_clases", 3, "num_clases"),
    ],
)
def test_bad_lazyconfig_argument_fails_at_instantiation_naming_it(path, value, expected):
    lazy = gcnet_d2.get_config(ROWS[0] + ".py")
    OmegaConf.update(lazy, path, value, force_add=True)
    with pytest.raises((TypeError, ValueError), match=expected), torch.device("meta"):
        instantiate(lazy.model)


def test_unknown_config_name_lists_close_matches():
    with pytest.raises(FileNotFoundError, match="did you mean") as info:
        gcnet_d2.get_config("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x.py")
    assert "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py" in str(info.value)
    with pytest.raises(FileNotFoundError, match="list_configs"):
        gcnet_d2.get_config("nothing/like/this.py")
