"""ONNX Runtime sessions, opened and run the one way every ONNX route checks its file.

A session has onnxruntime's DEFAULT options (all graph optimisations on) on the CPU, as a user
opens it: a rewrite that miscomputes a graph must show in the export's check, not only in
deployment (docs/investigations/onnxruntime_matmul_transpose.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import require_package


def onnxruntime_session(model: str | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``model`` (a path or the file's bytes), default options;
    ``threads``: its intra-op thread count (onnxruntime's choice if not given)."""
    ort = require_package("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(session: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """The session's outputs, as torch tensors, for ``x`` as its (one) input."""
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy())})
    return [torch.from_numpy(o) for o in outputs]
