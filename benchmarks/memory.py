"""Peak memory of one call: the CUDA allocator's peak, or on the CPU live tensor bytes and RSS."""

from __future__ import annotations

import contextlib
import gc
import re
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


class LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak of the bytes of tensor storages allocated inside the mode and still alive.

    Every op's outputs are inspected; a storage that is not one of the op's inputs' (views and
    in-place results share their input's) is a fresh allocation, counted until it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {
            t.untyped_storage()._cdata
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in seen or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def _proc_kib(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"{field_name}:\s+(\d+)\s+kB", text)
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict]:
    """``{"bytes": growth of peak RSS}`` over the block (Linux; None where unsupported)."""
    out: dict = {"bytes": None}
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
        before = _proc_kib("VmRSS")
    except OSError:
        before = None
    yield out
    peak = _proc_kib("VmHWM")
    if before is not None and peak is not None:
        out["bytes"] = (peak - before) * 1024


def measure_peak_memory(fn: Callable[[], object], device: torch.device, rss: bool = True) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"cuda_peak_bytes": torch.cuda.max_memory_allocated(device) - base}
    out = {}
    tracker = LiveTensorBytes()
    with tracker:
        fn()
    out["live_peak_bytes"] = tracker.peak
    if rss:
        with peak_rss_growth() as growth:
            fn()
        out["rss_peak_growth_bytes"] = growth["bytes"]
    return out
