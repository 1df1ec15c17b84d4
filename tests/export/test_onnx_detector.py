"""The whole detector to ONNX (``gcnet_d2.export.onnx_detector``) beyond what
tests/deploy/test_onnx_predictor.py covers (three families at opsets 16, 17 and 19, sizes the
trace never saw): DCN below opset 19, the resize backend, LazyConfig rows' metadata, what a
mismatch does.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

from gcnet_d2.export import ExportRouteError
from gcnet_d2.export import onnx_detector as od
from tests.missing_packages import require
from tests.testing import export_cfg, sample_image, tiny_detector

require("onnxruntime", "the `export` extra, requirements-dev.txt")


def test_dcn_needs_opset_19():
    model = build_model(export_cfg("dcn_gc_cascade")).eval()
    with pytest.raises(ExportRouteError, match="deformable convolutions.*opset 19"):
        od.detector_onnx_bytes(model, sample_image(64, 64, 0), 18, {})


def test_a_pil_resize_is_refused_naming_the_key():
    with pytest.raises(ExportRouteError, match="INPUT.RESIZE_BACKEND 'pil'"):
        od.metadata("RGB", 800, 1333, "pil", [])


def test_lazyconfig_row_metadata_through_the_tool():
    """What the tool reads from a LazyConfig ``.py`` row for the file's metadata: its test
    mapper's resize and format, its test dataset's class names (kept when the model has as
    many classes; the export itself is the YAML path's, tests/deploy/)."""
    import json

    from tests.testing import LAZY_ROW, REPO, export_tool

    with export_tool() as tool:
        resize = ["dataloader.test.mapper.augmentations.0.short_edge_length=[96]"]
        resize += ["dataloader.test.mapper.augmentations.0.max_size=128"]
        coco = tool.onnx_metadata(tool.setup_lazy(str(REPO / LAZY_ROW), resize))
        three = tool.onnx_metadata(
            tool.setup_lazy(str(REPO / LAZY_ROW), ["model.roi_heads.num_classes=3"])
        )
    assert (coco["min_size_test"], coco["max_size_test"]) == ("96", "128")
    assert (three["min_size_test"], three["max_size_test"]) == ("800", "1333")
    assert coco["input_format"] == "RGB" and coco["resize_backend"] == "cv2"
    names = json.loads(coco["class_names"])
    assert len(names) == 80 and names[0] == "person"
    assert json.loads(three["class_names"]) == []


def test_a_mismatch_writes_nothing_and_shows_eagers_own_spread(tmp_path, monkeypatch):
    """With a zero score tolerance every sample fails: nothing is written, and the report
    shows how far eager is from itself (1 thread vs the current number) on that sample."""
    from gcnet_d2.export import compare, routes

    _, model = tiny_detector("gc_cascade")
    monkeypatch.setattr(compare, "SCORE_TOL", 0.0)
    threads = torch.get_num_threads()
    meta = od.metadata("RGB", 64, 96, "cv2", [])
    image = sample_image(96, 128, 1)
    result = routes.run_route(
        model, "tracing", "onnx", "detector", [image], str(tmp_path), onnx_metadata=meta
    )
    assert not result.ok and result.path == "" and not any(tmp_path.iterdir())
    assert torch.get_num_threads() == threads
    (spread,) = [line for line in result.lines if "eager itself" in line]
    assert f"vs {threads} threads:" in spread and "detections" in spread, result.lines
