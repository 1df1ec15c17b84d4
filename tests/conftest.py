"""Shared helpers for gcnet_d2's tests (CPU only, small inputs)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def table_config_names() -> list[str]:
    """The 19 GCNet table configs shipped under configs/gcnet/."""
    import gcnet_d2

    return [n for n in gcnet_d2.list_configs() if n.startswith("gcnet/")]


def documented_commands(script: str) -> list[list[str]]:
    """The arguments of every ```bash line in README.md and docs/*.md that runs ``script``."""
    commands = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
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
