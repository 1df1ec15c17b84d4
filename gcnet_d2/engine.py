"""``GCNetTrainer``: detectron2's DefaultTrainer with COCO evaluation and CPU multi-process.

Six things differ from ``DefaultTrainer``:
- images are resized as mmdetection does (:mod:`gcnet_d2.data.transforms`), and with
  ``INPUT.MASK_RASTER: mmdet`` mask targets are cut from mmdetection's bitmaps
  (:mod:`gcnet_d2.data.mapper`);
- data loading is checked (:mod:`gcnet_d2.data.loaders`: errors name the file, broken images can
  be skipped with ``GCNET_DATA.SKIP_BAD_IMAGES``) and resumable: checkpoints also hold the data
  position and RNG states, so ``--resume`` continues the run it resumes
  (:mod:`gcnet_d2.checkpoint.training_state`);
- checkpoints go through :class:`~gcnet_d2.checkpoint.GCNetCheckpointer` (safe loading,
  mmdetection checkpoints accepted as ``MODEL.WEIGHTS``);
- evaluation uses ``COCOEvaluator`` (which falls back to pycocotools' COCOeval by itself when
  detectron2's compiled extension is absent) and runs in ``TEST.PRECISION``
  (:mod:`gcnet_d2.precision`);
- ``SOLVER.AMP.ENABLED`` trains with :class:`gcnet_d2.amp.AutocastTrainer` (the autocast of the
  model's device: float16 + grad scaler on CUDA, bfloat16 on the CPU) instead of detectron2's
  CUDA-only ``AMPTrainer``;
- with several CPU processes (gloo), the model is wrapped in DistributedDataParallel without
  ``device_ids`` (detectron2 passes the local rank, which torch accepts for CUDA modules only);
  a CUDA model gets the device it is on (the local rank's, or the only one a launcher gave);
- the cluster code's hook (:class:`gcnet_d2.cluster.ClusterHook`) runs in every process:
  progress for the lost-peer report, every process's RNG state in each checkpoint, a
  checkpoint every ``checkpoint_minutes``, and a clean stop on SIGUSR1 / SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from torch import nn

from . import fast, precision
from .amp import AutocastTrainer
from .checkpoint import GCNetCheckpointer, training_state
from .cluster import ClusterHook
from .data import ensure_synthetic_generated, loaders
from .data.mapper import build_gcnet_mapper
from .io import atomic_write_text

logger = logging.getLogger(__name__)


def create_ddp_model(model: nn.Module, **kwargs: object) -> nn.Module:
    """detectron2's ``create_ddp_model``, leaving ``device_ids`` unset for CPU modules."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        param = next(model.parameters(), None)
        if param is None or param.device.type == "cpu":
            kwargs["device_ids"] = None
        elif param.device.type == "cuda":
            kwargs["device_ids"] = [param.device.index]
    return _d2_create_ddp_model(model, **kwargs)


_d2_create_ddp_model = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _gcnet_trainer_parts() -> Iterator[None]:
    """DefaultTrainer.__init__ builds these three by module-level name; swap ours in for it."""
    names = ("create_ddp_model", "DetectionCheckpointer", "AMPTrainer")
    saved = [getattr(d2_defaults, n) for n in names]
    ours = (create_ddp_model, GCNetCheckpointer, AutocastTrainer)
    for name, mine in zip(names, ours, strict=True):
        setattr(d2_defaults, name, mine)
    try:
        yield
    finally:
        for name, theirs in zip(names, saved, strict=True):
            setattr(d2_defaults, name, theirs)


class GCNetTrainer(DefaultTrainer):
    """DefaultTrainer for gcnet_d2 configs; see the module docstring for what differs."""

    def __init__(self, cfg: CfgNode, checkpoint_minutes: float = 0.0) -> None:
        """``checkpoint_minutes > 0``: also checkpoint once that many minutes have passed since
        the last checkpoint (``--checkpoint-minutes``; :class:`gcnet_d2.cluster.ClusterHook`)."""
        self.checkpoint_minutes = float(checkpoint_minutes or 0.0)
        with _gcnet_trainer_parts():
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """detectron2's model with the speed-ups ``FAST`` switches on
        (:func:`gcnet_d2.fast.apply`)."""
        return fast.apply(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):  # noqa: ANN206 - detectron2 signature
        mapper = build_gcnet_mapper(cfg, True)
        # Checked data (GCNET_DATA.SKIP_BAD_IMAGES), resumable sampler, own RNG generator.
        return loaders.build_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):  # noqa: ANN206
        mapper = build_gcnet_mapper(cfg, False)
        return loaders.build_test_loader(cfg, dataset_name, mapper=mapper)

    def build_hooks(self) -> list[HookBase | None]:
        """detectron2's hooks, with :class:`ClusterHook` just before the checkpointer (in every
        process)."""
        ret = super().build_hooks()
        at = next(
            i
            for i, h in enumerate(ret)
            if isinstance(h, hooks.PeriodicCheckpointer | hooks.EvalHook)
        )
        cluster = ClusterHook(
            self.checkpointer if comm.is_main_process() else None,
            self.cfg.SOLVER.CHECKPOINT_PERIOD,
            self.cfg.OUTPUT_DIR,
            getattr(self, "checkpoint_minutes", 0.0),
        )
        return [*ret[:at], cluster, *ret[at:]]

    # Resume state beyond detectron2's (data position, RNGs): see checkpoint.training_state.
    def state_dict(self) -> dict:
        sampler = getattr(self._trainer.data_loader, "resumable_sampler", None)
        return training_state.add_resume_state(self, super().state_dict(), sampler)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        training_state.restore_training_state(
            state_dict.get("gcnet_resume"),
            getattr(self._trainer.data_loader, "resumable_sampler", None),
            iterations_done=self.iter + 1,
            images_per_process=self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
            seed=self.cfg.SEED,
        )

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None):  # noqa: ANN001, ANN206
        # Evaluation leaves the RNGs as it found them (its data loader draws a seed), so a
        # periodic evaluation after a checkpoint does not make a resumed run diverge.
        with training_state.rng_kept(), _evaluation_precision(cfg, model):
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        if dataset_name.startswith("gcnet_synthetic"):
            ensure_synthetic_generated(dataset_name)
        # Without detectron2's compiled extension COCOEvaluator falls back to pycocotools'
        # COCOeval itself (same AP, slower) and logs which one it runs.
        return COCOEvaluator(
            dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        )


def _evaluation_precision(cfg: CfgNode | None, model: nn.Module):  # noqa: ANN202
    """``TEST.PRECISION``'s context for evaluating ``model`` (none without a config)."""
    if cfg is None:
        return contextlib.nullcontext()
    run_as = precision.resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE)
    return precision.inference_precision(model, run_as, cfg.MODEL.DEVICE)


def write_results(output_dir: str, results: dict) -> str | None:
    """Save final metrics as ``output_dir/final_results.json`` atomically (main process)."""
    if not comm.is_main_process() or not results:
        return None
    path = os.path.join(output_dir, "final_results.json")
    atomic_write_text(path, json.dumps(results, indent=2))
    return path
