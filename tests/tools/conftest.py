"""Fixtures of the cluster tests (test_cluster.py, test_preemption.py): the children of a
test, the generated dataset, and one uninterrupted 2-process reference run for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testing import PYTHON, free_port, synthetic_root
from tests.tools.cluster_runs import Children, child_env, train_argv


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    kids = Children(tmp_path)
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> str:
    return synthetic_root(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, synth: str) -> Path:
    """One uninterrupted ``--num-gpus 2`` run; its final weights are what every test expects."""
    out = tmp_path_factory.mktemp("reference")
    url = f"tcp://127.0.0.1:{free_port()}"  # not "auto": a port no other xdist worker takes
    argv = [PYTHON, *train_argv("train_net.py", out, "--num-gpus", "2", "--dist-url", url)]
    kids = Children(out)
    try:
        proc = kids.start("reference", argv, child_env(synth))
        assert kids.wait(proc, 300) == 0, kids.tail(proc)
    finally:
        kids.close()
    return out / "model_final.pth"
