"""CMA-ES (the optimizer of C-LoRA) behind dflora's ask/tell protocol, wrapping pycma.

pycma pitfalls handled here (DESIGN.md section 4):
- pycma's ``seed`` option re-seeds numpy's GLOBAL random state (and 0/None mean "seed from
  the clock"). We pass ``seed=nan`` ("do nothing") and a picklable ``randn`` callable that
  draws from the instance's own ``numpy.random.Generator``; numpy's global state is never
  read or written.
- pycma writes ``outcmaes/`` into the working directory by default, and reads a signals
  file from it: ``verb_log=0``, ``verb_disp=0``, ``verbose=-9``, ``signals_filename=""``.

Termination: pycma's ``ask`` never consults its termination criteria (``tolfun``,
``tolx``, ``tolstagnation``, ``maxiter``, ...); only ``es.stop()`` reports them and this class
never calls it during ask/tell. So ``ask`` works for the whole budget, also after pycma would
have declared convergence (the distribution then keeps sampling at its tiny sigma; measured:
3,000 generations on a 10-D sphere, flat and all-+inf fitness run without error).
``termination`` exposes pycma's criteria for information.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import cma
import numpy as np

from ..errors import ConfigError

__all__ = ["CMAES", "GeneratorRandn"]

_RESERVED = ("randn", "seed")  # would break the own-generator guarantee


def _rekey(solution_dict: Any) -> None:
    """Recompute the keys of a pycma ``SolutionDict`` after unpickling.

    pycma finds the genotype of a told solution by ``hash(x.tobytes())``; bytes hashes are
    salted per Python process, so the keys stored in a pickle made by another process would
    not match and a pending ask restored there would be told as "unknown" points (repaired,
    re-derived from the phenotype: a different trajectory). The entries keep the array they
    were made from (``_unhashed_keys``), so the keys can be recomputed.
    """
    data = getattr(solution_dict, "data", None)
    unhashed = getattr(solution_dict, "_unhashed_keys", None)
    if not isinstance(data, dict) or not isinstance(unhashed, dict):
        return
    same = getattr(solution_dict, "data_with_same_key", {})
    new_data: dict[Any, Any] = {}
    new_unhashed: dict[Any, Any] = {}
    new_same: dict[Any, Any] = {}
    for old_key, value in data.items():
        x = unhashed.get(old_key)
        if x is None:
            continue  # unreachable entry
        key = solution_dict.key(x)
        new_data[key], new_unhashed[key] = value, x
        if old_key in same:
            new_same[key] = same[old_key]
    solution_dict.data = new_data
    solution_dict._unhashed_keys = new_unhashed
    solution_dict.data_with_same_key = new_same


class GeneratorRandn:
    """pycma's ``randn`` option drawing from an own ``numpy.random.Generator`` (picklable).

    pycma calls ``randn(lam, N)`` and expects an array of that shape of iid N(0, 1).
    """

    def __init__(self, seed: int | None = 0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class CMAES:
    """CMA-ES (Hansen & Ostermeier 2001; pycma) with an own generator, silent, no files.

    One ``ask`` is one CMA-ES generation of ``popsize`` points. ``tell`` takes the same array
    (row order kept) and fitnesses; +inf (failed evaluations; NaN is read as +inf) is
    passed on, pycma ranks it last. ``best_x``/``best_f`` are the best point told so far
    (tracked here, exact). ``state_dict`` stores a pickle of the pycma object (including the
    generator), so a restored instance continues with the identical trajectory.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,  # start mean; zeros = "no update" in the intrinsic space
        sigma: float = 1.0,  # initial step size sigma0 (DESIGN.md: the code default is 1)
        popsize: int = 20,  # lambda; the paper's population for CMA-ES
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # pycma's BoundTransform keeps samples inside
        max_evaluations: int | None = None,  # informational: ask never refuses (see module doc)
        options: dict | None = None,  # extra pycma options (not 'randn'/'seed')
    ) -> None:
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError("dim", f"must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        x = np.zeros(self.dim) if x0 is None else np.array(x0, dtype=np.float64).reshape(-1)
        if x.shape != (self.dim,) or not np.all(np.isfinite(x)):
            raise ConfigError("x0", f"must be a finite vector of shape ({self.dim},)")
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError("sigma", f"must be a positive number, got {sigma!r}")
        if not isinstance(popsize, int | np.integer) or popsize < 2:
            raise ConfigError("popsize", f"must be an integer >= 2, got {popsize!r}")
        options = dict(options or {})
        bad = [k for k in _RESERVED if k in options]
        if bad:
            raise ConfigError("options", f"{bad} are set by CMAES itself (own generator, seed=nan)")
        opts: dict[str, Any] = {
            "popsize": int(popsize),
            "randn": GeneratorRandn(seed),
            "seed": np.nan,
            "verb_log": 0,
            "verb_disp": 0,
            "verbose": -9,
            "signals_filename": "",
        }
        if bounds is not None:
            lo, hi = bounds
            if not np.all(np.asarray(lo, dtype=float) < np.asarray(hi, dtype=float)):
                raise ConfigError("bounds", f"need lower < upper, got {bounds!r}")
            opts["bounds"] = [lo, hi]
        opts.update(options)
        self.sigma0 = sigma
        self.popsize = int(popsize)
        self.seed = seed
        self.bounds = bounds
        self.max_evaluations = max_evaluations
        self._es = cma.CMAEvolutionStrategy(x, sigma, opts)
        self._pending: list[np.ndarray] | None = None
        self._evaluations = 0
        self._best_x = x.copy()
        self._best_f = math.inf

    def ask(self) -> np.ndarray:
        """One generation, [popsize, dim]; repeated calls before ``tell`` return the same points."""
        if self._pending is None:
            self._pending = self._es.ask()
        return np.array(self._pending, dtype=np.float64)

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        """Report the fitnesses (+inf allowed, NaN read as +inf) of the last ``ask``."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        pending = np.array(self._pending, dtype=np.float64)
        sol = np.asarray(solutions, dtype=np.float64)
        if sol.shape != pending.shape or not np.array_equal(sol, pending):
            raise ValueError(
                f"tell() needs the array returned by the last ask() (shape {pending.shape}), "
                f"got shape {sol.shape} or different values"
            )
        f = np.asarray(fitness, dtype=np.float64).reshape(-1)
        if f.shape != (len(pending),):
            raise ValueError(f"fitness must have shape ({len(pending)},), got {np.shape(fitness)}")
        f = np.where(np.isnan(f), np.inf, f)
        if np.any(f == -np.inf):
            raise ValueError("fitness -inf is not allowed (minimisation)")
        # pycma finds its internal (genotype) copies by the objects it returned: tell those
        self._es.tell(self._pending, [float(v) for v in f])
        self._pending = None
        self._evaluations += len(f)
        j = int(np.argmin(f))
        if f[j] < self._best_f:
            self._best_f, self._best_x = float(f[j]), pending[j].copy()

    @property
    def best_x(self) -> np.ndarray:
        return self._best_x.copy()

    @property
    def best_f(self) -> float:
        return self._best_f

    @property
    def step_size(self) -> float:
        """pycma's current sigma."""
        return float(self._es.sigma)

    @property
    def mean(self) -> np.ndarray:
        """Current distribution mean (pycma ``xmean``)."""
        return np.array(self._es.mean, dtype=np.float64)

    @property
    def evaluations(self) -> int:
        return self._evaluations

    @property
    def generation(self) -> int:
        """Completed generations (pycma ``countiter``)."""
        return int(self._es.countiter)

    @property
    def termination(self) -> dict[str, Any]:
        """pycma's termination criteria that are met now (informational; ask never stops)."""
        return dict(self._es.stop())

    @property
    def es(self) -> cma.CMAEvolutionStrategy:
        """The wrapped pycma object (read-only use)."""
        return self._es

    def state_dict(self) -> dict[str, Any]:
        # the pending list is pickled together with the es so pycma's identity-based lookup of
        # the asked solutions survives a round trip
        return {
            "cls": "CMAES",
            "es": pickle.dumps((self._es, self._pending)),
            "evaluations": self._evaluations,
            "best_x": self._best_x.copy(),
            "best_f": self._best_f,
            "config": {
                "dim": self.dim,
                "sigma0": self.sigma0,
                "popsize": self.popsize,
                "seed": self.seed,
                "bounds": self.bounds,
                "max_evaluations": self.max_evaluations,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("cls") != "CMAES":
            raise ValueError(f"state of {state.get('cls')!r} cannot be loaded into CMAES")
        self._es, self._pending = pickle.loads(state["es"])
        for name in ("sent_solutions", "archive", "_injected_solutions_archive"):
            if hasattr(self._es, name):
                _rekey(getattr(self._es, name))
        self._evaluations = int(state["evaluations"])
        self._best_x = np.array(state["best_x"], copy=True)
        self._best_f = float(state["best_f"])
        for key, value in state["config"].items():
            setattr(self, key, value)
