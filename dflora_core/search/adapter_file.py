"""``adapter.npz``: the learned vectors a layer-wise search leaves in its run folder, read back checked.

A run folder may come from someone else, so nothing in it is trusted once it opens: every array
must be plain numbers (an object array would need pickle, which is never loaded), finite, and of
the shape the record describes (``projection.model_layers`` x ``projection.intrinsic_dim`` for the
z vectors). Anything else is a one-line error naming the file and the array, before a model is
changed: a NaN z would otherwise score as a plausible-looking model.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DfloraError

ADAPTER = "adapter.npz"
Z_ARRAYS = ("z_best_dev", "z_final")  # what every finished layer-wise search stores
BIAS_ARRAYS = ("label_bias", "label_bias_final")  # a calibrated search's label bias (best dev, final)
# numpy's and zipfile's ways of saying a file is not a readable .npz
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _expected_shapes(record: Mapping[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """The shape of each array the record implies (an array it does not name is checked for numbers only)."""
    proj = record.get("projection")
    layers = proj.get("model_layers") if isinstance(proj, Mapping) else None
    dim = proj.get("intrinsic_dim") if isinstance(proj, Mapping) else None
    if not isinstance(layers, list) or not isinstance(dim, int) or isinstance(dim, bool):
        raise DfloraError(f"{where}/record.json: projection.model_layers / intrinsic_dim missing or malformed; "
                          f"cannot check {ADAPTER} against it")  # fmt: skip
    shapes = {name: (len(layers), dim) for name in Z_ARRAYS}
    # the measured scales: of every model layer where the record keeps their statistics (low-rank runs),
    # else of the adapted layers (prompt runs)
    for scales in (record.get("layer_stats"), proj.get("layer_std")):
        if isinstance(scales, list) and scales:
            shapes["layer_std"] = (len(scales),)
            break
    if isinstance(proj.get("prompt_tokens"), int):
        shapes["prompt_token_ids"] = (proj["prompt_tokens"],)
    bias = record.get("label_bias")
    for name in BIAS_ARRAYS:  # a run without a label bias stores none: a planted one is refused
        shapes[name] = (len(bias),) if isinstance(bias, list) else ()
    return shapes


def _checked(path: Path, name: str, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    def refuse(why: str):
        raise DfloraError(f"{path}: array {name!r} {why}; the run folder is damaged or was edited "
                          "(rerun the run, or restore the folder)")  # fmt: skip

    if array.dtype.kind not in "fiu":
        refuse(f"holds {array.dtype} values, not numbers")
    if shape == ():
        refuse("is there, but the record has no label bias")
    if shape is not None and array.shape != shape:
        refuse(f"has shape {list(array.shape)}, the record implies {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        refuse(f"holds {int((~np.isfinite(array)).sum())} non-finite value(s) (NaN or inf)")
    return array


def read_adapter(folder: str | Path, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every array of ``folder/adapter.npz``, checked against ``record`` (one-line DfloraErrors)."""
    folder = Path(folder)
    path = folder / ADAPTER
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "is missing"
        raise DfloraError(f"{folder}: {ADAPTER} {what}; a finished {record.get('method')} run keeps its learned "
                          "vectors there (the folder is incomplete: rerun the run or restore the file)")  # fmt: skip
    shapes = _expected_shapes(record, str(folder))
    out = {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            for name in arrays.files:
                try:
                    array = arrays[name]
                except ValueError as err:
                    if "allow_pickle" in str(err):  # an object array: loading it would unpickle
                        raise DfloraError(f"{path}: array {name!r} holds Python objects (pickle), which dflora "
                                          "never loads; the run folder is damaged or was edited") from None  # fmt: skip
                    raise
                out[name] = _checked(path, name, array, shapes.get(name))
    except _UNREADABLE as err:
        raise DfloraError(f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                          ) from None  # fmt: skip
    missing = [name for name in Z_ARRAYS if name not in out]
    if missing:
        raise DfloraError(f"{path}: no array {missing[0]!r} (it has {', '.join(out) or 'none'})")
    return out
