"""What a test does when a package it needs is not installed: skip on a developer's machine,
fail under CI, naming the package.

CI (``.ci/run``, with the ``CI`` environment variable set) installs every test requirement
(requirements-dev.txt: onnx, onnxscript, onnxruntime; requirements-parity.txt: mmdet, mmcv),
so a skip there would only hide a broken install step and let the suite pass on less than it
claims. Two pieces, one policy:

- :func:`require` is how a test module or test asks for an optional package: the module, or
  a skip (locally) / a failure (under CI) whose message names it;
- the hooks below fail, under CI, any skip that reached the report another way (a stray
  ``pytest.importorskip``, a ``skipif``), except a CUDA-only test's
  (:data:`CUDA_SKIP_REASON`): CI has no GPU.

Torch-free on purpose: tests/test_missing_packages.py loads it as a plugin
(``-p tests.missing_packages``) in a child pytest where a package is hidden.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

#: The one skip reason CI accepts (tests/test_cuda.py, tests/export/test_export_cuda.py).
CUDA_SKIP_REASON = "needs a CUDA GPU"


def under_ci() -> bool:
    """True when the ``CI`` environment variable is set (non-empty), as ``.ci/run`` runs."""
    return bool(os.environ.get("CI"))


def missing(message: str) -> NoReturn:
    """Skip the calling test or module with ``message``; under CI fail with it instead."""
    if under_ci():
        pytest.fail(f"CI is set and a test requirement is missing: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str, why: str = "requirements-dev.txt") -> ModuleType:
    """``import module`` for a test (at module level or inside a test); when the package is
    not installed, :func:`missing` names it and ``why`` (where it comes from). A package that
    is installed but fails to import (a broken install) raises its own error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != module.split(".")[0]:
            raise
    missing(f"{module} is not installed ({why})")  # outside the handler: no chained traceback


def _refuse_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under CI, turn a skip ``report`` into a failure unless it is a CUDA-only test's."""
    if not (under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if CUDA_SKIP_REASON in reason:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"CI is set and this was skipped ({reason}): under CI only CUDA-only tests "
        f"({CUDA_SKIP_REASON!r}) may skip; install what it needs"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    _refuse_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    _refuse_skip(report)
    return report
