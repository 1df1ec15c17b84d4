"""YAML configs are read with a safe loader: Python tags are refused, the payload never runs.

Detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load`` when ``safe_load`` meets a
Python tag; the control test shows that path really runs the payload (a marker file appears),
the others that gcnet_d2's ``load_config`` and ``train_net.py`` refuse the same file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import get_cfg

import gcnet_d2
from gcnet_d2.config_loading import load_config
from gcnet_d2.errors import ConfigError
from tests.testing import QUICKSTART, python_env, run_python


def _evil_yaml(path: Path, marker: Path, base: str | None = None) -> Path:
    lines = [f'_BASE_: "{base}"'] if base else []
    lines += [
        "MODEL:",
        "  DEVICE: cpu",
        f'  WEIGHTS: !!python/object/apply:builtins.open ["{marker}", "w"]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_detectron2_default_loader_runs_the_payload(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = _evil_yaml(tmp_path / "evil.yaml", marker)
    with pytest.raises(Exception):  # noqa: B017 - runs the call, then fails on the value type
        get_cfg().merge_from_file(str(evil))
    assert marker.exists()  # so the threat is real


def test_python_tag_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = _evil_yaml(tmp_path / "evil.yaml", marker)
    with pytest.raises(ConfigError) as info:
        load_config(str(evil))
    message = str(info.value)
    assert str(evil) in message and "refused" in message
    assert "python/object/apply:builtins.open" in message and "line 3" in message
    assert not marker.exists()


def test_python_tag_in_a_base_file_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    base = _evil_yaml(tmp_path / "base.yaml", marker)
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 5\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(leaf))
    assert str(base) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_train_net_refuses_it_with_one_line_and_exit_2(tmp_path_factory, tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = _evil_yaml(tmp_path / "evil.yaml", marker, base=QUICKSTART)
    proc = run_python(
        ["train_net.py", "--config-file", str(evil), "OUTPUT_DIR", str(tmp_path / "out")],
        python_env(str(tmp_path / "unused_synth")),
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("train_net.py: error")]
    assert len(errors) == 1 and "refused" in errors[0] and str(evil) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_lazy_python_configs_are_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    py = tmp_path / "cfg.py"
    py.write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(ConfigError, match="Python .LazyConfig. files run code"):
        load_config(str(py))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "opts", "expected"),
    [
        ("MODEL:\n  NO_SUCH_KEY: 1\n", [], "MODEL.NO_SUCH_KEY"),
        ("SOLVER:\n  MAX_ITER: [1, 2]\n", [], "SOLVER.MAX_ITER"),
        ("MODEL:\n  GCNET:\n    RATIO: 2.0\n", [], "MODEL.GCNET.RATIO"),
        ("MODEL:\n  RESNETS:\n    NORM: SuperBN\n", [], "MODEL.RESNETS.NORM"),
        ("MODEL:\n  GCNET:\n    STAGES_ON: [True]\n", [], "MODEL.GCNET.STAGES_ON"),
        ("SOLVER: [unclosed\n", [], "not valid YAML"),
        ("- just\n- a list\n", [], "expected a mapping"),
        ("", ["SOLVER.NO_SUCH", "3"], "SOLVER.NO_SUCH"),
        ("", ["SOLVER.MAX_ITER"], "odd length"),
        ("", ["SOLVER.MAX_ITER", "'ten'"], "SOLVER.MAX_ITER"),
    ],
)
def test_bad_config_values_name_the_key(tmp_path: Path, text: str, opts: list, expected: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text if text.startswith("-") else f'_BASE_: "{QUICKSTART}"\n{text}')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), opts)
    assert expected in str(info.value)


def test_missing_or_empty_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="found an empty file"):
        load_config(str(tmp_path / "empty.yaml"))


def test_every_shipped_config_loads_safely():
    for name in gcnet_d2.list_configs():
        cfg = load_config(gcnet_d2.get_config_file(name))
        assert cfg.MODEL.BACKBONE.NAME.startswith("build_gcnet_")
