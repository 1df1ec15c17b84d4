"""Reduced-precision inference: ``TEST.PRECISION`` (YAML) / ``train.eval_precision`` (LazyConfig).

``"fp32"`` (the default) runs the detector in float32. ``"bf16"`` runs it under
``torch.autocast(<device>, torch.bfloat16)``: convolutions and matrix products in bfloat16
(on a CPU with AVX-512 BF16 or AMX, 3-4x the float32 GEMM rate), with the parts below kept in
float32 (:func:`keep_float32_parts`), so every output (boxes, scores, masks) is float32 and the
postprocessing (box decoding, NMS, mask paste) runs in float32 on float32 inputs:

- the last layers that produce scores and box / mask logits (the RPN's ``objectness_logits``
  and ``anchor_deltas``, every ``FastRCNNOutputLayers``, the mask head's ``predictor``):
  bfloat16 has 8 significant bits, so scores in bfloat16 tie (0.90 and 0.9004 are one number)
  and the top-k / NMS order, which AP reads, would change; these layers are a small fraction
  of the work;
- RoIAlign's input: detectron2's ``ROIAlign`` casts the boxes to the features' dtype, and a
  box coordinate near 1000 px in bfloat16 moves by up to 4 px;
- in the layers themselves: the GC block's attention pooling (:mod:`gcnet_d2.layers.context_block`)
  and the deformable convolution (:mod:`gcnet_d2.layers.deform_conv`): see docs/precision.md.

A CPU without bfloat16 instructions (no ``avx512_bf16`` / ``amx_bf16``, or Arm ``bf16``) would
emulate them, slower than float32: there ``"bf16"`` logs one warning and runs float32. A value
other than ``"fp32"`` / ``"bf16"`` raises :class:`~gcnet_d2.errors.ConfigError` naming the key.
The AMP trainer (:mod:`gcnet_d2.amp`) uses :func:`keep_float32_parts` too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.layers import ROIAlign
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
from detectron2.structures import Boxes, Instances
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
#: The config key of each config kind, for messages.
YAML_KEY = "TEST.PRECISION"
LAZY_KEY = "train.eval_precision"
#: /proc/cpuinfo flags of bfloat16 arithmetic in hardware (x86: AVX-512 BF16, AMX; Arm: BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

_warned: set[str] = set()


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (else oneDNN emulates it, slowly).

    Linux: the ``/proc/cpuinfo`` flags (:data:`BF16_CPU_FLAGS`); elsewhere oneDNN's own check.
    """
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(value: object, key: str = YAML_KEY) -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else :class:`ConfigError` naming ``key``."""
    if value not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return str(value)


def resolve_precision(value: object, device: str | torch.device, key: str = YAML_KEY) -> str:
    """The precision to run on ``device``: ``value`` checked (:func:`check_precision`), and
    ``"fp32"`` with one warning (per key and process) where ``device`` has no bfloat16."""
    precision = check_precision(value, key)
    if precision == "bf16":
        device_type = torch.device(device).type
        if device_type == "cpu" and not cpu_has_bf16():
            reason = "this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16)"
        elif device_type == "cuda" and not torch.cuda.is_bf16_supported():
            reason = "this GPU has no bfloat16 support"
        else:
            return precision
        if key not in _warned:
            _warned.add(key)
            logger.warning("%s bf16: %s; running in fp32", key, reason)
        return "fp32"
    return precision


def precision_of(cfg: Any) -> tuple[str, str]:
    """``(value, key)`` of a config's inference precision: ``TEST.PRECISION`` of a detectron2
    ``CfgNode``, ``train.eval_precision`` of a LazyConfig (``"fp32"`` when absent)."""
    if isinstance(cfg, CfgNode):
        return cfg.TEST.get("PRECISION", "fp32"), YAML_KEY
    train = cfg.get("train", None)
    value = train.get("eval_precision", "fp32") if train is not None else "fp32"
    return value, LAZY_KEY


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 on ``device``'s type for ``"bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- parts kept in float32 under autocast ---------------------------------------------------


def _autocast_on(args: tuple) -> str | None:
    """The device type of the first tensor in ``args`` if autocast is on for it, else None."""
    for a in args:
        if isinstance(a, torch.Tensor):
            kind = a.device.type
            return kind if torch.is_autocast_enabled(kind) else None
    return None


class _Float32Copies:
    """float32 copies of the maps the float32 parts read, one per map and layout while no
    gradient is recorded: the RPN's two output layers read the same map at each level, the
    box and mask poolers the same FPN levels (bf16 at 800 x 1216, ``benchmarks/precision.py
    --parts speed``: 1.16 s with a cast per reader, 1.01 s with one per map). A copy lives
    while its map does (weak reference), at most until the :func:`inference_precision` block
    ends. The maps these parts read are final when read: nothing writes them in place
    afterwards."""

    def __init__(self) -> None:
        self._copies: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}

    def __call__(
        self, t: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format
    ) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._cast(t, memory_format)
        key = (id(t), t.data_ptr(), memory_format)
        entry = self._copies.get(key)
        if entry is not None and entry[0]() is t:
            return entry[1]
        copy = self._cast(t, memory_format)
        self._copies[key] = (weakref.ref(t, lambda _, k=key: self._copies.pop(k, None)), copy)
        return copy

    @staticmethod
    def _cast(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        return t.to(torch.float32, memory_format=memory_format)

    def clear(self) -> None:
        self._copies.clear()


class _Float32Forward:
    """Forward hooks that run a module with autocast off on float32 inputs."""

    def __init__(self, copies: _Float32Copies) -> None:
        self._open: list[contextlib.AbstractContextManager | None] = []
        self._copies = copies

    def before(self, module: nn.Module, args: tuple) -> tuple | None:
        kind = _autocast_on(args)
        if kind is None:
            self._open.append(None)
            return None
        off = torch.autocast(kind, enabled=False)
        off.__enter__()
        self._open.append(off)
        return tuple(
            self._copies(a) if isinstance(a, torch.Tensor) and a.is_floating_point()
            else float32_outputs(a)
            for a in args
        )  # fmt: skip

    def after(self, module: nn.Module, args: tuple, output: Any) -> None:
        off = self._open.pop()
        if off is not None:
            off.__exit__(None, None, None)


class _Float32Features:
    """Hooks giving detectron2's ``ROIAlign`` float32 features under autocast (it rounds the
    boxes to the features' dtype); the output is cast back to the features' dtype, which
    ``ROIPooler`` writes it into."""

    def __init__(self, copies: _Float32Copies) -> None:
        self._dtypes: list[torch.dtype | None] = []
        self._copies = copies

    def before(self, module: nn.Module, args: tuple) -> tuple | None:
        features = args[0]
        if _autocast_on(args) is None or features.dtype == torch.float32:
            self._dtypes.append(None)
            return None
        self._dtypes.append(features.dtype)
        # NCHW, the order RoIAlign's kernels read: one pass casts and reorders channels-last maps
        return (self._copies(features, torch.contiguous_format), *args[1:])

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        dtype = self._dtypes.pop()
        return None if dtype is None else output.to(dtype)


def float32_modules(model: nn.Module) -> list[nn.Module]:
    """The score / box / mask output layers of ``model`` that :func:`keep_float32_parts`
    runs in float32."""
    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, FastRCNNOutputLayers):
            found.append(m)
        elif isinstance(m, StandardRPNHead):
            found.extend((m.objectness_logits, m.anchor_deltas))
        elif isinstance(m, BaseMaskRCNNHead) and isinstance(
            getattr(m, "predictor", None), nn.Module
        ):
            found.append(m.predictor)
    return found


def keep_float32_parts(model: nn.Module) -> nn.Module:
    """Under autocast, run ``model``'s output layers (:func:`float32_modules`) in float32 and
    give every ``ROIAlign`` float32 features (see the module doc), in place; returns ``model``.

    Forward hooks: no parameter, class or state-dict key changes, and without autocast they do
    nothing. Idempotent.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    if "_gcnet_float32_hooks" in model.__dict__:
        return model
    handles = []
    copies = model.__dict__["_gcnet_float32_copies"] = _Float32Copies()
    for m in float32_modules(model):
        hooks = _Float32Forward(copies)
        handles.append(m.register_forward_pre_hook(hooks.before))
        handles.append(m.register_forward_hook(hooks.after, always_call=True))
    for m in model.modules():
        if isinstance(m, ROIAlign):
            hooks = _Float32Features(copies)
            handles.append(m.register_forward_pre_hook(hooks.before))
            handles.append(m.register_forward_hook(hooks.after, always_call=True))
    model.__dict__["_gcnet_float32_hooks"] = handles
    return model


def float32_outputs(value: Any) -> Any:
    """``value`` (a model's outputs: dicts, lists, ``Instances``, ``Boxes``, tensors) with
    every floating tensor in float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Boxes):
        return Boxes(value.tensor.float())
    if isinstance(value, Instances):
        out = Instances(value.image_size)
        for name, field in value.get_fields().items():
            out.set(name, float32_outputs(field))
        return out
    if isinstance(value, dict):
        return {k: float32_outputs(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(float32_outputs(v) for v in value)
    return value


@contextlib.contextmanager
def inference_precision(
    model: nn.Module, precision: str, device: str | torch.device
) -> Iterator[nn.Module]:
    """Inside the block, ``model`` runs in ``precision`` on ``device`` (a value already
    resolved by :func:`resolve_precision`): for ``"bf16"`` its float32 parts are kept
    (:func:`keep_float32_parts`) and autocast is on."""
    if precision == "bf16":
        keep_float32_parts(model)
    try:
        with autocast(precision, device):
            yield model
    finally:
        copies = getattr(model, "module", model).__dict__.get("_gcnet_float32_copies")
        if copies is not None:
            copies.clear()


__all__ = [
    "LAZY_KEY",
    "PRECISIONS",
    "YAML_KEY",
    "autocast",
    "check_precision",
    "cpu_has_bf16",
    "float32_modules",
    "float32_outputs",
    "inference_precision",
    "keep_float32_parts",
    "precision_of",
    "resolve_precision",
]
