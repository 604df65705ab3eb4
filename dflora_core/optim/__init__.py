"""Derivative-free optimizers behind one ask/tell base class (see ``base``), and a factory.

    from dflora_core.optim import make_optimizer
    opt = make_optimizer("lotfwa", dim=500, sigma=0.2, popsize=20, seed=0, max_evaluations=300)
    while opt.evaluations < 300:
        x = opt.ask()
        opt.tell(x, evaluate(x))

Names: "cmaes" (pycma CMA-ES, C-LoRA), "cmaes-diag" (separable CMA-ES), "lotfwa" (loser-out
tournament fireworks with guiding sparks, F-LoRA), "fwa" (bare-bones fireworks, one firework),
"random" (random search), and "ng:NAME" for any optimizer of nevergrad (``ng.py``; the
``nevergrad`` extra, imported only then).
Every optimizer's ``state_dict()`` is code-free (JSON values and numpy arrays) and restores
exactly by replay: ``base`` documents the format. Algorithms, decisions and measurements:
docs/method.md, section "Optimizers".
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import testfunctions
from .base import AskTellOptimizer, Optimizer, OptimizerStateError, join_state, split_state
from .cmaes import CMAES, CMAESDiag
from .fireworks import FWA, FireworksOptions, LoTFWA, guiding_delta, loser_mask
from .random_search import RandomSearch

__all__ = [
    "AskTellOptimizer",
    "Optimizer",
    "OptimizerStateError",
    "split_state",
    "join_state",
    "FireworksOptions",
    "CMAES",
    "CMAESDiag",
    "LoTFWA",
    "FWA",
    "RandomSearch",
    "OPTIMIZERS",
    "make_optimizer",
    "resolve_name",
    "describe",
    "fireworks_shape",
    "guiding_delta",
    "loser_mask",
    "testfunctions",
]

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "cmaes": CMAES,
    "cmaes-diag": CMAESDiag,
    "lotfwa": LoTFWA,
    "fwa": FWA,
    "random": RandomSearch,
}

_DESCRIPTIONS = {
    "cmaes": "CMA-ES (pycma) with popsize points per generation: the optimizer of C-LoRA.",
    "cmaes-diag": "Separable CMA-ES (pycma CMA_diagonal): d variances, adapts within the few generations of d = 500.",
    "lotfwa": "Loser-out tournament fireworks algorithm with guiding sparks (Li & Tan 2018): the optimizer of F-LoRA.",
    "fwa": "Bare-bones fireworks algorithm: one firework, popsize uniform sparks, amplitude x1.2/x0.9, elitist.",
    "random": "Random search: popsize Gaussian samples around the start point (scale sigma), keeps the best.",
}

NG_PREFIX = "ng:"  # any nevergrad optimizer: ng:NGOpt, ng:TBPSA, ng:DiagonalCMA, ng:TwoPointsDE ...
_DEFAULT_FIREWORKS = 2  # LoTFWA's measured default at 20 calls/generation (docs/method.md, "Optimizers")


def describe(name: str) -> str:
    """One-line description of an optimizer name (for docs and ``--help``)."""
    key = resolve_name(name)
    if key.startswith(NG_PREFIX):
        return f"nevergrad's {key[len(NG_PREFIX):]} with popsize candidates per ask (num_workers = popsize)."
    return _DESCRIPTIONS[key]


def resolve_name(name: str, field: str = "optimizer") -> str:
    """The canonical optimizer name (``ng:NAME`` keeps nevergrad's spelling); ConfigError naming ``field``."""
    text = str(name).strip()
    if text[: len(NG_PREFIX)].lower() == NG_PREFIX:
        from .ng import check_nevergrad_name

        return NG_PREFIX + check_nevergrad_name(text[len(NG_PREFIX) :], field)
    key = text.lower()
    if key not in OPTIMIZERS:
        known = ", ".join([*OPTIMIZERS, NG_PREFIX + "NAME (nevergrad)"])
        raise ConfigError(field, f"unknown optimizer {name!r}; known: {known}")
    return key



def fireworks_shape(
    popsize: int, n_fireworks: int | None = None, sparks_per_firework: int | None = None
) -> tuple[int, int]:
    """(n, m) for LoTFWA from the target evaluations per generation ``popsize`` = n (m + 1).

    Neither given: n = 2 (default), m = max(2, round(popsize / n) - 1).
    n given: m = max(2, round(popsize / n) - 1).  m given: n = max(1, round(popsize / (m + 1))).
    Both given: used as they are. popsize 20 -> (2, 9); with n = 4 -> (4, 4); n = 5 -> (5, 3).
    """
    if n_fireworks is not None and sparks_per_firework is not None:
        return int(n_fireworks), int(sparks_per_firework)
    if sparks_per_firework is not None:
        return max(1, round(popsize / (sparks_per_firework + 1))), int(sparks_per_firework)
    n = _DEFAULT_FIREWORKS if n_fireworks is None else int(n_fireworks)
    if n < 1:
        raise ConfigError("n_fireworks", f"must be >= 1, got {n}")
    return n, max(2, round(popsize / n) - 1)


def _check_options(name: str, cls: type, options: dict[str, Any], taken: set[str]) -> None:
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "dim"} - taken
    unknown = sorted(set(options) - params)
    if unknown:
        raise ConfigError(
            "optimizer",
            f"unknown option(s) {unknown} for {name!r}; valid: {', '.join(sorted(params))}",
        )


def make_optimizer(
    name: str,
    dim: int,
    *,
    x0: np.ndarray | None = None,
    sigma: float = 1.0,
    popsize: int = 20,
    seed: int = 0,
    max_evaluations: int | None = None,
    bounds: tuple[float, float] | None = None,
    **options: Any,
) -> Optimizer:
    """Build an optimizer by name with the shared arguments.

    - ``sigma``: the initial search scale (CMA-ES sigma0; fireworks: initial amplitude
      sqrt(3) * sigma, the same per-coordinate std; random search: the sampling std).
    - ``popsize``: evaluations per generation. cmaes: lambda. random: points per ask.
      fwa: sparks per generation (the first ask has one more point, x0). lotfwa: the target
      n (m + 1), from which n and m are derived unless given (``fireworks_shape``):
      20 -> n = 2 fireworks x (9 sparks + 1 guiding spark).
    - ``max_evaluations``: this instance's own budget. LoTFWA needs it for the loser-out
      tournament (None: no restarts); for the others it is informational.
    - ``**options``: cmaes: pycma options (or ``options={...}``), except 'randn'/'seed';
      others: constructor keywords of the class (e.g. ``n_fireworks``, ``guiding``,
      ``init_spread``). Unknown names raise ``ConfigError``.
    """
    key = resolve_name(name)
    shared = dict(x0=x0, sigma=sigma, seed=seed, max_evaluations=max_evaluations, bounds=bounds)
    if key in ("cmaes", "cmaes-diag"):
        pycma_options = dict(options.pop("options", None) or {})
        pycma_options.update(options)
        _check_cma_options(pycma_options)
        return OPTIMIZERS[key](dim, popsize=popsize, options=pycma_options, **shared)
    if key.startswith(NG_PREFIX):
        from .ng import Nevergrad

        if options:
            raise ConfigError("optimizer", f"{key} takes no options (got {sorted(options)})")
        return Nevergrad(dim, popsize=popsize, name=key[len(NG_PREFIX) :], **shared)
    cls = OPTIMIZERS[key]
    if key == "lotfwa":
        _check_options(key, cls, options, set(shared))
        n, m = fireworks_shape(popsize, options.pop("n_fireworks", None), options.pop("sparks_per_firework", None))
        return LoTFWA(dim, n_fireworks=n, sparks_per_firework=m, **shared, **options)
    if key == "fwa":
        _check_options(key, cls, options, set(shared) | {"sparks"})
        return FWA(dim, sparks=popsize, **shared, **options)
    _check_options(key, cls, options, set(shared) | {"popsize"})
    return RandomSearch(dim, popsize=popsize, **shared, **options)


def _check_cma_options(options: dict[str, Any]) -> None:
    import cma

    known = set(cma.CMAOptions())
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ConfigError("optimizer", f"unknown pycma option(s) {unknown} for 'cmaes'")
