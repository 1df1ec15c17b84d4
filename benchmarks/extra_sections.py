"""The untimed-target sections: parameters and FLOPs, and backbone options (channels_last,
bf16 autocast, torch.compile) with their measured accuracy cost."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from gcnet_d2 import fast

from .fixtures import PLAIN, R4, R16, build_backbones, build_models, count_params, inference_inputs
from .report import make_row as _row
from .report import print_flops as _print_flops
from .report import print_row as _print_row
from .sections import Settings
from .timing import Timer


def _flop_handles() -> dict:
    from fvcore.nn.jit_handles import get_shape

    # The ops gcnet_d2.fast uses in eager inference (the GC fold's attention pooling and
    # folded conv3); a jit trace records the plain code instead, so they count only if a
    # counter runs eagerly.
    def mv(inputs: list, outputs: list) -> int:
        m, k = get_shape(inputs[0])
        return m * k

    def addmv(inputs: list, outputs: list) -> int:
        return mv(inputs[1:], outputs)

    def baddbmm(inputs: list, outputs: list) -> int:
        b, n, k = get_shape(inputs[1])
        m = get_shape(inputs[2])[-1]
        return b * n * k * m

    return {"aten::mv": mv, "aten::addmv": addmv, "aten::baddbmm": baddbmm}


def mmcv_formulation(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every speed-up removed (``gcnet_d2.fast.remove``): its convs,
    norms and GC blocks run as mmcv's model runs them."""
    return fast.remove(copy.deepcopy(net))


def section_flops(s: Settings, timer: Timer) -> list[dict]:
    from detectron2.utils.analysis import FlopCountAnalysis
    from fvcore.nn import FlopCountAnalysis as FvFlops

    rows = []
    h, w = s.padded
    nets = build_backbones("r50", torch.device("cpu"), (h, w))
    x = torch.randn(1, 3, h, w)

    class Flat(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> tuple:
            return tuple(self.net(t).values())

    def count(make: Callable[[], FvFlops]) -> tuple[int, dict]:
        analysis = make()
        analysis.set_op_handle(**_flop_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            total = analysis.total()
        return total, dict(analysis.unsupported_ops())

    backbone = {}
    for name, net in nets.items():
        backbone[name] = {"params": count_params(net)}
        backbone[name]["flops"], unsupported = count(lambda n=net: FvFlops(Flat(n).eval(), (x,)))
        backbone[name]["unsupported_ops"] = unsupported
    # fvcore counts a jit trace. The nets have gcnet_d2.fast applied: a trace records the
    # GC bottleneck's plain code (the GC fold is eager-only) but the norms folded into the
    # convs (that fold is computed in the graph), so these rows count no norm flops. The next
    # row is the GC r16 net with every speed-up removed: conv, norm and GC block as mmcv
    # runs them, norm flops included.
    plain_r16 = mmcv_formulation(nets[R16])
    flops, _ = count(lambda: FvFlops(Flat(plain_r16).eval(), (x,)))
    backbone["GC r16, mmcv formulation"] = {"params": count_params(plain_r16), "flops": flops}
    rows.append({"section": f"params/FLOPs backbone r50 {h}x{w}", "variants": backbone})
    if s.quick:  # the whole-model trace takes minutes: full runs only
        for row in rows:
            _print_flops(row)
        return rows

    models = build_models(torch.device("cpu"), s.image, (PLAIN, R16, R4))
    inputs = inference_inputs(s.image, torch.device("cpu"))
    full = {}
    for name, model in models.items():
        flops, unsupported = count(lambda m=model: FlopCountAnalysis(m.eval(), inputs))
        full[name] = {"params": count_params(model), "flops": flops}
    rows.append({"section": f"params/FLOPs Mask R-CNN {s.image[0]}x{s.image[1]}", "variants": full})
    for row in rows:
        _print_flops(row)
    return rows


def section_options(s: Settings, timer: Timer) -> list[dict]:
    rows = []
    h, w = s.padded
    nets = build_backbones("r50", s.device, (h, w))
    nets = {k: nets[k] for k in (PLAIN, R16)}
    x = torch.randn(1, 3, h, w, device=s.device)
    rounds = s.rounds(11, 1)
    # channels_last
    cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in nets.items()}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        errs = {k: _feature_err(cl[k](x_cl), nets[k](x)) for k in nets}
        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, channels_last": (lambda m=m: m(x_cl)) for k, m in cl.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: channels_last", f"{h}x{w}", 1, res, PLAIN, rel_err_vs_fp32=errs))
    _print_row(rows[-1])
    # bf16 autocast
    dev = s.device.type
    with torch.inference_mode():
        fp32 = {k: m(x) for k, m in nets.items()}
        with torch.autocast(dev, dtype=torch.bfloat16):
            low = {k: m(x) for k, m in nets.items()}
        errs = {k: _feature_err(low[k], fp32[k]) for k in nets}
        del fp32, low

        def bf16(m: nn.Module) -> Callable[[], object]:
            def run() -> object:
                with torch.autocast(dev, dtype=torch.bfloat16):
                    return m(x)

            return run

        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, bf16 autocast": bf16(m) for k, m in nets.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: bf16 autocast", f"{h}x{w}", 1, res, PLAIN, rel_err_vs_fp32=errs))
    _print_row(rows[-1])
    if not s.compile:
        return rows
    # torch.compile (inductor)
    from torch import _dynamo

    extra: dict = {}
    compiled = {}
    for k, m in nets.items():
        _dynamo.reset()
        with torch.inference_mode():
            explanation = _dynamo.explain(m)(x)
        extra[k] = {
            "graphs": explanation.graph_count,
            "graph_breaks": explanation.graph_break_count,
        }
        _dynamo.reset()
        cm = torch.compile(m)
        start = time.perf_counter()
        with torch.inference_mode():
            out = cm(x)
        extra[k]["compile_s"] = time.perf_counter() - start
        with torch.inference_mode():
            extra[k]["rel_err_vs_eager"] = _feature_err(out, m(x))
        compiled[k] = cm
    with torch.inference_mode():
        variants = {f"{k}": (lambda m=m: m(x)) for k, m in nets.items()}
        variants.update({f"{k}, compiled": (lambda m=m: m(x)) for k, m in compiled.items()})
        res = timer.compare(variants, PLAIN, rounds)
    rows.append(_row("option: torch.compile", f"{h}x{w}", 1, res, PLAIN, compile=extra))
    _print_row(rows[-1])
    return rows


def _feature_err(out: dict, ref: dict) -> float:
    """Worst relative L2 error over the output feature maps."""
    return max(((out[k].float() - ref[k]).norm() / ref[k].norm()).item() for k in ref)
