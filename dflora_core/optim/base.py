"""The ask/tell base class of dflora's derivative-free optimizers, and their code-free state.

Minimisation throughout. One optimizer instance searches one vector space (one layer's
intrinsic z in the layer-wise loop). The caller owns the evaluation:

    x = opt.ask()                 # [n, dim] float64, n may vary between calls
    f = evaluate(x)               # [n], +inf for failures (NaN is read as +inf)
    opt.tell(x, f)

``Optimizer`` implements these rules once; a subclass writes only ``_ask()`` (the next points,
[n, dim]) and ``_tell(x, f)`` (x: the asked array, f: checked float64 fitnesses), both
read-only arrays:

- ``ask`` returns every point that must be evaluated before the next ``tell``; the caller
  charges exactly ``len(x)`` evaluations. Repeated ``ask`` before ``tell`` returns the same points.
- ``tell`` needs the array of the last ask (same shape and values) and one fitness per row;
  NaN is read as +inf, -inf is refused (ValueError), a tell without an ask is a RuntimeError.
- ``evaluations`` counts told points, ``generation`` completed generations (tells divided by
  ``_asks_per_generation``), ``best_x``/``best_f`` the best told point (the start point and
  +inf before any tell).
- The instance owns its random generator (``self._rng``, ``numpy.random.default_rng(seed)``);
  no global random state is read or written; no files are written.

State format
------------
An optimizer is a deterministic function of its constructor arguments (seed included) and of
the fitnesses it was told. ``state_dict()`` therefore stores those, and no object or pickle:
restoring a state runs no code from the file. It is a flat dict whose values are JSON-able
(str, int, float, bool, None, lists, dicts) or numpy arrays:

    format      "dflora-optimizer/1"
    class       "LoTFWA"                          the class that wrote it
    args        {"dim": 500, "x0": null, "seed": 7, ...}  every constructor argument, defaults
                                                  included (a seed of None is drawn at
                                                  construction and stored)
    arg.<name>  array                             an argument that was an array (e.g. x0)
    versions    {"numpy": "2.4.6", "cma": "4.5.0"}  for the error message only
    asked       ["3f1c...", ...]                  sha256 hex of each told ask, in order
    pending     "9a0b..." or null                 digest of an ask not yet told
    fitness     float64 array [evaluations]       the told fitnesses (NaN as +inf), concatenated
    offsets     int64 array [tells + 1]           tell t got fitness[offsets[t]:offsets[t+1]]

``split_state`` splits it into the JSON part and the arrays (``json.dump`` and ``np.savez``;
``np.load(allow_pickle=False)`` reads them back) and ``join_state`` rejoins them.

``load_state_dict`` (or the classmethod ``from_state``) builds a new instance from ``args`` and
replays the log, checking every regenerated ask against its digest, and re-asks a pending ask.
After a load the ask/tell trajectory continues bit for bit as it would have without the
interruption, in any process. A state that does not replay (another numpy or pycma version,
an edited file) is refused with a one-line ``OptimizerStateError``, never continued on a
different trajectory. Replaying costs the optimizer's own arithmetic for the logged
generations, no evaluations. Optimizers whose internals cannot be serialised safely (pycma,
nevergrad) get exact, safe state this way for free.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import DfloraError
from . import _checks

__all__ = [
    "AskTellOptimizer",
    "Optimizer",
    "OptimizerStateError",
    "STATE_FORMAT",
    "into_bounds",
    "join_state",
    "split_state",
]

STATE_FORMAT = "dflora-optimizer/1"
_ARG = "arg."  # prefix of the constructor arguments stored as arrays


@runtime_checkable
class AskTellOptimizer(Protocol):
    """What the search loop relies on (``Optimizer`` implements it)."""

    dim: int

    def ask(self) -> np.ndarray: ...

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None: ...

    @property
    def best_x(self) -> np.ndarray: ...

    @property
    def best_f(self) -> float: ...

    @property
    def step_size(self) -> float: ...

    @property
    def evaluations(self) -> int: ...

    @property
    def generation(self) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class OptimizerStateError(DfloraError, ValueError):
    """A state dict is malformed, or replaying it does not give the points it recorded."""


def into_bounds(x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator) -> np.ndarray:
    """Re-sample out-of-bound coordinates of x (in place) uniformly inside the bounds ([LoT] mapping rule)."""
    if bounds is None:
        return x
    lo, hi = np.broadcast_to(bounds[0], x.shape), np.broadcast_to(bounds[1], x.shape)
    out = (x < lo) | (x > hi)
    if np.any(out):
        x[out] = rng.uniform(lo[out], hi[out])
    return x


def split_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON part, arrays) of a state: ``json.dump`` the first, ``np.savez`` the second."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    return {k: v for k, v in state.items() if k not in arrays}, arrays


def join_state(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``split_state``; ``arrays`` may be the ``NpzFile`` of ``np.load``."""
    return {**meta, **{k: np.asarray(arrays[k]) for k in arrays}}


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(f"{x.dtype.str}{x.shape}".encode() + np.ascontiguousarray(x).tobytes()).hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.__init__)


def _jsonable(value: Any, where: str) -> Any:
    """Constructor argument -> JSON value (exact: floats survive ``json`` round trips)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise OptimizerStateError(
        f"optimizer argument {where!r} is a {type(value).__name__}: a code-free state holds only "
        "numbers, strings, lists, dicts and arrays"
    )


class Optimizer(ABC):
    """Ask/tell bookkeeping, checks and replayable state for every optimizer (see the module doc).

    A subclass calls ``super().__init__(dim, x0, seed=..., ...)`` first (it sets ``dim``,
    ``seed``, ``_rng``, the start point ``_x0`` and, if ``bounds`` is given here, ``bounds``),
    then implements ``_ask``, ``_tell`` and ``step_size``. Its constructor arguments are
    recorded automatically (``__new__``) for ``state_dict``, so they must be numbers, strings,
    lists, dicts or arrays.
    """

    dim: int
    _asks_per_generation = 1  # tells per generation (LoTFWA's sequential guiding: 2)
    _registry: dict[str, type[Optimizer]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            Optimizer._registry[cls.__name__] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> Optimizer:
        self = super().__new__(cls)
        try:
            bound = _signature(cls).bind(None, *args, **kwargs)
        except TypeError:
            return self  # __init__ raises the proper error (or copy/pickle are restoring __dict__)
        bound.apply_defaults()
        first = next(iter(bound.arguments))  # "self"
        # a copy: the state must not change when the caller later mutates an x0 or options dict
        self._args = copy.deepcopy({k: v for k, v in bound.arguments.items() if k != first})
        return self

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None,
        *,
        seed: int | None,
        bounds: Any = None,
        max_evaluations: int | None = None,
    ) -> None:
        """``bounds``: a box into which the start is mapped (``self.bounds``: (lower, upper) arrays)."""
        self.dim = _checks.dimension(dim)
        self.seed = _checks.seed(seed)
        if hasattr(self, "_args") and "seed" in self._args:
            self._args["seed"] = self.seed  # a drawn seed is what replays
        self._rng = np.random.default_rng(self.seed)
        self.bounds = _checks.as_bounds(self.dim, bounds)
        # the start's out-of-bound coordinates are the generator's first draws
        self._x0 = into_bounds(_checks.as_start(self.dim, x0), self.bounds, self._rng)
        self.max_evaluations = max_evaluations
        self._pending: np.ndarray | None = None
        self._pending_digest: str | None = None
        self._told_f: list[np.ndarray] = []
        self._told_digests: list[str] = []
        self._evaluations = 0
        self._best_x = self._x0.copy()
        self._best_f = math.inf

    # -- what a subclass implements -------------------------------------------------------------

    @abstractmethod
    def _ask(self) -> np.ndarray:
        """The next points, [n, dim]; called only when no ask is pending."""

    @abstractmethod
    def _tell(self, x: np.ndarray, f: np.ndarray) -> None:
        """Update from the pending ask ``x`` and its checked fitnesses ``f`` (counts and best already updated)."""

    @property
    @abstractmethod
    def step_size(self) -> float:
        """A scalar summary of the current search scale (CMA-ES sigma, mean firework amplitude...)."""

    # -- ask/tell ---------------------------------------------------------------------------------

    def ask(self) -> np.ndarray:
        """Points to evaluate next, [n, dim]; repeated calls before ``tell`` return the same points."""
        if self._pending is None:
            x = np.array(self._ask(), dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise RuntimeError(f"{type(self).__name__}._ask returned shape {x.shape}, not [n, {self.dim}]")
            self._pending, self._pending_digest = _readonly(x), _digest(x)
        return self._pending.copy()

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        """Report the fitnesses (+inf allowed, NaN read as +inf) of the points of the last ``ask``."""
        x = self._pending
        if x is None:
            raise RuntimeError("tell() without a pending ask()")
        sol = np.asarray(solutions, dtype=np.float64)
        if sol.shape != x.shape or not np.array_equal(sol, x):
            raise ValueError(
                f"tell() needs the array returned by the last ask() (shape {x.shape}), "
                f"got shape {sol.shape} or different values"
            )
        f = np.asarray(fitness, dtype=np.float64).reshape(-1)
        if f.shape != (len(x),):
            raise ValueError(f"fitness must have shape ({len(x)},), got {np.shape(fitness)}")
        f = _readonly(np.where(np.isnan(f), np.inf, f))
        if np.any(f == -np.inf):
            raise ValueError("fitness -inf is not allowed (minimisation)")
        self._told_digests.append(self._pending_digest)  # type: ignore[arg-type]
        self._told_f.append(f)
        self._pending = self._pending_digest = None
        self._evaluations += len(f)
        j = int(np.argmin(f))
        if f[j] < self._best_f:
            self._best_f, self._best_x = float(f[j]), x[j].copy()
        self._tell(x, f)

    # -- results ----------------------------------------------------------------------------------

    @property
    def best_x(self) -> np.ndarray:
        """Best point told so far (the start point before any tell)."""
        return self._best_x.copy()

    @property
    def best_f(self) -> float:
        """Fitness of ``best_x`` (+inf before any tell)."""
        return self._best_f

    @property
    def evaluations(self) -> int:
        """Points told so far."""
        return self._evaluations

    @property
    def generation(self) -> int:
        """Completed generations."""
        return len(self._told_digests) // self._asks_per_generation

    # -- state ------------------------------------------------------------------------------------

    def _library_versions(self) -> dict[str, str]:
        """Versions of the libraries whose arithmetic the replay depends on."""
        return {"numpy": np.__version__}

    def state_dict(self) -> dict[str, Any]:
        """The code-free, replayable state (format in the module docstring)."""
        args, arrays = {}, {}
        for name, value in self._args.items():
            if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, np.generic)):
                arrays[_ARG + name] = np.array(value, copy=True)
            else:
                args[name] = _jsonable(value, name)
        sizes = [len(f) for f in self._told_f]
        return {
            "format": STATE_FORMAT,
            "class": type(self).__name__,
            "args": args,
            "versions": self._library_versions(),
            "asked": list(self._told_digests),
            "pending": self._pending_digest,
            "fitness": np.concatenate(self._told_f) if sizes else np.zeros(0),
            "offsets": np.cumsum([0, *sizes], dtype=np.int64),
            **arrays,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Become the optimizer ``state`` describes (this instance's own arguments are ignored)."""
        restored = type(self).from_state(state)
        self.__dict__.clear()
        self.__dict__.update(restored.__dict__)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Optimizer:
        """A new optimizer from a state; ``Optimizer.from_state`` picks the class the state names."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise OptimizerStateError(f"not an optimizer state of format {STATE_FORMAT!r} (got {found!r})")
        name = state.get("class")
        target = Optimizer._registry.get(str(name)) if cls is Optimizer else cls
        if target is None or name != target.__name__:
            raise OptimizerStateError(f"state of {name!r} cannot be loaded into {cls.__name__}")
        try:
            args = dict(state["args"])
            args.update({k[len(_ARG) :]: np.asarray(v) for k, v in state.items() if k.startswith(_ARG)})
            asked, pending = [str(d) for d in state["asked"]], state["pending"]
            fitness = np.asarray(state["fitness"], dtype=np.float64)
            offsets = np.asarray(state["offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise OptimizerStateError(f"optimizer state is malformed: {err}") from None
        ok = (
            fitness.ndim == 1
            and offsets.shape == (len(asked) + 1,)
            and offsets.dtype.kind in "iu"
            and offsets[0] == 0
            and offsets[-1] == len(fitness)
            and np.all(np.diff(offsets) >= 0)
        )
        if not ok:
            raise OptimizerStateError(
                f"optimizer state is malformed: {len(asked)} asks logged, offsets of shape {offsets.shape} "
                f"do not cut the {len(fitness)} fitnesses into one slice per ask"
            )
        try:
            opt = target(**args)
        except TypeError as err:
            raise OptimizerStateError(f"optimizer state is malformed: {err}") from None
        opt._replay(asked, [fitness[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)], pending, state)
        return opt

    def _replay(self, asked: list[str], told: list[np.ndarray], pending: str | None, state: Mapping[str, Any]) -> None:
        for t, (digest, f) in enumerate(zip(asked, told, strict=True), start=1):
            x = self.ask()
            if self._pending_digest != digest:
                raise self._mismatch(t, len(asked), state)
            if len(f) != len(x):
                raise OptimizerStateError(
                    f"optimizer state does not replay: ask {t} has {len(x)} points but {len(f)} logged fitnesses"
                )
            try:
                self.tell(x, f)
            except ValueError as err:
                raise OptimizerStateError(f"optimizer state does not replay: tell {t}: {err}") from None
        if pending is not None:
            self.ask()
            if self._pending_digest != pending:
                raise self._mismatch(len(asked) + 1, len(asked) + 1, state)

    def _mismatch(self, t: int, n: int, state: Mapping[str, Any]) -> OptimizerStateError:
        saved, now = state.get("versions"), self._library_versions()
        if saved == now:
            why = f"same library versions ({_versions_text(now)}): was the state edited?"
        else:
            why = f"different library version? saved with {_versions_text(saved)}, running {_versions_text(now)}"
        return OptimizerStateError(
            f"optimizer state does not replay: {type(self).__name__} ask {t} of {n} gave different points ({why})"
        )


def _versions_text(versions: Any) -> str:
    if not isinstance(versions, Mapping):
        return "unknown versions"
    return ", ".join(f"{k} {v}" for k, v in versions.items())
