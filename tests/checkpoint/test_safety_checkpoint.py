"""Untrusted checkpoints are loaded without executing code; corrupt ones fail clearly; writes
are atomic.

Each payload test first shows that the crafted file really runs code under the loader
detectron2 / plain torch would use (the marker file appears), then that gcnet_d2's loader
refuses it (no marker, and the error names the file and the import it refused).
"""

from __future__ import annotations

import io
import pickle
import signal
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gcnet_d2.checkpoint import (
    CheckpointLoadError,
    GCNetCheckpointer,
    load_checkpoint_file,
    safe_load,
)
from tests.testing import run_python


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for ``os.system(...)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


OPEN = f"{open.__module__}.{open.__qualname__}"  # how pickle names it: "io.open"


def _d2_zoo_layout(payload: object) -> dict:
    return {
        "model": {"conv.weight": np.ones((2, 3, 1, 1), np.float32)},
        "__author__": payload,
        "matching_heuristics": True,
    }


@pytest.mark.parametrize("protocol", [2, 4])
def test_pkl_payload_never_runs(tmp_path: Path, protocol: int):
    evil = tmp_path / "model_final_abc.pkl"
    marker = tmp_path / "pwned"
    with open(evil, "wb") as f:
        pickle.dump(_d2_zoo_layout(_CreatesMarker(marker)), f, protocol=protocol)

    # What detectron2's DetectionCheckpointer does with .pkl files: plain pickle.load. It runs.
    control = tmp_path / "control_marker"
    with open(tmp_path / "control.pkl", "wb") as f:
        pickle.dump(_d2_zoo_layout(_CreatesMarker(control)), f, protocol=protocol)
    with open(tmp_path / "control.pkl", "rb") as f:
        pickle.load(f, encoding="latin1")
    assert control.exists()

    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(str(evil))
    message = str(info.value)
    assert str(evil) in message and "refused" in message and OPEN in message
    assert "arbitrary code" in message
    assert not marker.exists()

    checkpointer = GCNetCheckpointer(nn.Conv2d(3, 2, 1), save_dir=str(tmp_path / "out"))
    with pytest.raises(CheckpointLoadError):
        checkpointer.load(str(evil))
    assert not marker.exists()


def test_pth_payload_never_runs(tmp_path: Path):
    evil = tmp_path / "gcnet_r50.pth"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": _CreatesMarker(marker)}, evil)

    torch.load(evil, weights_only=False)  # what an unguarded torch.load does: it runs
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(str(evil))
    message = str(info.value)
    assert str(evil) in message and "refused" in message and "open" in message
    assert not marker.exists()


def test_restricted_unpickler_refuses_every_other_global(tmp_path: Path):
    # A pickle that only asks for os.system (never called here: the import itself is refused).
    payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        safe_load.restricted_pickle_load(io.BytesIO(payload))
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointLoadError, match="'os.system'"):
        load_checkpoint_file(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pkl_files_still_load(tmp_path: Path, protocol: int):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    d2 = tmp_path / "d2.pkl"
    with open(d2, "wb") as f:
        pickle.dump(
            {
                "model": OrderedDict([("conv.weight", weight), ("conv.bias", np.ones(2))]),
                "__author__": "Detectron2 Model Zoo",
                "extra": {"step": np.int64(5), "names": {"a", "b"}, "c": 1 + 2j},
            },
            f,
            protocol=protocol,
        )
    data = load_checkpoint_file(str(d2))
    np.testing.assert_array_equal(data["model"]["conv.weight"], weight)
    assert data["__author__"] == "Detectron2 Model Zoo" and data["extra"]["step"] == 5

    caffe2 = tmp_path / "R-50.pkl"
    with open(caffe2, "wb") as f:
        blobs = {"conv1_w": weight, "conv1_w_momentum": weight, "res2_0_branch2a_w": weight}
        pickle.dump({"blobs": blobs}, f, protocol=protocol)
    data = load_checkpoint_file(str(caffe2))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] is True
    assert sorted(data["model"]) == ["conv1_w", "res2_0_branch2a_w"]  # momenta dropped

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

    net = Net()
    GCNetCheckpointer(net).load(str(d2))
    assert torch.equal(net.conv.weight, torch.from_numpy(weight))


def test_numpy_values_in_torch_checkpoints_load(tmp_path: Path):
    path = tmp_path / "old.pth"
    torch.save(
        {"model": {"w": torch.ones(2)}, "meta": {"arr": np.ones(3), "it": np.int64(7)}}, path
    )
    data = load_checkpoint_file(str(path))
    assert data["meta"]["it"] == 7 and data["meta"]["arr"].sum() == 3


def _good_checkpoint(path: Path) -> bytes:
    torch.save({"model": {"w": torch.randn(64, 64)}}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("missing.pth", None, "no such file"),
        ("empty.pth", lambda p: p.write_bytes(b""), "empty file"),
        ("folder.pth", lambda p: p.mkdir(), "not a regular file"),
        ("truncated.pth", lambda p: p.write_bytes(_good_checkpoint(p)[:3000]), "truncated"),
        ("text.pth", lambda p: p.write_text("not a checkpoint\n"), "not a PyTorch checkpoint"),
        ("tensor.pth", lambda p: torch.save(torch.zeros(2), p), "expected a dict"),
        ("truncated.pkl", lambda p: p.write_bytes(pickle.dumps({"model": {}})[:9]), "truncated"),
        ("text.pkl", lambda p: p.write_text("hello"), "not a readable pickle"),
    ],
)
def test_bad_files_fail_with_a_clear_message(tmp_path: Path, name: str, make, expected: str):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: ") and expected in message
    assert "\n" not in message and len(message) < 400


def test_missing_weights_through_the_checkpointer(tmp_path: Path):
    with pytest.raises(CheckpointLoadError, match="no such file"):
        GCNetCheckpointer(nn.Linear(2, 2)).load(str(tmp_path / "nope.pth"))


# --------------------------------------------------------------------------------------------
# Atomic saves
# --------------------------------------------------------------------------------------------

_KILL_MID_SAVE = r"""
import io, os, signal, sys
import torch
from torch import nn
from gcnet_d2.checkpoint import GCNetCheckpointer

real_save = torch.save

def save_half_then_die(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the machine dies mid-write

torch.save = save_half_then_die
model = nn.Linear(128, 128)
nn.init.constant_(model.weight, 2.0)
GCNetCheckpointer(model, save_dir=sys.argv[1]).save(sys.argv[2])
"""


@pytest.mark.slow
def test_sigkill_while_overwriting_the_last_checkpoint_keeps_it(tmp_path: Path):
    model = nn.Linear(128, 128)
    nn.init.constant_(model.weight, 1.0)
    GCNetCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"

    # A process killed while it rewrites the very file last_checkpoint names (a resumed run
    # saving model_final again): without the temp file + rename it would be left truncated.
    proc = run_python(["-c", _KILL_MID_SAVE, str(tmp_path), "model_final"], timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    weights = load_checkpoint_file(str(tmp_path / "model_final.pth"))["model"]
    assert torch.equal(weights["weight"], torch.ones(128, 128))
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1  # the dead writer's temporary, ignored by the checkpointer

    GCNetCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # cleaned on the next save
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_failed_save_leaves_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checkpointer = GCNetCheckpointer(nn.Linear(4, 4), save_dir=str(tmp_path))
    checkpointer.save("model_0000000")

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000001")
    # No partial file under the final name, no temporary, last_checkpoint untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
