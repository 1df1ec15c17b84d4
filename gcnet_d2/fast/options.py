"""``FastOptions``: which speed-ups :func:`gcnet_d2.fast.apply` switches on, read from a config.

A YAML config sets them in its ``FAST`` node (``add_gcnet_config`` adds it), a LazyConfig in a
top-level ``fast`` dict with the same names in lower case (absent: the defaults). Errors name
the key as the config spells it (``FAST.LEAN_FPN``, ``fast.lean_fpn``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from detectron2.config import CfgNode

from ..config import MOVED_KEYS, moved_key_message
from ..errors import ConfigError

__all__ = ["FastOptions"]

#: LazyConfig ``fast`` names of before the rename -> their names now.
_RENAMED_LAZY = {"fold_norms": "fold_frozen_norms"}


@dataclass(frozen=True)
class FastOptions:
    """The speed-up switches; the fields are ``FAST``'s keys in lower case."""

    fold_frozen_norms: bool = True
    conv1x1_gemm: bool = True
    parallel_roi_align: bool = True
    lean_fpn: bool = True
    compile: str = ""  # a torch.compile backend for model.backbone, or "" (eager)
    channels_last: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name), f"FastOptions.{f.name}")

    @classmethod
    def from_config(cls, cfg: object) -> FastOptions:
        """The options of ``cfg``: a detectron2 ``CfgNode`` (its ``FAST`` node), a LazyConfig
        (its ``fast`` entry; the defaults without one) or a mapping of option names.

        Raises:
            ConfigError: an unknown or moved key, or a value of the wrong type, named as the
                config spells it.
        """
        if isinstance(cfg, CfgNode):
            _refuse_moved_keys(cfg)
            if "FAST" not in cfg:
                raise ConfigError(
                    "the config has no FAST node (the speed-up switches): build it with "
                    "gcnet_d2.add_gcnet_config"
                )
            values = {str(k).lower(): v for k, v in cfg.FAST.items()}
            return cls._from_values(values, lambda name: f"FAST.{name.upper()}")
        if not isinstance(cfg, Mapping) and not _is_dict_config(cfg):
            raise TypeError(
                "fast options: expected FastOptions, a detectron2 CfgNode, a LazyConfig or a "
                f"mapping, got {type(cfg).__name__}"
            )
        if "fast" in cfg or (_is_dict_config(cfg) and "model" in cfg):  # a LazyConfig
            if "fast" not in cfg:
                return cls()
            cfg = cfg["fast"]
            if not (isinstance(cfg, Mapping) or _is_dict_config(cfg)):
                raise ConfigError(
                    f"fast must be a dict of speed-up switches, got {type(cfg).__name__}"
                )
        values = {str(k): cfg[k] for k in cfg}
        return cls._from_values(values, lambda name: f"fast.{name}")

    @classmethod
    def _from_values(cls, values: dict[str, object], spell: Callable[[str], str]) -> FastOptions:
        known = [f.name for f in fields(cls)]
        for name in values:
            if name in known:
                continue
            if name in _RENAMED_LAZY:
                raise ConfigError(f"{spell(name)} was renamed to {spell(_RENAMED_LAZY[name])}")
            raise ConfigError(
                f"{spell(name)}: unknown speed-up switch; known: "
                + ", ".join(spell(k) for k in known)
            )
        for name, value in values.items():
            _check_value(name, value, spell(name))
        return cls(**values)


def _is_dict_config(cfg: object) -> bool:
    try:
        from omegaconf import DictConfig
    except ImportError:  # pragma: no cover - detectron2 depends on omegaconf
        return False
    return isinstance(cfg, DictConfig)


def _refuse_moved_keys(cfg: CfgNode) -> None:
    """A speed-up switch set under its old ``MODEL.GCNET`` name (in code, after the merge
    checks): the same one line as the config loader's."""
    gcnet = cfg.get("MODEL", {}).get("GCNET", {})
    for old in MOVED_KEYS:
        if old.rsplit(".", 1)[1] in gcnet:
            raise ConfigError(moved_key_message(old))


def _check_value(name: str, value: object, key: str) -> None:
    if name == "compile":
        if not isinstance(value, str):
            raise ConfigError(
                f"{key} must be a torch.compile backend name or '' (off), got {value!r}"
            )
        if value:
            _check_backend(value, key)
    elif not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_backend(name: str, key: str) -> None:
    import torch._dynamo

    if name not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(
            f"{key}: unknown torch.compile backend {name!r}; "
            f"available: {torch._dynamo.list_backends()}"
        )
