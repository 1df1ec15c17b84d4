"""tests/missing_packages.py: with onnxruntime hidden, a test that needs it skips locally and
fails under CI naming it; any other skip fails under CI too, a CUDA-only test's does not.

A child pytest (torch-free, well under a second) runs three tiny test files with the policy as
a plugin and a conftest that makes ``import onnxruntime`` fail as it does when the package is
not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.missing_packages import CUDA_SKIP_REASON
from tests.testing import REPO, python_env

FILES = {
    # onnxruntime is "not installed" for the whole child run
    "conftest.py": 'import sys\nsys.modules["onnxruntime"] = None\n',
    "test_needs_ort.py": """
        from tests.missing_packages import require

        ort = require("onnxruntime", "the `export` extra")

        def test_runs_a_session():
            assert ort.InferenceSession
        """,
    # a skip that bypasses require(): the hooks catch it
    "test_stray_skip.py": """
        import pytest

        def test_stray_importorskip():
            pytest.importorskip("onnxruntime")
        """,
    "test_cuda_only.py": f"""
        import pytest

        @pytest.mark.skipif(True, reason={CUDA_SKIP_REASON!r})
        def test_on_a_gpu():
            raise AssertionError("never runs")
        """,
}


def run_child(tmp_path: Path, ci: str) -> tuple[int, str]:
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    args = ["-m", "pytest", "-p", "tests.missing_packages", "-p", "no:cacheprovider", "-q"]
    args += ["-rA", "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)]
    env = {k: v for k, v in python_env(CI=ci).items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout + proc.stderr


def summary(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_ci_fails_a_missing_package_and_names_it(tmp_path: Path):
    code, output = run_child(tmp_path, ci="true")
    assert code == 1, output
    assert re.match(r"1 failed, 1 skipped, 1 error in ", summary(output)), output
    assert re.search(
        r"ERROR test_needs_ort\.py - Failed: CI is set and a test requirement is missing: "
        r"onnxruntime is not installed \(the `export` extra\)",
        output,
    ), output
    assert "FAILED test_stray_skip.py::test_stray_importorskip" in output
    assert "this was skipped (Skipped: could not import 'onnxruntime'" in output
    assert re.search(rf"SKIPPED \[1\] test_cuda_only\.py:\d+: {CUDA_SKIP_REASON}", output)
    assert str(REPO) in python_env()["PYTHONPATH"]  # the child imported this checkout's policy


def test_locally_the_same_run_skips(tmp_path: Path):
    code, output = run_child(tmp_path, ci="")
    assert code == 0, output
    assert re.match(r"3 skipped in ", summary(output)), output
    assert "onnxruntime is not installed (the `export` extra)" in output
