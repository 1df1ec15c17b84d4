"""tools/benchmark.py: a quick run of one section, its report, and its documented commands."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

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
        assert row.get("max_abs_err", 0.0) < 1e-4 and row.get("max_rel_grad_err", 0.0) < 1e-4
    assert len(report["targets"]) == 6
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
