"""Safe config loading: :func:`load_config` reads YAML configs without running code.

Detectron2's ``CfgNode.merge_from_file`` defaults to ``allow_unsafe=True``: a YAML file whose
plain ``yaml.safe_load`` fails on a Python tag (``!!python/object/apply:os.system`` ...) is read
again with ``yaml.unsafe_load``, which runs the tagged call. :func:`load_config` reads the file
and all its ``_BASE_`` files with ``yaml.safe_load`` only and refuses such a file with a
:class:`~gcnet_d2.errors.ConfigError` naming the file, the tag and its line; Python
(LazyConfig) files are refused too, since loading them executes them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from .config import add_gcnet_config
from .errors import ConfigError
from .fast import FastOptions
from .modeling.backbone import validate_gcnet_config
from .precision import check_precision

__all__ = ["load_config", "validate_config"]


def _describe_yaml_error(path: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if isinstance(e, yaml.constructor.ConstructorError):
        tag = re.search(r"tag '([^']+)'", str(e))
        tag_text = tag.group(1) if tag else "a non-standard tag"
        if "python" in tag_text:
            return (
                f"config {path}: refused: it contains the YAML tag '{tag_text}'{where}, which "
                "would construct Python objects (run code) when loaded; gcnet_d2 reads configs "
                "with yaml.safe_load only. Replace the tagged value by a plain value"
            )
        return f"config {path}: unsupported YAML tag '{tag_text}'{where}"
    return f"config {path}: not valid YAML: {problem}{where}"


def _failing_file(e: yaml.YAMLError, default: str) -> str:
    """The file a YAML error comes from (a _BASE_ file, possibly), from its mark."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    name = getattr(mark, "name", None)
    return name if name and not str(name).startswith("<") else default


def _check_file(path: str) -> None:
    if path.endswith(".py"):
        raise ConfigError(
            f"config {path}: Python (LazyConfig) files run code when loaded; gcnet_d2 reads "
            "YAML configs only"
        )
    if not os.path.exists(path):
        raise ConfigError(f"config {path}: no such file")
    if not os.path.isfile(path):
        raise ConfigError(f"config {path}: not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            top = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(_describe_yaml_error(path, e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot be read ({e})") from None
    if not isinstance(top, dict):
        found = "an empty file" if top is None else f"a {type(top).__name__}"
        raise ConfigError(
            f"config {path}: expected a mapping of config keys at the top level, found {found}"
        )


def validate_config(cfg: CfgNode) -> None:
    """Raise :class:`ConfigError` for gcnet_d2 backbone values the model builder would reject,
    for ``FAST`` switches :func:`gcnet_d2.fast.apply` would reject and for an unknown
    ``TEST.PRECISION``."""
    FastOptions.from_config(cfg)
    try:
        if str(cfg.MODEL.BACKBONE.NAME).startswith("build_gcnet_"):
            validate_gcnet_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_precision(cfg.TEST.PRECISION, "TEST.PRECISION")
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH must be >= 1, got {cfg.SOLVER.IMS_PER_BATCH}")


def load_config(
    config_file: str | None, opts: Sequence[str] = (), *, validate: bool = True
) -> CfgNode:
    """detectron2's default config + gcnet_d2's keys, merged from ``config_file`` and ``opts``.

    The file and its ``_BASE_`` files are read with ``yaml.safe_load`` only; ``opts`` are
    ``KEY VALUE`` pairs (values parsed as Python literals, never evaluated as code).

    Raises:
        ConfigError: unsafe or malformed file, unknown key, wrong value type or invalid value.
    """
    cfg = add_gcnet_config(get_cfg())
    if config_file:
        _check_file(config_file)
        try:
            # allow_unsafe=False: a Python tag raises instead of falling back to unsafe_load,
            # for the file and every _BASE_ file it pulls in.
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except yaml.YAMLError as e:
            raise ConfigError(_describe_yaml_error(_failing_file(e, config_file), e)) from None
        except OSError as e:
            raise ConfigError(f"config {config_file}: cannot be read ({e.strerror or e})") from None
        except (KeyError, ValueError, TypeError, AssertionError, AttributeError) as e:
            raise ConfigError(f"config {config_file}: {_strip(e)}") from None
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"command-line override: {_strip(e)}") from None
    if validate:
        try:
            validate_config(cfg)
        except ConfigError as e:
            source = f"config {config_file}" if config_file else "config"
            source += " with command-line overrides" if opts else ""
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def _strip(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip().strip("'\"") or type(e).__name__
