"""Starting the training processes: torchrun's, an ``srun`` step's, or detectron2's own.

:func:`launch` reads the environment (:func:`.environment.detect_launcher`): under torchrun or
an ``srun`` step every process joins the launcher's group (NCCL on the local rank's GPU, gloo
on the CPU, detectron2's per-machine group, a barrier: what detectron2's spawned workers do);
otherwise detectron2's ``launch`` spawns (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``). An ``srun`` step with one task per node and
``--num-gpus N > 1`` makes each task a machine that spawns N processes. Every multi-process run
is supervised (:func:`.peers.supervise`). docs/clusters.md has the details.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
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

__all__ = ["add_cluster_arguments", "continue_command", "launch", "run"]


#: Process-group timeout: how long a collective may wait for a *live* peer (rank 0 evaluating
#: COCO while the others wait at the barrier). Lost peers are found by the heartbeats.
DEFAULT_DIST_TIMEOUT_MINUTES = 30.0
#: Seconds without a heartbeat after which a peer is lost (5 s once a collective failed).
DEFAULT_PEER_TIMEOUT_S = 30.0


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


def _cuda_device(local_rank: int) -> int:
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if count == 1:  # the launcher gave each task its own GPU (srun --gpus-per-task=1)
        return 0
    raise LaunchError(
        f"local rank {local_rank} but {count} visible GPUs: start one process per GPU "
        "(torchrun --nproc-per-node / srun --ntasks-per-node = GPUs per machine)"
    )


def _check_flags(env: LauncherEnv, num_gpus: int, num_machines: int) -> None:
    if env.world_size % env.local_world_size or (
        env.rank - env.local_rank != env.machine_rank * env.local_world_size
    ):
        raise LaunchError(
            f"{env.describe()}: ranks are not numbered machine by machine; detectron2 needs "
            "ranks k*n .. k*n+n-1 on machine k (SLURM: --distribution=block)"
        )
    asked = []
    if num_gpus not in (1, env.local_world_size):
        asked.append(f"--num-gpus {num_gpus}")
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


def _fresh_store_under_torchrun(env: LauncherEnv, timeout: timedelta) -> tuple[Any, int]:
    """A store of this attempt only, and its port on ``MASTER_ADDR``.

    torchrun's agent hosts one store for all attempts (``TORCHELASTIC_USE_AGENT_STORE``) and
    the process-group keys of an attempt are those of the attempt before it, so a restarted
    worker can read a dead worker's address (pytorch/pytorch#135712). Here rank 0 hosts a new
    store and publishes its port in the agent's store; the others take the published port
    until it answers (a stale one belongs to a process the agent has stopped).
    """
    agent = dist.TCPStore(
        env.master_addr, env.master_port, is_master=False, timeout=timeout, wait_for_workers=False
    )
    _KEEP_ALIVE.append(agent)
    key = f"gcnet_d2/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/process_group_store_port"
    if env.rank == 0:
        server = dist.TCPStore(
            env.master_addr, 0, is_master=True, timeout=timeout, wait_for_workers=False
        )
        agent.set(key, str(server.port))
        return server, server.port
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(agent.get(key))
        try:
            client = dist.TCPStore(
                env.master_addr,
                port,
                is_master=False,
                timeout=timedelta(seconds=3),
                wait_for_workers=False,
            )
        except RuntimeError as e:  # refused: the previous attempt's rank 0, gone
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"no process-group store answers at {env.master_addr}:{port}: {e}"
                ) from None
            time.sleep(0.5)
            continue
        client.set_timeout(timeout)
        return client, port


def _join(env: LauncherEnv, timeout: timedelta, program: str) -> tuple[str, int]:
    """What detectron2's spawned worker does before ``main``, for a process the launcher made.
    Returns the address of the group's store."""
    if torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(_cuda_device(env.local_rank))
    else:
        backend = "gloo"
    print(f"{program}: joining the process group of {env.describe()} ({backend})", flush=True)
    group = {"rank": env.rank, "world_size": env.world_size, "timeout": timeout}
    if env.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store, port = _fresh_store_under_torchrun(env, timeout)
        dist.init_process_group(backend, store=store, **group)
    elif env.launcher == "torchrun":  # rank 0 hosts a store of this attempt at MASTER_PORT
        port = env.master_port
        dist.init_process_group(backend, init_method="env://", **group)
    else:  # SLURM: rank 0 hosts the store at MASTER_PORT or the job's port
        port = env.master_port
        url = f"tcp://{_url_host(env.master_addr)}:{port}"
        dist.init_process_group(backend, init_method=url, **group)
    comm.create_local_process_group(env.local_world_size)
    comm.synchronize()
    return env.master_addr, port


# --- the command that continues a stopped run -----------------------------------------------


def _with_resume(argv: Sequence[str]) -> list[str]:
    """``argv`` (script first) with ``--resume`` right after the script (before the trailing
    ``KEY VALUE`` overrides, which argparse collects as a remainder)."""
    argv = list(argv)
    return argv if "--resume" in argv else [argv[0], "--resume", *argv[1:]]


def _parent_command() -> list[str] | None:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return None
    return [w.decode(errors="replace") for w in words if w]


def continue_command(env: LauncherEnv | None, num_machines: int) -> str:
    """How a person continues this run after a stop: this command with ``--resume``."""
    script_argv = _with_resume(sys.argv)
    if env is not None and env.launcher == "torchrun":
        parent = _parent_command() or []
        if sys.argv[0] in parent:  # torchrun's own command line, with --resume added
            at = parent.index(sys.argv[0])
            command = shlex.join([*parent[:at], *script_argv])
        else:
            command = "torchrun <its options> " + shlex.join(script_argv)
        if env.num_machines > 1:
            command += " (on every machine)"
        left = _restarts_left()
        if left:
            command += f" (torchrun restarts the group itself: {left} restart(s) left)"
        return command
    command = shlex.join([sys.executable, *script_argv])
    if env is not None:  # SLURM
        return f"srun {command} (resubmit the job script with --resume)"
    if num_machines > 1:
        command += " (on every machine, each with its own --machine-rank)"
    return command


def _restarts_left() -> int:
    try:
        left = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) - int(
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        )
    except ValueError:
        return 0
    return max(0, left)


# --- launch ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _d2_default_dist_url() -> str:
    return default_argument_parser().get_default("dist_url")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_address(dist_url: str) -> tuple[str | None, int | None]:
    m = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)/?", dist_url or "")
    return (m.group(1), int(m.group(2))) if m else (None, None)


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
    """Run ``main_func(*args)`` in every training process (see the module docstring).

    Raises :class:`LaunchError` for a launcher environment or flags that cannot be used. A
    worker stopped for a lost peer or by a signal ends this process with the worker's status.
    """
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    program = program or os.path.basename(sys.argv[0])
    timeout = timedelta(minutes=dist_timeout_minutes)
    env = detect_launcher()
    one_task_per_node = (
        env is not None
        and env.launcher == "slurm"
        and env.local_world_size == 1
        and num_gpus_per_machine > 1
    )
    if env is not None and not one_task_per_node:
        _check_flags(env, num_gpus_per_machine, num_machines)
        if env.world_size == 1:
            return main_func(*args)
        store = _join(env, timeout, program)
        command = continue_command(env, env.num_machines)
        watch = peers.WatchConfig(program, peer_timeout, command, *store, env.local_world_size)
        return peers.supervise(main_func, watch, *args)

    if one_task_per_node:  # each SLURM task is one machine that spawns its processes
        assert env is not None
        if num_machines not in (1, env.world_size):
            raise LaunchError(
                f"started by {env.describe()} (one task per node), but --num-machines "
                f"{num_machines}: leave it out"
            )
        num_machines, machine_rank = env.world_size, env.rank
        if dist_url in (None, "auto", _d2_default_dist_url()):
            dist_url = f"tcp://{_url_host(env.master_addr)}:{env.master_port}"
    world_size = num_gpus_per_machine * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise LaunchError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    command = continue_command(env if one_task_per_node else None, num_machines)
    store = _store_address(dist_url)  # (None, None): file:// init, nothing to watch through
    watch = peers.WatchConfig(program, peer_timeout, command, *store, num_gpus_per_machine)
    signals.install("forward")  # the spawned workers stop at an iteration boundary
    try:
        return d2_launch(
            functools.partial(peers.supervise, main_func, watch),
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
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
    return launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        dist_timeout_minutes=args.dist_timeout,
        peer_timeout=args.peer_timeout,
        program=program,
    )
