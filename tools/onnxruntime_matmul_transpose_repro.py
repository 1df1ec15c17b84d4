#!/usr/bin/env python
"""Minimal reproduction: onnxruntime's MatmulTransposeFusion miscomputes Transpose + MatMul
with a 1-D second operand under the DEFAULT session options.

The graph is ``y = MatMul(Transpose(x, perm=[1, 0]), w)`` with ``x`` C x L and ``w`` of shape
(C,): ``y = x.T @ w``, an L-vector. This is what ``torch.addmv(b, x.t(), w)`` (an attention
pooling's logits) exports to through ``torch.onnx.export(..., dynamo=True)``. With
onnxruntime's default graph optimisations the fusion folds the Transpose into the MatMul and
the result is wrong (relative error ~1); with that one optimiser disabled it is exact.

    python tools/onnxruntime_matmul_transpose_repro.py

Prints both errors; exits 1 when the default session is wrong (the bug is present), 0 when it
is right. Needs onnx and onnxruntime (``pip install 'gcnet_d2[export]'``).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def build_model(channels: int = 16, length: int = 20) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [channels, length])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [channels])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [length])
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xt", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "transpose_matmul_1d", [x, w], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    return model


def relative_error(model: onnx.ModelProto, disabled: list[str]) -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 20), dtype=np.float32)
    w = rng.standard_normal(16, dtype=np.float32)
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    (y,) = session.run(None, {"x": x, "w": w})
    expected = x.T @ w
    return float(np.abs(y - expected).max() / np.abs(expected).max())


def main() -> int:
    model = build_model()
    default = relative_error(model, [])
    without = relative_error(model, ["MatmulTransposeFusion"])
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    print(f"default session options:            relative error {default:.3g}")
    print(f"MatmulTransposeFusion disabled:     relative error {without:.3g}")
    bug = default > 1e-4
    print("=> the fusion miscomputes Transpose + MatMul(1-D)" if bug else "=> no miscompute")
    return 1 if bug else 0


if __name__ == "__main__":
    sys.exit(main())
