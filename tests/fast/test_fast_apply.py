"""``gcnet_d2.fast.apply`` / ``remove``: the one entry point of the speed-ups.

A built model is plain; ``fast.apply(model, options)`` (a ``FastOptions``, a detectron2 config's
``FAST`` node, or None = all on) switches module classes in place, each key governing
exactly what its name says on any detectron2 model (gcnet_d2's RoI heads or detectron2's stock
``StandardROIHeads`` / ``CascadeROIHeads``); ``fast.remove`` gives the plain model back.
Also ``FAST.COMPILE`` and the options' validation (errors name the key), and that the names of
the layout before 0.1.0 are gone. Reading the options from configs: test_fast_options.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.config import DETECTRON2_TRAINING_COMPONENTS
from gcnet_d2.fast import FastOptions, LeanFPN, NormFoldingConv2d, ParallelROIAlign
from gcnet_d2.fast.channels_last import is_channels_last
from gcnet_d2.fast.gc_fold import FoldedDeformGCBottleneckBlock, FoldedGCBottleneckBlock
from gcnet_d2.modeling import (
    DeformGCBottleneckBlock,
    GCBottleneckBlock,
    MMDetFPN,
    build_gcnet_resnet_backbone,
    build_gcnet_resnet_fpn_backbone,
)
from tests.fast.fold_probe import kinds, record_unfolded
from tests.testing import randomize, realistic_weights, tiny_cfg

CONFIG = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
CASCADE = "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml"
FLAGS = ("FOLD_FROZEN_NORMS", "CONV1X1_GEMM", "PARALLEL_ROI_ALIGN", "LEAN_FPN", "CHANNELS_LAST")
FOLDED = (FoldedGCBottleneckBlock, FoldedDeformGCBottleneckBlock)


def cfg_with(name: str = CONFIG, *opts: str, **keys: object):  # noqa: ANN201
    """``name`` with ``opts`` merged and ``FAST.<key> = value`` for ``keys``."""
    cfg = gcnet_d2.get_config(name)
    cfg.merge_from_list(list(opts))
    for key, value in keys.items():
        setattr(cfg.FAST, key, value)
    return cfg


def fast_cfg(**keys: object):  # noqa: ANN201
    """The tiny GC r16 c3-c5 Mask R-CNN with DCN v1 in c5 (both GC bottleneck classes) and
    ``FAST.<key> = value`` for ``keys``."""
    cfg = tiny_cfg(CONFIG)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, True]
    for key, value in keys.items():
        setattr(cfg.FAST, key, value)
    return cfg


def what_is_fast(model: torch.nn.Module) -> set[str]:
    """Which speed-ups ``model``'s modules carry, by the flag that governs them."""
    modules = list(model.modules())
    found = set()
    if any(type(m) is NormFoldingConv2d and m.fold_norm for m in modules):
        found.add("FOLD_FROZEN_NORMS: conv + norm")
    if any(type(m) in FOLDED for m in modules):
        found.add("FOLD_FROZEN_NORMS: GC bottleneck")
    if any(getattr(m, "gemm_1x1", False) for m in modules):
        found.add("CONV1X1_GEMM")
    if any(type(m) is ParallelROIAlign for m in modules):
        found.add("PARALLEL_ROI_ALIGN")
    if any(type(m) is LeanFPN for m in modules):
        found.add("LEAN_FPN")
    if any(is_channels_last(m.weight) for m in modules if isinstance(m, torch.nn.Conv2d)):
        found.add("CHANNELS_LAST")
    return found


ALL_FAST = {
    "FOLD_FROZEN_NORMS: conv + norm",
    "FOLD_FROZEN_NORMS: GC bottleneck",
    "CONV1X1_GEMM",
    "PARALLEL_ROI_ALIGN",
    "LEAN_FPN",
    "CHANNELS_LAST",
}


def classes(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return (torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(1)) * 255).round()


@pytest.fixture(scope="module")
def plain_model(image) -> torch.nn.Module:  # noqa: ANN001
    """The tiny detector as built (plain), with weights that give detections: calibrated
    norms, non-zero GC blocks and DCN offsets, peaked class scores."""
    torch.manual_seed(0)
    model = realistic_weights(build_model(fast_cfg()).eval(), image)
    assert what_is_fast(model) == set()
    assert any(type(m) is DeformGCBottleneckBlock for m in model.modules())
    assert any(type(m) is GCBottleneckBlock for m in model.modules())
    return model


def detections(model: torch.nn.Module, image: torch.Tensor):  # noqa: ANN201
    with torch.inference_mode():
        return model([{"image": image}])[0]["instances"]


def assert_same_detections(got, want) -> None:  # noqa: ANN001
    """Same count and classes; boxes and scores up to float32 rounding (a wrong fold moves
    them by pixels; tests/fast/test_norm_fold.py measures the floor)."""
    assert len(got) == len(want) > 0
    assert torch.equal(got.pred_classes, want.pred_classes)
    torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor, rtol=0, atol=1e-2)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-4)


def assert_same_features(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * scale, msg=key)


# --- 1. FOLD_FROZEN_NORMS governs every fold -----------------------------------------------


@pytest.mark.parametrize("fold", [False, True])
def test_fold_frozen_norms_switches_every_fold(plain_model, image, fold):
    """``FAST.FOLD_FROZEN_NORMS`` off: no conv folds its norm and no GC bottleneck folds its
    conv3 + norm + block (that fold used to stay on); on: both. The outputs equal the plain
    model's either way."""
    model = fast.apply(copy.deepcopy(plain_model), fast_cfg(FOLD_FROZEN_NORMS=fold))
    folding_convs = [m for m in model.modules() if type(m) is NormFoldingConv2d and m.fold_norm]
    folded_blocks = [m for m in model.modules() if type(m) in FOLDED]
    if fold:
        assert folding_convs
        assert {type(m) for m in folded_blocks} == set(FOLDED)
    else:
        assert folding_convs == [] and folded_blocks == []
        assert any(type(m) is NormFoldingConv2d for m in model.modules())  # CONV1X1_GEMM's
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode(), record_unfolded(model) as unfolded:
        assert_same_features(model.backbone(x), plain_model.backbone(x))
        got = detections(model, image)
    assert kinds(unfolded) == (set() if fold else {"norm", "gc"})  # which path ran
    assert_same_detections(got, detections(plain_model, image))


# --- 2. PARALLEL_ROI_ALIGN on detectron2's stock RoI heads -----------------------------------


def stock_heads_cfg(name: str, heads: str, parallel: bool):  # noqa: ANN201
    """``name`` (tiny, R-50) with detectron2's own RPN and RoI heads ``heads``."""
    stock = [str(v) for kv in DETECTRON2_TRAINING_COMPONENTS.items() for v in kv]
    cfg = tiny_cfg(name, *stock, depth=50)
    cfg.FAST.PARALLEL_ROI_ALIGN = parallel
    cfg.MODEL.ROI_HEADS.NAME = heads
    cfg.MODEL.MMDET_TRAIN.CASCADE_RESAMPLE = False  # mmdetection's cascade sampler: ours only
    return cfg


@pytest.mark.parametrize(
    ("name", "heads", "cls"),
    [(CONFIG, "StandardROIHeads", StandardROIHeads), (CASCADE, "CascadeROIHeads", CascadeROIHeads)],
)
@pytest.mark.parametrize("parallel", [False, True])
def test_parallel_roi_align_reaches_stock_roi_heads(name, heads, cls, parallel):
    cfg = stock_heads_cfg(name, heads, parallel)
    model = build_model(cfg).eval()
    assert type(model.roi_heads) is cls  # detectron2's class itself, not a subclass
    poolers = [m for m in model.modules() if isinstance(m, ROIPooler)]
    assert len(poolers) == 2  # box and mask
    levels = [level for p in poolers for level in p.level_poolers]
    assert len(levels) == 8 and all(type(level) is ROIAlign for level in levels)
    fast.apply(model, cfg)
    want = ParallelROIAlign if parallel else ROIAlign
    assert all(type(level) is want for level in levels)
    # the other keys still act on the same model
    assert type(model.backbone) is LeanFPN
    assert any(getattr(m, "gemm_1x1", False) for m in model.roi_heads.modules())


def test_parallel_roi_align_on_stock_heads_gives_the_same_detections(monkeypatch):
    """StandardROIHeads with only ``PARALLEL_ROI_ALIGN`` on: the threaded path runs and the
    detections are the plain model's, bit for bit."""
    from gcnet_d2.fast import roi_align

    calls = []
    real = roi_align._executor
    monkeypatch.setattr(roi_align, "_executor", lambda n: calls.append(n) or real(n))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = stock_heads_cfg(CONFIG, "StandardROIHeads", True)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
        torch.manual_seed(0)
        plain = build_model(cfg).eval()
        threaded = fast.apply(
            copy.deepcopy(plain),
            FastOptions(False, False, parallel_roi_align=True, lean_fpn=False, channels_last=False),
        )
        assert what_is_fast(threaded) == {"PARALLEL_ROI_ALIGN"}
        image = (torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(2)) * 255).round()
        a, b = detections(plain, image), detections(threaded, image)
    finally:
        torch.set_num_threads(threads)
    assert calls, "the threaded path ran"
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)


# --- 3. each key governs exactly what its name says ----------------------------------------


@pytest.mark.parametrize("via", ["cfg", "options"])
@pytest.mark.parametrize("off", FLAGS)
def test_each_key_switches_only_its_modules(plain_model, off, via):
    """One key off, the others on: exactly that key's modules are plain. The same state when
    applied to a model that had everything on (``apply`` switches off too)."""
    by_key = {
        "cfg": lambda: fast_cfg(**{off: False}),
        "options": lambda: FastOptions(**{off.lower(): False}),
    }
    options = by_key[via]()
    fresh = fast.apply(copy.deepcopy(plain_model), options)
    expected = {f for f in ALL_FAST if not f.startswith(off)}
    assert what_is_fast(fresh) == expected
    if off == "LEAN_FPN":
        assert type(fresh.backbone) is MMDetFPN
    again = fast.apply(fast.apply(copy.deepcopy(plain_model)), options)
    assert what_is_fast(again) == expected
    assert classes(again) == classes(fresh)
    flags = {
        n: (m.fold_norm, m.gemm_1x1) for n, m in fresh.named_modules() if hasattr(m, "gemm_1x1")
    }
    assert flags == {
        n: (m.fold_norm, m.gemm_1x1) for n, m in again.named_modules() if hasattr(m, "gemm_1x1")
    }
    assert_same_state(fresh, plain_model)


def test_defaults_switch_everything_and_all_off_nothing(plain_model):
    assert what_is_fast(fast.apply(copy.deepcopy(plain_model))) == ALL_FAST
    assert what_is_fast(fast.apply(copy.deepcopy(plain_model), fast_cfg())) == ALL_FAST
    off = FastOptions(False, False, False, False, channels_last=False)
    model = fast.apply(copy.deepcopy(plain_model), off)
    assert what_is_fast(model) == set()
    assert classes(model) == classes(plain_model)


def test_remove_restores_every_plain_class_and_the_state_dict(plain_model, image):
    model = fast.apply(copy.deepcopy(plain_model))
    detections(model, image)  # fills the fold caches
    assert classes(model) != classes(plain_model)
    assert fast.remove(model) is model
    assert classes(model) == classes(plain_model)
    assert what_is_fast(model) == set()
    leftovers = {"fold_norm", "gemm_1x1", "_folded", "_plain_class"}
    assert not any(leftovers & set(vars(m)) for m in model.modules())
    assert_same_state(model, plain_model)
    got, want = detections(model, image), detections(plain_model, image)
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores)


def test_apply_twice_is_idempotent(plain_model, image):
    once = fast.apply(copy.deepcopy(plain_model))
    twice = fast.apply(fast.apply(copy.deepcopy(plain_model)))
    assert classes(twice) == classes(once)
    assert what_is_fast(twice) == ALL_FAST
    assert_same_state(twice, plain_model)
    assert all(
        type(m) is not LeanFPN or vars(m)["_plain_class"] is MMDetFPN for m in twice.modules()
    )
    a, b = detections(once, image), detections(twice, image)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores)
    fast.remove(twice)  # one remove undoes two applies
    assert classes(twice) == classes(plain_model)


# --- FAST.COMPILE ------------------------------------------------------------------------------


def test_compile_is_off_by_default():
    net = build_gcnet_resnet_fpn_backbone(cfg_with(), ShapeSpec(channels=3))
    fast.apply(net, cfg_with())
    assert getattr(net, "_compiled_call_impl", None) is None


@pytest.mark.slow
def test_compiled_backbone_matches_plain():
    """aot_eager: dynamo's capture and AOT autograd's functionalised graph (what inductor
    compiles), quick on the CPU; inductor itself takes minutes here
    (benchmarks/compile_check.py). Compiled with the speed-ups vs the plain backbone."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    plain = build_gcnet_resnet_fpn_backbone(cfg_with(), ShapeSpec(channels=3))
    randomize(plain, 0.05).eval()
    compiled = fast.apply(copy.deepcopy(plain), cfg_with(COMPILE="aot_eager"))
    assert getattr(compiled, "_compiled_call_impl", None) is not None
    assert_same_state(compiled, plain)  # keys unchanged
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = compiled(x), plain(x)
    assert counters["stats"]["unique_graphs"] >= 1  # it really ran compiled
    for key in want:
        err = float((got[key] - want[key]).norm() / want[key].norm())
        assert err < 1e-5, (key, err)
    torch._dynamo.reset()


# --- bad options name their key --------------------------------------------------------------

BAD_OPTIONS = [
    ("COMPILE", "no_such_backend", "COMPILE: unknown torch.compile backend"),
    ("COMPILE", 1, "COMPILE must be"),
    ("FOLD_FROZEN_NORMS", "yes", "FOLD_FROZEN_NORMS must be"),
    ("CONV1X1_GEMM", "on", "CONV1X1_GEMM must be"),
    ("PARALLEL_ROI_ALIGN", "yes", "PARALLEL_ROI_ALIGN must be"),
    ("LEAN_FPN", 1, "LEAN_FPN must be"),
]


@pytest.mark.parametrize(("key", "value", "match"), BAD_OPTIONS)
def test_bad_config_option_names_its_key(key, value, match):
    net = build_gcnet_resnet_backbone(cfg_with(), ShapeSpec(channels=3))
    before = classes(net)
    with pytest.raises(ValueError, match=f"^FAST.{match}"):
        fast.apply(net, cfg_with(**{key: value}))
    assert classes(net) == before  # validated before anything is switched


@pytest.mark.parametrize(("key", "value", "match"), BAD_OPTIONS)
def test_bad_fast_option_names_its_key(key, value, match):
    with pytest.raises(ValueError, match=f"^FastOptions.{match.lower()}"):
        FastOptions(**{key.lower(): value})


@pytest.mark.parametrize(("key", "value", "match"), BAD_OPTIONS)
def test_bad_lazyconfig_option_names_its_key(key, value, match):
    from omegaconf import OmegaConf

    lazy = OmegaConf.create({"model": {}, "fast": {key.lower(): value}})
    with pytest.raises(ValueError, match=f"^fast.{match.lower()}"):
        fast.apply(torch.nn.Conv2d(1, 1, 1), lazy)


# --- the names of the layout before 0.1.0 are gone ------------------------------------------


@pytest.mark.parametrize(
    "old",
    [
        "gcnet_d2.modeling.context_block",
        "gcnet_d2.modeling.roi_align_parallel",
        "gcnet_d2.modeling.inference_fusion",
        "gcnet_d2._compat",
        "gcnet_d2.fast.tracing",
    ],
)
def test_old_module_paths_fail_as_missing_modules_do(old):
    """No alias in ``sys.modules`` and no such module in the package: importing it fails as
    any missing module does. (Asked of the package's own folder: an editable install of
    another checkout could still find that checkout's old file.)"""
    import importlib
    import importlib.machinery
    import sys

    parent_name, _, _ = old.rpartition(".")
    parent = importlib.import_module(parent_name)
    assert old not in sys.modules
    assert importlib.machinery.PathFinder.find_spec(old, parent.__path__) is None


@pytest.mark.parametrize("name", ["set_fast_paths", "reference_context_block", "LeanFPN"])
def test_old_modeling_names_fail_as_missing_attributes_do(name):
    import gcnet_d2.modeling as modeling

    with pytest.raises(AttributeError, match=name):
        getattr(modeling, name)
