"""CMA-ES (the optimizer of C-LoRA) behind dflora's ask/tell protocol, wrapping pycma.

pycma pitfalls handled here (docs/method.md, section "Optimizers"):
- pycma's ``seed`` option re-seeds numpy's GLOBAL random state (and 0/None mean "seed from
  the clock"). We pass ``seed=nan`` ("do nothing") and a ``randn`` callable that draws from
  the instance's own ``numpy.random.Generator``; numpy's global state is never read or written.
- pycma writes ``outcmaes/`` into the working directory by default, and reads a signals
  file from it: ``verb_log=0``, ``verb_disp=0``, ``verbose=-9``, ``signals_filename=""``.
- State: the pycma object is never pickled. The base class's replay state (constructor
  arguments, seed, told fitnesses) rebuilds it exactly, in any process.

Termination: pycma's ``ask`` never consults its termination criteria (``tolfun``, ``tolx``,
``tolstagnation``, ``maxiter``, ...); only ``es.stop()`` reports them and this class never
calls it during ask/tell. So ``ask`` works for the whole budget, also after pycma would have
declared convergence (the distribution keeps sampling at its tiny sigma). ``termination``
exposes pycma's criteria for information.
"""

from __future__ import annotations

from typing import Any

import cma
import numpy as np

from ..errors import ConfigError
from . import _checks
from .base import Optimizer

__all__ = ["CMAES", "CMAESDiag", "GeneratorRandn"]

_RESERVED = ("randn", "seed")  # would break the own-generator guarantee


class GeneratorRandn:
    """pycma's ``randn`` option drawing from a ``numpy.random.Generator``.

    pycma calls ``randn(lam, N)`` and expects an array of that shape of iid N(0, 1).
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class CMAES(Optimizer):
    """CMA-ES (Hansen & Ostermeier 2001; pycma) with an own generator, silent, no files.

    One ``ask`` is one CMA-ES generation of ``popsize`` points. ``tell`` passes the
    fitnesses on in row order; +inf (failed evaluations; NaN is read as +inf) is ranked last
    by pycma. ``best_x``/``best_f`` are the best point told so far (exact, not pycma's).
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,  # start mean; zeros = "no update" in the intrinsic space
        sigma: float = 1.0,  # initial step size sigma0 (the released code's default; docs/method.md, optim.sigma)
        popsize: int = 20,  # lambda; the paper's population for CMA-ES
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # pycma's BoundTransform keeps samples inside
        max_evaluations: int | None = None,  # informational: ask never refuses (see module doc)
        options: dict | None = None,  # extra pycma options (not 'randn'/'seed')
    ) -> None:
        super().__init__(dim, x0, seed=seed, max_evaluations=max_evaluations)  # pycma maps the bounds
        self.sigma0 = _checks.positive("sigma", sigma)
        self.popsize = _checks.count("popsize", popsize, minimum=2)
        options = dict(options or {})
        bad = [k for k in _RESERVED if k in options]
        if bad:
            raise ConfigError("options", f"{bad} are set by CMAES itself (own generator, seed=nan)")
        opts: dict[str, Any] = {
            "popsize": self.popsize,
            "randn": GeneratorRandn(self._rng),
            "seed": np.nan,
            "verb_log": 0,
            "verb_disp": 0,
            "verbose": -9,
            "signals_filename": "",
        }
        if bounds is not None:
            _checks.as_bounds(self.dim, bounds, finite=False)
            lo, hi = bounds
            opts["bounds"] = [lo, hi]
        opts.update(options)
        self.bounds = bounds
        self._es = cma.CMAEvolutionStrategy(self._x0.copy(), self.sigma0, opts)
        self._asked: list[np.ndarray] | None = None

    def _ask(self) -> np.ndarray:
        self._asked = self._es.ask()
        return np.array(self._asked, dtype=np.float64)

    def _tell(self, x: np.ndarray, f: np.ndarray) -> None:
        # pycma finds its internal (genotype) copies by the objects it returned: tell those
        self._es.tell(self._asked, [float(v) for v in f])
        self._asked = None

    def _library_versions(self) -> dict[str, str]:
        return {**super()._library_versions(), "cma": cma.__version__}

    @property
    def step_size(self) -> float:
        """pycma's current sigma."""
        return float(self._es.sigma)

    @property
    def mean(self) -> np.ndarray:
        """Current distribution mean (pycma ``xmean``)."""
        return np.array(self._es.mean, dtype=np.float64)

    @property
    def termination(self) -> dict[str, Any]:
        """pycma's termination criteria that are met now (informational; ask never stops)."""
        return dict(self._es.stop())

    @property
    def es(self) -> cma.CMAEvolutionStrategy:
        """The wrapped pycma object (read-only use)."""
        return self._es


class CMAESDiag(CMAES):
    """Separable CMA-ES (pycma ``CMA_diagonal=True``: a diagonal covariance, Ros & Hansen 2008).

    It learns d variances instead of d^2 / 2 covariances, with learning rates raised
    accordingly, so it adapts within the few generations a layer gets at d = 500 (30 layers
    and 6,000 calls: about ten generations of 20 per layer), where full CMA-ES barely leaves
    its initial isotropic distribution. Same arguments and state as ``CMAES``.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        sigma: float = 1.0,
        popsize: int = 20,
        seed: int = 0,
        bounds: tuple[float, float] | None = None,
        max_evaluations: int | None = None,
        options: dict | None = None,  # extra pycma options; CMA_diagonal is True unless given
    ) -> None:
        opts = {"CMA_diagonal": True, **dict(options or {})}
        super().__init__(dim, x0, sigma, popsize, seed, bounds, max_evaluations, opts)
