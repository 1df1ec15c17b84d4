"""benchmarks/run.py: a quick run of one section, its report, the targets, its commands."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from benchmarks import run as benchmark
from benchmarks.sections import BLOCK_BASE
from gcnet_d2.fast import LeanFPN, NormFoldingConv2d, ParallelROIAlign
from gcnet_d2.fast.gc_fold import FoldedDeformGCBottleneckBlock, FoldedGCBottleneckBlock
from gcnet_d2.layers import ContextBlock, FrozenStatsBatchNorm2d
from gcnet_d2.modeling import GCBottleneckBlock
from tests.testing import documented_commands

FAST_TYPES = (
    NormFoldingConv2d,
    FoldedGCBottleneckBlock,
    FoldedDeformGCBottleneckBlock,
    ParallelROIAlign,
    LeanFPN,
)


def fast_types(model: torch.nn.Module) -> set[type]:
    """The classes of ``gcnet_d2.fast`` among ``model``'s modules (empty: the plain model)."""
    return {type(m) for m in model.modules() if isinstance(m, FAST_TYPES)}


@pytest.mark.slow
def test_quick_block_section_times_the_plain_block_against_a_copy(tmp_path):
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["--quick", "--device", "cpu", "--sections", "block"]
    report = benchmark.main([*argv, "--json", str(out_json), "--markdown", str(out_md)])
    assert json.loads(out_json.read_text())["rows"] == report["rows"]
    rows = {(r["section"], r["shape"]): r for r in report["rows"]}
    assert set(rows) == {
        (section, stage)
        for section in ("block fwd (inference)", "block fwd+bwd")
        for stage in ("c3", "c4", "c5")
    }
    for row in report["rows"]:
        assert row["base"] == BLOCK_BASE
        assert set(row["variants"]) == {BLOCK_BASE, "GC block"}
        block = row["variants"]["GC block"]
        assert block["runs"] >= 2 and block["median_s"] > 0 and block["ratio"] > 0
        if row["section"] == "block fwd (inference)":
            # randomized weights: the block changes its input (a fresh block is the identity)
            assert 1e-3 < row["rel_change_vs_input"] < 10
    assert report["targets"] == []  # the GC block alone has no target
    md = out_md.read_text()
    assert "| block fwd (inference) | c3 | 1 | GC block |" in md and "rel change" in md
    assert "Targets:" in md
    assert not list(tmp_path.glob("*.tmp*"))


def test_bottleneck_section_ours_is_the_folded_block_and_mmcv_the_plain_one():
    """``ours`` (and its GC-less control) fold conv3 + norm + GC block; ``mmcv GC`` is the plain
    ``GCBottleneckBlock``, ``d2 (no GC)`` detectron2's; the same weights, the same function."""
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    from benchmarks.sections import bottleneck_variants
    from gcnet_d2.fast.gc_fold import conv3_and_context

    mods, x = bottleneck_variants(64, 2, 12, 16, torch.device("cpu"))
    assert type(mods["ours"]) is FoldedGCBottleneckBlock
    assert type(mods["ours minus GC"]) is FoldedGCBottleneckBlock
    assert mods["ours minus GC"].context_block is None
    assert type(mods["mmcv GC"]) is GCBottleneckBlock
    assert type(mods["d2 (no GC)"]) is BottleneckBlock
    for name, m in mods.items():
        assert not m.training, name
        # only conv3 + norm + GC block differ: no norm folding in conv1 / conv2 anywhere
        assert fast_types(m) <= {FoldedGCBottleneckBlock}, name
    assert mods["ours"].context_block is not mods["mmcv GC"].context_block  # a copy
    with (
        mock.patch(
            "gcnet_d2.fast.gc_fold.conv3_and_context", side_effect=conv3_and_context
        ) as fold,
        torch.inference_mode(),
    ):
        ours, plain = mods["ours"](x), mods["mmcv GC"](x)
    assert fold.call_count == 1  # ours took the fold, the plain block did not
    assert (ours - x).abs().max() > 1e-3  # non-trivial block
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)
    d2_sd = mods["d2 (no GC)"].state_dict()
    for k, v in d2_sd.items():
        assert torch.equal(v, mods["mmcv GC"].state_dict()[k]), k


def test_bottleneck_section_rows_at_a_tiny_shape(monkeypatch):
    """The section end to end (batch 1 and 2, inference and training, two rounds) on one tiny
    stage shape: the rows, their base and the folded block's agreement with the plain one."""
    from benchmarks import sections
    from benchmarks.timing import Timer

    class TwoRounds(sections.Settings):
        def rounds(self, full: int, quick: int) -> int:
            return 2

    monkeypatch.setattr(sections, "STAGE_SHAPES", {"c3": (64, 12, 16)})
    cpu = torch.device("cpu")
    rows = sections.section_bottleneck(TwoRounds(cpu, False, 0, ["r50"], False), Timer(cpu, 0))
    assert [(r["section"], r["batch"]) for r in rows] == [
        ("bottleneck fwd (inference)", 1),
        ("bottleneck fwd+bwd", 1),
        ("bottleneck fwd (inference)", 2),
        ("bottleneck fwd+bwd", 2),
    ]
    for row in rows:
        assert row["base"] == "mmcv GC"
        assert set(row["variants"]) == {"d2 (no GC)", "mmcv GC", "ours", "ours minus GC"}
        assert set(row["pairs"]) == {"ours / ours minus GC", "ours / d2 (no GC)"}
        if "max_abs_err" in row:
            assert row["max_abs_err"] < 1e-4


def test_benchmark_backbones_are_calibrated_plain_then_sped_up():
    """``build_backbones``: every variant has ``gcnet_d2.fast.apply``'s classes (the GC ones the
    folded bottleneck, the control too, without GC blocks); the norms were calibrated (a
    sped-up model folds them, so calibrating it must run the plain modules); the flops
    section's "mmcv formulation" copy has none of the speed-ups."""
    from benchmarks.extra_sections import mmcv_formulation
    from benchmarks.fixtures import CONTROL, PLAIN, R4, R16, build_backbones

    nets = build_backbones("r50", torch.device("cpu"), (64, 96))
    assert set(nets) == {PLAIN, R16, R4, CONTROL}
    assert fast_types(nets[PLAIN]) == {NormFoldingConv2d}
    for name in (R16, R4, CONTROL):
        assert fast_types(nets[name]) == {NormFoldingConv2d, FoldedGCBottleneckBlock}, name
        assert not any(type(m) is GCBottleneckBlock for m in nets[name].modules()), name
    assert any(isinstance(m, ContextBlock) for m in nets[R16].modules())
    assert not any(isinstance(m, ContextBlock) for m in nets[CONTROL].modules())
    gemm = {n for n, m in nets[R16].named_modules() if getattr(m, "gemm_1x1", False)}
    assert gemm, "CONV1X1_GEMM on: 1x1 convs marked"
    norm = nets[PLAIN].stem.conv1.norm
    assert not torch.equal(norm.running_var, torch.ones_like(norm.running_var))  # calibrated
    torch.testing.assert_close(nets[R16].stem.conv1.norm.running_var, norm.running_var)

    plain = mmcv_formulation(nets[R16])
    assert fast_types(plain) == set()
    assert fast_types(nets[R16]) == {NormFoldingConv2d, FoldedGCBottleneckBlock}  # untouched
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        fast_out, plain_out = nets[R16](x), plain(x)
    for k in plain_out:
        torch.testing.assert_close(fast_out[k], plain_out[k], rtol=1e-3, atol=1e-3)


def test_calibration_runs_the_plain_modules_and_restores_the_speed_ups():
    from functools import partial

    from gcnet_d2 import fast
    from tests.testing import calibrate_norms

    torch.manual_seed(0)
    block = GCBottleneckBlock(64, 64, bottleneck_channels=16, norm=FrozenStatsBatchNorm2d)
    fast.apply(block, fast.FastOptions(conv1x1_gemm=True))
    before = {n: type(m) for n, m in block.named_modules()}
    marks = {n: m.gemm_1x1 for n, m in block.named_modules() if isinstance(m, NormFoldingConv2d)}
    assert any(marks.values())
    calibrate_norms(block, partial(block, torch.randn(2, 64, 8, 8) * 5 + 3))
    for conv in ("conv1", "conv2", "conv3"):
        var = getattr(block, conv).norm.running_var
        assert not torch.equal(var, torch.ones_like(var)), conv  # every norm saw its input
    assert {n: type(m) for n, m in block.named_modules()} == before
    after = {n: m.gemm_1x1 for n, m in block.named_modules() if isinstance(m, NormFoldingConv2d)}
    assert after == marks


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sections", "block,nope"], "unknown sections"),
        (["--backbones", "r18"], "--backbones"),
        (["--json", "/nonexistent-dir/b.json"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_documented_commands_parse():
    commands = documented_commands("benchmarks/run.py")
    assert commands, "benchmarks/README.md (and README.md / docs) document benchmarks/run.py"
    for argv in commands:
        args = benchmark.get_parser().parse_args(argv)
        assert set(args.sections.split(",")) <= set(benchmark.SECTIONS), argv


def _timed_row(section: str, ratios: dict[str, list[float]]) -> dict:
    from benchmarks.report import make_row
    from benchmarks.timing import Result

    res = {"plain": Result("plain", times=[1.0] * 9)}
    for name, values in ratios.items():
        res[name] = Result(name, times=list(values), ratios=list(values))
    return make_row(section, "", 1, res, "plain")


def test_targets_judge_the_measured_ratios():
    """A GC backbone within its limit is met, one over it is not, a straddling CI says so."""
    from benchmarks.fixtures import R4, R16

    within = [1.0, 1.005, 1.01, 1.0, 1.012, 1.008, 1.003, 1.01, 1.0]
    over = [1.1, 1.09, 1.12, 1.1, 1.11, 1.1, 1.08, 1.1, 1.1]
    straddle = [1.01, 1.04, 1.02, 1.05, 1.0, 1.03, 1.01, 1.04, 1.02]
    row = _timed_row("backbone r50 fwd 800x1344", {R16: within, R4: over})
    met = {t["target"]: t["met"] for t in benchmark.targets({"rows": [row]})}
    assert met == {"backbone GC r16 <= 1.02x plain": "yes", "backbone GC r4 <= 1.03x plain": "no"}
    row = _timed_row("Mask R-CNN R-50 inference", {R16: straddle, R4: within})
    met = {t["target"]: t["met"] for t in benchmark.targets({"rows": [row]})}
    assert met["Mask R-CNN GC r16 <= 1.015x plain"] == "no (within noise)"
    assert met["Mask R-CNN GC r4 <= 1.02x plain"] == "yes"
    memory = {"plain": {"live_peak_bytes": 100}, R16: {"live_peak_ratio": 0.84}}
    memory[R4] = {"live_peak_ratio": 1.2}
    row = {"section": "training iteration, 2 images", "variants": {}, "memory": memory}
    met = {t["target"]: t["met"] for t in benchmark.targets({"rows": [row]})}
    assert list(met.values()) == ["yes", "no"]
    row = _timed_row("training components, GC r16 Mask R-CNN", {"mmdetection components": over})
    met = {t["target"]: t["met"] for t in benchmark.targets({"rows": [row]})}
    assert met == {"training iteration, mmdetection components <= 1.03x Detectron2's": "no"}


def test_recipe_section_compares_the_two_component_sets_on_the_same_model():
    """The ``recipe`` section's Detectron2 side is stock detectron2 (RPN, StandardROIHeads,
    polygons), its mmdetection side the table config; both with the speed-ups train_net.py
    applies; the parameters are the same, and the bitmap targets are the polygons rasterised
    at the image size and padded to 32."""
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import StandardROIHeads
    from detectron2.structures import BitMasks, PolygonMasks

    from benchmarks.recipe_section import D2, MMDET, recipe_inputs, recipe_model
    from gcnet_d2.modeling import MMDetROIHeads, MMDetRPN

    cpu = torch.device("cpu")
    d2, ours = recipe_model(D2, cpu), recipe_model(MMDET, cpu)
    assert type(d2.proposal_generator) is RPN and type(d2.roi_heads) is StandardROIHeads
    assert isinstance(ours.proposal_generator, MMDetRPN)
    assert isinstance(ours.roi_heads, MMDetROIHeads)
    shapes = {k: v.shape for k, v in d2.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ours.state_dict().items()}
    for model in (d2, ours):
        assert model.training
        assert fast_types(model) == {
            NormFoldingConv2d,
            FoldedGCBottleneckBlock,
            ParallelROIAlign,
            LeanFPN,
        }
        assert not any(type(m) is GCBottleneckBlock for m in model.modules())

    sizes = ((96, 128), (80, 112))
    polys, bits = recipe_inputs(sizes, cpu, bitmasks=False), recipe_inputs(sizes, cpu, True)
    for p, b, (h, w) in zip(polys, bits, sizes, strict=True):
        assert torch.equal(p["image"], b["image"])
        assert torch.equal(p["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert isinstance(p["instances"].gt_masks, PolygonMasks)
        masks = b["instances"].gt_masks
        assert isinstance(masks, BitMasks)
        assert masks.tensor.shape[1:] == (-(-h // 32) * 32, -(-w // 32) * 32)
        assert not masks.tensor[:, h:].any() and not masks.tensor[:, :, w:].any()
        # each bitmap covers about its polygon's area (a diamond: half its box)
        boxes = p["instances"].gt_boxes
        ratio = masks.tensor.sum((1, 2)).float() / boxes.area()
        assert ((ratio > 0.35) & (ratio < 0.65)).all(), ratio
