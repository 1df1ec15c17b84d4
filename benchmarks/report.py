"""Result rows, their printed and Markdown forms, and a description of the machine."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence

import torch

from .fixtures import CONTROL, R4, R16
from .timing import median_ci

#: Paired ratios between two non-base variants (same rounds) every row reports when it has
#: both: what the GC blocks alone cost.
GC_ALONE = "GC alone, same rounds"
DEFAULT_PAIRS = (
    (R16, CONTROL, GC_ALONE),
    (R4, CONTROL, GC_ALONE),
    ("ours", "ours minus GC", GC_ALONE),
    ("ours", "d2 (no GC)", GC_ALONE),
)


def make_row(
    section: str,
    shape: str,
    batch: int,
    res: dict,
    base: str,
    pairs: Sequence[tuple[str, str, str]] = DEFAULT_PAIRS,
    **extra: object,
) -> dict:
    """One result row: each variant's times and ratios to ``base``, and the paired ratio
    ``a / b`` of each ``(a, b, note)`` in ``pairs`` whose two variants were both timed."""
    row = {
        "section": section,
        "shape": shape,
        "batch": batch,
        "base": base,
        "variants": {k: r.summary() for k, r in res.items()},
        **extra,
    }
    # Best-of ratio: fastest run over fastest run (the least-disturbed runs of each).
    for k, v in row["variants"].items():
        if k != base:
            v["best_ratio"] = v["min_s"] / row["variants"][base]["min_s"]
    row["pairs"] = {}
    for a, b, note in pairs:
        if a in res and b in res:
            ratios = [x / y for x, y in zip(res[a].times, res[b].times, strict=True)]
            lo, hi = median_ci(ratios)
            row["pairs"][f"{a} / {b}"] = {
                "ratio": statistics.median(ratios),
                "ratio_ci95": [lo, hi],
                "note": note,
            }
    return row


# --------------------------------------------------------------------------------------
# report


def _fmt_ratio(v: dict) -> str:
    if "ratio" not in v:
        return "1 (base)"
    lo, hi = v["ratio_ci95"]
    return f"{v['ratio']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_cpu_ratio(v: dict) -> str:
    if "cpu_ratio" not in v:
        return ""
    lo, hi = v["cpu_ratio_ci95"]
    return f"{v['cpu_ratio']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_time(v: dict) -> str:
    med, lo, hi = v["median_s"], v["p25_s"], v["p75_s"]
    if med < 1:
        return f"{med * 1e3:.2f} ms (IQR {lo * 1e3:.2f}-{hi * 1e3:.2f})"
    return f"{med:.3f} s (IQR {lo:.3f}-{hi:.3f})"


def print_row(row: dict) -> None:
    print(f"  {row['section']} {row['shape']} n={row['batch']}:", flush=True)
    for k, v in row.get("pairs", {}).items():
        print(f"    paired {k}: x{_fmt_ratio(v)}", flush=True)
    for k, v in row["variants"].items():
        cpu = f"  cpu x{_fmt_cpu_ratio(v)}" if "cpu_ratio" in v else ""
        print(f"    {k:32s} {_fmt_time(v):40s} x{_fmt_ratio(v)}{cpu}", flush=True)


def print_flops(row: dict) -> None:
    print(f"  {row['section']}:", flush=True)
    for k, v in row["variants"].items():
        print(f"    {k:32s} params {v['params'] / 1e6:.3f} M  flops {v['flops'] / 1e9:.2f} G")


def markdown(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines += [
        f"Machine: {m['cpu']} ({m['cores']} cores), {m['device']}, torch {m['torch']}, "
        f"{m['threads']} threads; load average {m['load_start']} at start, {m['load_end']} "
        "at end.",
        f"Command: `{report['command']}`",
        "",
        "Times: wall clock, median (interquartile range) of interleaved runs; ratio: median "
        "of per-round ratios to the base [95% CI of that median]; CPU-time ratio: the same "
        "on the process's CPU time (all threads); best-of ratio: fastest run over the base's "
        "fastest run.",
        "",
        "| section | shape | n | variant | time | ratio to base | CPU-time ratio | best-of ratio "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "base" not in row:
            continue
        note = ""
        if "max_abs_err" in row:
            note = f"max abs err {row['max_abs_err']:.1e}"
        if "max_rel_grad_err" in row:
            note = f"max rel grad err {row['max_rel_grad_err']:.1e}"
        if "rel_change_vs_input" in row:
            note = f"block output vs input: rel change {row['rel_change_vs_input']:.1e}"
        for k, v in row["variants"].items():
            extra = note
            if "rel_err_vs_fp32" in row and k.split(",")[0] in row["rel_err_vs_fp32"] and "," in k:
                extra = f"rel err vs fp32 {row['rel_err_vs_fp32'][k.split(',')[0]]:.1e}"
            if "memory" in row:
                mem = row["memory"][k]
                extra = ", ".join(
                    f"{key.replace('_bytes', '')} {val / 2**30:.2f} GiB"
                    if key.endswith("bytes") and val is not None
                    else f"{key} {val:.3f}"
                    for key, val in mem.items()
                    if val is not None
                )
            if "compile" in row and k.endswith("compiled"):
                c = row["compile"][k.split(",")[0]]
                extra = (
                    f"graph breaks {c['graph_breaks']}, compile {c['compile_s']:.0f} s, "
                    f"rel err {c['rel_err_vs_eager']:.1e}"
                )
            if "detections" in row:
                mem = f"; {extra}" if "memory" in row else ""
                extra = f"{row['detections'][k]} detections{mem}"
            if "parts" in row:  # per-part median seconds (section mmdet)
                extra += "; " + ", ".join(f"{p} {t:.2f} s" for p, t in row["parts"][k].items())
            best = f"{v['best_ratio']:.3f}" if "best_ratio" in v else ""
            lines.append(
                f"| {row['section']} | {row['shape']} | {row['batch']} | {k} | "
                f"{_fmt_time(v)} | {_fmt_ratio(v)} | {_fmt_cpu_ratio(v)} | {best} | {extra} |"
            )
        for k, v in row.get("pairs", {}).items():
            lines.append(
                f"| {row['section']} | {row['shape']} | {row['batch']} | *paired {k}* | | "
                f"{_fmt_ratio(v)} | | | {v.get('note', GC_ALONE)} |"
            )
    for row in report["rows"]:
        if "base" in row:
            continue
        lines += ["", f"**{row['section']}**", "", "| variant | params | FLOPs (fvcore) |"]
        lines.append("|---|---|---|")
        for k, v in row["variants"].items():
            lines.append(f"| {k} | {v['params'] / 1e6:.3f} M | {v['flops'] / 1e9:.2f} G |")
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    return "\n".join(lines) + "\n"


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Model name:\s+(.+)", lscpu)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_start": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")
            if k in os.environ
        },
    }
    return info
