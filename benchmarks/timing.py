"""Paired, interleaved timing of variants, and distribution-free statistics of the ratios."""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Result:
    """Times of one variant (seconds per call) and, when it is not the base, paired ratios."""

    name: str
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time, all threads
    cpu_ratios: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def summary(self) -> dict:
        out = {
            "median_s": self.median,
            "p25_s": quantile(self.times, 0.25),
            "p75_s": quantile(self.times, 0.75),
            "min_s": min(self.times),
            "runs": len(self.times),
            "times_s": list(self.times),
        }
        if self.ratios:
            lo, hi = median_ci(self.ratios)
            out.update(
                ratio=statistics.median(self.ratios),
                ratio_p25=quantile(self.ratios, 0.25),
                ratio_p75=quantile(self.ratios, 0.75),
                ratio_ci95=[lo, hi],
            )
        if self.cpu_ratios:
            lo, hi = median_ci(self.cpu_ratios)
            out.update(cpu_ratio=statistics.median(self.cpu_ratios), cpu_ratio_ci95=[lo, hi])
        return out


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (binomial order statistics)."""
    s = sorted(values)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[hi]


class Timer:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.rng = random.Random(seed)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object], repeat: int = 1) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds per call."""
        self.sync()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeat, (time.process_time() - cpu) / repeat

    def compare(
        self,
        variants: dict[str, Callable[[], object]],
        base: str,
        rounds: int,
        warmup: int = 1,
        min_sample_s: float = 0.05,
    ) -> dict[str, Result]:
        """Interleaved rounds; each sample repeats a call enough to last ``min_sample_s``."""
        repeat = {}
        for name, fn in variants.items():
            if warmup == 0:  # the caller has warmed the variants up
                repeat[name] = 1
                continue
            t = min(self.once(fn)[0] for _ in range(warmup))
            repeat[name] = max(1, math.ceil(min_sample_s / max(t, 1e-6)))
        results = {name: Result(name) for name in variants}
        names = list(variants)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(rounds):
                self.rng.shuffle(names)
                gc.collect()
                sample = {n: self.once(variants[n], repeat[n]) for n in names}
                for n in names:
                    results[n].times.append(sample[n][0])
                    results[n].cpu_times.append(sample[n][1])
                    if n != base:
                        results[n].ratios.append(sample[n][0] / sample[base][0])
                        results[n].cpu_ratios.append(sample[n][1] / max(sample[base][1], 1e-9))
        finally:
            if gc_was_enabled:
                gc.enable()
        return results


# --------------------------------------------------------------------------------------
