"""What a checkpoint needs beyond weights, optimizer and schedule for a resume to lose nothing.

Detectron2 resumes the model, optimizer, LR schedule and iteration count, but restarts the
training data stream from its first image and re-seeds the random generators, so a resumed run
sees other images, flips and ROI samples than the run it continues. ``GCNetTrainer`` and
``lazy_train_net.py``'s trainer add to their checkpoint state (:func:`add_resume_state`; all
of it tensors, ints and lists, readable with ``weights_only=True``):

- the sampler's shuffling seed, and on resume the sampler skips the
  ``iterations done x images per process`` indices already consumed
  (:class:`gcnet_d2.data.samplers.ResumableSampler`);
- the torch (and current CUDA device's), numpy and Python RNG states at the checkpoint
  (:func:`capture_rng_state`); with several processes, every process's (the trainer's
  :class:`gcnet_d2.cluster.ClusterHook` gathers them into the main process's checkpoint).

``DATALOADER.NUM_WORKERS 0``, same thread count: the resumed run computes what the
uninterrupted one computes, so final weights are bit-identical (tested with one process, and
with two after a SIGKILL under ``torchrun --max-restarts`` or a SIGUSR1 and a requeue). With
loader workers the data order is still exact but augmentation randomness (drawn in the
workers) restarts. A checkpoint resumed with another number of processes keeps the data order;
each process's RNGs are then re-seeded from (seed, rank, iteration). With aspect-ratio grouping
over images of both orientations the skipped count can be off by the images held in a
half-filled group.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = [
    "add_resume_state",
    "capture_rng_state",
    "capture_training_state",
    "restore_rng_state",
    "restore_training_state",
    "rng_kept",
]


class _SeededSampler(Protocol):
    """What the resume state needs of a sampler (``gcnet_d2.data.samplers.ResumableSampler``)."""

    @property
    def seed(self) -> int | None: ...

    def set_seed(self, seed: int) -> None: ...

    def skip(self, num_indices: int) -> None: ...


logger = logging.getLogger(__name__)


def _cuda_rng_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU, and the current CUDA device's once CUDA is in use), numpy and Python RNG
    states as tensors, ints and floats (weights_only-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    extra = {"cuda": torch.cuda.get_rng_state()} if _cuda_rng_in_use() else {}
    return {
        **extra,
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """The RNGs as they were when the block started, whatever it draws (an evaluation whose
    data loader draws a seed must not make a resumed run diverge)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def add_resume_state(trainer: Any, state: dict, sampler: _SeededSampler | None) -> dict:
    """``state`` (a detectron2 trainer's ``state_dict()``) with what a resume needs beyond it,
    under ``gcnet_resume``: this process's RNGs and the sampler's seed, and every process's
    RNGs when :class:`gcnet_d2.cluster.ClusterHook` gathered them at this iteration
    (``trainer.rank_rng_states``)."""
    state["gcnet_resume"] = capture_training_state(sampler)
    gathered = getattr(trainer, "rank_rng_states", None)
    if gathered is not None and gathered["iteration"] == trainer.iter:
        state["gcnet_resume"]["rng_per_rank"] = gathered["states"]
    return state


def capture_training_state(sampler: _SeededSampler | None) -> dict[str, Any]:
    """What :func:`restore_training_state` needs; called when a checkpoint is written."""
    return {
        "rng": capture_rng_state(),
        "sampler_seed": sampler.seed if sampler is not None else None,
        "world_size": comm.get_world_size(),
    }


def restore_training_state(
    state: dict[str, Any] | None,
    sampler: _SeededSampler | None,
    *,
    iterations_done: int,
    images_per_process: int,
    seed: int,
) -> None:
    """Put the data stream and RNGs where the checkpointed run had them.

    ``iterations_done`` iterations of ``images_per_process`` images each have been consumed.
    Called on resume, before the first training step (the data iterator must not exist yet).
    """
    if sampler is not None:
        if state is not None and state.get("sampler_seed") is not None:
            sampler.set_seed(state["sampler_seed"])
        sampler.skip(iterations_done * images_per_process)
        logger.info(
            "Resuming the training data stream after %d iterations (%d images per process)",
            iterations_done,
            images_per_process,
        )
    if state is None:
        logger.warning(
            "The checkpoint has no RNG state (written without gcnet_d2's trainer): random "
            "augmentation and sampling restart from the seed"
        )
        return
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == comm.get_world_size():
        restore_rng_state(per_rank[comm.get_rank()])
    elif comm.get_world_size() == 1 and state.get("world_size", 1) == 1:
        restore_rng_state(state["rng"])
    else:
        # This process's RNG state is not in the checkpoint (another number of processes, or
        # written without ClusterHook): give every process a fresh, distinct stream
        # instead of replaying the first iterations' random draws.
        mixed = np.random.SeedSequence([max(seed, 0), comm.get_rank(), iterations_done])
        seed_all_rng(int(mixed.generate_state(1)[0]) % 2**31)
