"""The speed-up switches read from configs: YAML's ``FAST`` node, a LazyConfig's ``fast`` dict.

A config that still sets a switch under its old ``MODEL.GCNET`` name stops with one line naming
the new key (YAML file, command-line override, set in code); a LazyConfig with an unknown or
renamed ``fast`` name stops naming it. The options reach ``fast.apply`` from
``lazy_train_net.py``'s model builder and from ``GCNetPredictor``.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, get_cfg
from detectron2.modeling import build_model

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.config import MOVED_KEYS
from gcnet_d2.config_loading import load_config
from gcnet_d2.errors import ConfigError
from gcnet_d2.fast import FastOptions, LeanFPN, ParallelROIAlign
from gcnet_d2.modeling import MMDetFPN
from tests.testing import LAZY_ROW, REPO, tiny_cfg

ROW = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
OLD_VALUES = {  # a value of the right type for each moved key
    "MODEL.GCNET.FOLD_NORMS": "False",
    "MODEL.GCNET.CONV1X1_GEMM": "False",
    "MODEL.GCNET.PARALLEL_ROI_ALIGN": "False",
    "MODEL.GCNET.LEAN_FPN": "False",
    "MODEL.GCNET.COMPILE": "inductor",
}


def one_line_naming(text: str, old: str, new: str) -> None:
    assert "\n" not in text.strip()
    assert old in text and new in text


def test_every_moved_key_has_a_new_home():
    assert set(OLD_VALUES) == set(MOVED_KEYS)
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    for old, new in MOVED_KEYS.items():
        node, leaf = new.split(".")
        assert leaf in cfg[node]
        assert old.rsplit(".", 1)[1] not in cfg.MODEL.GCNET


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_old_key_in_a_yaml_file_stops_naming_the_new_key(tmp_path, old):
    _, _, leaf = old.rpartition(".")
    path = tmp_path / "old.yaml"
    path.write_text(
        f"_BASE_: {REPO / 'configs' / ROW}\nMODEL:\n  GCNET:\n    {leaf}: {OLD_VALUES[old]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    one_line_naming(str(info.value), old, MOVED_KEYS[old])
    assert str(path) in str(info.value)
    # the same stop for any merge into a config with gcnet_d2's keys (the model zoo's too)
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    with pytest.raises(KeyError, match=f"{old} was renamed to {MOVED_KEYS[old]}"):
        cfg.merge_from_file(str(path), allow_unsafe=False)


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_old_key_as_a_command_line_override_stops_naming_the_new_key(old):
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "configs" / ROW), [old, OLD_VALUES[old]])
    one_line_naming(str(info.value), old, MOVED_KEYS[old])


def test_old_key_set_in_code_stops_apply_naming_the_new_key():
    cfg = gcnet_d2.get_config(ROW)
    cfg.MODEL.GCNET.FOLD_NORMS = False  # a CfgNode that is not frozen takes a new key silently
    with pytest.raises(ConfigError) as info:
        fast.apply(torch.nn.Conv2d(1, 1, 1), cfg)
    one_line_naming(str(info.value), "MODEL.GCNET.FOLD_NORMS", "FAST.FOLD_FROZEN_NORMS")


def test_fast_node_read_from_yaml():
    cfg = load_config(str(REPO / "configs" / ROW), ["FAST.LEAN_FPN", "False"])
    assert FastOptions.from_config(cfg) == FastOptions(lean_fpn=False)


# --- LazyConfig: the top-level `fast` dict ----------------------------------------------------


def lazy(*overrides: str):  # noqa: ANN201
    return LazyConfig.apply_overrides(LazyConfig.load(str(REPO / LAZY_ROW)), list(overrides))


def test_lazyconfig_without_fast_takes_the_defaults():
    cfg = lazy()
    assert "fast" not in cfg
    assert FastOptions.from_config(cfg) == FastOptions()


def test_lazyconfig_fast_entry_is_read():
    cfg = lazy("+fast.lean_fpn=False", "+fast.compile=''")
    assert FastOptions.from_config(cfg) == FastOptions(lean_fpn=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("fold_norms", "fast.fold_norms was renamed to fast.fold_frozen_norms"),
        ("lean_fnp", "fast.lean_fnp: unknown speed-up switch; known: fast.fold_frozen_norms"),
        ("FOLD_FROZEN_NORMS", "fast.FOLD_FROZEN_NORMS: unknown speed-up switch"),
    ],
)
def test_lazyconfig_unknown_or_renamed_name_stops_naming_it(name, message):
    cfg = lazy(f"+fast.{name}=False")
    with pytest.raises(ConfigError, match=message) as info:
        fast.apply(torch.nn.Conv2d(1, 1, 1), cfg)
    assert "\n" not in str(info.value)


def tiny_detector() -> torch.nn.Module:
    """The tiny GC Mask R-CNN (MMDetFPN, two ROIPoolers), for a LazyConfig's ``model``."""
    return build_model(tiny_cfg(ROW))


@pytest.mark.parametrize("lean_fpn", [False, True])
def test_lazy_train_net_applies_the_lazyconfigs_fast_entry(lean_fpn):
    """``lazy_train_net.build_model`` reads ``fast``: ``lean_fpn=False`` leaves the FPN plain
    while the other switches (on) still act; with ``lean_fpn=True`` the FPN is lean."""
    import lazy_train_net

    cfg = lazy_train_net.load_lazy_config(str(REPO / LAZY_ROW))
    cfg = LazyConfig.apply_overrides(cfg, [f"fast.lean_fpn={lean_fpn}", "train.device=cpu"])
    cfg.model = L(tiny_detector)()
    model = lazy_train_net.build_model(cfg)
    assert type(model.backbone) is (LeanFPN if lean_fpn else MMDetFPN)
    assert any(type(m) is ParallelROIAlign for m in model.modules())


def test_lazy_train_net_refuses_a_bad_fast_option_before_starting(tmp_path, capsys):
    import lazy_train_net

    argv = ["--config-file", str(REPO / LAZY_ROW), f"train.output_dir={tmp_path}"]
    with pytest.raises(SystemExit) as info:
        lazy_train_net.cli([*argv, "fast.lean_fpn=yes"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "lazy_train_net.py: error: fast.lean_fpn must be true or false, got 'yes'"
    assert not any(tmp_path.iterdir())


def test_predictor_applies_the_fast_node():
    cfg = tiny_cfg(ROW, "FAST.LEAN_FPN", "False", "FAST.PARALLEL_ROI_ALIGN", "False")
    cfg.MODEL.WEIGHTS = ""
    model = gcnet_d2.GCNetPredictor(cfg).model
    assert type(model.backbone) is MMDetFPN
    assert not any(type(m) is ParallelROIAlign for m in model.modules())
    assert any(type(m) is fast.NormFoldingConv2d for m in model.modules())
