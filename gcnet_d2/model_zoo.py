"""Find gcnet_d2's YAML configs from a checkout or from an installed package."""

from __future__ import annotations

from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from .config import add_gcnet_config


def configs_root() -> Path:
    """The folder holding ``Base-*.yaml`` and ``gcnet/``: packaged copy first, then checkout."""
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


def list_configs() -> list[str]:
    """Relative names of every shipped leaf config, e.g. ``gcnet/mask_rcnn_r50_...yaml``."""
    root = configs_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml") if "Base-" not in p.name)


def get_config_file(name: str) -> str:
    """Absolute path of a shipped config, e.g. ``get_config_file("gcnet/<row>.yaml")``."""
    path = configs_root() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"gcnet_d2 ships no config {name!r}; available: {', '.join(list_configs())}"
        )
    return str(path)


def get_config(name: str) -> CfgNode:
    """A detectron2 config with gcnet_d2's keys, merged from the shipped config ``name``."""
    cfg = add_gcnet_config(get_cfg())
    cfg.merge_from_file(get_config_file(name), allow_unsafe=False)
    return cfg
