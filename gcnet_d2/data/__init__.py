"""Datasets used by gcnet_d2: a synthetic COCO-format shapes dataset for quick starts and tests."""

from .synthetic import (
    SYNTHETIC_CLASSES,
    SplitPaths,
    default_synthetic_root,
    ensure_synthetic_generated,
    generate_synthetic_coco,
    register_synthetic_datasets,
)

__all__ = [
    "SYNTHETIC_CLASSES",
    "SplitPaths",
    "default_synthetic_root",
    "ensure_synthetic_generated",
    "generate_synthetic_coco",
    "register_synthetic_datasets",
]
