"""Normalisation choices of the GCNet recipes, on top of detectron2's ``get_norm`` names.

mmdetection trains the table's non-SyncBN rows with ``norm_eval=True, requires_grad=True``:
batch-norm statistics stay frozen but the affine scale and shift still learn. Detectron2's
``FrozenBN`` freezes both, so this module adds ``FrozenStatsBN`` for that recipe. It also maps
``SyncBN`` to ``naiveSyncBN`` on the CPU, where torch's SyncBatchNorm cannot synchronise
(it syncs CUDA tensors only) but detectron2's all-reduce based one works over gloo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

# Names detectron2's get_norm resolves by itself, plus ours.
D2_NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")
BACKBONE_NORMS = (*D2_NORMS, "FrozenStatsBN")


class FrozenStatsBatchNorm2d(nn.Module):
    """Batch norm with frozen running statistics and a trainable affine (mmdet ``norm_eval``).

    State-dict keys are those of ``nn.BatchNorm2d`` minus ``num_batches_tracked``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def resolve_norm(name: str, device: str = "cpu") -> str | Callable[[int], nn.Module]:
    """What to pass as ``norm=`` to detectron2's blocks for the norm name ``name``.

    Raises:
        ValueError: for a name outside :data:`BACKBONE_NORMS` (callers prefix the argument or
            config key it came from).
    """
    if name not in BACKBONE_NORMS and name != "":
        raise ValueError(f"unknown normalisation {name!r}; expected one of {list(BACKBONE_NORMS)}")
    if name == "FrozenStatsBN":
        return FrozenStatsBatchNorm2d
    if name == "SyncBN" and not str(device).startswith("cuda"):
        return "naiveSyncBN"
    return name


def frozen_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``norm(x) == x * scale + shift`` per channel.

    Valid only where :func:`has_frozen_affine` holds. Lets :mod:`gcnet_d2.fast` fold the norm
    into ``conv3`` instead of making another pass over the feature map.
    """
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    return scale, shift


def has_frozen_affine(norm: nn.Module | None, training: bool) -> bool:
    """Whether ``norm`` is a fixed per-channel affine in this mode (frozen or eval-mode BN)."""
    if isinstance(norm, FrozenBatchNorm2d | FrozenStatsBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and not training
        and norm.running_mean is not None
        and norm.affine
    )


__all__ = [
    "BACKBONE_NORMS",
    "FrozenStatsBatchNorm2d",
    "frozen_affine",
    "has_frozen_affine",
    "resolve_norm",
]
