"""Whole-detector CPU inference, gcnet_d2 vs mmdetection 3.3 on the same weights, by part.

mmdetection's detector is built from mmdetection's own config file (shipped in the package,
``mmdet/.mim/configs/gcnet/``) with ``mmengine.Config.fromfile``, given seeded realistic
weights (``tests/mmdet_reference.randomize_weights_``: calibrated norms, O(1) activations)
and peaked class scores (so that the 100 detections a trained detector makes exist and the
mask head and paste run at full load), saved as an mmdetection checkpoint and loaded into
gcnet_d2's detector through ``GCNetCheckpointer``. Both then run the same uint8 image.

Importable (``build_pair``, ``run_ours``, ``run_mmdet``, ``compare``) so that
``tools/benchmark.py`` can plug it in as a section, and runnable alone::

    python tools/model_vs_mmdet.py --kinds r50 --rounds 7

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

# mmdetection config file, gcnet_d2 config, per kind.
KINDS = {
    "r50": (
        "gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py",
        "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml",
    ),
    "x101-cascade": (
        "gcnet/cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco.py",
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml",
    ),
}
PARTS = ("bottom-up", "FPN", "RPN", "RoI heads", "post-processing", "total", "cpu")


def mmdet_config_path(rel: str) -> Path:
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / rel
    if not path.is_file():
        raise FileNotFoundError(f"mmdetection config file not found: {path}")
    return path


def build_mmdet_from_file(rel: str, seed: int = 0) -> nn.Module:
    """mmdetection's detector from its own config file, seeded realistic weights, eval mode."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from tests import mmdet_reference as ref

    if not ref.mmdet_available():
        raise RuntimeError(ref.mmdet_unavailable_reason())
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(mmdet_config_path(rel)))
    model_cfg = cfg.model
    # SyncBN needs a process group; at inference it is the same affine as BN in eval mode.
    _replace_syncbn(model_cfg)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.gcnet_d2_cfg = model_cfg.to_dict()
    ref.randomize_weights_(model, seed=seed)
    peaked_mmdet_scores(model)
    return model.eval()


def _replace_syncbn(node: object) -> None:
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for v in node.values():
            _replace_syncbn(v)
    elif isinstance(node, list | tuple):
        for v in node:
            _replace_syncbn(v)


@torch.no_grad()
def peaked_mmdet_scores(model: nn.Module) -> None:
    """Class logits like a trained detector's (a few confident classes per box), every stage.

    mmdetection's background is the last class too: the same per-class bias (std 3,
    background -4) as ``tools/benchmark.py``'s ``peaked_class_scores``.
    """
    heads = model.roi_head.bbox_head
    heads = heads if isinstance(heads, nn.ModuleList) else [heads]
    gen = torch.Generator().manual_seed(4)
    bias = torch.randn(heads[0].fc_cls.bias.shape, generator=gen) * 3
    bias[-1] = -4.0
    for head in heads:
        head.fc_cls.weight.mul_(0.1)
        head.fc_cls.bias.copy_(bias)


def build_ours_from_mmdet(mm: nn.Module, d2_config: str, path: str) -> nn.Module:
    from detectron2.modeling import build_model

    import gcnet_d2
    from gcnet_d2.checkpoint import GCNetCheckpointer
    from tests import mmdet_reference as ref

    ref.save_mmdet_checkpoint(mm, path)
    cfg = gcnet_d2.get_config(d2_config)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    GCNetCheckpointer(model).load(path)
    return model


def build_pair(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(ours, mmdet)`` detectors of ``kind`` (a key of :data:`KINDS`), the same weights."""
    mm_rel, d2_cfg = KINDS[kind]
    mm = build_mmdet_from_file(mm_rel, seed)
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


# --------------------------------------------------------------------------------------
# statistics


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics)."""
    s = sorted(values)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[hi]


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
