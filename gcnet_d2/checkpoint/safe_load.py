"""Read checkpoint files without executing code from them.

Reading. Pickle-based files can make the loader call any importable function (``os.system``
included), so no file is unpickled with the plain ``pickle`` machinery:

- PyTorch files (``.pth``, ``.pt``, mmdetection and Detectron2 checkpoints) go through
  ``torch.load(weights_only=True)``, which builds tensors, plain containers and scalars only.
  numpy arrays, dtypes and scalars are allowed on top (old checkpoints store some), nothing else.
- Detectron2 / Caffe2 model-zoo ``.pkl`` files (plain pickles of numpy arrays; Detectron2 itself
  reads them with ``pickle.load``) go through :class:`RestrictedUnpickler`: numpy arrays, plain
  containers and scalars only.

A file that asks for anything else is refused with a :class:`CheckpointLoadError` that names the
file and the object it asked for. Errors for missing, truncated or non-checkpoint files name the
file and the problem too.

Writing is :mod:`gcnet_d2.io`'s (atomic).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import IO, Any

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

from ..errors import CheckpointLoadError

__all__ = [
    "CheckpointLoadError",
    "RestrictedUnpickler",
    "load_checkpoint_file",
    "restricted_pickle_load",
]


# (module, name) pairs a Detectron2 / Caffe2 .pkl may import while unpickling: what numpy
# arrays, dtypes and scalars are rebuilt from (numpy 1 and numpy 2 module names), an ordered
# dict, sets, and _codecs.encode (protocol-2 pickles written by Python 3 store bytes with it).
_PICKLE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("__builtin__", "set"),  # the same, as protocol <= 2 pickles name them
        ("__builtin__", "frozenset"),
        ("__builtin__", "complex"),
        ("_codecs", "encode"),
    }
)

_REFUSAL_HINT = (
    "gcnet_d2 loads only tensors, numpy arrays, plain containers and scalars from checkpoints, "
    "because unpickling other objects can run arbitrary code"
)


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports only the numpy / container names in ``_PICKLE_ALLOWED``.

    Every way a pickle can reach a Python object by name (GLOBAL, STACK_GLOBAL, INST, OBJ and
    the copyreg extension opcodes) goes through ``find_class``; persistent ids are refused by
    the base class. Objects are therefore built only from allowed callables.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def restricted_pickle_load(f: IO[bytes]) -> Any:
    """``pickle.load(f, encoding="latin1")`` limited to numpy arrays, containers and scalars."""
    return RestrictedUnpickler(f, encoding="latin1").load()


def _numpy_safe_globals() -> list[Any]:
    """numpy callables/classes that ``torch.load(weights_only=True)`` may use in addition."""
    names = [
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
    ]
    found: list[Any] = [np.ndarray, np.dtype]
    for module, name in names:
        try:
            mod = __import__(module, fromlist=[name])
            found.append(getattr(mod, name))
        except (ImportError, AttributeError):
            continue
    # numpy >= 1.25 pickles dtypes through their per-type classes (numpy.dtypes.Float32DType...).
    for code in "?bBhHiIlLqQefdgFDG":
        found.append(type(np.dtype(code)))
    return found


def _short(e: BaseException, limit: int = 160) -> str:
    """``Type: first sentence of the message``, at most ``limit`` characters."""
    text = str(e).strip()
    first = text.splitlines()[0].split(". ")[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _refused_message(path: str, qualname: str) -> str:
    return (
        f"checkpoint {path}: refused to load: it asks to import '{qualname}' while unpickling. "
        f"{_REFUSAL_HINT}. Convert the file on a trusted machine to a plain state dict "
        "(torch.save({'model': state_dict}, ...)) if you trust its origin"
    )


# What torch's weights_only unpickler says when a file asks for a global it does not allow.
_TORCH_GLOBAL_RE = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", re.I)


def _torch_load_error(path: str, e: BaseException, is_zip: bool) -> CheckpointLoadError:
    text = str(e)
    match = _TORCH_GLOBAL_RE.search(text)
    if match and "Weights only load failed" in text:
        return CheckpointLoadError(_refused_message(path, match.group(1)))
    if "Weights only load failed" in text and "Unsupported operand" in text:
        # Not a pickle at all: the first byte is no pickle opcode.
        return CheckpointLoadError(
            f"checkpoint {path}: not a PyTorch checkpoint (neither a torch zip archive nor a "
            "pickle)"
        )
    if "Weights only load failed" in text:
        # Any other refusal of the weights-only unpickler: keep its specific reason only.
        reason = next(
            (
                ln.strip()
                for ln in text.splitlines()[1:]
                if ln.strip() and "weights_only" not in ln and "trusted source" not in ln
            ),
            "",
        )
        return CheckpointLoadError(
            f"checkpoint {path}: refused to load ({reason or 'unsupported content'}). "
            f"{_REFUSAL_HINT}"
        )
    if is_zip:
        problem = "truncated or corrupt PyTorch zip archive"
    else:
        problem = "not a PyTorch checkpoint (neither a torch zip archive nor a torch pickle)"
    return CheckpointLoadError(f"checkpoint {path}: {problem} ({_short(e)})")


def _load_torch(path: str, local: str) -> Any:
    with open(local, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(f)
        f.seek(0)
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
            raise _torch_load_error(path, e, is_zip) from None


def _load_pkl(path: str, local: str) -> Any:
    with open(local, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):  # a torch zip archive saved under a .pkl name
            return _load_torch(path, local)
        try:
            return restricted_pickle_load(f)
        except _RefusedGlobal as e:
            raise CheckpointLoadError(_refused_message(path, e.qualname)) from None
        except Exception as e:  # noqa: BLE001
            raise CheckpointLoadError(
                f"checkpoint {path}: not a readable pickle of numpy arrays "
                f"(truncated, corrupt or another format; {_short(e)})"
            ) from None


def _detectron2_pkl_layout(path: str, data: dict[str, Any]) -> dict[str, Any]:
    """What Detectron2 makes of a model-zoo ``.pkl``: its own layout, or Caffe2 blobs."""
    if "model" in data and "__author__" in data:  # Detectron2 model zoo
        return data
    if "blobs" in data:  # Detectron1 detection model; ImageNet models have no "blobs"
        data = data["blobs"]
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"checkpoint {path}: 'blobs' holds a {type(data).__name__}, expected a dict of arrays"
        )
    weights = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """The dict stored in ``path``, loaded without running code from the file.

    ``.pkl`` files are read as Detectron2 / Caffe2 model-zoo pickles and returned in the layout
    Detectron2 gives them (``{"model": ..., "__author__": ..., "matching_heuristics": True}``
    for Caffe2); every other file is read with ``torch.load(weights_only=True)`` and returned
    as stored.

    Raises:
        CheckpointLoadError: the file is missing, unreadable, truncated, not a checkpoint,
            not a dict, or asks to import anything beyond arrays, containers and scalars.
    """
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # noqa: BLE001 - e.g. a URL that cannot be fetched
        raise CheckpointLoadError(f"checkpoint {path}: cannot be fetched ({_short(e)})") from None
    if not os.path.exists(local):
        raise CheckpointLoadError(f"checkpoint {path}: no such file")
    if not os.path.isfile(local):
        raise CheckpointLoadError(f"checkpoint {path}: not a regular file")
    if not os.access(local, os.R_OK):
        raise CheckpointLoadError(f"checkpoint {path}: not readable (permission denied)")
    if os.path.getsize(local) == 0:
        raise CheckpointLoadError(f"checkpoint {path}: empty file (0 bytes)")
    is_pkl = local.endswith(".pkl") or str(path).endswith(".pkl")
    try:
        data = _load_pkl(path, local) if is_pkl else _load_torch(path, local)
    except OSError as e:
        raise CheckpointLoadError(f"checkpoint {path}: cannot be read ({_short(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"checkpoint {path}: expected a dict of tensors, found {type(data).__name__}"
        )
    if is_pkl:
        data = _detectron2_pkl_layout(path, data)
    return data
