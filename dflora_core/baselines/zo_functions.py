"""The zeroth-order estimators on a plain function, outside any model (tests, notebook 06).

``trace(method, f, x0, steps, lr, eps, seed)`` runs a method's own step class (the code a model run
uses) on ``f: R^D -> R`` and returns every point it evaluated (the perturbed models it scored) and
every iterate: the pictures of notebook 06 and the descent tests of tests/test_zo_pool.py. The
step classes see ``{"w": x}`` as their parameters and ``f`` as their loss.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from ..optim import make_optimizer

STEP_METHODS = ("zo-sgd", "mezo-gv", "mezo-greedy", "fzoo", "lozo")


def _stub(seed_scheme: int = 1):
    """What a step class reads of an experiment when it scores a plain function."""
    return SimpleNamespace(cfg=SimpleNamespace(seed_scheme=seed_scheme, search=SimpleNamespace(loss="ce")),
                           task=SimpleNamespace(metric="accuracy"), loaded=None)  # fmt: skip


def function_step(method: str, params: dict[str, torch.Tensor], lr: float, eps: float, seed: int, **kw):
    """The step object of ``method`` over ``params`` (its ``loss`` is set by the caller)."""
    from .zeroth_order import ZerothOrderStep
    from .zo_pool import PoolStep

    exp = _stub()
    if method == "zo-sgd":
        return ZerothOrderStep(exp, params, lr, eps, "sgd", seed, False)
    if method in ("mezo-gv", "mezo-greedy", "fzoo"):
        return PoolStep(exp, params, lr, eps, method, seed, False, **kw)
    if method in ("lozo", "lozo-m"):
        from .lozo import LozoStep

        return LozoStep(exp, params, lr, eps, seed, False, momentum=0.9 if method == "lozo-m" else None, **kw)
    raise KeyError(f"{method}: not a step method on a function; choose from {STEP_METHODS + ('lozo-m',)}")


def trace(
    method: str,
    f: Callable[[np.ndarray], float],
    x0,
    steps: int,
    lr: float,
    eps: float = 1e-2,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
    **kw,
) -> dict:
    """Run ``steps`` steps of ``method`` on ``f`` from ``x0``: {"iterates", "samples" (per step), "losses"}."""
    x = torch.tensor(np.asarray(x0, dtype=np.float64).reshape(shape or (-1,)), dtype=torch.float64)
    params = {"w": x}
    step = function_step(method, params, lr, eps, seed, **kw)
    seen: list[np.ndarray] = []

    def loss(_batch=None) -> float:
        point = params["w"].detach().numpy().reshape(-1).copy()
        seen.append(point)
        return float(f(point))

    step.loss = loss
    iterates, samples, losses = [x.numpy().reshape(-1).copy()], [], [float(f(x.numpy().reshape(-1)))]
    for t in range(steps):
        seen.clear()
        step.step(None, t)
        samples.append(np.array(seen))
        iterates.append(params["w"].numpy().reshape(-1).copy())
        losses.append(float(f(iterates[-1])))
    return {"method": method, "iterates": np.array(iterates), "samples": samples, "losses": np.array(losses)}


def forward_gradient_trace(f_torch: Callable[[torch.Tensor], torch.Tensor], x0, steps: int, lr: float,
                           seed: int = 0) -> dict:  # fmt: skip
    """Forward gradient on a torch function: d = grad f . v by one jvp, x -= lr d v (Baydin et al. 2022)."""
    from torch.func import jvp

    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(np.asarray(x0, dtype=np.float64))
    iterates, losses = [x.numpy().copy()], [float(f_torch(x))]
    for _ in range(steps):
        v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        _value, d = jvp(f_torch, (x,), (v,))
        x = x - lr * d * v
        iterates.append(x.numpy().copy())
        losses.append(float(f_torch(x)))
    return {"method": "forward-grad", "iterates": np.array(iterates), "samples": [], "losses": np.array(losses)}


def cmaes_trace(f: Callable[[np.ndarray], float], x0, generations: int, sigma: float, popsize: int = 6,
                seed: int = 0) -> dict:  # fmt: skip
    """CMA-ES (pycma, C-LoRA's optimizer) from ``x0``: its ranked populations and means."""
    x0 = np.asarray(x0, dtype=np.float64)
    opt = make_optimizer("cmaes", len(x0), x0=x0, sigma=sigma, popsize=popsize, seed=seed)
    iterates, samples, losses = [x0.copy()], [], [float(f(x0))]
    for _ in range(generations):
        X = opt.ask()
        opt.tell(X, np.array([f(p) for p in X]))
        samples.append(np.array(X))
        best = np.asarray(opt.best_x)
        iterates.append(best)
        losses.append(float(f(best)))
    return {"method": "cma-es", "iterates": np.array(iterates), "samples": samples, "losses": np.array(losses)}
