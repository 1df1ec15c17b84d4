"""Registered backbone builders: shapes, strides, parameter counts, freezing, bad values."""

from __future__ import annotations

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import gcnet_d2
from gcnet_d2.modeling import (
    ContextBlock,
    DeformConv2dWithOffset,
    FrozenStatsBatchNorm2d,
    make_gcnet_stages,
    validate_gcnet_config,
)
from gcnet_d2.modeling.backbone import CONFIG_KEYS
from tests.testing import imported_modules

BUILDERS = [
    "build_gcnet_resnet_backbone",
    "build_gcnet_resnet_fpn_backbone",
    "build_gcnet_retinanet_resnet_fpn_backbone",
]


def make_cfg(
    depth=50,
    gc=(False, True, True, True),
    ratio=1 / 16,
    dcn=(False,) * 4,
    groups=1,
    width=64,
    norm="FrozenBN",
    builder="build_gcnet_resnet_fpn_backbone",
):
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = list(dcn)
    cfg.MODEL.GCNET.STAGES_ON = list(gc)
    cfg.MODEL.GCNET.RATIO = ratio
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if builder == "build_gcnet_retinanet_resnet_fpn_backbone":
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    return cfg


def count(module: torch.nn.Module) -> int:
    """Parameters plus FrozenBN's weight/bias buffers (the trainable size of the architecture)."""
    n = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n += m.weight.numel() + m.bias.numel()
    return n


def gc_formula(ratio_inv: int, blocks=(4, 6, 3), channels=(512, 1024, 2048)) -> int:
    """mmcv ContextBlock parameters, by hand: conv_mask C+1; C->P conv CP+P; LayerNorm 2P;
    P->C conv PC+C; with P = int(C / r)."""
    total = 0
    for n, c in zip(blocks, channels, strict=True):
        p = int(c / ratio_inv)
        total += n * ((c + 1) + (c * p + p) + 2 * p + (p * c + c))
    return total


def dcn_formula(blocks=(4, 6, 3), widths=(128, 256, 512)) -> int:
    """Offset convs: 3x3, width -> 18 channels, with bias (the DCN weight replaces conv2's)."""
    return sum(n * (w * 18 * 9 + 18) for n, w in zip(blocks, widths, strict=True))


@pytest.mark.parametrize("builder", BUILDERS)
def test_registered_and_output_shapes(builder):
    assert builder in BACKBONE_REGISTRY
    cfg = make_cfg(builder=builder)
    backbone = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    x = torch.randn(1, 3, 128, 96)
    feats = backbone(x)
    shapes = backbone.output_shape()
    assert set(feats) == set(shapes)
    expected = {
        "build_gcnet_resnet_backbone": {"res2": 4, "res3": 8, "res4": 16, "res5": 32},
        "build_gcnet_resnet_fpn_backbone": {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64},
        "build_gcnet_retinanet_resnet_fpn_backbone": {
            "p3": 8,
            "p4": 16,
            "p5": 32,
            "p6": 64,
            "p7": 128,
        },
    }[builder]
    assert {k: v.stride for k, v in shapes.items()} == expected
    for name, f in feats.items():
        stride = shapes[name].stride
        assert f.shape == (1, shapes[name].channels, -(-128 // stride), -(-96 // stride)), name
    if builder == "build_gcnet_resnet_backbone":
        assert [shapes[f"res{i}"].channels for i in range(2, 6)] == [256, 512, 1024, 2048]
    else:
        assert all(s.channels == 256 for s in shapes.values())


@pytest.mark.parametrize("depth,blocks", [(50, (4, 6, 3)), (101, (4, 23, 3))])
@pytest.mark.parametrize("ratio_inv", [16, 4])
def test_gc_parameter_count(depth, blocks, ratio_inv):
    plain = build_backbone(
        make_cfg(depth, gc=(False,) * 4, builder=BUILDERS[0]), ShapeSpec(channels=3)
    )
    gc = build_backbone(
        make_cfg(depth, ratio=1 / ratio_inv, builder=BUILDERS[0]), ShapeSpec(channels=3)
    )
    assert count(gc) - count(plain) == gc_formula(ratio_inv, blocks)
    n_blocks = sum(isinstance(m, ContextBlock) for m in gc.modules())
    assert n_blocks == sum(blocks)  # 13 in R-50, 30 in R-101


def test_gc_r50_adds_published_amount():
    """GCNet paper / mmdet: +2.5M parameters at r16, +10.0M at r4 on R-50."""
    assert round(gc_formula(16) / 1e6, 1) == 2.5
    assert round(gc_formula(4) / 1e6, 1) == 10.0


@pytest.mark.parametrize(
    "depth,groups,width,reference",
    [
        (50, 1, 64, lambda: torchvision.models.resnet50()),
        (101, 1, 64, lambda: torchvision.models.resnet101()),
        (
            101,
            32,
            4,
            lambda: torchvision.models.resnet.ResNet(
                torchvision.models.resnet.Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4
            ),
        ),
    ],
)
def test_plain_counts_equal_torchvision(depth, groups, width, reference):
    """Independent count: torchvision's own ResNet / ResNeXt without its classifier."""
    ref = reference()
    expected = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    ours = build_backbone(
        make_cfg(depth, gc=(False,) * 4, groups=groups, width=width, builder=BUILDERS[0]),
        ShapeSpec(channels=3),
    )
    assert count(ours) == expected


def test_dcn_parameter_count_x101():
    kw = dict(depth=101, groups=32, width=4, gc=(False,) * 4, builder=BUILDERS[0])
    plain = build_backbone(make_cfg(**kw), ShapeSpec(channels=3))
    dcn = build_backbone(make_cfg(dcn=(False, True, True, True), **kw), ShapeSpec(channels=3))
    # ResNeXt-101 32x4d: 3x3 widths 256, 512, 1024 in res3-res5
    assert count(dcn) - count(plain) == dcn_formula((4, 23, 3), (256, 512, 1024))
    convs = [m for m in dcn.modules() if isinstance(m, DeformConv2dWithOffset)]
    assert len(convs) == 30 and all(c.groups == 32 for c in convs)


def test_stem_and_res2_frozen_rest_trainable():
    cfg = make_cfg(norm="FrozenStatsBN", builder=BUILDERS[0])
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    for name, p in backbone.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert p.requires_grad != frozen, name
    # mmdet norm_eval=True + requires_grad=True: stats frozen, affine trained in res3-res5
    norm = backbone.res3[0].conv1.norm
    assert isinstance(norm, FrozenStatsBatchNorm2d) and norm.weight.requires_grad
    before = norm.running_mean.clone()
    backbone.train()(torch.randn(2, 3, 64, 64))
    assert torch.equal(norm.running_mean, before)


def test_pytorch_style_stride_on_3x3():
    backbone = build_backbone(make_cfg(builder=BUILDERS[0]), ShapeSpec(channels=3))
    block = backbone.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_syncbn_maps_to_gloo_capable_norm_on_cpu():
    backbone = build_backbone(make_cfg(norm="SyncBN", builder=BUILDERS[0]), ShapeSpec(channels=3))
    assert isinstance(backbone.res4[0].conv1.norm, NaiveSyncBatchNorm)
    backbone.train()(torch.randn(2, 3, 64, 64))  # single-process train step runs on the CPU


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("MODEL.GCNET.RATIO", 0.0, r"MODEL\.GCNET\.RATIO.*0\.0"),
        ("MODEL.GCNET.RATIO", 2.0, r"MODEL\.GCNET\.RATIO.*2\.0"),
        ("MODEL.GCNET.POOLING", "max", r"MODEL\.GCNET\.POOLING.*'max'"),
        ("MODEL.GCNET.FUSION", ["channel_sum"], r"MODEL\.GCNET\.FUSION.*channel_sum"),
        ("MODEL.GCNET.STAGES_ON", [True, True, True], r"MODEL\.GCNET\.STAGES_ON.*4"),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 5, r"DEFORM_ON_PER_STAGE.*4"),
        ("MODEL.RESNETS.DEPTH", 34, r"MODEL\.RESNETS\.DEPTH.*34"),
        ("MODEL.RESNETS.NORM", "BatchNorm", r"MODEL\.RESNETS\.NORM.*'BatchNorm'"),
        ("MODEL.RESNETS.DEFORM_MODULATED", True, r"DEFORM_MODULATED"),
    ],
)
def test_bad_values_name_key_and_value(key, value, match):
    cfg = make_cfg()
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg, ShapeSpec(channels=3))


# --- one validation pass, every error naming its key --------------------------------------

#: a value of each checked argument that cannot be built, with what the error must mention
BAD_STAGE_ARGS = {
    "depth": (34, "34"),
    "norm": ("SuperBN", "'SuperBN'"),
    "res5_dilation": (3, "3"),
    "gc_stages": ([True, True, True], "4 booleans"),
    "gc_ratio": (2.0, "2.0"),
    "gc_pooling": ("max", "'max'"),
    "gc_fusion": (["channel_add", "channel_add"], "repeat"),
    "deform_stages": ([False, 2, False, False], "4 booleans"),
}
CONFIG_ONLY = [
    ("MODEL.RESNETS.DEFORM_MODULATED", True, "DCN v1"),
    ("MODEL.BACKBONE.FREEZE_AT", 6, "6"),
]


def set_key(cfg, key: str, value: object) -> None:  # noqa: ANN001
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value


def test_every_checked_argument_has_a_config_key_and_a_bad_case():
    assert set(BAD_STAGE_ARGS) == set(CONFIG_KEYS)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [(CONFIG_KEYS[arg], *bad) for arg, bad in BAD_STAGE_ARGS.items()] + CONFIG_ONLY,
)
def test_config_error_starts_with_its_key(key, value, expected):
    """Loading (validate_gcnet_config) and building report the key first, then the value."""
    cfg = make_cfg(builder=BUILDERS[0])
    set_key(cfg, key, value)
    for check in (validate_gcnet_config, lambda c: build_backbone(c, ShapeSpec(channels=3))):
        with pytest.raises(ValueError) as info:
            check(cfg)
        assert str(info.value).startswith(f"{key}: "), str(info.value)
        assert expected in str(info.value)


@pytest.mark.parametrize("arg", list(BAD_STAGE_ARGS))
def test_stage_argument_error_starts_with_its_name(arg):
    value, expected = BAD_STAGE_ARGS[arg]
    with pytest.raises(ValueError) as info:
        make_gcnet_stages(**{arg: value})
    assert str(info.value).startswith(f"{arg}: "), str(info.value)
    assert expected in str(info.value) and "MODEL." not in str(info.value)


def test_one_validation_pass_on_the_real_values(monkeypatch):
    """Building from a config checks the GC arguments once, with the config's own values
    (no second pass, no placeholder arguments standing in for the others)."""
    from gcnet_d2.modeling import backbone

    calls = []
    real = backbone.context_arg_errors
    monkeypatch.setattr(
        backbone, "context_arg_errors", lambda *args: calls.append(args) or real(*args)
    )
    cfg = make_cfg(ratio=1 / 4, builder=BUILDERS[0])
    cfg.MODEL.GCNET.POOLING = "avg"
    cfg.MODEL.GCNET.FUSION = ["channel_mul"]
    build_backbone(cfg, ShapeSpec(channels=3))
    assert calls == [(1 / 4, "avg", ["channel_mul"])]


# --- the GC backbone knows nothing of mmdetection's recipe --------------------------------


def _gcnet_d2_imports(path) -> set[str]:  # noqa: ANN001
    """The gcnet_d2 modules ``path`` imports (relative imports resolved), by dotted name."""
    return {m for m in imported_modules(path) if m == "gcnet_d2" or m.startswith("gcnet_d2.")}


def _module_file(name: str):  # noqa: ANN202
    from pathlib import Path

    path = Path(gcnet_d2.__file__).parent.parent.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@pytest.mark.parametrize("module", ["backbone", "bottleneck"])
def test_backbone_modules_import_nothing_of_the_recipe(module):
    """What the GC backbone modules import, and what that imports in turn (package
    ``__init__`` files of what they import included), holds no ``mmdet_recipe`` module and no
    recipe name."""
    start = f"gcnet_d2.modeling.{module}"
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_gcnet_d2_imports(path))
    assert len(seen) > 3  # it did follow the imports (layers, registry, ...)
    recipe = sorted(n for n in seen if "mmdet_recipe" in n or "mmdet" in n.rpartition(".")[2])
    assert recipe == [], f"{start} imports {recipe}"
