"""gcnet_d2.GCNetPredictor: DefaultPredictor's interface, the test loader's resize.

On an image whose PIL (detectron2's DefaultPredictor) and cv2 (gcnet_d2's test loader) resizes
differ, GCNetPredictor must feed the model the test loader's tensor and so return the
detections evaluation scores; DefaultPredictor feeds another tensor and detects otherwise.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from gcnet_d2 import GCNetPredictor
from gcnet_d2.engine import GCNetTrainer
from tests.testing import QUICKSTART_NAME, tiny_cfg

# The quick-start architecture, narrowed; every proposal kept (score threshold 0).
TINY = [
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "10",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


class InputRecorder:
    """Records the image tensor of every input the model is called with."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images: list[torch.Tensor] = []
        model.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, args: tuple) -> None:
        self.images.append(args[0][0]["image"].to(torch.float32).clone())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 150x200 noisy image (shrunk to 96x128, PIL's antialiased resize and cv2's differ)
    and random weights of the tiny model."""
    tmp = tmp_path_factory.mktemp("predictor")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (3, 3), 0)  # some structure, still full of detail
    assert cv2.imwrite(str(tmp / "image.png"), image)  # lossless
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(predictor_cfg()), save_dir=str(tmp)).save("random")
    return tmp / "image.png", tmp / "random.pth"


def predictor_cfg(*opts: str) -> CfgNode:
    return tiny_cfg(QUICKSTART_NAME, *TINY, *opts)


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_detections_equal_the_test_loaders(files: tuple[Path, Path], input_format: str) -> None:
    image_file, weights = files
    name = f"gcnet_predictor_test_{input_format}"
    if name not in DatasetCatalog.list():
        record = {"file_name": str(image_file), "image_id": 0, "height": 150, "width": 200}
        DatasetCatalog.register(name, lambda: [dict(record)])
    cfg = predictor_cfg("INPUT.FORMAT", input_format, "DATASETS.TEST", f"('{name}',)")
    cfg.MODEL.WEIGHTS = str(weights)

    # The evaluation path: gcnet_d2's test loader, then the model.
    predictor = GCNetPredictor(cfg)
    recorded = InputRecorder(predictor.model)
    (batch,) = list(GCNetTrainer.build_test_loader(cfg, name))
    with torch.no_grad():
        expected = predictor.model(batch)[0]["instances"]

    bgr = cv2.imread(str(image_file))  # DefaultPredictor's input: BGR uint8
    got = predictor(bgr)["instances"]
    loader_input, predictor_input = recorded.images
    assert torch.equal(predictor_input, loader_input)
    assert len(expected) > 0
    assert got.image_size == expected.image_size == (150, 200)
    assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(got.scores, expected.scores, atol=1e-5)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.equal(got.pred_masks, expected.pred_masks)

    # DefaultPredictor (PIL resize) sees another tensor: the comparison above means something.
    default = DefaultPredictor(cfg)
    default_recorded = InputRecorder(default.model)
    other = default(bgr)["instances"]
    (default_input,) = default_recorded.images
    assert default_input.shape == loader_input.shape
    assert (default_input - loader_input).abs().max() > 10
    assert len(other) != len(expected) or not torch.allclose(
        other.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4
    )
