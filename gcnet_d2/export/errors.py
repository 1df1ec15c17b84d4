"""The error of an export route that a model cannot take."""

from __future__ import annotations

from typing import Any


class ExportRouteError(RuntimeError):
    """An export route that this model cannot take; the message names the reason (the op,
    construct or setting that stops it) and, where there is one, the route that works."""


def require_package(name: str) -> Any:
    """The module ``name`` (``onnx``, ``onnxscript``, ``onnxruntime``), or an
    :class:`ExportRouteError` naming the extra that installs it."""
    try:
        return __import__(name)
    except ImportError as e:
        raise ExportRouteError(
            f"the ONNX route needs the {name!r} package: pip install 'gcnet_d2[export]'"
        ) from e
