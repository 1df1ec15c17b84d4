"""What torch itself does when a peer of a gloo process group is lost (docs/clusters.md, "What
torch gives and what gcnet_d2 adds").

    .venv/bin/python -m benchmarks.peer_loss [--timeout 10]

Two CPU processes join a gloo group with a process-group timeout of ``--timeout`` seconds;
rank 1 is lost in one of three ways, and rank 0 reports how long until its all-reduce failed
and the error's first line:

- ``killed in collective``: rank 1 is SIGKILLed while rank 0 waits in an all-reduce (its
  sockets are closed by the kernel, as for a crashed process or a killed job step);
- ``killed before collective``: rank 1 is SIGKILLed while rank 0 computes (2 s), then rank 0
  enters the all-reduce;
- ``silent in collective``: rank 1 is SIGSTOPped (alive, sockets open: what a machine that
  loses power or network looks like to its peers) while rank 0 waits in an all-reduce.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CASES = ("killed in collective", "killed before collective", "silent in collective")


def _worker(rank: int, init: str, case: str, timeout: float, queue: mp.Queue) -> None:
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=timeout)
    )
    dist.barrier()
    if rank == 1:
        queue.put(("pid", os.getpid()))
        time.sleep(3600)  # the parent kills or stops this process
    if case == "killed before collective":
        time.sleep(2.0)
    try:
        dist.all_reduce(torch.ones(1))
        queue.put(("result", "all_reduce returned", time.time()))
    except Exception as e:  # noqa: BLE001 - what torch raises is the measurement
        queue.put(("result", f"{type(e).__name__}: {str(e).strip()[:160]}", time.time()))


def measure(case: str, timeout: float, folder: str) -> str:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{folder}/{case.replace(' ', '_')}"
    procs = [ctx.Process(target=_worker, args=(r, init, case, timeout, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    _, pid = queue.get(timeout=120)
    time.sleep(0.5)  # rank 0 is now in its all-reduce (or computing)
    os.kill(pid, signal.SIGSTOP if case.startswith("silent") else signal.SIGKILL)
    lost = time.time()
    try:
        _, what, at = queue.get(timeout=timeout + 60)
        result = f"{at - lost:.1f} s after the loss: {what}"
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join()
    return result


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=10.0, help="process-group timeout (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for case in CASES:
            result = measure(case, args.timeout, folder)
            print(f"{case} (group timeout {args.timeout:g} s): {result}")


if __name__ == "__main__":
    main()
