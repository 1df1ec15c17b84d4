"""Whole-detector CPU inference, gcnet_d2 vs mmdetection 3.3 on the same weights, by part.

mmdetection's detector is built from mmdetection's own config file (shipped in the package,
``mmdet/.mim/configs/gcnet/``) with ``mmengine.Config.fromfile``, given seeded realistic
weights (``tests/parity/mmdet_reference.randomize_weights_``: calibrated norms, O(1) activations)
and peaked class scores (so that the 100 detections a trained detector makes exist and the
mask head and paste run at full load), saved as an mmdetection checkpoint and loaded into
gcnet_d2's detector through ``GCNetCheckpointer``; ours then gets its config's speed-ups
(``gcnet_d2.fast.apply(model, cfg)``, as ``GCNetPredictor`` runs it). Both then run the same
uint8 image.

Importable (``build_pair``, ``run_ours``, ``run_mmdet``, ``compare``) so that
``benchmarks/run.py`` can plug it in as a section, and runnable alone::

    python benchmarks/model_vs_mmdet.py --kinds r50 --rounds 7

Per part (seconds, from forward hooks in the timed run itself): bottom-up, FPN, RPN,
RoI heads (box + mask heads), post-processing (mask paste to the image, rescale). mmdetection
pastes masks inside its mask head's ``predict_by_feat``; that step is timed separately by
wrapping it, so the "RoI heads" rows of both exclude the paste.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.timing import median_ci, quantile  # noqa: E402

# tests/parity/mmdet_reference.py kind (mmdetection's own config file), gcnet_d2 config, per kind.
KINDS = {
    "r50": ("mask_rcnn_r50_gc_r16", "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"),
    "x101-cascade": (
        "cascade_mask_rcnn_x101_gc_r4",
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml",
    ),
}
TITLES = {"r50": "GC r16 Mask R-CNN R-50-FPN", "x101-cascade": "GC r4 Cascade Mask R-CNN X-101"}
PARTS = ("bottom-up", "FPN", "RPN", "RoI heads", "post-processing", "total", "cpu")


def build_mmdet_from_file(kind: str, seed: int = 0) -> nn.Module:
    """mmdetection's detector built from its own config file (80 classes) by
    ``tests/parity/mmdet_reference.build_mmdet_model``: seeded realistic weights, eval mode; then
    peaked class scores."""
    from tests.parity import mmdet_reference as ref

    if not ref.mmdet_available():
        raise RuntimeError(ref.mmdet_unavailable_reason())
    model = ref.build_mmdet_model(kind, num_classes=80, seed=seed)
    peaked_mmdet_scores(model)
    return model.eval()


@torch.no_grad()
def peaked_mmdet_scores(model: nn.Module) -> None:
    """Class logits like a trained detector's (a few confident classes per box), every stage.

    mmdetection's background is the last class too: the same per-class bias (std 3,
    background -4) as the benchmark's ``peaked_class_scores``.
    """
    heads = model.roi_head.bbox_head
    heads = heads if isinstance(heads, nn.ModuleList) else [heads]
    gen = torch.Generator().manual_seed(4)
    bias = torch.randn(heads[0].fc_cls.bias.shape, generator=gen) * 3
    bias[-1] = -4.0
    for head in heads:
        head.fc_cls.weight.mul_(0.1)
        head.fc_cls.bias.copy_(bias)


def build_ours(d2_config: str) -> nn.Module:
    """gcnet_d2's detector of ``d2_config`` on the CPU, eval mode, with the config's speed-ups
    (``gcnet_d2.fast.apply(model, cfg)``: ``FAST.*``, all on in the table configs)."""
    from detectron2.modeling import build_model

    import gcnet_d2
    from gcnet_d2 import fast

    cfg = gcnet_d2.get_config(d2_config)
    cfg.MODEL.DEVICE = "cpu"
    return fast.apply(build_model(cfg), cfg).eval()


def build_ours_from_mmdet(mm: nn.Module, d2_config: str, path: str) -> nn.Module:
    """:func:`build_ours` with ``mm``'s weights (saved to ``path``, loaded by our checkpointer)."""
    from gcnet_d2.checkpoint import GCNetCheckpointer
    from tests.parity import mmdet_reference as ref

    ref.save_mmdet_checkpoint(mm, path)
    model = build_ours(d2_config)
    GCNetCheckpointer(model).load(path)
    return model


def build_pair(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(ours, mmdet)`` detectors of ``kind`` (a key of :data:`KINDS`), the same weights."""
    mm_kind, d2_cfg = KINDS[kind]
    mm = build_mmdet_from_file(mm_kind, seed)
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours_from_mmdet(mm, d2_cfg, str(Path(tmp) / "model.pth"))
    return ours, mm


def test_image(size: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A smooth random RGB uint8 image with flat shapes (structure for the heads)."""
    g = np.random.default_rng(seed)
    h, w = size
    small = g.integers(0, 256, (math.ceil(h / 32), math.ceil(w / 32), 3)).astype(np.float32)
    img = np.kron(small, np.ones((32, 32, 1), np.float32))[:h, :w]
    return np.clip(img + g.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# timed runs, with per-part times from hooks


class PartClock:
    """Accumulates wall time between pre- and post-hooks of named modules / functions."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def begin(self, name: str) -> None:
        self._start[name] = time.perf_counter()

    def end(self, name: str) -> None:
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._start[name]

    @contextlib.contextmanager
    def modules(self, named: dict[str, nn.Module]) -> Iterator[None]:
        handles = []
        for name, mod in named.items():
            handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: self.begin(n)))
            handles.append(mod.register_forward_hook(lambda m, a, o, n=name: self.end(n)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def function(self, owner: object, attr: str, name: str) -> Iterator[None]:
        """Time ``owner.attr`` (a function or bound method) under ``name``."""
        original = getattr(owner, attr)
        own = attr in vars(owner)  # a module's function, or a method shadowed on an instance

        def timed(*args: object, **kwargs: object) -> object:
            self.begin(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.end(name)

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)


def ours_inputs(img: np.ndarray) -> list[dict]:
    h, w = img.shape[:2]
    image = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
    return [{"image": image, "height": h, "width": w}]  # detectron2 configs take BGR


def mmdet_inputs(mm: nn.Module, img: np.ndarray) -> Callable[[], dict]:
    from mmdet.structures import DetDataSample

    h, w = img.shape[:2]
    chw_bgr = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))

    def make() -> dict:
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
        )
        return {"inputs": [chw_bgr], "data_samples": [sample]}

    return make


def run_ours(model: nn.Module, img: np.ndarray) -> tuple[dict, object]:
    """One inference; ``(per-part seconds, Instances)``."""
    import detectron2.modeling.meta_arch.rcnn as rcnn

    clock = PartClock()
    inputs = ours_inputs(img)
    parts = {
        "bottom-up": model.backbone.bottom_up,
        "backbone": model.backbone,
        "RPN": model.proposal_generator,
        "RoI heads": model.roi_heads,
    }
    with (
        torch.inference_mode(),
        clock.modules(parts),
        clock.function(rcnn, "detector_postprocess", "post-processing"),
    ):
        start, cpu = time.perf_counter(), time.process_time()
        out = model(inputs)[0]["instances"]
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    t = clock.times
    return {
        "bottom-up": t["bottom-up"],
        "FPN": t["backbone"] - t["bottom-up"],
        "RPN": t["RPN"],
        "RoI heads": t["RoI heads"],
        "post-processing": t["post-processing"],
        "total": total,
        "cpu": cpu,
    }, out


def run_mmdet(mm: nn.Module, img: np.ndarray) -> tuple[dict, object]:
    """One inference (``test_step``: preprocessing + ``predict``); per-part seconds, results."""
    from mmdet.models.roi_heads.mask_heads import fcn_mask_head

    clock = PartClock()
    data = mmdet_inputs(mm, img)()
    mask_heads = mm.roi_head.mask_head
    mask_heads = mask_heads if isinstance(mask_heads, nn.ModuleList) else [mask_heads]
    parts = {"bottom-up": mm.backbone, "FPN": mm.neck, "rpn_head": mm.rpn_head}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        stack.enter_context(clock.modules(parts))
        stack.enter_context(clock.function(mm.rpn_head, "predict", "RPN"))
        stack.enter_context(clock.function(mm.roi_head, "predict", "RoI"))
        stack.enter_context(clock.function(fcn_mask_head, "_do_paste_mask", "paste"))
        start, cpu = time.perf_counter(), time.process_time()
        out = mm.test_step(data)[0].pred_instances
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    t = clock.times
    return {
        "bottom-up": t["bottom-up"],
        "FPN": t["FPN"],
        # rpn_head.predict runs the head's forward (hooked as rpn_head) inside it
        "RPN": t["RPN"],
        "RoI heads": t["RoI"] - t.get("paste", 0.0),
        "post-processing": t.get("paste", 0.0),
        "total": total,
        "cpu": cpu,
    }, out


def detections_summary(ours_out: object, mm_out: object) -> dict:
    n_ours, n_mm = len(ours_out), len(mm_out.scores)
    return {"ours": n_ours, "mmdet": n_mm}


def compare(
    runners: dict[str, Callable[[], tuple[dict, object]]],
    base: str,
    rounds: int,
    seed: int = 0,
    warmup: int = 1,
) -> dict:
    """Interleaved rounds (fresh random order each); per-part times and per-round ratios."""
    rng = random.Random(seed)
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[dict]] = {n: [] for n in runners}
    names = list(runners)
    gc_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(names)
            for n in names:
                gc.collect()
                times[n].append(runners[n]()[0])
    finally:
        if gc_on:
            gc.enable()
    out: dict = {"rounds": rounds, "base": base, "variants": {}}
    for n in runners:
        entry: dict = {"parts": {}}
        for part in PARTS:
            vals = [t[part] for t in times[n]]
            entry["parts"][part] = {"median": quantile(vals, 0.5), "all": vals}
        if n != base:
            ratios = [a["total"] / b["total"] for a, b in zip(times[n], times[base], strict=True)]
            entry["ratio"] = {
                "median": quantile(ratios, 0.5),
                "ci95": median_ci(ratios),
                "best": min(t["total"] for t in times[n]) / min(t["total"] for t in times[base]),
                "all": ratios,
            }
            cpu = [a["cpu"] / b["cpu"] for a, b in zip(times[n], times[base], strict=True)]
            entry["cpu_ratio"] = {"median": quantile(cpu, 0.5), "ci95": median_ci(cpu)}
        out["variants"][n] = entry
    return out


def format_table(res: dict, title: str) -> str:
    names = list(res["variants"])
    lines = [f"### {title} ({res['rounds']} interleaved rounds)", ""]
    lines.append("| part | " + " | ".join(f"{n} (s)" for n in names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for part in PARTS:
        cells = [f"{res['variants'][n]['parts'][part]['median']:.3f}" for n in names]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    for n in names:
        r = res["variants"][n].get("ratio")
        if r:
            lo, hi = r["ci95"]
            lines.append(
                f"\n{n} / {res['base']}: median {r['median']:.3f} [{lo:.3f}, {hi:.3f}], "
                f"best-of {r['best']:.3f}; process CPU time "
                f"{res['variants'][n]['cpu_ratio']['median']:.3f} "
                f"[{res['variants'][n]['cpu_ratio']['ci95'][0]:.3f}, "
                f"{res['variants'][n]['cpu_ratio']['ci95'][1]:.3f}]"
            )
    return "\n".join(lines)


def section_mmdet(s, timer) -> list[dict]:  # noqa: ANN001  (Settings, Timer)
    """``benchmarks/run.py --sections mmdet``: ours vs mmdetection, whole detector, by part.

    Interleaved rounds (``compare``); rows in the benchmark's format (base: mmdetection),
    with the per-part medians, the detection counts (asserted equal) and the peak live tensor
    bytes of one inference of each.
    """
    from benchmarks.memory import measure_peak_memory
    from benchmarks.report import make_row, print_row
    from benchmarks.timing import Result
    from tests.parity import mmdet_reference as ref

    if not ref.mmdet_available():
        print(f"mmdet section skipped: {ref.mmdet_unavailable_reason()}")
        return []
    if s.device.type != "cpu":
        print("mmdet section: CPU only (mmcv._ext is served by torchvision's CPU kernels here)")
        return []
    rows = []
    img = test_image(s.image)
    # --backbones picks the detectors: r50 -> GC r16 Mask R-CNN, x101 -> GC r4 Cascade.
    kinds = [k for k, b in (("r50", "r50"), ("x101-cascade", "x101")) if b in s.backbones]
    for kind in kinds:
        ours, mm = build_pair(kind, s.seed)
        n_ours, n_mm = len(run_ours(ours, img)[1]), len(run_mmdet(mm, img)[1].scores)
        if n_ours != n_mm:
            raise AssertionError(f"{kind}: detection counts differ: ours {n_ours}, mmdet {n_mm}")
        runners = {"ours": partial(run_ours, ours, img), "mmdet": partial(run_mmdet, mm, img)}
        res = compare(runners, base="mmdet", rounds=s.rounds(7 if kind == "r50" else 5, 1))
        results = {}
        for name, entry in res["variants"].items():
            r = Result(name, times=entry["parts"]["total"]["all"])
            r.cpu_times = entry["parts"]["cpu"]["all"]
            if "ratio" in entry:
                r.ratios = entry["ratio"]["all"]
                base = res["variants"]["mmdet"]["parts"]["cpu"]["all"]
                r.cpu_ratios = [a / b for a, b in zip(r.cpu_times, base, strict=True)]
            results[name] = r
        memory = {}
        for name, fn in runners.items():
            with torch.inference_mode():
                memory[name] = measure_peak_memory(fn, s.device, rss=False)
        parts = {
            n: {p: e["parts"][p]["median"] for p in PARTS if p not in ("total", "cpu")}
            for n, e in res["variants"].items()
        }
        h, w = s.image
        row = make_row(
            f"{TITLES[kind]} inference {h}x{w}, vs mmdetection",
            "",
            1,
            results,
            "mmdet",
            detections={"ours": n_ours, "mmdet": n_mm},
            parts=parts,
            memory=memory,
        )
        print_row(row)
        print(format_table(res, f"{kind} {h}x{w}"))
        rows.append(row)
        del ours, mm
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="r50", help=f"comma list of {list(KINDS)}")
    p.add_argument("--size", default="800,1333")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split(","))
    img = test_image((h, w))
    report = {}
    for kind in args.kinds.split(","):
        ours, mm = build_pair(kind)
        _, a = run_ours(ours, img)
        _, b = run_mmdet(mm, img)
        dets = detections_summary(a, b)
        print(f"{kind}: detections {dets}")
        if dets["ours"] != dets["mmdet"]:
            raise AssertionError(f"{kind}: detection counts differ: {dets}")
        res = compare(
            {"ours": partial(run_ours, ours, img), "mmdet": partial(run_mmdet, mm, img)},
            base="mmdet",
            rounds=args.rounds,
        )
        print(format_table(res, f"{kind} {h}x{w}"))
        report[kind] = res
    return report


if __name__ == "__main__":
    main()
