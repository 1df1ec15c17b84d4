"""tools/benchmark.py: a quick run of one section, its report, the targets, its commands."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from tests.helpers import REPO, documented_commands


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("gcnet_benchmark", REPO / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


benchmark = _load_benchmark()


def test_quick_block_section_reports_both_formulations(tmp_path):
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
        assert set(row["variants"]) == {"mmcv", "ours"}
        ours = row["variants"]["ours"]
        assert ours["runs"] >= 2 and ours["median_s"] > 0 and ours["ratio"] > 0
        if row["section"] == "block fwd (inference)":
            assert row["max_abs_err"] < 1e-4
        else:
            assert row["max_rel_grad_err"] < 1e-4
    assert report["targets"] == []  # the GC block alone has no target
    md = out_md.read_text()
    assert "| block fwd (inference) | c3 | 1 | ours |" in md and "Targets:" in md
    assert not list(tmp_path.glob("*.tmp*"))


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
    commands = documented_commands("tools/benchmark.py")
    assert commands, "README.md / docs document tools/benchmark.py"
    for argv in commands:
        args = benchmark.get_parser().parse_args(argv)
        assert set(args.sections.split(",")) <= set(benchmark.SECTIONS), argv


def _timed_row(section: str, ratios: dict[str, list[float]]) -> dict:
    from gcnet_d2.benchmark.report import make_row
    from gcnet_d2.benchmark.timing import Result

    res = {"plain": Result("plain", times=[1.0] * 9)}
    for name, values in ratios.items():
        res[name] = Result(name, times=list(values), ratios=list(values))
    return make_row(section, "", 1, res, "plain")


def test_targets_judge_the_measured_ratios():
    """A GC backbone within its limit is met, one over it is not, a straddling CI says so."""
    from gcnet_d2.benchmark.fixtures import R4, R16

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
    polygons), its mmdetection side the table config; the parameters are the same, and the
    bitmap targets are the polygons rasterised at the image size and padded to 32."""
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import StandardROIHeads
    from detectron2.structures import BitMasks, PolygonMasks

    from gcnet_d2.benchmark.recipe_section import D2, MMDET, recipe_inputs, recipe_model
    from gcnet_d2.modeling import MMDetROIHeads, MMDetRPN

    cpu = torch.device("cpu")
    d2, ours = recipe_model(D2, cpu), recipe_model(MMDET, cpu)
    assert type(d2.proposal_generator) is RPN and type(d2.roi_heads) is StandardROIHeads
    assert isinstance(ours.proposal_generator, MMDetRPN)
    assert isinstance(ours.roi_heads, MMDetROIHeads)
    shapes = {k: v.shape for k, v in d2.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ours.state_dict().items()}

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
