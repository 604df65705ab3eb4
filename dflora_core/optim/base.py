"""The ask/tell protocol every derivative-free optimizer in dflora follows.

Minimisation throughout. One optimizer instance searches one vector space (one layer's
intrinsic z in the layer-wise loop). The caller owns the evaluation:

    x = opt.ask()                 # [n, dim] float64, n may vary between calls
    f = evaluate(x)               # [n] float64, +inf allowed for failures
    opt.tell(x, f)

Rules shared by all implementations:
- ``ask`` returns every point that must be evaluated before the next ``tell``; the
  caller charges exactly ``len(x)`` evaluations (exact accounting).
- ``tell`` receives the same array ``ask`` returned (same order) and finite or +inf
  fitnesses (the caller maps NaN to +inf before telling).
- The instance owns its random generator (``numpy.random.Generator``) seeded at
  construction; no global random state is read or written; no files are written.
- ``state_dict()`` returns a picklable dict from which ``load_state_dict`` restores an
  identical optimizer: ask/tell after a restore gives the same trajectory as without.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class AskTellOptimizer(Protocol):
    dim: int

    def ask(self) -> np.ndarray:
        """Points to evaluate next, shape [n, dim]."""
        ...

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        """Report the fitnesses of the points returned by the last ``ask``."""
        ...

    @property
    def best_x(self) -> np.ndarray:
        """Best point evaluated so far (the start point before any tell)."""
        ...

    @property
    def best_f(self) -> float:
        """Fitness of ``best_x`` (+inf before any tell)."""
        ...

    @property
    def step_size(self) -> float:
        """A scalar summary of the current search scale (CMA-ES sigma, mean firework amplitude...)."""
        ...

    @property
    def evaluations(self) -> int:
        """Evaluations told so far."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
