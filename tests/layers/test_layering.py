"""The plain layers know nothing of the speed-ups: no module of gcnet_d2/layers imports
gcnet_d2.fast (the "are we tracing / exporting" question comes from gcnet_d2.utils.tracing,
which imports nothing of gcnet_d2)."""

from __future__ import annotations

from pathlib import Path

import pytest

import gcnet_d2
from tests.testing import imported_modules

PACKAGE = Path(gcnet_d2.__file__).parent


def test_the_import_reader_resolves_relative_imports():
    layers = PACKAGE / "layers" / "nms.py"
    assert "gcnet_d2.utils.tracing" in imported_modules(layers)


@pytest.mark.parametrize("path", sorted((PACKAGE / "layers").glob("*.py")), ids=lambda p: p.name)
def test_layers_do_not_import_fast(path):
    names = imported_modules(path)
    bad = {n for n in names if n == "gcnet_d2.fast" or n.startswith("gcnet_d2.fast.")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_tracing_module_imports_nothing_of_gcnet_d2():
    names = imported_modules(PACKAGE / "utils" / "tracing.py")
    assert not any(n.startswith("gcnet_d2") for n in names)
