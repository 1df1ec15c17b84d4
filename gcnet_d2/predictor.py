"""``GCNetPredictor``: detectron2's ``DefaultPredictor`` that sees images as evaluation does.

``DefaultPredictor`` resizes with detectron2's ``ResizeShortestEdge`` (PIL bilinear, which
antialiases when shrinking, and detectron2's rounding of the new size); gcnet_d2's test loader
resizes as mmdetection does (cv2 bilinear, mmcv's rounding: :mod:`gcnet_d2.data.transforms`),
which is what the released checkpoints and the table's AP saw. ``GCNetPredictor`` applies the
test loader's resize, so its detections are the model's evaluated detections. It also loads
``MODEL.WEIGHTS`` with :class:`~gcnet_d2.checkpoint.GCNetCheckpointer` (no code unpickled;
mmdetection checkpoints converted on load). Everything else is ``DefaultPredictor``'s: a BGR
uint8 ``(H, W, 3)`` image in, ``{"instances": ...}`` out in the image's coordinates,
``INPUT.FORMAT`` honoured. The speed-ups ``FAST`` switches on are applied
(:func:`gcnet_d2.fast.apply`). ``TEST.PRECISION: bf16`` runs the detector under bfloat16
autocast (:mod:`gcnet_d2.precision`; its outputs stay float32).
"""

from __future__ import annotations

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from . import fast, precision
from .checkpoint import GCNetCheckpointer
from .data.transforms import build_gcnet_augmentations

__all__ = ["GCNetPredictor"]


class GCNetPredictor(DefaultPredictor):
    """``DefaultPredictor`` with gcnet_d2's test-time resize and checkpoint loading."""

    def __init__(self, cfg: CfgNode) -> None:
        # Not DefaultPredictor.__init__: it would load the weights with a plain
        # DetectionCheckpointer. The attributes are the ones its __call__ uses.
        self.cfg = cfg.clone()  # the model may modify its config
        self.model = fast.apply(build_model(self.cfg), self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        GCNetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        # The test loader's augmentations: the resize alone.
        (self.aug,) = build_gcnet_augmentations(self.cfg, is_train=False)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        # "bf16" on a CPU without bfloat16 instructions: one warning, "fp32".
        self.precision = precision.resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE)

    def __call__(self, original_image: np.ndarray) -> dict:
        """``DefaultPredictor.__call__`` in ``TEST.PRECISION``; every float output float32."""
        with precision.inference_precision(self.model, self.precision, self.cfg.MODEL.DEVICE):
            predictions = super().__call__(original_image)
        return precision.float32_outputs(predictions)
