"""Packaging as a new user meets it: the wheel, its configs, an install used from elsewhere,
repeated imports and registrations, and the message when detectron2 is missing."""

from __future__ import annotations

import ast
import email
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import gcnet_d2
from tests.testing import QUICKSTART_NAME as QUICKSTART
from tests.testing import R50_GC as ROW
from tests.testing import REPO, python_env, run_python

_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "datasets", "output", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
)


def checkout_files(dest: Path) -> None:
    """Copy what a fresh clone would hold (tracked + untracked, not ignored) to ``dest``, so
    that building never writes build/ or *.egg-info into the working tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=_IGNORED)
        return
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_code(code: str, cwd: Path, pythonpath: str | None = None) -> str:
    """The stdout of ``code`` in a child Python in ``cwd``, with ``pythonpath`` as its only
    ``PYTHONPATH`` (none: the environment's own install); it must succeed."""
    env = python_env(pythonpath=pythonpath)
    result = run_python(["-c", textwrap.dedent(code)], env, timeout=600, cwd=cwd)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .`` of a copy of the checkout."""
    root = tmp_path_factory.mktemp("pkg")
    checkout_files(root / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--disable-pip-version-check", "-w", str(root / "dist"), str(root / "src")],
        check=True,
        capture_output=True,
    )
    (built,) = (root / "dist").glob("gcnet_d2-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_package_and_every_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"gcnet_d2-{gcnet_d2.__version__}.dist-info"
        meta = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
    configs = {n.removeprefix("gcnet_d2/configs/") for n in names if n.endswith(".yaml")}
    in_checkout = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert configs == in_checkout
    assert len([c for c in configs if c.startswith("gcnet/")]) == 19
    assert {"Base-GCNet-RCNN-FPN.yaml", "Base-GCNet-Cascade-RCNN-FPN.yaml", QUICKSTART} <= configs
    assert all(n.startswith("gcnet_d2/configs/") for n in names if n.endswith(".yaml"))
    modules = {str(p.relative_to(REPO)) for p in (REPO / "gcnet_d2").rglob("*.py")}
    assert modules <= names
    # no tests/, demo/, tools/, benchmarks/ (development only), ...
    assert {n.split("/")[0] for n in names} == {"gcnet_d2", dist_info}

    # One version (gcnet_d2.__version__), a Python floor, detectron2 left to the user, dev tools.
    assert meta["Version"] == gcnet_d2.__version__
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist")
    assert not [r for r in requires if "detectron2" in r or "@" in r or "git+" in r]
    dev = [r.split(";")[0].strip() for r in requires if 'extra == "dev"' in r]
    assert any(r.startswith("pytest") for r in dev) and any(r.startswith("ruff") for r in dev)


def test_development_packages_are_not_installed() -> None:
    """setup.py's ``find_packages(include=...)`` keeps to gcnet_d2 and its subpackages: the
    importable benchmarks/ folder (development only) and tests/ stay in the checkout."""
    from setuptools import find_packages

    found = re.search(r"find_packages\(include=(\[[^\]]*\])\)", (REPO / "setup.py").read_text())
    assert found, "setup.py lists its packages with find_packages(include=[...])"
    packages = find_packages(where=str(REPO), include=ast.literal_eval(found.group(1)))
    assert (REPO / "benchmarks" / "__init__.py").is_file()
    assert "gcnet_d2" in packages
    assert [p for p in packages if p.split(".")[0] != "gcnet_d2"] == []


@pytest.mark.slow
def test_installed_copy_used_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    """pip-install the wheel into its own folder and, with only that folder on PYTHONPATH and
    the current directory elsewhere, resolve packaged configs, build a table row's model and
    run the demo script on the quick-start config."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from gcnet_d2.data import generate_synthetic_coco
    from tests.tools.test_demo import TINY

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check"]
        + ["--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    images = generate_synthetic_coco(tmp_path / "ds", num_train=1, num_val=1, height=96, width=128)
    cfg = gcnet_d2.get_config(QUICKSTART)
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("weights")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [
        "demo.py", "--config-file", "<packaged>", "--input", images["val"].image_root,
        "--output", "out", "--confidence-threshold", "0.0",
        "MODEL.WEIGHTS", str(tmp_path / "weights.pth"), *TINY,
    ]  # fmt: skip
    out = run_code(
        f"""
        import json, runpy, sys
        from pathlib import Path
        import gcnet_d2
        from detectron2.modeling import build_model
        site = Path({str(site)!r}).resolve()
        assert Path(gcnet_d2.__file__).resolve().is_relative_to(site), gcnet_d2.__file__
        row = gcnet_d2.get_config_file({ROW!r})
        assert Path(row).resolve().is_relative_to(site), row
        cfg = gcnet_d2.get_config({ROW!r})
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        args = {args!r}
        args[2] = gcnet_d2.get_config_file({QUICKSTART!r})
        sys.argv = args
        try:
            runpy.run_path({str(REPO / "demo" / "demo.py")!r}, run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        print(json.dumps({{"configs": gcnet_d2.list_configs(),
                          "backbone": type(model.backbone.bottom_up).__name__}}))
        """,
        cwd=elsewhere,
        pythonpath=str(site),
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["configs"]) == 20 and QUICKSTART in report["configs"]
    assert report["backbone"] == "ResNet"
    assert sorted(os.listdir(elsewhere / "out")) == ["000000.jpg"]


def installed_editable() -> bool:
    try:
        direct_url = metadata.distribution("gcnet_d2").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return False
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


@pytest.mark.slow
def test_repeated_imports_and_other_backbones(tmp_path: Path) -> None:
    """The environment's own install, from another directory: an editable one (pip install
    -e .) resolves to this checkout; reloads and a second full import never raise "already
    registered"; another project's backbones live alongside gcnet_d2's, registered before or
    after it; a clash with one of gcnet_d2's names is still refused."""
    out = run_code(
        f"""
        import importlib, sys
        from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
        from detectron2.modeling.backbone import Backbone

        class OtherBackbone(Backbone):
            def forward(self, x):
                return {{}}

        @BACKBONE_REGISTRY.register()
        def build_other_project_backbone(cfg, input_shape):
            return OtherBackbone()

        import gcnet_d2
        print(gcnet_d2.__file__)
        print(gcnet_d2.get_config_file({ROW!r}))
        import gcnet_d2.modeling.backbone as gc_backbone
        importlib.reload(gc_backbone)
        importlib.reload(gcnet_d2.modeling)
        importlib.reload(gcnet_d2)
        for name in [m for m in sys.modules if m == "gcnet_d2" or m.startswith("gcnet_d2.")]:
            del sys.modules[name]
        import gcnet_d2  # a second, complete import

        @BACKBONE_REGISTRY.register()
        def build_later_project_backbone(cfg, input_shape):
            return OtherBackbone()

        names = set(dict(BACKBONE_REGISTRY).keys())
        assert {{"build_other_project_backbone", "build_later_project_backbone",
                 "build_resnet_fpn_backbone", "build_gcnet_resnet_backbone",
                 "build_gcnet_resnet_fpn_backbone"}} <= names, names
        cfg = gcnet_d2.get_config({ROW!r})
        cfg.MODEL.DEVICE = "cpu"
        assert type(build_backbone(cfg)).__name__ == "MMDetFPN"  # gcnet_d2 FPN
        cfg.MODEL.BACKBONE.NAME = "build_other_project_backbone"
        assert type(build_backbone(cfg)) is OtherBackbone

        def build_gcnet_resnet_backbone(cfg, input_shape):
            return OtherBackbone()

        from gcnet_d2.registry import register_once
        try:
            register_once(BACKBONE_REGISTRY)(build_gcnet_resnet_backbone)
        except KeyError as e:
            assert "build_gcnet_resnet_backbone" in str(e) and "gcnet_d2" in str(e), e
        else:
            raise AssertionError("a clashing registration went through")
        """,
        cwd=tmp_path,
    )
    module, config = out.split()[:2]
    if installed_editable():
        assert Path(module).resolve() == REPO / "gcnet_d2" / "__init__.py"
        assert Path(config).resolve() == REPO / "configs" / ROW
    else:  # a regular install: its own packaged copy
        assert Path(config).resolve().parent.parent == Path(module).resolve().parent / "configs"


@pytest.mark.slow
def test_missing_detectron2_is_explained(tmp_path: Path) -> None:
    code = f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        sys.modules["detectron2"] = None  # what `import detectron2` meets when it is absent
        try:
            import gcnet_d2
        except ImportError as e:
            print(e)
        else:
            raise AssertionError("gcnet_d2 imported without detectron2")
        """
    message = run_code(code, cwd=tmp_path)
    assert "gcnet_d2 needs detectron2" in message
    assert "detectron2.readthedocs.io" in message and "scripts/setup_env.sh" in message
