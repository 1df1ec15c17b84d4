"""Starting the training processes: join torchrun's or an ``srun`` step's group as detectron2's
spawned workers would, or let detectron2's ``launch`` spawn; every multi-process run is
supervised (:func:`.peers.supervise`). docs/clusters.md has the details."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from ..errors import LaunchError
from . import peers, signals
from .environment import LauncherEnv, detect_launcher
from .resume import resume_policy

__all__ = ["add_cluster_arguments", "launch", "run"]

DEFAULT_DIST_TIMEOUT_MINUTES = 30.0  # a collective waits this long for a *live* peer
DEFAULT_PEER_TIMEOUT_S = 30.0  # this long without a heartbeat, a peer is lost


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--checkpoint-minutes``, ``--dist-timeout`` and ``--peer-timeout`` to detectron2's
    argument parser."""
    for flag, default, unit, text in (
        ("--checkpoint-minutes", 0.0, "MINUTES", "also checkpoint once this many minutes have "
         "passed since the last checkpoint (0: only every SOLVER.CHECKPOINT_PERIOD / "
         "train.checkpointer.period iterations)"),
        ("--dist-timeout", DEFAULT_DIST_TIMEOUT_MINUTES, "MINUTES", "process-group timeout: "
         "the longest a collective waits for a live peer (default %(default)g)"),
        ("--peer-timeout", DEFAULT_PEER_TIMEOUT_S, "SECONDS", "a peer without a heartbeat for "
         "this long is lost and the run stops (default %(default)g; 5 s once a collective "
         "has failed)"),
    ):  # fmt: skip
        parser.add_argument(flag, type=float, default=default, metavar=unit, help=text)
    return parser


def _check_flags(env: LauncherEnv, num_gpus: int, num_machines: int) -> None:
    if env.world_size % env.local_world_size or (
        env.rank - env.local_rank != env.machine_rank * env.local_world_size
    ):
        raise LaunchError(
            f"{env.describe()}: ranks are not numbered machine by machine; detectron2 needs "
            "ranks k*n .. k*n+n-1 on machine k (SLURM: --distribution=block)"
        )
    asked = [f"--num-gpus {num_gpus}"] if num_gpus not in (1, env.local_world_size) else []
    if num_machines not in (1, env.num_machines):
        asked.append(f"--num-machines {num_machines}")
    if asked:
        raise LaunchError(
            f"started by {env.describe()}, but {' and '.join(asked)} asks for another layout; "
            f"under {env.launcher} leave --num-gpus / --num-machines out (the launcher starts "
            "the processes), or set GCNET_LAUNCHER=spawn to let detectron2 spawn them"
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_KEEP_ALIVE: list[Any] = []  # store clients that must live as long as the process


def _fresh_store_under_torchrun(env: LauncherEnv, timeout: timedelta) -> dist.Store:
    """A process-group store of this attempt only: torchrun's agent store keeps the previous
    attempt's keys, so a restarted worker could read a dead worker's address
    (pytorch/pytorch#135712). Rank 0 hosts it and publishes its port in the agent's store; the
    others retry the published port until it answers (a stale one is a stopped process's)."""
    address, options = env.master_addr, {"timeout": timeout, "wait_for_workers": False}
    agent = dist.TCPStore(address, env.master_port, **options)
    _KEEP_ALIVE.append(agent)
    key = f"gcnet_d2/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/process_group_store_port"
    if env.rank == 0:
        server = dist.TCPStore(address, 0, is_master=True, **options)
        agent.set(key, str(server.port))
        return server
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(agent.get(key))
        try:
            client = dist.TCPStore(address, port, timeout=timedelta(seconds=3))
            client.set_timeout(timeout)
            return client
        except RuntimeError as e:  # refused: the previous attempt's rank 0, gone
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"no process-group store answers at {address}:{port}: {e}"
                ) from None
            time.sleep(0.5)


def _join(env: LauncherEnv, timeout: timedelta, program: str) -> None:
    """What detectron2's spawned worker does before ``main``, for a process the launcher made:
    NCCL on the local rank's GPU (or the only visible one) or gloo, the per-machine group."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        count = torch.cuda.device_count()
        if env.local_rank >= count > 1:
            raise LaunchError(
                f"local rank {env.local_rank} but {count} visible GPUs: start one process per "
                "GPU (torchrun --nproc-per-node / srun --ntasks-per-node = GPUs per machine)"
            )
        torch.cuda.set_device(env.local_rank if env.local_rank < count else 0)
    print(f"{program}: joining the process group of {env.describe()} ({backend})", flush=True)
    group = {"rank": env.rank, "world_size": env.world_size, "timeout": timeout}
    if env.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = _fresh_store_under_torchrun(env, timeout)
        dist.init_process_group(backend, store=store, **group)
    else:  # rank 0 hosts a store of this attempt at MASTER_PORT (SLURM: or the job's port)
        url = f"tcp://{_url_host(env.master_addr)}:{env.master_port}"
        dist.init_process_group(backend, init_method=url, **group)
    comm.create_local_process_group(env.local_world_size)
    comm.synchronize()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    *,
    dist_timeout_minutes: float = DEFAULT_DIST_TIMEOUT_MINUTES,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT_S,
    program: str | None = None,
) -> Any:
    """Run ``main_func(*args)`` in every training process (see the module docstring); a
    :class:`LaunchError` for a launcher environment or flags that cannot be used."""
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    program = program or os.path.basename(sys.argv[0])
    timeout = timedelta(minutes=dist_timeout_minutes)
    watched = functools.partial(peers.supervise, main_func, program, peer_timeout)
    env = detect_launcher()
    if env is not None and not (
        env.launcher == "slurm" and env.local_world_size == 1 < num_gpus_per_machine
    ):
        _check_flags(env, num_gpus_per_machine, num_machines)
        if env.world_size == 1:
            return main_func(*args)
        _join(env, timeout, program)
        return watched(*args)
    if env is not None:  # srun, one task per node, --num-gpus N: each task spawns N processes
        if num_machines not in (1, env.world_size):
            raise LaunchError(
                f"started by {env.describe()} (one task per node), but --num-machines "
                f"{num_machines}: leave it out"
            )
        num_machines, machine_rank = env.world_size, env.rank
        if dist_url in (None, "auto", default_argument_parser().get_default("dist_url")):
            dist_url = f"tcp://{_url_host(env.master_addr)}:{env.master_port}"
    if num_gpus_per_machine * num_machines == 1:
        return main_func(*args)
    if dist_url == "auto" and num_machines != 1:
        raise LaunchError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
    signals.install("forward")  # the spawned workers stop at an iteration boundary
    try:
        gpus = num_gpus_per_machine
        return d2_launch(watched, gpus, num_machines, machine_rank, dist_url, args, timeout)
    except ProcessExitedException as e:
        if e.exit_code in (peers.EXIT_PEER_STOPPED, signals.EXIT_STOPPED):  # said in one line
            raise SystemExit(e.exit_code) from None
        raise
    finally:
        signals.install("default")


def run(
    main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace, program: str
) -> Any:
    """The cluster code's entry, what ``train_net.py`` and ``lazy_train_net.py`` call:
    ``main_func(args)`` in every training process (:func:`launch`, with the command line's
    launcher flags), ``args.resume`` set for a restarted job (:func:`.resume.resume_policy`)."""
    args = resume_policy(args, program)
    flags = (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, (args,))
    timeouts = {"dist_timeout_minutes": args.dist_timeout, "peer_timeout": args.peer_timeout}
    return launch(main_func, *flags, **timeouts, program=program)
