"""Whether a model is running eagerly, or being recorded by a tracer, compiler or exporter.

The speed-ups of :mod:`gcnet_d2.fast` take their eager formulations only when nothing is
recording the graph: ``torch.jit`` tracing or scripting, ``torch.compile`` and
``torch.export`` (and so the ONNX dynamo exporter) see the plain code, or a formulation
written for them.
"""

from __future__ import annotations

import torch


def is_compiling_or_exporting() -> bool:
    """True while ``torch.compile`` or ``torch.export`` records the graph."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    is_exporting = getattr(compiler, "is_exporting", None)
    return compiler.is_compiling() or (is_exporting is not None and is_exporting())


def graph_is_recorded() -> bool:
    """True while ``torch.jit.trace``, ``torch.compile`` or ``torch.export`` records."""
    return torch.jit.is_tracing() or is_compiling_or_exporting()


def tracing_to_torchscript() -> bool:
    """True while ``torch.jit.trace`` records for TorchScript, not for the ONNX exporter
    (which traces too): the only recorder some speed-ups have a formulation for."""
    return torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


def eager() -> bool:
    """False while ``torch.jit`` traces or scripts, or ``torch.compile`` / ``torch.export``
    runs: the plain eager Python interpreter is running the model."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not is_compiling_or_exporting()


__all__ = [
    "eager",
    "graph_is_recorded",
    "is_compiling_or_exporting",
    "tracing_to_torchscript",
]
