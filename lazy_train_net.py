#!/usr/bin/env python
"""Train or evaluate gcnet_d2 models from a LazyConfig (Python) config, as detectron2's
``tools/lazyconfig_train_net.py`` does for its own.

    python lazy_train_net.py --config-file configs/gcnet/<row>.py --num-gpus 8
    python lazy_train_net.py --config-file configs/gcnet/<row>.py --eval-only \
        train.init_checkpoint=<file>
    python lazy_train_net.py --config-file configs/gcnet/<row>.py train.max_iter=100 \
        dataloader.train.total_batch_size=8

Started by torchrun or inside an ``srun`` step, each process joins the launcher's group
instead of spawning; a lost peer stops the others with one line; ``--resume`` may always be
passed and a restarted job resumes by itself; ``--checkpoint-minutes M`` adds time-based
checkpoints; SIGUSR1 / SIGTERM stop at a checkpoint (SLURM: SIGUSR1 requeues the job)
(:mod:`gcnet_d2.cluster`, docs/clusters.md). Checkpoints hold the data position and the RNG
states (:mod:`gcnet_d2.checkpoint.training_state`), so a resumed run continues exactly.

Trailing ``key=value`` arguments override the config. Without CUDA the model runs on the CPU
(``train.device`` becomes ``cpu``). Checkpoints load through :class:`GCNetCheckpointer`, so
``train.init_checkpoint`` may be a released mmdetection checkpoint. Final metrics go to
``train.output_dir/final_results.json``.

A LazyConfig is Python and runs when loaded: use only config files you trust. ``train_net.py``
reads YAML configs, without running code.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import detectron2.utils.comm as comm
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import (
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from omegaconf import DictConfig, OmegaConf
from torch import nn

import gcnet_d2  # noqa: F401  (registers the backbones and the synthetic datasets)
from gcnet_d2 import fast, precision
from gcnet_d2.amp import AutocastTrainer
from gcnet_d2.checkpoint import GCNetCheckpointer, training_state
from gcnet_d2.cluster import ClusterHook, add_cluster_arguments, run
from gcnet_d2.data import ensure_synthetic_generated, loaders
from gcnet_d2.engine import create_ddp_model, write_results
from gcnet_d2.errors import ConfigError, LaunchError

logger = logging.getLogger("gcnet_d2")


EXIT_BAD_OVERRIDE = 2
_ABSENT = object()


def check_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Raise ``KeyError`` for an override of a key the config lacks, with the close names.

    detectron2 would add such a key silently (``train.max_itr=2`` would train for
    ``train.max_iter``). A new key under a ``LazyCall`` node is an argument, which
    ``instantiate`` checks against the callable's signature, so it is allowed.
    """
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if isinstance(parent, DictConfig) and "_target_" in parent:
            continue
        names = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(leaf, names, n=3)
        hint = f"; did you mean {', '.join(f'{parent_key}.{c}'.lstrip('.') for c in close)}?"
        raise KeyError(
            f"override {override!r}: the config has no key {key!r}" + (hint if close else "")
        )


def load_lazy_config(path: str) -> DictConfig:
    """The LazyConfig at ``path``; without a ``fast`` entry, the speed-up switches' defaults
    as one (so ``fast.<name>=...`` overrides them)."""
    cfg = LazyConfig.load(path)
    if "fast" not in cfg:
        cfg.fast = asdict(fast.FastOptions())
    return cfg


def setup(args: argparse.Namespace) -> DictConfig:
    """The LazyConfig with the command-line overrides; the CPU when CUDA is absent."""
    cfg = load_lazy_config(args.config_file)
    check_overrides(cfg, args.opts)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if not torch.cuda.is_available() and str(cfg.train.device).startswith("cuda"):
        cfg.train.device = "cpu"
    precision.check_precision(*precision.precision_of(cfg))  # before training, not after
    default_setup(cfg, args)
    return cfg


def _ensure_datasets(cfg: DictConfig) -> None:
    """Generate the synthetic dataset on first use when a loader names it."""
    for loader in ("train", "test"):
        names = cfg.dataloader[loader].dataset.names if loader in cfg.dataloader else ()
        for name in [names] if isinstance(names, str) else names:
            if str(name).startswith("gcnet_synthetic"):
                ensure_synthetic_generated(name)


def build_model(cfg: DictConfig) -> nn.Module:
    """``model`` on ``train.device``, with the speed-ups of ``cfg.fast``
    (:func:`gcnet_d2.fast.apply`).

    The model's initialisation is the config's own (``head_init=`` of its FPN and RoI heads),
    as detectron2's ``tools/lazyconfig_train_net.py`` builds it too.
    """
    if "head_init" in cfg.train:
        raise ValueError(
            "train.head_init is no longer read: the initialisation is part of the model "
            "(model.backbone.head_init and model.roi_heads.head_init)"
        )
    return fast.apply(instantiate(cfg.model), cfg).to(cfg.train.device)


def eval_precision(cfg: DictConfig) -> str:
    """``train.eval_precision`` ("fp32" when absent; "bf16": :mod:`gcnet_d2.precision`),
    checked, and "fp32" with a warning where ``train.device`` has no bfloat16."""
    value, key = precision.precision_of(cfg)
    return precision.resolve_precision(value, cfg.train.device, key)


def build_train_loader(cfg: DictConfig) -> Any:
    """``dataloader.train``; detectron2's loader gets a resumable sampler and a generator of its
    own (:func:`gcnet_d2.data.loaders.resumable_train_loader`), so that checkpoints hold the
    data position."""
    if cfg.dataloader.train._target_ is not build_detection_train_loader:
        logger.warning("dataloader.train is not build_detection_train_loader: a resumed run "
                       "restarts its data stream")  # fmt: skip
        return instantiate(cfg.dataloader.train)
    kwargs = {k: instantiate(v) for k, v in cfg.dataloader.train.items() if k != "_target_"}
    return loaders.resumable_train_loader(cfg.train.seed, **kwargs)


def resumable_trainer(cfg: DictConfig, trainer_class: type, *args: Any) -> SimpleTrainer:
    """``trainer_class(*args)`` whose checkpoints also hold the data position and the RNG states
    (:mod:`gcnet_d2.checkpoint.training_state`, as ``GCNetTrainer``'s), so ``--resume``
    continues the run it resumes."""

    class ResumableTrainer(trainer_class):
        def state_dict(self) -> dict:
            sampler = getattr(self.data_loader, "resumable_sampler", None)
            return training_state.add_resume_state(self, super().state_dict(), sampler)

        def load_state_dict(self, state_dict: dict) -> None:
            super().load_state_dict(state_dict)
            training_state.restore_training_state(
                state_dict.get("gcnet_resume"),
                getattr(self.data_loader, "resumable_sampler", None),
                iterations_done=self.iter + 1,
                images_per_process=cfg.dataloader.train.total_batch_size // comm.get_world_size(),
                seed=cfg.train.seed,
            )

    return ResumableTrainer(*args)


def do_test(cfg: DictConfig, model: nn.Module) -> OrderedDict:
    """COCO-evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``, in
    ``train.eval_precision``."""
    if "evaluator" not in cfg.dataloader:
        return OrderedDict()
    run_as = eval_precision(cfg)
    with precision.inference_precision(model, run_as, cfg.train.device):
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
    if comm.is_main_process():
        print_csv_format(results)
    return OrderedDict(results or {})


def do_train(args: argparse.Namespace, cfg: DictConfig) -> OrderedDict:
    """Train ``model`` with ``optimizer`` and ``lr_multiplier`` for ``train.max_iter``
    iterations, checkpointing and evaluating as ``train`` says; returns the last evaluation."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = build_train_loader(cfg)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_class = AutocastTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = resumable_trainer(cfg, trainer_class, model, train_loader, optimizer)
    checkpointer = GCNetCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_eval: dict = {}

    def evaluate() -> OrderedDict:
        with training_state.rng_kept():  # a periodic evaluation must not move the RNGs
            last_eval["results"] = do_test(cfg, model)
        return last_eval["results"]

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ClusterHook(
                checkpointer if comm.is_main_process() else None,
                cfg.train.checkpointer.period,
                cfg.train.output_dir,
                getattr(args, "checkpoint_minutes", 0.0),
            ),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_eval.get("results", OrderedDict())


def main(args: argparse.Namespace) -> OrderedDict:
    cfg = setup(args)
    _ensure_datasets(cfg)
    if args.eval_only:
        model = create_ddp_model(build_model(cfg))
        GCNetCheckpointer(model).load(cfg.train.init_checkpoint)
        results = do_test(cfg, model)
    else:
        results = do_train(args, cfg)
    if comm.is_main_process() and results:
        write_results(cfg.train.output_dir, results)
    return results


def cli(argv: list[str] | None = None) -> None:
    args = add_cluster_arguments(default_argument_parser()).parse_args(argv)
    try:  # before any process starts: one line and exit 2 for a bad override or value
        cfg = load_lazy_config(args.config_file)
        check_overrides(cfg, args.opts)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
        fast.FastOptions.from_config(cfg)
        precision.check_precision(*precision.precision_of(cfg))
    except KeyError as e:
        print(f"lazy_train_net.py: error: {e.args[0]}", file=sys.stderr)
        sys.exit(EXIT_BAD_OVERRIDE)
    except ConfigError as e:
        print(f"lazy_train_net.py: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_OVERRIDE)
    try:
        run(main, args, "lazy_train_net.py")
    except LaunchError as e:
        print(f"lazy_train_net.py: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_OVERRIDE)


if __name__ == "__main__":
    cli(sys.argv[1:])
