"""Mask targets as mmdetection (``INPUT.MASK_RASTER: mmdet``), against mmdetection's own code.

Same polygons (a concave one, a two-part one, one touching the image corner, an RLE), same
resize and forced flip, same RoIs: the bitmaps of gcnet_d2's mapper equal mmdetection's
``LoadAnnotations(poly2mask) -> Resize -> RandomFlip -> pad`` and detectron2's
``BitMasks.crop_and_resize`` on them equals mmdetection's ``mask_target``.
"""

from __future__ import annotations

import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from gcnet_d2 import add_gcnet_config
from gcnet_d2.data.mapper import (
    MMDetMaskMapper,
    build_gcnet_mapper,
    check_mask_raster_config,
    rasterize_segmentation,
)
from gcnet_d2.data.transforms import MMDetResizeShortestEdge
from tests.parity import mmdet_reference as ref
from tests.testing import write_image

H0, W0 = 45, 61  # original image; resized to short side 80 -> 80 x 108, padded to 96 x 128
SHORT = 80

POLYGONS = [
    # concave "U", open at the top
    [[5, 5, 25, 5, 25, 30, 18, 30, 18, 12, 12, 12, 12, 30, 5, 30]],
    # two parts of one object
    [[30.5, 3.2, 40.7, 3.2, 40.7, 11.9, 30.5, 11.9], [33, 15, 44, 15, 38.5, 24]],
    # along the bottom edge, touching both bottom corners
    [[47, 30, 61, 32, 61, 45, 0, 45, 0, 43]],
    # thin sliver
    [[2, 38, 30, 39.5, 2, 40.2]],
]


def _cfg(mask_raster: str = "mmdet", mask_format: str = "bitmask"):
    cfg = get_cfg()
    add_gcnet_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MASK_RASTER = mask_raster
    cfg.INPUT.MIN_SIZE_TRAIN = (SHORT,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    return cfg


def _image(tmp_path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H0, W0, 3), dtype=np.uint8)
    path = str(tmp_path / "img.png")
    write_image(path, rgb)
    return path, rgb


def _segmentations() -> list:
    rle = mask_util.encode(np.asfortranarray(rasterize_segmentation(POLYGONS[1], H0, W0)))
    rle["counts"] = rle["counts"].decode("ascii")  # as in a COCO json file
    return [*POLYGONS, rle]


def _record(path: str) -> dict:
    annos = []
    for i, segm in enumerate(_segmentations()):
        m = rasterize_segmentation(segm, H0, W0)
        ys, xs = np.nonzero(m)
        x0, y0 = float(xs.min()), float(ys.min())
        bbox = [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]
        annos.append({"bbox": bbox, "bbox_mode": 1, "category_id": i % 2, "segmentation": segm})
    return {"file_name": path, "height": H0, "width": W0, "image_id": 1, "annotations": annos}


def _ours(path: str, flip: bool, cfg=None, cls=MMDetMaskMapper) -> dict:
    cfg = cfg or _cfg()
    augs = [MMDetResizeShortestEdge((SHORT,), 1333), T.RandomFlip(prob=1.0 if flip else 0.0)]
    return cls(cfg, True, augmentations=augs)(_record(path))


def _mmdet_masks(rgb: np.ndarray, flip: bool):
    """mmdetection's own transforms on the same annotations; masks padded as its
    DetDataPreprocessor(pad_mask=True, pad_size_divisor=32) pads a batch of this image."""
    from mmdet.datasets.transforms import LoadAnnotations, RandomFlip, Resize

    results = {
        "img": rgb[:, :, ::-1].copy(),  # mmdet decodes to BGR; pixel values do not matter here
        "img_shape": (H0, W0),
        "ori_shape": (H0, W0),
        "instances": [
            {"bbox": [0, 0, 1, 1], "bbox_label": 0, "ignore_flag": 0, "mask": s}
            for s in _segmentations()
        ],
    }
    results = LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=True)(results)
    results = Resize(scale=(1333, SHORT), keep_ratio=True)(results)
    results = RandomFlip(prob=1.0 if flip else 0.0)(results)
    masks = results["gt_masks"]
    h, w = masks.height, masks.width
    return masks.pad((-(-h // 32) * 32, -(-w // 32) * 32)), (h, w)


def _mmdet_rcnn_train_cfg():
    """``train_cfg.rcnn`` of mmdetection's own GCNet config file (``mask_size=28``)."""
    import mmdet
    from mmengine.config import Config

    root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "gcnet")
    cfg = Config.fromfile(os.path.join(root, "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py"))
    assert cfg.model.train_cfg.rcnn.mask_size == 28
    return cfg.model.train_cfg.rcnn


def _rois(gt_boxes: torch.Tensor, h: int, w: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive-like RoIs: each GT box jittered by up to 25% of its size (clipped to the
    image, as proposals are), the GT box itself, and boxes ending on the image border
    (the last, tiny one in the bottom-right corner is where the zero padding shows)."""
    g = torch.Generator().manual_seed(0)
    boxes, inds = [], []
    for i, gt in enumerate(gt_boxes):
        size = (gt[2:] - gt[:2]).repeat(2)
        jitter = (torch.rand(n, 4, generator=g) - 0.5) * 0.5 * size
        border = torch.tensor([[0, 0, w, h], [gt[0], gt[1], w, h], [w - 1.5, h - 1.5, w, h]])
        b = torch.cat([gt[None] + jitter, gt[None], border])
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        boxes.append(b)
        inds.append(torch.full((len(b),), i))
    return torch.cat(boxes), torch.cat(inds)


@pytest.fixture
def mmdet() -> None:
    """Only the comparison with mmdetection's own code needs it: skipped where its stack is
    not installed (an error with ``CI`` set); the other tests here never import it."""
    if not ref.mmdet_available():
        pytest.skip(ref.mmdet_unavailable_reason())


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.usefixtures("mmdet")
def test_bitmaps_and_targets_equal_mmdetection(tmp_path, flip: bool) -> None:
    from mmdet.structures.mask import mask_target

    path, rgb = _image(tmp_path)
    ours = _ours(path, flip)["instances"]
    theirs, (h, w) = _mmdet_masks(rgb, flip)
    assert ours.image_size == (h, w) == (80, 108)
    assert ours.gt_masks.tensor.shape == (5, 96, 128)
    assert torch.equal(ours.gt_masks.tensor, torch.from_numpy(theirs.masks).bool())

    boxes, inds = _rois(ours.gt_boxes.tensor, h, w)
    expected = mask_target([boxes], [inds], [theirs], _mmdet_rcnn_train_cfg())
    got = ours.gt_masks[inds].crop_and_resize(boxes, 28)
    assert got.shape == expected.shape == (len(boxes), 28, 28)
    assert torch.equal(got.float(), expected)
    assert 0.2 < expected.mean() < 0.8  # targets with both values

    # The test can fail: detectron2's own bitmask path (polygons moved, then rasterised at
    # the new size), or the mmdet bitmaps without padding, give other targets.
    d2 = _ours(path, flip, _cfg("detectron2"), DatasetMapper)["instances"].gt_masks
    assert not torch.equal(d2[inds].crop_and_resize(boxes, 28).float(), expected)
    unpadded = type(d2)(ours.gt_masks.tensor[:, :h, :w])
    assert not torch.equal(unpadded[inds].crop_and_resize(boxes, 28).float(), expected)


def test_crowd_and_empty_records(tmp_path) -> None:
    path, _ = _image(tmp_path)
    mapper = MMDetMaskMapper(_cfg(), True, augmentations=[MMDetResizeShortestEdge((SHORT,), 1333)])
    record = _record(path)
    record["annotations"][0]["iscrowd"] = 1
    out = mapper(record)["instances"]
    assert len(out) == len(POLYGONS)  # the crowd one is dropped, as detectron2 does
    record = _record(path)
    record["annotations"] = []
    out = mapper(record)["instances"]
    assert len(out) == 0


def test_rasterize_accepts_arrays_and_names_bad_input() -> None:
    mask = rasterize_segmentation(POLYGONS[0], H0, W0)
    assert mask.dtype == np.uint8 and 100 < mask.sum() < H0 * W0
    assert np.array_equal(rasterize_segmentation(mask.astype(bool), H0, W0), mask)
    with pytest.raises(ValueError, match="mask of size"):
        rasterize_segmentation(mask[:-1], H0, W0)
    with pytest.raises(ValueError, match="segmentation of type str"):
        rasterize_segmentation("polygon", H0, W0)


def test_incompatible_keys_fail_naming_them() -> None:
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT.*'polygon'"):
        build_gcnet_mapper(_cfg(mask_format="polygon"), True)
    cfg = _cfg()
    cfg.INPUT.RESIZE_BACKEND = "pil"
    with pytest.raises(ValueError, match="INPUT.RESIZE_BACKEND"):
        check_mask_raster_config(cfg)
    with pytest.raises(ValueError, match="INPUT.MASK_RASTER must be one of"):
        check_mask_raster_config(_cfg("mmdetection"))
    assert type(build_gcnet_mapper(_cfg(), True)) is MMDetMaskMapper
    assert type(build_gcnet_mapper(_cfg(), False)) is DatasetMapper
    assert type(build_gcnet_mapper(_cfg("detectron2", "polygon"), True)) is DatasetMapper


def test_lazy_configs_mirror_the_yaml_keys() -> None:
    """The LazyConfig rows use the same mapper and filter as ``INPUT.MASK_RASTER: mmdet`` and
    ``GCNET_DATA.FILTER: mmdet``; the mapper refuses polygon masks, naming the key."""
    from detectron2.config import instantiate

    import gcnet_d2
    from gcnet_d2.data.filtering import get_mmdet_filtered_dicts

    for row in (
        "mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
        "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco",
    ):
        train = gcnet_d2.get_config(f"gcnet/{row}.py").dataloader.train
        assert train.dataset._target_ is get_mmdet_filtered_dicts
        mapper = instantiate(train.mapper)
        assert type(mapper) is MMDetMaskMapper and mapper.instance_mask_format == "bitmask"
        train.mapper.instance_mask_format = "polygon"
        with pytest.raises(ValueError, match="INPUT.MASK_FORMAT 'bitmask'"):
            instantiate(train.mapper)


def test_resize_takes_one_short_edge_as_an_int():
    """``short_edge_length=160`` means ``(160,)``, as detectron2's ``ResizeShortestEdge``
    reads it (LazyConfig overrides such as ``...augmentations.0.short_edge_length=160``)."""
    image = np.zeros((120, 200, 3), dtype=np.uint8)
    one = MMDetResizeShortestEdge(160, max_size=320).get_transform(image)
    listed = MMDetResizeShortestEdge((160,), max_size=320).get_transform(image)
    assert (one.new_h, one.new_w) == (listed.new_h, listed.new_w) == (160, 267)
