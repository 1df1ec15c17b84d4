"""The cost targets a run is checked against: backbone, Mask R-CNN, training memory."""

from __future__ import annotations

from .fixtures import CONTROL, R4, R16
from .recipe_section import MMDET


def targets(report: dict) -> list[dict]:
    """Each target met or not (``"(within noise)"`` when the 95% CI straddles the limit).

    What counts is the backbone, the detector and training; the GC block alone has no target
    (the former "2x faster than mmcv's formulation" block target is retired).
    """
    out = []

    def check(name: str, ratio: float, ci: list, limit: float) -> None:
        met = ratio <= limit
        sure = ci[1] <= limit if met else ci[0] > limit
        out.append(
            {
                "target": name,
                "measured": f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                "met": ("yes" if met else "no") + ("" if sure else " (within noise)"),
            }
        )

    for row in report["rows"]:
        sec = row["section"]
        v = row.get("variants", {})
        if sec.startswith("backbone r50") or sec.startswith("Mask R-CNN"):
            what = "backbone" if sec.startswith("backbone") else "Mask R-CNN"
            limits = {R16: 1.02, R4: 1.03} if what == "backbone" else {R16: 1.015, R4: 1.02}
            for name, limit in limits.items():
                r = v[name]
                check(f"{what} {name} <= {limit}x plain", r["ratio"], r["ratio_ci95"], limit)
                pair = row["pairs"].get(f"{name} / {CONTROL}")
                if pair:  # the same limit on the GC blocks' own cost (informative)
                    check(
                        f"({what} {name} <= {limit}x its control: GC blocks alone)",
                        pair["ratio"],
                        pair["ratio_ci95"],
                        limit,
                    )
        elif sec.startswith("training components"):
            r = v[MMDET]
            limit = 1.03
            check(
                f"training iteration, {MMDET} <= {limit}x Detectron2's",
                r["ratio"],
                r["ratio_ci95"],
                limit,
            )
        elif sec.startswith("training"):
            for name in [k for k in (R16, R4) if k in row["memory"]]:
                mem = row["memory"][name]
                key = "cuda_peak_ratio" if "cuda_peak_ratio" in mem else "live_peak_ratio"
                ratio = mem[key]
                out.append(
                    {
                        "target": f"training peak memory {name} <= 1.05x plain ({key})",
                        "measured": f"{ratio:.3f}",
                        "met": "yes" if ratio <= 1.05 else "no",
                    }
                )
    return out
