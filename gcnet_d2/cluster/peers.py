"""Supervising a multi-process run: a lost or failed peer stops every survivor with one line.

Every process bumps a counter in the process group's TCP store once a second from a thread;
rank 0 watches the others, the others watch rank 0 and read its verdict (so all name the same
rank). A counter still for ``--peer-timeout`` seconds (5 s after a failed collective) or a
store that stops answering (the master lost) is a lost peer. docs/clusters.md has the details
and what torch detects by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch.distributed as dist
from detectron2.utils import comm

from ..errors import one_line
from .resume import continue_command
from .signals import TrainingStopped

__all__ = ["EXIT_PEER_STOPPED", "checkpoint_write", "is_communication_error", "supervise"]

logger = logging.getLogger(__name__)

EXIT_PEER_STOPPED = 3  # a process stopped because a peer was lost or failed
HEARTBEAT_INTERVAL_S = 1.0
SUSPECT_TIMEOUT_S = 5.0  # the peer timeout once a collective has failed here
CHECKPOINT_GRACE_S = 20.0  # the longest a stopping process lets a checkpoint write finish
VERDICT_READ_S = 3.0  # rank 0 keeps the store up this long for the others to read its verdict
FINISH_TIMEOUT_S = 1800.0  # the longest rank 0, done, waits for the others (it hosts the store)


#: This process's training progress, as :class:`.hook.ClusterHook` records it.
progress = SimpleNamespace(iteration=None, output_dir=None, finished=False)


def last_complete_checkpoint(output_dir: str | None) -> str:
    """The checkpoint ``output_dir/last_checkpoint`` names, if it exists, else a description."""
    if not output_dir:
        return "none (no output folder yet)"
    try:
        with open(os.path.join(output_dir, "last_checkpoint"), encoding="utf-8") as f:
            path = os.path.join(output_dir, f.read().strip())
    except OSError:
        return f"none yet in {output_dir}"
    return path if os.path.isfile(path) else f"{path} (named by last_checkpoint, not found here)"


_checkpoint_lock = threading.Lock()


def checkpoint_write() -> threading.Lock:
    """Held while a checkpoint is written: a stopping process waits for it (bounded)."""
    return _checkpoint_lock


def is_communication_error(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it) is a failed collective or store operation."""
    markers = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "c10d")
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, dist.DistError) or (
            isinstance(e, RuntimeError) and any(m in str(e).lower() for m in markers)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


class Verdict(NamedTuple):
    kind: str  # "lost" or "failed"
    ranks: tuple[int, ...]
    detail: str
    hosts: tuple[str, ...] = ()


def _listed(word: str, items: list) -> str:
    """``rank 3`` / ``ranks 3, 5``."""
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"


def _job_store() -> dist.TCPStore | None:
    """The TCP store under the default process group (None with ``file://`` init)."""
    # No public accessor in torch; without this private one nothing is watched.
    store = getattr(dist.distributed_c10d, "_get_default_store", lambda: None)()
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store if isinstance(store, dist.TCPStore) else None


class PeerWatch:
    """Heartbeats and verdicts of one process (see the module docstring)."""

    def __init__(self, program: str, peer_timeout: float, store: dist.TCPStore) -> None:
        self.program, self.peer_timeout = program, peer_timeout
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.address = f"{store.host}:{store.port}"
        client = store.clone()  # a connection of its own: the watcher must not wait behind main
        client.set_timeout(timedelta(seconds=max(5.0, min(peer_timeout, 15.0))))
        self.store = dist.PrefixStore("gcnet_d2/peers/", client)
        self._store_lock = threading.Lock()  # the main thread and the watcher share the client
        self._stop, self._declared = threading.Event(), threading.Event()
        self._suspect = False
        self._seen: dict[int, tuple[int, float]] = {}
        self._finished: set[int] = set()
        self._call("set", f"host/{self.rank}", socket.gethostname())
        self._call("add", f"beat/{self.rank}", 1)
        comm.synchronize()  # every counter exists before anyone reads it
        self._thread = threading.Thread(target=self._run, name="gcnet_d2-peers", daemon=True)
        self._thread.start()

    def _call(self, name: str, *args: Any) -> Any:
        with self._store_lock:
            return getattr(self.store, name)(*args)

    def _verdict(self, kind: str, ranks: tuple[int, ...], detail: str) -> Verdict:
        try:
            hosts = tuple(v.decode() for v in self._call("multi_get", [f"host/{r}" for r in ranks]))
        except Exception:  # noqa: BLE001 - a description only
            hosts = ()
        return Verdict(kind, ranks, detail, hosts)

    def _run(self) -> None:
        previous, failures = time.monotonic(), 0
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            now = time.monotonic()
            # A watcher itself starved of time judges nobody on that round.
            starved, previous = now - previous > 3 * HEARTBEAT_INTERVAL_S + 1.0, now
            try:
                self._call("add", f"beat/{self.rank}", 1)
                verdict = self._check(now, starved)
                failures = 0
            except Exception as e:  # noqa: BLE001 - the store is unreachable
                failures += 1
                if self._stop.is_set() or failures < 2:
                    continue
                detail = (
                    f"the job's store at {self.address} stopped answering ({one_line(e)[:120]})"
                )
                # Rank 0 hosts the store itself; if it fails there, name no rank.
                host = (self.address.rsplit(":", 1)[0],)
                verdict = Verdict("lost", (0,) if self.rank else (), detail, host)
            if verdict is not None:
                self._report_and_exit(verdict)

    def _stale(self, rank: int, count: int, now: float, starved: bool) -> float | None:
        """Seconds ``rank``'s counter has stood still, if past the threshold."""
        seen = self._seen.get(rank)
        if seen is None or seen[0] != count or starved:
            self._seen[rank] = (count, now)
            return None
        threshold = (
            min(self.peer_timeout, SUSPECT_TIMEOUT_S) if self._suspect else self.peer_timeout
        )
        return now - seen[1] if now - seen[1] >= threshold else None

    def _check(self, now: float, starved: bool) -> Verdict | None:
        if self.rank != 0 and self._call("check", ["verdict"]):
            return Verdict(*json.loads(self._call("get", "verdict")))
        watched = [r for r in (range(1, self.world_size) if self.rank == 0 else [0])
                   if r not in self._finished]  # fmt: skip
        counts = self._call("multi_get", [f"beat/{r}" for r in watched]) if watched else []
        lost, longest = [], 0.0
        for r, count in zip(watched, counts, strict=True):
            still = self._stale(r, int(count), now, starved)
            key = f"state/{r}"
            state = (
                None
                if still is None or not self._call("check", [key])
                else self._call("get", key).decode()
            )
            if state == "done":
                self._finished.add(r)
            elif state is not None:
                return self._verdict("failed", (r,), state.removeprefix("failed: "))
            elif still is not None:
                lost, longest = [*lost, r], max(longest, still)
        if lost:
            detail = f"no heartbeat for {longest:.0f} s (process killed or machine down)"
            return self._verdict("lost", tuple(lost), detail)
        return None

    def _publish(self, verdict: Verdict) -> None:
        """Rank 0 shares its verdict and gives the others time to read it (they look once a
        second), so that they name the same rank rather than the store host once it is gone."""
        with contextlib.suppress(Exception):
            self._call("set", "verdict", json.dumps(verdict))
            if set(range(1, self.world_size)) - set(verdict.ranks) - self._finished:
                time.sleep(VERDICT_READ_S)  # someone is left to read it

    def message(self, verdict: Verdict) -> str:
        machines = sorted({r // max(1, comm.get_local_size()) for r in verdict.ranks})
        where = [_listed("machine", machines)]
        hosts = sorted({h for h in verdict.hosts if h})
        where += [_listed("host", hosts)] if hosts else []
        master = "the master, " if 0 in verdict.ranks else ""
        who = f"{_listed('rank', list(verdict.ranks))} ({master}{', '.join(where)})"
        if not verdict.ranks:
            what = f"lost {verdict.detail}"
        elif verdict.kind == "failed":
            what = f"{who} failed: {verdict.detail}"
        else:
            what = f"lost {who}: {verdict.detail}"
        it = progress.iteration
        when = f"at iteration {it}" if it is not None else "before the first iteration"
        when = "after the last iteration" if progress.finished else when
        return (
            f"{self.program}: error (rank {self.rank}): {what} {when}; "
            f"last complete checkpoint: {last_complete_checkpoint(progress.output_dir)}; "
            f"to continue: {continue_command()}"
        )

    def _report_and_exit(self, verdict: Verdict) -> None:
        """The watcher thread ends the process, whatever the main thread is doing."""
        if self.rank == 0:
            self._publish(verdict)
        self._declared.set()
        # Let a checkpoint being written become complete (the write is atomic either way).
        _checkpoint_lock.acquire(timeout=CHECKPOINT_GRACE_S)
        line = self.message(verdict)
        with contextlib.suppress(Exception):
            logger.error(line)
            logging.disable(logging.CRITICAL)  # nothing logged after the line
            logging.shutdown()  # flush the log files
            sys.stdout.flush()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(EXIT_PEER_STOPPED)

    def _wait_if_declared(self, timeout: float = 0) -> None:
        if self._declared.wait(timeout):
            while True:  # the watcher reports and ends the process
                time.sleep(60)

    def failed(self, e: BaseException) -> None:
        """``main`` raised ``e``. A failed collective: let the watcher find the lost peer and
        report it. Otherwise tell the others why this process fails and stop beating."""
        if is_communication_error(e):
            self._suspect = True
            self._wait_if_declared(self.peer_timeout + 2 * SUSPECT_TIMEOUT_S)
        reason = f"{type(e).__name__}: {one_line(e)}"[:300]
        if isinstance(e, SystemExit):
            reason = f"exited with status {e.code} (its log has the reason)"
        self._halt()
        with contextlib.suppress(Exception):
            self._call("set", f"state/{self.rank}", f"failed: {reason}")
            if self.rank == 0:  # the store may die with this process: tell the others now
                self._publish(self._verdict("failed", (0,), reason))

    def finish(self) -> None:
        """``main`` returned: say so; rank 0 waits until every other process has said so."""
        with contextlib.suppress(Exception):
            self._call("set", f"state/{self.rank}", "done")
        keys = [f"state/{r}" for r in range(1, self.world_size)]
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while self.rank == 0 and time.monotonic() < deadline and not self._declared.is_set():
            with contextlib.suppress(Exception):  # the watcher reports a lost store
                if self._call("check", keys) and set(self._call("multi_get", keys)) == {b"done"}:
                    break
            time.sleep(0.2)
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._wait_if_declared()  # the last round found a loss: it reports


def supervise(main_func: Callable[..., Any], program: str, peer_timeout: float, *args: Any) -> Any:
    """``main_func(*args)`` in one process of a multi-process run, watched (module docstring)."""
    store = _job_store() if dist.is_initialized() and dist.get_world_size() > 1 else None
    if store is None:  # one process, or file:// init: nothing to watch through
        return main_func(*args)
    watch = PeerWatch(program, peer_timeout, store)
    try:
        result = main_func(*args)
    except SystemExit as e:
        if e.code in (None, 0) or isinstance(e, TrainingStopped):
            watch.finish()
        else:
            watch.failed(e)
        raise
    except BaseException as e:
        watch.failed(e)
        raise
    watch.finish()
    return result
