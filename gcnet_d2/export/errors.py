"""The error of an export route that a model cannot take."""

from __future__ import annotations


class ExportRouteError(RuntimeError):
    """An export route that this model cannot take; the message names the reason (the op,
    construct or setting that stops it) and, where there is one, the route that works."""
