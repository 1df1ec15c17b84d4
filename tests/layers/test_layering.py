"""The plain layers know nothing of the speed-ups: no module of gcnet_d2/layers imports
gcnet_d2.fast (the "are we tracing / exporting" question comes from gcnet_d2.utils.tracing,
which imports nothing of gcnet_d2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gcnet_d2

PACKAGE = Path(gcnet_d2.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(("gcnet_d2", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


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
