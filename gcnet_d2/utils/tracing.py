"""Whether a model runs eagerly, or is being recorded by a tracer, compiler or exporter.

One place for the question, asked by plain layers (:mod:`gcnet_d2.layers.nms` writes its ONNX
and TorchScript forms) and by the speed-ups (:mod:`gcnet_d2.fast` takes its eager
formulations only when nothing records the graph: ``torch.jit`` tracing or scripting,
``torch.compile`` and ``torch.export`` (and so the ONNX dynamo exporter) see the plain code,
or a formulation written for them). This module imports nothing from gcnet_d2.
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


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` runs the model (its tracer, not ``torch.jit.trace``)."""
    return torch.onnx.is_in_onnx_export()


def graph_is_recorded() -> bool:
    """True while ``torch.jit.trace``, ``torch.compile`` or ``torch.export`` records."""
    return torch.jit.is_tracing() or is_compiling_or_exporting()


def tracing_to_torchscript() -> bool:
    """True while ``torch.jit.trace`` records for TorchScript, not for the ONNX exporter
    (which traces too): the only recorder some formulations are written for."""
    return torch.jit.is_tracing() and not exporting_to_onnx()


def eager() -> bool:
    """False while ``torch.jit`` traces or scripts, or ``torch.compile`` / ``torch.export``
    runs: the plain eager Python interpreter is running the model."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not is_compiling_or_exporting()


__all__ = [
    "eager",
    "exporting_to_onnx",
    "graph_is_recorded",
    "is_compiling_or_exporting",
    "tracing_to_torchscript",
]
