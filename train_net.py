#!/usr/bin/env python
"""Train or evaluate gcnet_d2 models with detectron2's trainer and COCOEvaluator.

    python train_net.py --config-file configs/gcnet/<row>.yaml --num-gpus 8
    python train_net.py --config-file configs/gcnet/<row>.yaml --eval-only MODEL.WEIGHTS <file>

Same flags as detectron2's tools/train_net.py (``--resume``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, trailing ``KEY VALUE`` overrides). Without CUDA,
``--num-gpus N`` starts N CPU processes over gloo and ``MODEL.DEVICE`` becomes ``cpu``.

Started by torchrun or inside an ``srun`` step, each process joins the launcher's group
instead of spawning (:mod:`gcnet_d2.cluster`; docs/clusters.md). A lost machine or process stops
the others within a minute with one line naming it, the iteration, the last complete
checkpoint and the command that continues (exit status 3). ``--resume`` may always be passed
(nothing to resume: trains from the start), and a restarted job resumes by itself.
``--checkpoint-minutes M`` adds time-based checkpoints; ``--peer-timeout`` /
``--dist-timeout`` set how long a silent peer / a collective may take. SIGUSR1 or SIGTERM
stops every process at the same iteration after a complete checkpoint; under SLURM a SIGUSR1
also requeues the job (exit 0), otherwise the exit status is 143.

Configs are read with ``yaml.safe_load`` only and checkpoints without unpickling code. A bad
config, checkpoint or dataset, or an unwritable OUTPUT_DIR, prints one ``train_net.py: error:``
line and exits with status 2 (docs/safety.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import detectron2.utils.comm as comm
import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

import gcnet_d2  # noqa: F401  (registers the backbones and the synthetic datasets)
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.cluster import add_cluster_arguments, run
from gcnet_d2.config_loading import load_config
from gcnet_d2.engine import GCNetTrainer, write_results
from gcnet_d2.errors import KNOWN_ERRORS, one_line, quiet_known_errors
from gcnet_d2.io import check_output_dir

EXIT_KNOWN_ERROR = 2


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from file + overrides, with gcnet_d2's keys; CPU when CUDA is absent."""
    # YAML read with safe_load only (Python tags refused); bad keys/values raise ConfigError.
    cfg = load_config(args.config_file, args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gcnet_d2")
    quiet_known_errors()
    return cfg


def main(args: argparse.Namespace) -> OrderedDict:
    cfg = setup(args)
    if args.eval_only:
        model = GCNetTrainer.build_model(cfg)
        GCNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = GCNetTrainer.test(cfg, model)
    else:
        trainer = GCNetTrainer(cfg, checkpoint_minutes=getattr(args, "checkpoint_minutes", 0))
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # EvalHook keeps the last evaluation here; train() returns it only with EXPECTED_RESULTS.
        results = getattr(trainer, "_last_eval_results", None)
    results = OrderedDict(results or {})
    if comm.is_main_process() and results:
        verify_results(cfg, results)
        write_results(cfg.OUTPUT_DIR, results)
    return results


def main_or_exit(args: argparse.Namespace) -> OrderedDict:
    """``main``; a known error (bad config, checkpoint, dataset, OUTPUT_DIR) prints one line
    and exits with status 2. Other exceptions keep their traceback."""
    try:
        return main(args)
    except KNOWN_ERRORS as e:
        rank = f" (rank {comm.get_rank()})" if comm.get_world_size() > 1 else ""
        print(f"train_net.py: error{rank}: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_KNOWN_ERROR)


def cli(argv: list[str] | None = None) -> None:
    args = add_cluster_arguments(default_argument_parser()).parse_args(argv)
    print("Command Line Args:", args)
    try:
        run(main_or_exit, args, "train_net.py")
    except KNOWN_ERRORS as e:  # the launcher's environment or flags (LaunchError)
        print(f"train_net.py: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_KNOWN_ERROR)
    except ProcessExitedException as e:
        if e.exit_code == EXIT_KNOWN_ERROR:  # the worker printed its one-line error
            sys.exit(EXIT_KNOWN_ERROR)
        raise


if __name__ == "__main__":
    cli()
