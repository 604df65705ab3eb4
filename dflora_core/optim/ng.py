"""Any nevergrad optimizer behind dflora's ask/tell base class (``ng:NAME``, e.g. ``ng:NGOpt``).

nevergrad (the optional ``nevergrad`` extra) is imported only when an ``ng:`` optimizer is
built. One ``ask`` asks ``popsize`` candidates from nevergrad (built with
``num_workers=popsize``, so that it plans for a whole population between tells) and one
``tell`` tells each its fitness; the caller charges exactly ``popsize`` evaluations.

Randomness (docs/method.md, section "Optimizers"): nevergrad draws from its parametrization's
``random_state`` (a ``numpy.random.RandomState``), seeded here from the instance's own
generator. A few nevergrad optimizers also call numpy's global functions (``np.random.randint``
...): every nevergrad call runs with numpy's global state swapped for a private one owned by
the instance (seeded the same way) and swapped back afterwards, so the caller's global state
is never read or written and the trajectory depends on the seed alone.

State: the base class's replay state (constructor arguments, seed, told fitnesses). Replay is
exact for an optimizer whose arithmetic depends only on its random states and the fitnesses
(tested: NGOpt, TBPSA, DiagonalCMA, TwoPointsDE on the layer-wise shapes); one that reads the
clock (nevergrad's model-fitting loops have time limits) may ask different points on replay,
and such a state is refused in one line by the replay check (``OptimizerStateError``), never
continued on another trajectory.

An exception inside nevergrad becomes a one-line ``DfloraError`` naming the optimizer (e.g.
nevergrad 1.0.12's quadratic metamodel, which NGOpt picks at small dimensions once it has
d^2 / 2 points, fails under numpy 2.4 with "only 0-dimensional arrays can be converted"; it
never triggers at d = 500 within a layer's budget).

Fitness: nevergrad is told finite values only; a non-finite fitness (+inf, a failed
candidate) is told as the generation's worst finite value plus its magnitude plus 1 (1e10
when none is finite), so it ranks last.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np

from ..errors import ConfigError, DfloraError
from . import _checks
from .base import Optimizer

__all__ = ["Nevergrad", "import_nevergrad", "nevergrad_names"]

PREFIX = "ng:"


def import_nevergrad():
    try:
        import nevergrad
    except ImportError:
        raise ConfigError(
            "optimizer", "ng: optimizers need nevergrad: pip install 'dflora[nevergrad]' (make setup installs it)"
        ) from None
    return nevergrad


def nevergrad_names() -> list[str]:
    """Every optimizer name nevergrad's registry knows."""
    return sorted(import_nevergrad().optimizers.registry)


def check_nevergrad_name(name: str, field: str = "optimizer") -> str:
    known = import_nevergrad().optimizers.registry
    if name not in known:
        close = [n for n in sorted(known) if n.lower() == name.lower() or n.lower().startswith(name.lower()[:4])]
        hint = f"; did you mean {', '.join(PREFIX + n for n in close[:5])}?" if close else ""
        raise ConfigError(field, f"{PREFIX}{name} is not a nevergrad optimizer{hint} (nevergrad's registry names)")
    return name


def _finite(f: np.ndarray) -> np.ndarray:
    ok = np.isfinite(f)
    if ok.all():
        return f
    worst = float(f[ok].max()) if ok.any() else None
    fill = 1e10 if worst is None else worst + abs(worst) + 1.0
    return np.where(ok, f, fill)


class Nevergrad(Optimizer):
    """A nevergrad optimizer over R^dim, started at x0 with mutation scale sigma, seeded, whole-population asks."""

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,  # start point (the parametrization's initial value)
        sigma: float = 1.0,  # the parametrization's mutation scale (nevergrad's sigma of an Array)
        popsize: int = 20,  # candidates per ask = nevergrad's num_workers
        seed: int = 0,  # seeds the instance's own generator, which seeds nevergrad's random states
        bounds: tuple[float, float] | None = None,  # a box set on the parametrization (nevergrad maps into it)
        max_evaluations: int | None = None,  # nevergrad's budget (some optimizers choose their algorithm by it)
        name: str = "NGOpt",  # a name of nevergrad's optimizer registry
    ) -> None:
        super().__init__(dim, x0, seed=seed, bounds=bounds, max_evaluations=max_evaluations)
        ng = import_nevergrad()
        self.name = check_nevergrad_name(name)
        self.sigma = _checks.positive("sigma", sigma)
        self.popsize = _checks.count("popsize", popsize)
        param = ng.p.Array(init=self._x0.copy()).set_mutation(sigma=self.sigma)
        if self.bounds is not None:
            param.set_bounds(self.bounds[0], self.bounds[1])
        param.random_state = np.random.RandomState(int(self._rng.integers(2**32)))
        self._global = np.random.RandomState(int(self._rng.integers(2**32))).get_state()
        with self._own_global_state():
            self._opt = ng.optimizers.registry[self.name](
                parametrization=param, budget=max_evaluations, num_workers=self.popsize
            )
        self._candidates: list[Any] = []

    @contextlib.contextmanager
    def _own_global_state(self):
        """nevergrad's calls see (and advance) this instance's private numpy global state, silently."""
        saved = np.random.get_state()
        np.random.set_state(self._global)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pycma's and nevergrad's chatter (e.g. TPA consistency notes)
                yield
        except (TypeError, ValueError, ArithmeticError, RuntimeError) as err:  # inside nevergrad: one line
            raise DfloraError(f"nevergrad's {self.name} failed at evaluation {self.evaluations}: "
                              f"{type(err).__name__}: {err}; choose another ng: optimizer") from err  # fmt: skip
        finally:
            self._global = np.random.get_state()
            np.random.set_state(saved)

    def _ask(self) -> np.ndarray:
        with self._own_global_state():
            self._candidates = [self._opt.ask() for _ in range(self.popsize)]
        return np.stack([np.asarray(c.value, dtype=np.float64).reshape(self.dim) for c in self._candidates])

    def _tell(self, x: np.ndarray, f: np.ndarray) -> None:
        with self._own_global_state():
            for cand, value in zip(self._candidates, _finite(f), strict=True):
                self._opt.tell(cand, float(value))
        self._candidates = []

    def _library_versions(self) -> dict[str, str]:
        import cma

        return {**super()._library_versions(), "nevergrad": import_nevergrad().__version__, "cma": cma.__version__}

    @property
    def step_size(self) -> float:
        """The parametrization's mutation scale (nominal: nevergrad's optimizers adapt their own)."""
        return self.sigma

    @property
    def optimizer(self) -> Any:
        """The wrapped nevergrad optimizer (read-only use)."""
        return self._opt
