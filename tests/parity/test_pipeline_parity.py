"""The training pipeline equals mmdetection's own, on a PNG (exact decoding), flip on and off.

mmdetection: its ``CocoDataset`` with the ``train_pipeline`` and ``filter_cfg`` of its own GCNet
config file (``LoadImageFromFile``, ``LoadAnnotations(with_mask, poly2mask)``, ``Resize``
1333x800 keep-ratio, ``RandomFlip`` with its probability forced to 0 or 1, ``PackDetInputs``),
then the model's ``DetDataPreprocessor`` (BGR to RGB, normalisation, padding to 32, masks
padded). Ours: gcnet_d2's training mapper with the table config (flip forced the same way),
``GCNET_DATA.FILTER: mmdet``, then the model's ``preprocess_image``.
Compared: the uint8 image, the normalised padded tensor, boxes (1e-4), labels and masks.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import gcnet_d2
from gcnet_d2.data.filtering import filter_like_mmdet
from gcnet_d2.data.mapper import build_gcnet_mapper
from tests.parity import mmdet_reference as ref
from tests.testing import write_coco, write_image

pytestmark = pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason())

ROW = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
MMDET_CONFIG = "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py"
H0, W0 = 75, 107  # resized to 800 x 1141, padded to 800 x 1152


def _coco(root) -> tuple[str, str]:  # noqa: ANN001
    rng = np.random.default_rng(0)
    # smooth content plus noise: bilinear upscaling must agree to the last bit
    yy, xx = np.mgrid[0:H0, 0:W0]
    base = np.stack([xx * 2.3, yy * 3.1, (xx + yy) * 1.2], -1) % 256
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    write_image(root / "img.png", pixels)
    anns = [
        # concave polygon
        ([[10, 10, 40, 10, 40, 50, 30, 50, 30, 22, 20, 22, 20, 50, 10, 50]], 0),
        # two overlapping objects, one of two parts
        ([[45.5, 5.2, 80.3, 5.2, 80.3, 40.7, 45.5, 40.7]], 1),
        ([[60, 20, 95, 25, 90, 60], [97, 3, 104, 3, 104, 9]], 0),
        # touching the right and bottom borders
        ([[85, 60, 107, 55, 107, 75, 80, 75]], 1),
        # a small one (~6 px, ~60 px after the resize)
        ([[3, 62, 9.5, 62, 9.5, 68.5, 3, 68.5]], 1),
    ]
    annotations = []
    for segm, cat in anns:
        xs = np.concatenate([np.asarray(p[0::2]) for p in segm])
        ys = np.concatenate([np.asarray(p[1::2]) for p in segm])
        bbox = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        annotations.append(
            {
                "image_id": 1,
                "category_id": cat + 1,
                "bbox": [float(v) for v in bbox],
                "segmentation": segm,
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": 0,
            }
        )
    # a crowd region and a sub-pixel box: neither is ground truth on either side
    annotations.append({**annotations[0], "iscrowd": 1})
    annotations.append({**annotations[1], "bbox": [50.0, 10.0, 0.6, 20.0]})
    images = [("img.png", H0, W0)]
    name, json_file = write_coco(root, images, annotations, ("a", "b"), "pipeline_parity")
    return name, str(json_file)


def _mmdet(json_file: str, root: str, flip: bool) -> tuple[dict, dict]:
    import mmdet
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    cfg_dir = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "gcnet")
    cfg = Config.fromfile(os.path.join(cfg_dir, MMDET_CONFIG))
    dataset_cfg = cfg.train_dataloader.dataset
    pipeline = copy.deepcopy(dataset_cfg.pipeline)
    assert [t["type"] for t in pipeline] == [
        "LoadImageFromFile",
        "LoadAnnotations",
        "Resize",
        "RandomFlip",
        "PackDetInputs",
    ]
    pipeline[3]["prob"] = 1.0 if flip else 0.0
    with DefaultScope.overwrite_default_scope("mmdet"):
        dataset = CocoDataset(
            ann_file=json_file,
            data_prefix={"img": root},
            metainfo={"classes": ("a", "b")},
            filter_cfg=dataset_cfg.filter_cfg,
            pipeline=pipeline,
        )
        packed = dataset[0]
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
        batch = preprocessor(
            {"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, True
        )
    return packed, batch


def _ours(name: str, flip: bool) -> tuple[dict, torch.Tensor]:
    cfg = gcnet_d2.get_config(ROW)
    cfg.MODEL.DEVICE = "cpu"
    mapper = build_gcnet_mapper(cfg, True)
    flips = [a for a in mapper.augmentations.augs if isinstance(a, T.RandomFlip)]
    assert len(flips) == 1 and flips[0].prob == 0.5
    flips[0].prob = 1.0 if flip else 0.0
    (record,) = filter_like_mmdet(DatasetCatalog.get(name))
    out = mapper(record)
    model = build_model(cfg)
    return out, model.preprocess_image([out]).tensor


@pytest.mark.parametrize("flip", [False, True])
def test_training_pipeline_equals_mmdetection(tmp_path, flip: bool) -> None:
    name, json_file = _coco(tmp_path)
    packed, batch = _mmdet(json_file, str(tmp_path), flip)
    ours, our_input = _ours(name, flip)
    sample = batch["data_samples"][0]
    assert sample.flip is flip

    their_uint8 = packed["inputs"].flip(0)  # BGR -> RGB
    assert their_uint8.shape == ours["image"].shape == (3, 800, 1141)
    assert torch.equal(ours["image"], their_uint8)
    assert our_input.shape == batch["inputs"].shape == (1, 3, 800, 1152)
    assert torch.equal(our_input, batch["inputs"])

    gt = sample.gt_instances
    instances = ours["instances"]
    assert len(instances) == len(gt) == 5  # the crowd region and the sub-pixel box are not GT
    # 1e-4, or one float32 step where coordinates pass 1024 (1.2e-4): both scale in float32
    torch.testing.assert_close(instances.gt_boxes.tensor, gt.bboxes, rtol=1.2e-7, atol=1e-4)
    assert torch.equal(instances.gt_classes, gt.labels)
    assert instances.gt_masks.tensor.shape == (5, 800, 1152)
    assert torch.equal(instances.gt_masks.tensor, torch.from_numpy(gt.masks.masks).bool())
