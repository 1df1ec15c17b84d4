#!/usr/bin/env python
"""Print the box / mask AP that ``train_net.py`` saved in OUTPUT_DIR/final_results.json.

    python tools/summarize_results.py output/quickstart --min-box-ap 30 --min-mask-ap 30

Exits 1 when an AP is below its minimum (e.g. a training that collapsed to constant outputs
reaches AP ~0), 2 when the results are missing or malformed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def read_ap(output_dir: Path) -> dict[str, float]:
    """``{"bbox": AP, "segm": AP}`` from ``final_results.json``; ValueError naming the problem."""
    path = output_dir / "final_results.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such file (did train_net.py finish its evaluation?)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    aps = {}
    for task in ("bbox", "segm"):
        ap = results.get(task, {}).get("AP") if isinstance(results, dict) else None
        if not isinstance(ap, int | float) or math.isnan(ap):
            raise ValueError(f"{path}: no numeric '{task}' AP in {sorted(results)}")
        aps[task] = float(ap)
    return aps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--min-box-ap", type=float, default=0.0)
    parser.add_argument("--min-mask-ap", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        aps = read_ap(args.output_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"box AP {aps['bbox']:.1f}, mask AP {aps['segm']:.1f}  ({args.output_dir})")
    low = [
        f"{name} AP {aps[task]:.1f} < {minimum}"
        for name, task, minimum in (
            ("box", "bbox", args.min_box_ap),
            ("mask", "segm", args.min_mask_ap),
        )
        if aps[task] < minimum
    ]
    if low:
        print("error: " + "; ".join(low) + " (training did not learn)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
