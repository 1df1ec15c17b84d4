"""pytest setup for gcnet_d2's tests (CPU only, small inputs); shared helpers: tests/testing.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Up to 2 torch threads per test process; under pytest-xdist the cores are shared out among
# the workers (2 workers on 2 cores: one thread each, no oversubscription).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

# Under CI a skip for a missing package fails the run (tests/missing_packages.py).
from tests.missing_packages import (  # noqa: E402
    pytest_make_collect_report,  # noqa: F401
    pytest_runtest_makereport,  # noqa: F401
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def no_tf32() -> object:
    """TF32 off for the CUDA comparisons (cuDNN's is on by default), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


_deselected = 0


def pytest_deselected(items: list) -> None:
    global _deselected
    _deselected += len(items)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist's controller: add up what its workers deselected (they collect)."""
    global _deselected
    _deselected += getattr(node, "workeroutput", {}).get("deselected", 0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run whose tests were all deselected (``-m "not slow"`` on a folder of slow tests, or
    ``-m slow`` on one without) passed: pytest's exit status 5 ("no tests collected") is kept
    for a run that found no tests at all."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller decides
        workeroutput["deselected"] = _deselected
    elif exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and _deselected:
        session.exitstatus = pytest.ExitCode.OK
