"""``dataloader``: COCO with mmdetection's pipeline (Base-GCNet-RCNN-FPN.yaml's INPUT,
DATASETS and DATALOADER): keep-ratio resize to 800 x 1333 by OpenCV bilinear, as the released
checkpoints saw, horizontal flip in training, RGB; mmdetection's dataset filter and bitmap
mask targets (``GCNET_DATA.FILTER: mmdet``, ``INPUT.MASK_RASTER: mmdet``, see
docs/training.md)."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from gcnet_d2.data.filtering import get_mmdet_filtered_dicts
from gcnet_d2.data.mapper import MMDetMaskMapper
from gcnet_d2.data.transforms import MMDetResizeShortestEdge

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_mmdet_filtered_dicts)(names="coco_2017_train", filter_empty=True),
    mapper=L(MMDetMaskMapper)(
        is_train=True,
        augmentations=[
            L(MMDetResizeShortestEdge)(short_edge_length=(800,), max_size=1333, backend="cv2"),
            L(T.RandomFlip)(horizontal=True, vertical=False),
        ],
        image_format="RGB",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    ),
    total_batch_size=16,
    aspect_ratio_grouping=True,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(MMDetResizeShortestEdge)(short_edge_length=(800,), max_size=1333, backend="cv2"),
        ],
        image_format="${...train.mapper.image_format}",
        use_instance_mask="${...train.mapper.use_instance_mask}",
        instance_mask_format="${...train.mapper.instance_mask_format}",
    ),
    num_workers="${..train.num_workers}",
)

# COCOEvaluator falls back to pycocotools' COCOeval by itself without detectron2's compiled
# extension (same AP, slower), as GCNetTrainer's evaluator does.
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
