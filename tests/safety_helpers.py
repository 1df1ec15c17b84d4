"""Shared pieces of the reliability tests: tiny training overrides, train_net.py subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
QUICKSTART = str(REPO / "configs/quickstart/mask_rcnn_r50_fpn_r16_gcb_synthetic.yaml")
SYNCBN_GC = str(REPO / "configs/gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml")
HOOKED = str(REPO / "tests/train_net_hooked.py")

# A Mask R-CNN R-50-FPN small enough for a few CPU iterations a second: 64 px images, narrow
# ResNet stages, small heads. The architecture (GC blocks, FPN, heads) is unchanged.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
]  # fmt: skip


def synthetic_root(tmp_path_factory) -> str:  # noqa: ANN001 - pytest's TempPathFactory
    """One generated quick-start dataset per test session (generation is idempotent)."""
    from gcnet_d2.data import generate_synthetic_coco

    root = tmp_path_factory.getbasetemp() / "gcnet_synthetic"
    generate_synthetic_coco(root)
    return str(root)


def subprocess_env(synth_root: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GCNET_SYNTH_ROOT=synth_root,
        OMP_NUM_THREADS="1",  # same kernels in every run; no oversubscription on 2 cores
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
