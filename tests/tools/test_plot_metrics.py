"""tools/plot_metrics.py on metrics.json files written by detectron2's own JSONWriter."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.utils.events import EventStorage, JSONWriter
from PIL import Image

from tests.testing import REPO, run_python

TOOL = REPO / "tools" / "plot_metrics.py"

spec = importlib.util.spec_from_file_location("gcnet_d2_plot_metrics", TOOL)
plot_metrics = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = plot_metrics  # dataclasses look their module up there
spec.loader.exec_module(plot_metrics)

LOSSES = ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def write_run(folder: Path, iters: int = 40, scale: float = 1.0, eval_every: int = 20) -> Path:
    """A metrics.json as DefaultTrainer writes it: losses and lr every 10 iterations (losses
    median-smoothed by the writer), COCO AP after every ``eval_every`` iterations."""
    folder.mkdir(parents=True, exist_ok=True)
    with EventStorage(start_iter=0) as storage:
        writer = JSONWriter(str(folder / "metrics.json"), window_size=5)
        for it in range(iters):
            storage.iter = it
            losses = {k: scale * (i + 1) / (it + 1) for i, k in enumerate(LOSSES)}
            storage.put_scalars(total_loss=sum(losses.values()), **losses)
            storage.put_scalar("lr", 0.01 * min(1.0, (it + 1) / 10), smoothing_hint=False)
            if (it + 1) % eval_every == 0:
                ap = {"bbox/AP": it / scale, "bbox/AP50": 2 * it / scale, "segm/AP": it / 2}
                ap["segm/AP-rectangle"] = 1.0  # per-class AP: not plotted
                storage.put_scalars(**ap, smoothing_hint=False)
            if (it + 1) % 10 == 0:
                writer.write()
        writer.close()
    return folder


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_reads_detectron2_metrics(tmp_path: Path) -> None:
    run = plot_metrics.load_run(str(write_run(tmp_path / "gc")))
    assert run.label == "gc" and run.skipped_lines == 0
    assert run.loss_keys == ["total_loss", *sorted(LOSSES)]
    assert run.ap_keys == ["bbox/AP", "bbox/AP50", "segm/AP"]
    assert run.xy("lr")[0] == [9, 19, 29, 39]
    assert run.xy("bbox/AP") == ([19, 39], [19.0, 39.0])


def test_resumed_and_half_written_lines(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    with open(folder / "metrics.json", "a") as f:  # resumed at 29 with other values, then cut
        f.write(json.dumps({"iteration": 29, "lr": 0.5}) + "\n")
        f.write('{"iteration": 39, "lr": 0.')
    run = plot_metrics.load_run(str(folder / "metrics.json"))
    assert run.label == "run" and run.skipped_lines == 1
    assert run.xy("lr") == ([9, 19, 29, 39], [0.01, 0.01, 0.5, 0.01])


def test_one_run_png_next_to_metrics(tmp_path: Path, capsys) -> None:
    folder = write_run(tmp_path / "quickstart")
    assert plot_metrics.main([str(folder)]) == 0
    image = png(folder / "metrics.png")
    assert image.shape == (900, 460, 3)  # one column of three panels at 100 dpi
    assert image.std() > 10
    assert str(folder / "metrics.png") in capsys.readouterr().out


def test_runs_side_by_side(tmp_path: Path) -> None:
    gc = write_run(tmp_path / "a" / "gc")
    plain = write_run(tmp_path / "b" / "plain", scale=1.2, eval_every=40)
    out = tmp_path / "plots" / "gc_vs_plain.png"
    argv = [str(gc), str(plain), "--labels", "GC", "plain", "-o", str(out), "--smooth", "2"]
    assert plot_metrics.main(argv) == 0
    assert png(out).shape == (900, 3 * 460, 3)  # GC, plain, comparison
    assert sorted(p.name for p in out.parent.iterdir()) == ["gc_vs_plain.png"]  # no temp file


def test_no_evaluation_still_plots(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", eval_every=1000)
    assert plot_metrics.load_run(str(folder)).ap_keys == []
    assert plot_metrics.main([str(folder), "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_same_folder_names_get_their_paths() -> None:
    assert plot_metrics.unique_labels(["a/run", "b/run"]) == ["a/run", "b/run"]
    assert plot_metrics.unique_labels(["x/gc", "y/plain/metrics.json"]) == ["gc", "plain"]


@pytest.mark.parametrize(
    ("make", "argv_tail", "message"),
    [
        (lambda d: None, [], "has no metrics.json"),
        (lambda d: (d / "metrics.json").write_text("garbage\n\n"), [], "no metrics"),
        (lambda d: write_run(d), ["--labels", "a", "b"], "2 --labels for 1 runs"),
        (lambda d: write_run(d), ["-o", "plot.jpg"], "name it *.png"),
    ],
)
def test_errors(tmp_path: Path, capsys, make, argv_tail, message) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    make(folder)
    assert plot_metrics.main([str(folder), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "metrics" in message:
        assert str(folder) in err


@pytest.mark.slow
def test_cli_from_another_directory(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "a")
    write_run(tmp_path / "b")
    result = run_python([str(TOOL), "a", "b"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "metrics_comparison.png").is_file()
    assert not (folder / "metrics.png").exists()


def test_documented_commands_parse() -> None:
    from tests.testing import documented_commands

    commands = documented_commands("tools/plot_metrics.py")
    assert len(commands) >= 2, "docs/usage.md documents one run and a comparison"
    for argv in commands:
        args = plot_metrics.get_parser().parse_args(argv)
        assert args.labels is None or len(args.labels) == len(args.runs), argv
        assert args.output is None or args.output.endswith(".png"), argv
