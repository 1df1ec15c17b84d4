"""A training sampler that can start further along its stream, for exact resumes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Wraps a (per-process, infinite) training sampler so that it can start further along.

    ``skip(n)`` makes the next iteration start after the first ``n`` indices the wrapped
    sampler yields for this process. The wrapped sampler's ``_seed`` (detectron2's training
    samplers keep it there) is exposed as :attr:`seed` so a checkpoint can restore it.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self._skip = 0

    @property
    def seed(self) -> int | None:
        seed = getattr(self.sampler, "_seed", None)
        return int(seed) if seed is not None else None

    def set_seed(self, seed: int) -> None:
        if hasattr(self.sampler, "_seed"):
            self.sampler._seed = int(seed)

    def skip(self, num_indices: int) -> None:
        if num_indices < 0:
            raise ValueError(f"cannot skip a negative number of indices ({num_indices})")
        self._skip = int(num_indices)

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        if self._skip:
            next(itertools.islice(it, self._skip - 1, None), None)  # consume skip indices
        yield from it
