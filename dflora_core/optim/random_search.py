"""Random search: the baseline every method must beat."""

from __future__ import annotations

import numpy as np

from . import _checks
from .base import Optimizer, into_bounds

__all__ = ["RandomSearch"]


class RandomSearch(Optimizer):
    """Pure random search around the start point, minimisation.

    Each ``ask`` returns ``popsize`` points x0 + sigma * N(0, I) (out-of-bound coordinates
    re-sampled uniformly inside the bounds, as for the fireworks); the best told point is
    kept. The sampling distribution never moves: it is the "no learning" reference at the
    same scale as CMA-ES's initial distribution.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        sigma: float = 1.0,  # per-coordinate std of the samples, like CMA-ES's sigma0
        popsize: int = 20,  # points per ask, like one CMA-ES generation
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # optional box, same for all optimizers
        max_evaluations: int | None = None,  # informational only
    ) -> None:
        super().__init__(dim, x0, seed=seed, bounds=bounds, max_evaluations=max_evaluations)
        self.sigma = _checks.positive("sigma", sigma)
        self.popsize = _checks.count("popsize", popsize)

    def _ask(self) -> np.ndarray:
        x = self._x0 + self.sigma * self._rng.standard_normal((self.popsize, self.dim))
        return into_bounds(x, self.bounds, self._rng)

    def _tell(self, x: np.ndarray, f: np.ndarray) -> None:
        pass  # nothing is learnt; the base class keeps the best point

    @property
    def step_size(self) -> float:
        return self.sigma
