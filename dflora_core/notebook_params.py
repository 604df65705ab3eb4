"""Typed, validated notebook parameters (papermill only warns about unknown names).

Each notebook has one cell tagged ``parameters`` with annotated assignments only::

    profile: str = "quick"  # configs/<name>.yaml or a path to a profile YAML
    interactive: bool = True  # widgets and live plots; False: headless, same computations

The annotations make ``papermill --help-notebook`` list every parameter with its type, and
they are what the next cell checks. The first cell creates a guard that remembers the names
that existed before the parameters cell; the cell after the parameters (and after the cell
papermill injects) calls ``guard.validate(globals())``, which

- rejects any new name that is not an annotated parameter (a misspelt ``-p budgt 3``);
- checks every parameter's value against its annotation (``int`` accepts integers only,
  ``float`` accepts integers too, ``bool`` only true/false), converting in place;
- returns the parameters as a typed, read-only ``Params`` object.

Derived values belong in the cells after validation (papermill does not recompute values
derived inside the parameters cell).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DfloraError

_IGNORED = {"In", "Out", "exit", "quit", "get_ipython", "open"}


class ParameterError(DfloraError, TypeError):
    """A notebook parameter is unknown or has the wrong type."""


class Params(Mapping):
    """The validated parameters of a notebook (attribute or item access, read-only)."""

    def __init__(self, values: dict[str, Any], types_: dict[str, Any]):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_types", dict(types_))

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("notebook parameters are read-only; derive new values in a new variable")

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Params({inner})"

    def types(self) -> dict[str, str]:
        return {k: _type_name(t) for k, t in self._types.items()}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "tuple": tuple, "Any": Any}


def resolve(name: str, tp):
    """An annotation as a type: string annotations (``from __future__ import annotations``) evaluated."""
    if not isinstance(tp, str):
        return tp
    try:
        return eval(tp, {"__builtins__": {}}, dict(_TYPE_NAMES))  # noqa: S307 - the names above only
    except Exception:  # noqa: BLE001
        raise ParameterError(
            f"parameter {name!r}: unsupported annotation {tp!r} (use str, int, float, bool, list[...])"
        ) from None


def coerce(name: str, tp, value):
    """``value`` as type ``tp`` (str, int, float, bool, list[X], X | None), or ParameterError."""
    tp = resolve(name, tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(name, a, value)
            except ParameterError as err:
                errors.append(str(err))
        raise ParameterError(f"parameter {name!r}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter {name!r}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [coerce(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # `papermill -p interactive false`
            return value.strip().lower() == "true"
        raise ParameterError(f"parameter {name!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParameterError(f"parameter {name!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"parameter {name!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParameterError(f"parameter {name!r}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ParameterError(f"parameter {name!r}: expected {_type_name(tp)}, got {value!r}")
    return value


class ParameterGuard:
    """Create in the first cell (``guard = ParameterGuard(globals())``); validate after the parameters."""

    def __init__(self, namespace: dict[str, Any]):
        self._before = set(namespace)

    def validate(self, namespace: dict[str, Any]) -> Params:
        # only the parameters cell makes top-level annotated assignments in these notebooks
        annotations = {k: resolve(k, v) for k, v in namespace.get("__annotations__", {}).items()}
        if not annotations:
            raise ParameterError("no parameters found: the parameters cell must use annotated assignments")
        new = set(namespace) - self._before - {"__annotations__"}
        unknown = sorted(n for n in new if n not in annotations and not n.startswith("_") and n not in _IGNORED)
        if unknown:
            known = ", ".join(f"{k}: {_type_name(t)}" for k, t in annotations.items())
            raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; this notebook takes: {known}")
        values = {}
        for name, tp in annotations.items():
            if name not in namespace:
                raise ParameterError(f"parameter {name!r} is annotated but has no value")
            values[name] = coerce(name, tp, namespace[name])
            namespace[name] = values[name]
        return Params(values, annotations)


def parameters_of(notebook) -> list[dict[str, str]]:
    """The parameters papermill sees in a notebook (name, type, default, help), via papermill itself."""
    from papermill.inspection import _infer_parameters

    return [p._asdict() for p in _infer_parameters(notebook)]


def output_folder(name: str, path: Path) -> Path:
    """``path`` as an existing folder (made if missing), or a one-line ParameterError naming the parameter."""
    if path.exists() and not path.is_dir():
        raise ParameterError(f"parameter {name!r}: {path} is a file, not a folder; give a folder (or leave it empty)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParameterError(f"parameter {name!r}: cannot make the folder {path} ({err.strerror or err})") from None
    return path


def open_profile(params: Mapping[str, Any], quiet: bool = False):
    """The profile a notebook's parameters name (``profile``, ``runs_root``, ``figures_dir``).

    Also applies the profile's torch thread count, and creates the output folders.
    """
    from .lab.profiles import load_profile

    prof = load_profile(params["profile"]).with_paths(
        params.get("runs_root") or None, params.get("figures_dir") or None
    )
    for name in ("runs_root", "figures_dir"):  # checked as the command line checks --out / --root
        output_folder(name, prof.path(name))
    if prof.threads:
        import torch

        torch.set_num_threads(prof.threads)
    if not quiet:
        print(f"profile {prof.name}: {prof.description}")
        print(f"  runs: {prof.path('runs_root')}\n  figures and tables: {prof.path('figures_dir')}")
    return prof
