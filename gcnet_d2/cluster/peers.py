"""Supervising a multi-process run: a lost or failed peer stops every survivor with one line.

What torch gives (measured, docs/clusters.md): gloo fails a collective at once when a peer's
process dies (connection reset), with a raw traceback naming no rank; a peer that is silent
without closing its sockets (a machine gone, a stopped process), or one lost while the others
are not in a collective, is noticed only at the process-group timeout (30 min here); torchrun's
agent sees its own node's workers exit, not a peer elsewhere. :func:`supervise` adds:

- heartbeats: every process bumps a counter in the process group's TCP store (hosted by rank
  0's process) once a second from a thread with its own connection; rank 0 watches everyone,
  the others watch rank 0 and its verdict. A counter still for ``--peer-timeout`` seconds (5 s
  once this process saw a collective fail), or a store that stops answering (the master lost),
  is a lost peer. A watcher itself starved of time judges nobody on that round;
- one verdict, shared through the store so every survivor names the same rank; each lets a
  checkpoint being written finish (bounded), prints one last line naming the rank, machine,
  host, iteration (:data:`progress`), the last complete checkpoint and the command that
  continues, and exits with :data:`EXIT_PEER_STOPPED`.

A process that finishes waits (rank 0) or is waited for, so one that ends first is not taken
for a lost one. With ``--dist-url file://`` (no TCP store) nothing is watched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, NamedTuple

import torch.distributed as dist
from detectron2.utils import comm

from ..errors import one_line
from .signals import TrainingStopped

__all__ = [
    "EXIT_PEER_STOPPED",
    "WatchConfig",
    "checkpoint_write",
    "is_communication_error",
    "last_complete_checkpoint",
    "progress",
    "supervise",
]

logger = logging.getLogger(__name__)

#: Exit status of a process stopped because a peer was lost or failed.
EXIT_PEER_STOPPED = 3
HEARTBEAT_INTERVAL_S = 1.0
#: Peer timeout once a collective has failed in this process (strong evidence of a loss).
SUSPECT_TIMEOUT_S = 5.0
#: The longest a stopping process waits for a checkpoint being written to be complete.
CHECKPOINT_GRACE_S = 20.0
#: The longest rank 0 waits for the others to read its verdict before it exits.
VERDICT_ACK_S = 3.0
#: The longest rank 0, done, waits for the others to be done (it hosts the store).
FINISH_TIMEOUT_S = 1800.0


class WatchConfig(NamedTuple):
    program: str
    peer_timeout: float
    continue_command: str
    store_host: str | None
    store_port: int | None
    local_world_size: int


# --- what the report says: iteration and checkpoint -----------------------------------------


class _Progress:
    iteration: int | None = None
    max_iter: int | None = None
    output_dir: str | None = None
    finished: bool = False

    def describe(self) -> str:
        if self.finished:
            return "after the last iteration"
        if self.iteration is None:
            return "before the first iteration"
        return f"at iteration {self.iteration}"


#: This process's training progress, as :class:`.hook.ClusterHook` records it.
progress = _Progress()


def last_complete_checkpoint(output_dir: str | None) -> str:
    """The checkpoint ``output_dir/last_checkpoint`` names, if it exists, else a description."""
    if not output_dir:
        return "none (no output folder yet)"
    try:
        with open(os.path.join(output_dir, "last_checkpoint"), encoding="utf-8") as f:
            name = f.read().strip()
    except OSError:
        return f"none yet in {output_dir}"
    path = os.path.join(output_dir, name)
    return path if os.path.isfile(path) else f"{path} (named by last_checkpoint, not found here)"


_checkpoint_lock = threading.Lock()


@contextlib.contextmanager
def checkpoint_write() -> Iterator[None]:
    """Held while a checkpoint is written: a stopping process waits for it (bounded)."""
    with _checkpoint_lock:
        yield


def is_communication_error(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a failed collective or store operation."""
    markers = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "c10d")
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, dist.DistError):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in markers):
            return True
        e = e.__cause__ or e.__context__
    return False


# --- verdicts ---------------------------------------------------------------------------------


class Verdict(NamedTuple):
    kind: str  # "lost" or "failed"
    ranks: tuple[int, ...]
    detail: str
    hosts: tuple[str, ...] = ()


def _listed(word: str, items: list) -> str:
    """``rank 3`` / ``ranks 3, 5``."""
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"


def _who(verdict: Verdict, local_world_size: int) -> str:
    machines = sorted({r // max(1, local_world_size) for r in verdict.ranks})
    where = [_listed("machine", machines)]
    hosts = sorted({h for h in verdict.hosts if h})
    if hosts:
        where.append(_listed("host", hosts))
    master = "the master, " if 0 in verdict.ranks else ""
    return f"{_listed('rank', list(verdict.ranks))} ({master}{', '.join(where)})"


# --- the watch ------------------------------------------------------------------------------


class PeerWatch:
    """Heartbeats and verdicts of one process (see the module docstring)."""

    def __init__(self, config: WatchConfig, store: dist.Store, rank: int, world_size: int):
        self.config, self.store, self.rank, self.world_size = config, store, rank, world_size
        self._store_lock = threading.Lock()  # the main thread and the watcher share the client
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._verdict: Verdict | None = None
        self._verdict_ready = threading.Event()
        self._main_waiting = False
        self._reporting = False
        self._suspect = False
        self._seen: dict[int, tuple[int, float]] = {}
        self._finished: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="gcnet_d2-peers", daemon=True)

    # -- setup --

    @classmethod
    def start(cls, config: WatchConfig) -> PeerWatch | None:
        if config.store_host is None or config.store_port is None:
            logger.info("No TCP store (file:// init): lost peers are not watched")
            return None
        rank, world_size = dist.get_rank(), dist.get_world_size()
        token = [secrets.token_hex(8) if rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # a fresh key space for this attempt
        client = dist.TCPStore(
            config.store_host,
            config.store_port,
            is_master=False,
            timeout=timedelta(seconds=max(5.0, min(config.peer_timeout, 15.0))),
            wait_for_workers=False,
        )
        store = dist.PrefixStore(f"gcnet_d2/peers/{token[0]}/", client)
        store.set(f"host/{rank}", socket.gethostname())
        store.add(f"beat/{rank}", 1)
        comm.synchronize()  # every counter exists before anyone reads it
        watch = cls(config, store, rank, world_size)
        watch._thread.start()
        return watch

    # -- store access --

    def _call(self, name: str, *args: Any) -> Any:
        with self._store_lock:
            return getattr(self.store, name)(*args)

    def _state(self, rank: int) -> str | None:
        key = f"state/{rank}"
        return self._call("get", key).decode() if self._call("check", [key]) else None

    def _hosts(self, ranks: tuple[int, ...]) -> tuple[str, ...]:
        try:
            return tuple(v.decode() for v in self._call("multi_get", [f"host/{r}" for r in ranks]))
        except Exception:  # noqa: BLE001 - a description only
            return ()

    # -- the watcher thread --

    def _run(self) -> None:
        previous = time.monotonic()
        failures = 0
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            now = time.monotonic()
            starved = now - previous > 3 * HEARTBEAT_INTERVAL_S + 1.0
            previous = now
            try:
                self._call("add", f"beat/{self.rank}", 1)
                check = self._check_rank0 if self.rank == 0 else self._check
                verdict = check(now, starved)
                failures = 0
            except Exception as e:  # noqa: BLE001 - the store is unreachable
                if self._stop.is_set():
                    return
                failures += 1
                if failures < 2:
                    continue
                store = f"{self.config.store_host}:{self.config.store_port}"
                detail = f"the job's store at {store} stopped answering ({one_line(e)[:120]})"
                # Rank 0 hosts the store itself; if it fails there, name no rank.
                ranks = (0,) if self.rank != 0 else ()
                verdict = Verdict("lost", ranks, detail, (self.config.store_host or "",))
            if verdict is not None:
                self._declare(verdict)
                return

    def _threshold(self) -> float:
        if self._suspect:
            return min(self.config.peer_timeout, SUSPECT_TIMEOUT_S)
        return self.config.peer_timeout

    def _stale(self, rank: int, count: int, now: float, starved: bool) -> float | None:
        """Seconds ``rank``'s counter has stood still, if past the threshold."""
        seen = self._seen.get(rank)
        if seen is None or seen[0] != count or starved:
            self._seen[rank] = (count, now)
            return None
        still = now - seen[1]
        return still if still >= self._threshold() else None

    def _check_rank0(self, now: float, starved: bool) -> Verdict | None:
        others = [r for r in range(1, self.world_size) if r not in self._finished]
        if not others:
            return None
        counts = [int(v) for v in self._call("multi_get", [f"beat/{r}" for r in others])]
        lost, failed, still_for = [], [], 0.0
        for r, count in zip(others, counts, strict=True):
            still = self._stale(r, count, now, starved)
            if still is None:
                continue
            state = self._state(r)
            if state == "done":
                self._finished.add(r)
            elif state is not None:
                failed.append((r, state))
            else:
                lost.append(r)
                still_for = max(still_for, still)
        if failed:
            r, state = failed[0]
            return Verdict("failed", (r,), state.removeprefix("failed: "), self._hosts((r,)))
        if lost:
            ranks = tuple(lost)
            detail = f"no heartbeat for {still_for:.0f} s (process killed or machine down)"
            return Verdict("lost", ranks, detail, self._hosts(ranks))
        return None

    def _check(self, now: float, starved: bool) -> Verdict | None:
        if self._call("check", ["verdict"]):
            verdict = Verdict(*json.loads(self._call("get", "verdict")))
            self._call("add", "verdict_ack", 1)
            return verdict
        if 0 in self._finished:
            return None
        still = self._stale(0, int(self._call("get", "beat/0")), now, starved)
        if still is None:
            return None
        state = self._state(0)
        if state == "done":
            self._finished.add(0)
            return None
        if state is not None:
            return Verdict("failed", (0,), state.removeprefix("failed: "), self._hosts((0,)))
        detail = f"no heartbeat for {still:.0f} s (process killed or machine down)"
        return Verdict("lost", (0,), detail, self._hosts((0,)))

    # -- verdict and report --

    def _publish(self, verdict: Verdict) -> None:
        """Rank 0 shares its verdict and waits (bounded) until the survivors have read it, so
        that they name the same rank rather than the store host once rank 0 is gone."""
        gone = set(verdict.ranks) | self._finished
        survivors = len([r for r in range(1, self.world_size) if r not in gone])
        with contextlib.suppress(Exception):
            self._call("set", "verdict", json.dumps(verdict))
            deadline = time.monotonic() + VERDICT_ACK_S
            while time.monotonic() < deadline and int(self._call("add", "verdict_ack", 0)) < (
                survivors
            ):
                time.sleep(0.1)

    def _declare(self, verdict: Verdict) -> None:
        if self.rank == 0:
            self._publish(verdict)
        with self._lock:
            if self._verdict is None:
                self._verdict = verdict
            main_waiting = self._main_waiting
            self._verdict_ready.set()
        if not main_waiting:
            self._report_and_exit()

    def message(self, verdict: Verdict) -> str:
        who = _who(verdict, self.config.local_world_size) if verdict.ranks else ""
        if not verdict.ranks:
            what = f"lost {verdict.detail}"
        elif verdict.kind == "failed":
            what = f"{who} failed: {verdict.detail}"
        else:
            what = f"lost {who}: {verdict.detail}"
        checkpoint = last_complete_checkpoint(progress.output_dir)
        return (
            f"{self.config.program}: error (rank {self.rank}): {what} {progress.describe()}; "
            f"last complete checkpoint: {checkpoint}; to continue: {self.config.continue_command}"
        )

    def _report_and_exit(self) -> None:
        with self._lock:
            already = self._reporting
            self._reporting = True
        if already:  # the other thread is reporting and will end the process
            while True:
                time.sleep(60)
        assert self._verdict is not None
        # Let a checkpoint being written become complete (the write is atomic either way).
        _checkpoint_lock.acquire(timeout=CHECKPOINT_GRACE_S)
        line = self.message(self._verdict)
        with contextlib.suppress(Exception):
            logger.error(line)
        logging.disable(logging.CRITICAL)  # nothing logged after the line
        with contextlib.suppress(Exception):
            logging.shutdown()  # flush the log files
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(EXIT_PEER_STOPPED)

    # -- called by the main thread --

    def on_exception(self, e: BaseException) -> None:
        """``main`` raised ``e``. A failed collective: wait for the watcher to find the lost
        peer and report it (the process ends there). Otherwise publish the failure."""
        if is_communication_error(e):
            with self._lock:
                self._main_waiting = True
                self._suspect = True
            wait = self.config.peer_timeout + 2 * SUSPECT_TIMEOUT_S
            if self._verdict_ready.wait(wait):
                self._report_and_exit()
            with self._lock:
                self._main_waiting = False
        self.failed(f"{type(e).__name__}: {one_line(e)}"[:300])

    def failed(self, reason: str) -> None:
        """This process fails: tell the others, stop beating."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self._call("set", f"state/{self.rank}", f"failed: {reason}")
            if self.rank == 0:  # the store may die with this process: tell the others now
                self._publish(Verdict("failed", (0,), reason, self._hosts((0,))))
        self._thread.join(timeout=5)

    def finish(self) -> None:
        """``main`` returned: say so; rank 0 waits until every other process has said so."""
        with contextlib.suppress(Exception):
            self._call("set", f"state/{self.rank}", "done")
        if self.rank == 0:
            keys = [f"state/{r}" for r in range(1, self.world_size)]
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while time.monotonic() < deadline and not self._verdict_ready.is_set():
                try:
                    if self._call("check", keys) and all(
                        v == b"done" for v in self._call("multi_get", keys)
                    ):
                        break
                except Exception:  # noqa: BLE001 - the watcher reports a lost store
                    pass
                time.sleep(0.2)
            if self._verdict_ready.is_set():  # the watcher is reporting; it ends the process
                while True:
                    time.sleep(60)
        self._stop.set()
        self._thread.join(timeout=5)


def supervise(main_func: Callable[..., Any], config: WatchConfig, *args: Any) -> Any:
    """``main_func(*args)`` in one process of a multi-process run, watched (module docstring)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return main_func(*args)
    watch = PeerWatch.start(config)
    if watch is None:
        return main_func(*args)
    try:
        result = main_func(*args)
    except SystemExit as e:
        if e.code in (None, 0) or isinstance(e, TrainingStopped):
            watch.finish()
        else:
            watch.failed(f"exited with status {e.code} (its log has the reason)")
        raise
    except BaseException as e:
        watch.on_exception(e)
        raise
    watch.finish()
    return result
