"""Resumable run state in a file that cannot execute code when read.

One ``.npz`` file: the structure (dicts, lists, numbers, strings) as JSON in the entry
``__state__``, every array (numpy, or a torch tensor, stored as numpy with its dtype noted)
as an entry of its own, read back with ``numpy.load(allow_pickle=False)``. Nothing in the file
names a class or a function to call, so a state someone sends you is data, never code (the
pickle checkpoints of dflora 0.1 were not). Written atomically, like every run file.

    save_state(path, {"z": np.zeros((3, 8)), "calls": 120, "optimizers": [...]})
    tree = load_state(path)          # the same structure back; DataError naming the file if it is not one
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .fileio import atomic_write_bytes

STATE_FORMAT = "dflora-state/1"
_JSON = "__state__"
_TAGS = ("__array__", "__tensor__", "__tuple__", "__items__")


def _pack(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
            return {k: _pack(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_pack(k, arrays), _pack(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be stored as data")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if any(c.__module__ == "torch" and c.__name__ == "Tensor" for c in type(obj).__mro__):  # and its subclasses
        import torch

        key = f"a{len(arrays)}"
        t = obj.detach().cpu()
        arrays[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        return {"__tensor__": key, "dtype": str(t.dtype).replace("torch.", "")}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{type(obj).__name__} is not run state (dict, list, tuple, number, string, array)")


def _unpack(obj: Any, arrays) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return np.array(arrays[obj["__array__"]])
    if "__tensor__" in obj:
        import torch

        return torch.from_numpy(np.array(arrays[obj["__tensor__"]])).to(getattr(torch, obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_unpack(v, arrays) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_unpack(k, arrays): _unpack(v, arrays) for k, v in obj["__items__"]}
    return {k: _unpack(v, arrays) for k, v in obj.items()}


def save_state(path: str | Path, tree: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    doc = {"format": STATE_FORMAT, "state": _pack(tree, arrays)}
    arrays[_JSON] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """The tree ``save_state`` wrote; a one-line DataError naming the file for anything else."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _JSON not in npz.files:
                raise DataError(f"{path}: not a dflora state file (no {_JSON} entry)")
            doc = json.loads(npz[_JSON].tobytes().decode())
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise DataError(f"{path}: state format {doc.get('format') if isinstance(doc, dict) else doc!r} "
                                f"is not {STATE_FORMAT}")  # fmt: skip
            arrays = {k: npz[k] for k in npz.files if k != _JSON}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        # a truncated or empty file, an object array (refused: allow_pickle=False), broken JSON...
        raise DataError(f"{path}: unreadable state file ({type(err).__name__}: {err})") from None
    try:
        return _unpack(doc["state"], arrays)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise DataError(f"{path}: malformed state file ({type(err).__name__}: {err})") from None
