"""``es-full``: evolution strategies on every weight with seeded perturbations (Qiu et al. 2025).

One step (docs/baselines.md):

- N members (``baseline.es_population``, 30). Member n's perturbation eps_n ~ N(0, I) of
  every weight is generated from its own seed (stream ``es_members``, (step, n)) and never
  stored: the weights are moved in place, theta + sigma eps_n, its train loss L_n is measured
  (one forward of the batch), and theta - sigma eps_n restores them (up to rounding), as
  ``zo-sgd`` does. sigma = ``baseline.es_sigma`` (1e-3).
- Fitness is rank-normalised: u_n = rank(L_n) / (N - 1) - 1/2 in [-1/2, 1/2] (the lowest loss
  gets -1/2; tied losses share their mean rank; a non-finite loss ranks last).
- The update is the seed-weighted sum, each eps_n regenerated from its seed:
  theta -= (lr / N) sum_n u_n eps_n, lr = ``baseline.lr`` (default 5e-4).

N forwards per step and no backward: the whole population is charged as calls
(``STEP_COST``: N x batch / train-set size calls per step). Memory: the weights alone, plus the
copy that restores the shared model after the run.
"""

from __future__ import annotations

import numpy as np

from ..experiment import Experiment
from ..methods import RunContext
from ..seeds import derive
from ._common import no_grad_params, run_steps
from .gradient import _finish
from .zeroth_order import DirectionalStep, perturb
from .zo_schemes import all_weights

DEFAULT_LR = 5e-4  # Qiu et al. 2025 (about 5e-4 with sigma about 1e-3)


def member_seed(seed: int, step: int, member: int, scheme: int = 1) -> int:
    """The seed of member ``member``'s perturbation at ``step`` (regenerated, never stored)."""
    return derive(seed, "es_members", step, member, scheme=scheme)


def centered_ranks(losses) -> np.ndarray:
    """u_n = rank / (N - 1) - 1/2 (ties share their mean rank; NaN and +-inf rank last)."""
    f = np.where(np.isfinite(losses), np.asarray(losses, dtype=np.float64), np.inf)
    ranks = np.empty(len(f))
    ranks[np.argsort(f, kind="stable")] = np.arange(len(f))
    for value in np.unique(f):
        tied = f == value
        ranks[tied] = ranks[tied].mean()
    return ranks / (len(f) - 1) - 0.5


class EvolutionStep(DirectionalStep):
    """One ES step of ``population`` seeded members on the trainable tensors, in place."""

    def __init__(self, exp: Experiment, params, lr: float, sigma: float, population: int, seed: int, full: bool):
        super().__init__(exp, params, lr, seed, full)
        self.sigma, self.population = sigma, population
        self.last_losses: np.ndarray | None = None
        self.last_weights: np.ndarray | None = None

    def seeds(self, step: int) -> list[int]:
        return [member_seed(self.seed, step, n, self.scheme) for n in range(self.population)]

    def step(self, batch, step: int) -> float:
        seeds = self.seeds(step)
        losses = []
        for s in seeds:
            perturb(self.params, s, self.sigma)
            losses.append(self.loss(batch))
            perturb(self.params, s, -self.sigma)  # restored (up to rounding)
        f = np.asarray(losses)
        if not np.isfinite(f).any():
            return float("nan")
        u = centered_ranks(f)
        self.last_losses, self.last_weights = f, u
        for s, weight in zip(seeds, u, strict=True):
            perturb(self.params, s, -self.lr * float(weight) / self.population)
        return float(f[np.isfinite(f)].mean())


def run_es_full(exp: Experiment, ctx: RunContext) -> dict:
    b = exp.cfg.baseline
    lr = b.lr or DEFAULT_LR
    with all_weights(exp) as params, no_grad_params(params):
        step = EvolutionStep(exp, params, lr, b.es_sigma, b.es_population, exp.cfg.seed, full=True)
        result = _finish(exp, run_steps(step, exp, ctx))
        n = int(sum(p.numel() for p in params.values()))
    return {**result, "lr": lr, "es_sigma": b.es_sigma, "es_population": b.es_population, "zo_params": "all",
            "params_optimised": n, "params_stored": n}  # fmt: skip
