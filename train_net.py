#!/usr/bin/env python
"""Train or evaluate gcnet_d2 models with detectron2's trainer and COCOEvaluator.

    python train_net.py --config-file configs/gcnet/<row>.yaml --num-gpus 8
    python train_net.py --config-file configs/gcnet/<row>.yaml --eval-only MODEL.WEIGHTS <file>

Same flags as detectron2's tools/train_net.py (``--resume``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, trailing ``KEY VALUE`` overrides). Without CUDA,
``--num-gpus N`` starts N CPU processes over gloo and ``MODEL.DEVICE`` becomes ``cpu``.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import detectron2.utils.comm as comm
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

import gcnet_d2
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.engine import GCNetTrainer, write_results


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from file + overrides, with gcnet_d2's keys; CPU when CUDA is absent."""
    cfg = gcnet_d2.add_gcnet_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
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
        trainer = GCNetTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # EvalHook keeps the last evaluation here; train() returns it only with EXPECTED_RESULTS.
        results = getattr(trainer, "_last_eval_results", None)
    results = OrderedDict(results or {})
    if comm.is_main_process() and results:
        verify_results(cfg, results)
        write_results(cfg.OUTPUT_DIR, results)
    return results


def cli(argv: list[str] | None = None) -> None:
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
