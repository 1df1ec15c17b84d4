"""Which path a fold test ran: the modules a fold skips, recorded when they run.

A folded conv never calls its norm module (it reads the norm's affine); a folded GC
bottleneck never calls its ``conv3`` module or its context block (it reads their weights).
:func:`record_unfolded` hooks exactly those modules, so a test can assert that the fold ran
(nothing recorded) or that it did not (BN in training mode: the norms run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from detectron2.layers import Conv2d
from torch import nn

from gcnet_d2.modeling import GCBottleneckBlock


@contextmanager
def record_unfolded(model: nn.Module) -> Iterator[list[tuple[str, str]]]:
    """Inside the block, ``(kind, name)`` of every fold-skipped module of ``model`` that runs:
    kind "norm" for a detectron2 conv's norm, "gc" for a GC bottleneck's conv3 or context
    block. The hooks are removed on leaving (a deep copy would carry them)."""
    calls: list[tuple[str, str]] = []
    handles = []

    def hook(kind: str, name: str) -> Callable[..., None]:
        def record(*_: object) -> None:
            calls.append((kind, name))

        return record

    for name, module in model.named_modules():
        if isinstance(module, Conv2d) and module.norm is not None:
            handles.append(module.norm.register_forward_hook(hook("norm", f"{name}.norm")))
        if isinstance(module, GCBottleneckBlock):
            for part in ("conv3", "context_block"):
                sub = getattr(module, part)
                if sub is not None:
                    handles.append(sub.register_forward_hook(hook("gc", f"{name}.{part}")))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def kinds(calls: list[tuple[str, str]]) -> set[str]:
    return {kind for kind, _ in calls}
