"""mmdetection's test/train resize, as detectron2 augmentations.

mmdetection resizes with ``cv2.INTER_LINEAR`` (the released checkpoints saw that); detectron2
resizes uint8 images with PIL's bilinear filter, which antialiases when shrinking. The
difference is small but systematic, so the table configs use ``INPUT.RESIZE_BACKEND: cv2``.
"""

from __future__ import annotations

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from PIL import Image


class CV2ResizeTransform(T.ResizeTransform):
    """``ResizeTransform`` whose pixels are resized by OpenCV (bilinear, or nearest for
    segmentation maps) instead of PIL; coordinates are scaled exactly as detectron2 does."""

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"image of size {img.shape[:2]} given to a resize built for {(self.h, self.w)}"
            )
        method = cv2.INTER_NEAREST if interp == Image.NEAREST else cv2.INTER_LINEAR
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=method)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
            out = out[:, :, None]
        return out

    def inverse(self) -> T.Transform:
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class MMDetResizeShortestEdge(T.Augmentation):
    """Keep-ratio resize to (short side, long side cap), sized as mmcv's ``rescale_size``:
    ``scale = min(short / min(h, w), max_size / max(h, w))``, sides ``int(side * scale + 0.5)``.
    """

    def __init__(
        self, short_edge_length: int | tuple[int, ...], max_size: int, backend: str = "cv2"
    ) -> None:
        super().__init__()
        if backend not in ("cv2", "pil"):
            raise ValueError(f"INPUT.RESIZE_BACKEND must be 'cv2' or 'pil', got {backend!r}")
        if isinstance(short_edge_length, int):  # one size, as detectron2's ResizeShortestEdge
            short_edge_length = (short_edge_length,)
        self.short_edge_length = tuple(short_edge_length)
        self.max_size = max_size
        self.backend = backend

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        short = int(np.random.choice(self.short_edge_length))
        scale = min(short / min(h, w), self.max_size / max(h, w))
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
        cls = CV2ResizeTransform if self.backend == "cv2" else T.ResizeTransform
        return cls(h, w, new_h, new_w, Image.BILINEAR)


def build_gcnet_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """The resize (and, for training, flip) of gcnet_d2's configs: mmdetection's pipeline."""
    if is_train:
        if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING != "choice":
            raise ValueError(
                "INPUT.MIN_SIZE_TRAIN_SAMPLING: gcnet_d2's resize samples sizes by 'choice', "
                f"got {cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING!r}"
            )
        sizes, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
    else:
        sizes, max_size = (cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST
    augs: list[T.Augmentation] = [
        MMDetResizeShortestEdge(sizes, max_size, cfg.INPUT.RESIZE_BACKEND)
    ]
    if is_train and cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs
