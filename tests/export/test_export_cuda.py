"""Whole-detector TorchScript on CUDA: skipped without a GPU, CI has none.

Run on a lent GPU machine with ``python -m pytest tests/export/test_export_cuda.py``. Traced on
the CPU or on CUDA, saved, reloaded onto CUDA, run at other sizes and detection counts: equal to
the eager CUDA model. A device baked into the trace (a tensor built with ``device=`` of the
trace run) fails here. TF32 is switched off so fp32 comparisons are exact to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gcnet_d2.export import (
    compare_instances,
    eager_detections,
    load_traced,
    run_traced,
    save_traced,
    trace_detector,
)
from tests.testing import FAMILIES, sample_image, tiny_detector

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_tf32"),
]


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("trace_device", ["cpu", "cuda"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_traced_detector_on_cuda_equals_eager(family, trace_device, grad, tmp_path):
    _, model = tiny_detector(family)
    cuda_model = copy.deepcopy(model).cuda().eval()
    tracer = model if trace_device == "cpu" else cuda_model
    trace_image = sample_image(128, 160, 0)
    with torch.set_grad_enabled(grad):
        traced, _ = trace_detector(tracer, trace_image.to(trace_device))
    path = str(tmp_path / "model.ts")
    save_traced(traced, path, tracer, "RGB")
    loaded, meta = load_traced(path, device="cuda")
    trace_count = len(eager_detections(cuda_model, trace_image.cuda()))
    counts = []
    for h, w, seed in ((160, 224, 1), (96, 128, 3), (192, 256, 2)):
        image = sample_image(h, w, seed).cuda()
        with torch.set_grad_enabled(grad):
            got = run_traced(loaded, meta, image)
        assert got.pred_boxes.tensor.device.type == "cuda"
        diff = compare_instances(eager_detections(cuda_model, image), got)
        assert diff.ok, f"{family} traced on {trace_device}, {h}x{w}: {diff.summary()}"
        counts.append(len(got))
    assert any(c != trace_count for c in counts), (trace_count, counts)
