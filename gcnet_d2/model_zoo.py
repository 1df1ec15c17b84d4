"""Find gcnet_d2's configs, YAML and LazyConfig, from a checkout or from an installed package."""

from __future__ import annotations

import difflib
from pathlib import Path

from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import DictConfig

from .config import add_gcnet_config


def configs_root() -> Path:
    """The folder holding ``Base-*.yaml``, ``common/`` and ``gcnet/``: packaged copy first, then
    checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"gcnet_d2's configs are neither in {packaged} (installed package) nor in {checkout} "
        "(source checkout); reinstall gcnet_d2"
    )


def list_configs(suffix: str = ".yaml") -> list[str]:
    """Relative names of every shipped leaf config, e.g. ``gcnet/mask_rcnn_r50_...yaml``;
    ``suffix=".py"`` lists the LazyConfigs (shared ``common/`` modules left out)."""
    root = configs_root()
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(f"*{suffix}")
        if "Base-" not in p.name
        and p.relative_to(root).parts[0] != "common"
        and "__pycache__" not in p.parts
    )


def get_config_file(name: str) -> str:
    """Absolute path of a shipped config, e.g. ``get_config_file("gcnet/<row>.yaml")``.

    Raises:
        FileNotFoundError: no such config; the message lists the closest shipped names.
    """
    path = configs_root() / name
    if not path.is_file():
        shipped = list_configs(".yaml") + list_configs(".py")
        close = difflib.get_close_matches(name, shipped, n=5, cutoff=0.6)
        hint = (
            f"did you mean: {', '.join(close)}?"
            if close
            else f"gcnet_d2.list_configs() lists the {len(shipped)} shipped ones"
        )
        raise FileNotFoundError(f"gcnet_d2 ships no config {name!r}; {hint}")
    return str(path)


def get_config(name: str) -> CfgNode | DictConfig:
    """A shipped config, as ``detectron2.model_zoo.get_config`` returns one.

    ``"gcnet/<row>.yaml"``: a detectron2 ``CfgNode`` with gcnet_d2's keys.
    ``"gcnet/<row>.py"``: the LazyConfig (``model``, ``dataloader``, ``optimizer``,
    ``lr_multiplier``, ``train``), to ``detectron2.config.instantiate``.
    """
    path = get_config_file(name)
    if name.endswith(".py"):
        return LazyConfig.load(path)
    cfg = add_gcnet_config(get_cfg())
    cfg.merge_from_file(path, allow_unsafe=False)
    return cfg
