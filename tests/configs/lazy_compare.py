"""Helpers that compare what a YAML config builds with what its LazyConfig builds."""

from __future__ import annotations

import enum
import math
import types
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from torch import nn

from gcnet_d2.config import add_gcnet_config

# Keys a YAML may change from detectron2's defaults because test_lazy_configs.py checks the
# LazyConfig against them: every MODEL key through the built model (module by module),
# every INPUT key through the dataset mapper, the rest one by one. A YAML key outside these
# fails the test: the LazyConfigs (and this list) must learn it first.
CHECKED_PREFIXES = ("MODEL.", "INPUT.")
CHECKED_KEYS = {
    # optimizer (per-parameter groups) and LR schedule (every iteration)
    "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.WEIGHT_DECAY",
    "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.LR_SCHEDULER_NAME", "SOLVER.STEPS", "SOLVER.MAX_ITER", "SOLVER.GAMMA",
    "SOLVER.WARMUP_METHOD", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS",
    # one by one (LAZY_TO_YAML)
    "SOLVER.IMS_PER_BATCH", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.AMP.ENABLED", "TEST.EVAL_PERIOD",
    "TEST.PRECISION",
    "TEST.DETECTIONS_PER_IMAGE", "DATASETS.TRAIN", "DATASETS.TEST",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "DATALOADER.ASPECT_RATIO_GROUPING",
    "DATALOADER.NUM_WORKERS", "OUTPUT_DIR", "SEED", "VERSION",
    # the LazyConfig loaders never skip images: only False is mirrored
    "GCNET_DATA.SKIP_BAD_IMAGES",
    # the training set's function (get_mmdet_filtered_dicts or detectron2's)
    "GCNET_DATA.FILTER",
}  # fmt: skip

# LazyConfig path -> YAML key, values compared after normalisation.
LAZY_TO_YAML = {
    "train.max_iter": "SOLVER.MAX_ITER",
    "train.checkpointer.period": "SOLVER.CHECKPOINT_PERIOD",
    "train.eval_period": "TEST.EVAL_PERIOD",
    "train.init_checkpoint": "MODEL.WEIGHTS",
    "train.device": "MODEL.DEVICE",
    "train.seed": "SEED",
    "train.amp.enabled": "SOLVER.AMP.ENABLED",
    "train.eval_precision": "TEST.PRECISION",
    "train.output_dir": "OUTPUT_DIR",
    "dataloader.train.total_batch_size": "SOLVER.IMS_PER_BATCH",
    "dataloader.train.dataset.names": "DATASETS.TRAIN",
    "dataloader.train.dataset.filter_empty": "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "dataloader.train.aspect_ratio_grouping": "DATALOADER.ASPECT_RATIO_GROUPING",
    "dataloader.train.num_workers": "DATALOADER.NUM_WORKERS",
    "dataloader.test.dataset.names": "DATASETS.TEST",
    "dataloader.evaluator.dataset_name": "DATASETS.TEST",
}


def flatten(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unchecked_yaml_keys(cfg: CfgNode) -> list[str]:
    """Keys whose value differs from detectron2's defaults (or that detectron2 lacks) and that
    the LazyConfig comparison does not cover."""
    defaults = flatten(get_cfg())
    # The speed-up switches: a LazyConfig without a `fast` entry takes FAST's defaults.
    gcnet_defaults = flatten(add_gcnet_config(get_cfg()))
    defaults.update({k: v for k, v in gcnet_defaults.items() if k.startswith("FAST.")})
    changed = [
        k
        for k, v in flatten(cfg).items()
        if k not in defaults or normalize(defaults[k]) != normalize(v)
    ]
    return [k for k in changed if k not in CHECKED_KEYS and not k.startswith(CHECKED_PREFIXES)]


def normalize(value: Any, depth: int = 0) -> Any:
    """A comparable plain value: sequences become tuples, objects their attributes."""
    if depth > 6:
        return repr(value)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):  # -1 and -1.0 configure the same thing
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return repr(value)
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            return ("tensor", tuple(value.shape))
        return ("tensor", tuple(value.shape), tuple(value.flatten().tolist()))
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return tuple(normalize(v, depth + 1) for v in value)
    if isinstance(value, dict) or type(value).__name__ == "DictConfig":
        return {str(k): normalize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, nn.Module):
        return ("module", type(value).__qualname__)
    if hasattr(value, "__dict__"):
        attrs = {k: v for k, v in vars(value).items() if not k.startswith("__")}
        return (type(value).__qualname__, normalize(attrs, depth + 1))
    return repr(value)


def module_settings(model: nn.Module) -> dict[str, tuple[str, Any]]:
    """Every sub-module's class and plain attributes (thresholds, loss settings, strides...)."""
    out = {}
    for name, module in model.named_modules():
        attrs = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and not isinstance(v, nn.Module)
        }
        if isinstance(attrs.get("loss_weight"), dict):  # a missing loss weighs 1.0
            attrs["loss_weight"] = {k: w for k, w in attrs["loss_weight"].items() if w != 1.0}
        out[name] = (type(module).__qualname__, normalize(attrs))
    return out


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two normalized values first differ, for a readable assertion message."""
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'YAML' if k in a else 'LazyConfig'} model"
            diff = first_difference(a[k], b[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(a, tuple):
        if len(a) != len(b):
            return f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"
