"""Install gcnet_d2 with its YAML configs as package data.

detectron2 is a runtime requirement that is deliberately not listed: it is not on PyPI under
its own name and users usually build it from source. ``import gcnet_d2`` says so clearly when
it is missing; ``scripts/setup_env.sh`` installs a working stack on a bare machine.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    text = (HERE / "gcnet_d2" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="gcnet_d2",
    version=read_version(),
    description="GCNet (global context blocks) backbones and configs for Detectron2",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["gcnet_d2", "gcnet_d2.*"]), "gcnet_d2.configs"],
    package_dir={"gcnet_d2.configs": "configs"},
    package_data={"gcnet_d2.configs": ["*.yaml", "*/*.yaml", "*/*.py", "*/*/*.py"]},
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy",
        "pycocotools>=2.0.2",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "Pillow",
        "PyYAML",
    ],
    extras_require={
        "dev": ["pytest>=7", "ruff>=0.5"],
        # ONNX export and its onnxruntime check (tools/export_model.py --format onnx), at the
        # versions verified together (docs/deploy.md); TorchScript and torch.export need none.
        "export": ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.32.0"],
    },
)
