"""Notebook 06's worked example: every zeroth-order estimator and CMA-ES on one 2-D ill-conditioned
quadratic, from one start, with the same number of function evaluations (no model)."""

from __future__ import annotations

import numpy as np
import torch

from ..baselines.zo_functions import cmaes_trace, forward_gradient_trace, trace
from ..optim.testfunctions import ellipsoid

CONDITION = 10.0  # curvatures 2 and 20: the valley of the picture
X0 = (1.6, 1.2)
EVALUATIONS = 90  # function evaluations each method may spend (a forward pass = one evaluation)
# per method: (its name, evaluations per step, lr (CMA-ES: sigma), eps): lrs stable on this quadratic
# (lr |z|^2 x curvature < 2); eps 0.1 so that the perturbed points show in the picture (a two-point estimate
# of a quadratic is exact for any eps; FZOO's one-sided one carries a bias eps^2 tr(H) / 2)
SETTINGS = {
    "MeZO (two-point SPSA)": ("zo-sgd", 2, 0.02, 0.1),
    "forward gradient": ("forward-grad", 1, 0.02, None),
    "FZOO (8 one-sided)": ("fzoo", 9, 0.3, 0.1),
    "MeZO-GV (guided)": ("mezo-gv", 10, 0.02, 0.1),
    "MeZO-Greedy": ("mezo-greedy", 9, 0.02, 0.1),
    "CMA-ES (ranked population)": ("cma-es", 6, 0.5, None),
}


def f(x: np.ndarray) -> float:
    return float(ellipsoid(np.asarray(x, dtype=np.float64), condition=CONDITION))


def f_torch(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([1.0, CONDITION], dtype=x.dtype)
    return (w * x * x).sum()


def traces(evaluations: int = EVALUATIONS, eps_scale: float = 1.0, seed: int = 0) -> dict[str, dict]:
    """Each method's trace within ``evaluations`` function evaluations; ``eps_scale`` multiplies every eps."""
    out = {}
    for label, (method, per_step, lr, eps) in SETTINGS.items():
        steps = max(1, evaluations // per_step)
        if method == "forward-grad":
            t = forward_gradient_trace(f_torch, X0, steps, lr, seed=seed)
        elif method == "cma-es":
            t = cmaes_trace(f, X0, steps, sigma=lr, popsize=per_step, seed=seed)
        else:
            kw = {} if method == "zo-sgd" else {"pool": 8}
            t = trace(method, f, X0, steps, lr, eps * eps_scale, seed=seed, **kw)
        t["label"], t["per_step"] = label, per_step
        t["evaluations"] = np.arange(len(t["losses"])) * per_step
        out[label] = t
    return out
