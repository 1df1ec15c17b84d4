"""Helpers shared by gcnet_d2's tests: paths, tiny training overrides, train_net.py
subprocesses, the shipped table configs, documented commands, randomised weights."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

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
    "MODEL.DEVICE", "cpu",
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


def table_config_names() -> list[str]:
    """The 19 GCNet table configs shipped under configs/gcnet/."""
    import gcnet_d2

    return [n for n in gcnet_d2.list_configs() if n.startswith("gcnet/")]


def documented_commands(script: str) -> list[list[str]]:
    """The arguments of every ```bash line in README.md, docs/*.md, tools/README.md and
    benchmarks/README.md that runs ``script``."""
    commands = []
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in [*docs, REPO / "tools" / "README.md", REPO / "benchmarks" / "README.md"]:
        if not doc.is_file():
            continue
        blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                for i, word in enumerate(words):
                    if word.endswith(script):
                        args = words[i + 1 :]
                        ends = [j for j, w in enumerate(args) if w in ("&&", "||", "|", ";")]
                        commands.append(args[: ends[0]] if ends else args)
    return commands


def randomize(
    module: torch.nn.Module, std: float = 0.2, conv_std: float | None = None
) -> torch.nn.Module:
    """Non-trivial values everywhere: zero-initialised convs, norm affines and statistics.

    Parameters ~ N(0, std) (``conv_std`` for conv weights and biases, when given); norm
    weights get +1; running statistics and FrozenBN's buffer affine are drawn around theirs.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_conv = "conv" in name and "norm" not in name
            p.normal_(0, conv_std if conv_std is not None and is_conv else std)
            if name.endswith("norm.weight"):
                p.add_(1.0)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("norm.weight"):  # FrozenBN keeps its affine as buffers
                b.uniform_(0.5, 1.5)
            elif name.endswith("norm.bias"):
                b.normal_(0, 0.2)
    return module
