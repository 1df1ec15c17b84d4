#!/usr/bin/env python
"""Plot Detectron2 training curves (losses, learning rate, evaluation AP) from metrics.json.

    python tools/plot_metrics.py output/quickstart      # writes output/quickstart/metrics.png
    python tools/plot_metrics.py output/gc output/plain --labels GC plain -o gc_vs_plain.png

Each argument is a training OUTPUT_DIR (or its ``metrics.json``), the JSON-lines file that
detectron2's ``JSONWriter`` appends to. One run gives one column of three panels: losses,
learning rate, evaluation AP; several runs give one such column each, side by side with
shared y axes, and a last column that overlays the runs' total loss, learning rate and AP.
Lines repeated by a resumed run count once (the last value written for an iteration wins).
"""

# ruff: noqa: E402 (imports follow the sys.path fallback and the matplotlib backend choice)
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if importlib.util.find_spec("gcnet_d2") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from gcnet_d2.io import atomic_open

METRICS_FILE = "metrics.json"
# Detectron2 reports COCO AP in percent as "<task>/AP", "<task>/AP50", "<task>/AP75", ...
AP_KEY = re.compile(r"^(bbox|segm|keypoints)/AP(50|75)?$")
AP_STYLES = {"": "-", "50": "--", "75": ":"}
AP_TASKS = {"bbox": ("C0", "o"), "segm": ("C1", "s"), "keypoints": ("C2", "^")}


class MetricsError(Exception):
    """An unusable run directory or metrics file, reported in one line (exit status 2)."""


@dataclass
class Run:
    """The scalars of one training run, each as ``{iteration: value}``."""

    label: str
    path: str
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    skipped_lines: int = 0

    def xy(self, key: str) -> tuple[list[int], list[float]]:
        points = sorted(self.series.get(key, {}).items())
        return [p[0] for p in points], [p[1] for p in points]

    @property
    def loss_keys(self) -> list[str]:
        """``total_loss`` first, then the loss terms, alphabetically."""
        terms = sorted(k for k in self.series if k.startswith("loss_"))
        return (["total_loss"] if "total_loss" in self.series else []) + terms

    @property
    def ap_keys(self) -> list[str]:
        return sorted(k for k in self.series if AP_KEY.match(k))


def metrics_path(path: str) -> str:
    return os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path


def load_run(path: str, label: str | None = None) -> Run:
    """Read a run's ``metrics.json``; a malformed line (e.g. a half-written last line of a
    running job) is skipped and counted, a file without any usable line is an error."""
    file = metrics_path(path)
    if not os.path.isfile(file):
        where = f"{path!r} has no {METRICS_FILE}" if os.path.isdir(path) else f"{path!r}"
        raise MetricsError(
            f"{where}: no such file (give a training OUTPUT_DIR or its metrics.json)"
        )
    run = Run(label=label or run_name(path), path=file)
    with open(file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError):
                run.skipped_lines += 1
                continue
            for key, value in record.items():
                if key == "iteration" or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    run.series.setdefault(key, {})[iteration] = float(value)
    if not run.series:
        raise MetricsError(
            f"{file}: no metrics (expected detectron2's JSON lines with 'iteration')"
        )
    return run


def run_name(path: str) -> str:
    """``output/quickstart`` or ``output/quickstart/metrics.json`` -> ``quickstart``."""
    p = Path(path).resolve()
    return p.parent.name if p.name == METRICS_FILE else p.name


def unique_labels(paths: Sequence[str]) -> list[str]:
    """Folder names, or whole given paths where two runs share a folder name."""
    names = [run_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(p) for p in paths]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (the first ones average what there is)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")


def _draw_losses(ax, run: Run, smooth: int, color: str | None = None) -> None:
    keys = [k for k in (["total_loss"] if color else run.loss_keys) if k in run.series]
    for key in keys:
        x, y = run.xy(key)
        ax.plot(
            x,
            moving_average(y, smooth),
            label=run.label if color else key,
            color=color,
            linewidth=2.0 if key == "total_loss" else 1.0,
        )
    if not keys:
        _note(ax, "no losses")


def _draw_lr(ax, run: Run, color: str | None = None) -> None:
    x, y = run.xy("lr")
    if not x:
        _note(ax, "no learning rate")
        return
    ax.plot(x, y, color=color or "C0", label=run.label if color else "lr")
    if min(y) > 0:
        ax.set_yscale("log")


def _draw_ap(ax, run: Run, color: str | None = None) -> bool:
    """AP, AP50 and AP75 of each task; only AP (one line per task) when overlaying runs."""
    keys = [k for k in run.ap_keys if not color or k.endswith("/AP")]
    for key in keys:
        x, y = run.xy(key)
        task, variant = key.split("/AP")
        task_color, marker = AP_TASKS[task]
        ax.plot(
            x,
            y,
            linestyle=AP_STYLES[variant],
            marker=marker,
            markersize=5,
            color=color or task_color,
            label=f"{run.label} {key}" if color else key,
        )
    if not keys and color is None:
        _note(ax, "no evaluation in metrics.json")
    return bool(keys)


def plot_runs(runs: Sequence[Run], output: str, smooth: int = 1, title: str | None = None) -> str:
    """Draw ``runs`` into the PNG ``output`` (written atomically); returns ``output``."""
    compare = len(runs) > 1
    cols = len(runs) + compare
    fig, axes = plt.subplots(
        3, cols, figsize=(4.6 * cols, 9.0), sharex="col", sharey="row", squeeze=False
    )
    for j, run in enumerate(runs):
        _draw_losses(axes[0, j], run, smooth)
        _draw_lr(axes[1, j], run)
        _draw_ap(axes[2, j], run)
        axes[0, j].set_title(run.label)
    if compare:
        ax_loss, ax_lr, ax_ap = axes[:, -1]
        any_ap = False
        for j, run in enumerate(runs):
            color = f"C{j}"
            _draw_losses(ax_loss, run, smooth, color=color)
            _draw_lr(ax_lr, run, color=color)
            any_ap |= _draw_ap(ax_ap, run, color=color)
        if not any_ap:
            _note(ax_ap, "no evaluation in metrics.json")
        ax_loss.set_title("comparison (total loss)")
    ylabels = ["loss" + (f" (mean of {smooth})" if smooth > 1 else ""), "learning rate", "AP (%)"]
    for i, ylabel in enumerate(ylabels):
        axes[i, 0].set_ylabel(ylabel)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_open(output) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return output


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="OUTPUT_DIR", help="run folder or metrics.json")
    parser.add_argument(
        "-o",
        "--output",
        help="PNG to write (default: OUTPUT_DIR/metrics.png for one run, "
        "metrics_comparison.png in the current folder for several)",
    )
    parser.add_argument("--labels", nargs="+", help="one name per run (default: folder names)")
    parser.add_argument(
        "--smooth", type=int, default=1, help="trailing mean over N points for losses (default: 1)"
    )
    parser.add_argument("--title", help="figure title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.labels is not None and len(args.labels) != len(args.runs):
            raise MetricsError(f"{len(args.labels)} --labels for {len(args.runs)} runs")
        if args.smooth < 1:
            raise MetricsError(f"--smooth must be >= 1, got {args.smooth}")
        labels = args.labels or unique_labels(args.runs)
        runs = [load_run(p, label) for p, label in zip(args.runs, labels, strict=True)]
        output = args.output
        if output is None:
            first = args.runs[0]
            single = os.path.dirname(metrics_path(first)) or "."
            output = os.path.join(single, "metrics.png") if len(runs) == 1 else None
            output = output or "metrics_comparison.png"
        if not output.lower().endswith(".png"):
            raise MetricsError(f"--output {output!r}: the plot is a PNG, name it *.png")
    except MetricsError as e:
        print(f"plot_metrics: error: {e}", file=sys.stderr)
        return 2
    for run in runs:
        if run.skipped_lines:
            print(f"plot_metrics: {run.path}: skipped {run.skipped_lines} malformed line(s)")
    plot_runs(runs, output, smooth=args.smooth, title=args.title)
    print(f"plot_metrics: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
