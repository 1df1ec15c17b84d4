"""gcnet_d2's training/test dataset mapper: detectron2's ``DatasetMapper`` with mmdetection's
instance-mask handling (``INPUT.MASK_RASTER: "mmdet"``).

detectron2 transforms a polygon's coordinates and rasterises it afterwards: at 28x28 inside
each RoI (``MASK_FORMAT: polygon``) or at the transformed image size (``bitmask``).
mmdetection (``LoadAnnotations(poly2mask=True)``, ``Resize``, ``RandomFlip`` and the padding
of ``Pad`` / ``DetDataPreprocessor(pad_mask=True)``) instead

1. rasterises the polygons (or RLE) at the *original* image size (``pycocotools``),
2. resizes that bitmap with nearest-neighbour interpolation (``cv2.INTER_NEAREST``) and flips
   it with the image,
3. pads it with zeros at the bottom/right to a multiple of 32 (``pad_size_divisor``; here
   ``MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR``), like the image,

and the mask head's target for a positive RoI is RoIAlign (aligned, adaptive sampling) of the
bitmap at 28x28, thresholded at 0.5: exactly what detectron2's ``BitMasks.crop_and_resize``
computes, so the mask loss is reused unchanged once the mapper produces these bitmaps.
Step 3 matters only at the image border: RoIAlign clamps samples in the last half pixel to
the edge row when the bitmap ends there, and blends with the zero padding when it does not.
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.structures import BitMasks

from .transforms import build_gcnet_augmentations

__all__ = [
    "MASK_PAD_DIVISOR",
    "MMDetMaskMapper",
    "build_gcnet_mapper",
    "check_mask_raster_config",
    "pad_bitmasks",
    "rasterize_segmentation",
]

# mmdetection pads images and masks to a multiple of 32 (``pad_size_divisor=32``), which is
# also the FPN's size divisibility. The default of ``MMDetMaskMapper``; built from a config,
# the mapper takes ``MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR`` instead.
MASK_PAD_DIVISOR = 32
MASK_RASTER_MODES = ("detectron2", "mmdet")


def rasterize_segmentation(segm: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterise one instance's COCO segmentation at ``height x width`` (uint8 0/1).

    Polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, the parts of one object) are
    merged into one mask; RLE may be compressed or not (mmdetection's ``poly2mask``); a 2-D
    array of the image's size is taken as the mask.
    """
    if isinstance(segm, list):
        polygons = [[float(v) for v in p] for p in segm]
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = segm
    elif isinstance(segm, np.ndarray) and segm.ndim == 2:
        if segm.shape != (height, width):
            raise ValueError(f"mask of size {segm.shape} on an image of size {(height, width)}")
        return (segm > 0).astype(np.uint8)
    else:
        raise ValueError(
            f"segmentation of type {type(segm).__name__}: expected COCO polygons, RLE or a "
            "2-D mask array"
        )
    mask = mask_util.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(
            f"RLE segmentation of size {mask.shape} on an image of size {(height, width)}"
        )
    return mask


def pad_bitmasks(masks: BitMasks, divisor: int = MASK_PAD_DIVISOR) -> BitMasks:
    """Zero-pad ``masks`` at the bottom and right to a multiple of ``divisor``."""
    h, w = masks.image_size
    pad_h, pad_w = (-h) % divisor, (-w) % divisor
    if not pad_h and not pad_w:
        return masks
    return BitMasks(F.pad(masks.tensor, (0, pad_w, 0, pad_h)))


class MMDetMaskMapper(DatasetMapper):
    """``DatasetMapper`` whose ``gt_masks`` are mmdetection's bitmaps (see module docstring):
    rasterised at the original size, resized and flipped by the image's own transforms
    (``apply_segmentation``: nearest), zero-padded to a multiple of ``mask_pad_divisor``
    (from a config: ``MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR``; default :data:`MASK_PAD_DIVISOR`).

    ``gt_masks`` are then larger than ``instances.image_size`` by that padding; boxes, the
    image and everything else are detectron2's.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        mask_pad_divisor: int = MASK_PAD_DIVISOR,
        **kwargs,  # noqa: ANN003 - DatasetMapper's
    ) -> None:
        super().__init__(is_train, **kwargs)
        if isinstance(mask_pad_divisor, bool) or int(mask_pad_divisor) != mask_pad_divisor:
            raise ValueError(f"mask_pad_divisor must be an integer, got {mask_pad_divisor!r}")
        if mask_pad_divisor < 1:
            raise ValueError(f"mask_pad_divisor must be >= 1, got {mask_pad_divisor!r}")
        self.mask_pad_divisor = int(mask_pad_divisor)
        if self.use_instance_mask and self.instance_mask_format != "bitmask":
            raise ValueError(
                "MMDetMaskMapper makes bitmap masks: it needs INPUT.MASK_FORMAT 'bitmask' "
                f"(instance_mask_format), got {self.instance_mask_format!r}"
            )

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        # Per-image padding of the GT bitmaps (MODEL.MMDET_TRAIN.MASK_PAD "image") follows
        # the image's pad divisor; configs without the key keep mmdetection's 32.
        mmdet_train = cfg.MODEL.get("MMDET_TRAIN", None)
        if mmdet_train is not None and "PAD_SIZE_DIVISOR" in mmdet_train:
            ret["mask_pad_divisor"] = mmdet_train.PAD_SIZE_DIVISOR
        return ret

    def _transform_annotations(self, dataset_dict: dict, transforms, image_shape) -> None:  # noqa: ANN001
        if self.use_instance_mask:
            height, width = dataset_dict["height"], dataset_dict["width"]
            for anno in dataset_dict["annotations"]:
                if anno.get("iscrowd", 0) == 0 and "segmentation" in anno:
                    # Compressed RLE at the original size: detectron2 decodes it and applies
                    # the image's transforms to the bitmap.
                    mask = rasterize_segmentation(anno["segmentation"], height, width)
                    anno["segmentation"] = mask_util.encode(np.asfortranarray(mask))
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        instances = dataset_dict["instances"]
        if self.use_instance_mask and instances.has("gt_masks"):
            instances.gt_masks = pad_bitmasks(instances.gt_masks, self.mask_pad_divisor)


def check_mask_raster_config(cfg: CfgNode) -> str:
    """The ``INPUT.MASK_RASTER`` mode, after checking the keys it needs; errors name the keys."""
    mode = cfg.INPUT.get("MASK_RASTER", "detectron2")
    if mode not in MASK_RASTER_MODES:
        raise ValueError(f"INPUT.MASK_RASTER must be one of {MASK_RASTER_MODES}, got {mode!r}")
    if mode == "mmdet" and cfg.MODEL.MASK_ON:
        if cfg.INPUT.MASK_FORMAT != "bitmask":
            raise ValueError(
                "INPUT.MASK_RASTER 'mmdet' (bitmap mask targets) needs INPUT.MASK_FORMAT "
                f"'bitmask', got {cfg.INPUT.MASK_FORMAT!r}; set INPUT.MASK_RASTER 'detectron2' "
                "for polygon mask targets"
            )
        if cfg.INPUT.get("RESIZE_BACKEND", "cv2") != "cv2":
            raise ValueError(
                "INPUT.MASK_RASTER 'mmdet' resizes masks with OpenCV's nearest neighbour as "
                f"mmdetection does: it needs INPUT.RESIZE_BACKEND 'cv2', got "
                f"{cfg.INPUT.RESIZE_BACKEND!r}"
            )
    return mode


def build_gcnet_mapper(cfg: CfgNode, is_train: bool) -> DatasetMapper:
    """The mapper of gcnet_d2's loaders: mmdetection's resize and flip
    (:func:`~gcnet_d2.data.transforms.build_gcnet_augmentations`) and, with
    ``INPUT.MASK_RASTER: mmdet``, mmdetection's bitmap masks (training only: evaluation never
    reads ground-truth masks)."""
    mode = check_mask_raster_config(cfg)
    cls = MMDetMaskMapper if mode == "mmdet" and is_train else DatasetMapper
    return cls(cfg, is_train, augmentations=build_gcnet_augmentations(cfg, is_train))
