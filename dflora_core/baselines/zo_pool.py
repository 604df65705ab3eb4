"""The 2025-2026 zeroth-order peers: several perturbed models per step, turned into one step.

Written from the papers (no code copied; docs/baselines.md states the settings). Every perturbed
model scored counts as one forward pass over the batch, whether it was scored alone or in a batch.

- ``mezo-gv`` (MeZO with a guiding vector, arXiv 2601.04710): a pool of M Gaussian perturbations z_i
  is scored at theta + eps z_i (M passes); the guiding vector is the mean of the low-loss group minus
  the mean of the high-loss group (each ``zo_guide_fraction`` of the pool), rescaled so that its
  entries have unit variance as z's do; a two-point SPSA step along it (2 passes): M + 2 per step.
- ``mezo-greedy`` (same paper): the pool's single best perturbation z* is the direction; the
  two-point step along it needs one more pass (L(theta + eps z*) is the pool's): M + 1 per step.
- ``fzoo`` (arXiv 2506.09034): N Rademacher perturbations u_i (entries +-1), one-sided differences
  l_i - l_0 against L(theta), and the step divided by the standard deviation of the N losses:
  theta -= lr / (N sigma) sum_i (l_i - l_0) u_i: N + 1 passes per step.
- ``lozo`` / ``lozo-m`` (arXiv 2410.07698): each weight matrix W [m, n] is perturbed by U V^T /
  sqrt(r) (U [m, r] drawn every step, V [n, r] kept for ``lozo_interval`` steps; entries of unit
  variance, so lr and eps mean what MeZO's do), a 1-D tensor by a Gaussian z; a two-point step
  (2 passes). LOZO-M keeps its momentum of a matrix in factor form, N [m, r] (N = beta N + g U /
  sqrt(r), W -= lr N V^T): an m x r buffer instead of m x n; when V is redrawn, N is projected onto
  the new V (N V_old^T V_new / n). Native scheme: ``all``. On ``lora`` each factor matrix (rank 8 x
  d) gets a rank-r perturbation of the factor, not of the update: said in the record.

On the ``lora`` scheme a step's perturbed models are scored in one batched forward
(``zo_batch``); on the others they are applied and undone in place from their seeds, as MeZO does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..seeds import derive
from ._common import no_grad_params, run_steps
from .gradient import _finish
from .zeroth_order import DEFAULT_EPS, DEFAULT_LR, DirectionalStep, directions, zo_options
from .zo_batch import lora_layers, pool_losses
from .zo_schemes import magnitude_masks, split_hybrid, trainable

POOL_METHODS = ("mezo-gv", "mezo-greedy", "fzoo")
LOZO_METHODS = ("lozo", "lozo-m")


def rademacher(params: dict[str, torch.Tensor], seed: int, masks=None):
    """Yield (tensor, u) with u's entries +-1 (zero outside the mask), the same for the same seed."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in params.items():
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        u = torch.randint(0, 2, p.shape, generator=gens[p.device], device=p.device).to(p.dtype).mul_(2).sub_(1)
        if masks is not None and name in masks:
            u.mul_(masks[name])
        yield p, u


def combined(params: dict[str, torch.Tensor], draw, seeds: list[int], coefs: list[float], masks=None):
    """Yield (tensor, sum_i coefs[i] * draw(seeds[i])) per tensor, one tensor's directions at a time.

    Only the streams with a non-zero coefficient are drawn: each seed owns its generator, so a skipped
    stream changes no other. Scoring a pool member is a one-hot combination, and drawing all M streams
    for it made the in-place (``all``) scheme's step cost M^2 draws of the whole model instead of M."""
    live = [(s, c) for s, c in zip(seeds, coefs, strict=True) if c]
    if not live:
        for p in params.values():
            yield p, torch.zeros_like(p)
        return
    streams = [draw(params, s, masks) for s, _c in live]
    for parts in zip(*streams, strict=True):
        p = parts[0][0]
        out = torch.zeros_like(p)
        for (_q, z), (_s, c) in zip(parts, live, strict=True):
            out.add_(z, alpha=c)
        yield p, out


class PoolStep(DirectionalStep):
    """mezo-gv, mezo-greedy and fzoo: a pool of perturbed models per step (module docstring)."""

    def __init__(self, exp, params, lr: float, eps: float, variant: str, seed: int, full: bool, *, pool: int = 8,
                 guide_fraction: float = 0.5, blocks=None, masks=None, batched: bool = False):  # fmt: skip
        super().__init__(exp, params, lr, seed, full, blocks=blocks, masks=masks)
        self.eps, self.variant, self.pool, self.guide_fraction = eps, variant, pool, guide_fraction
        self.draw = rademacher if variant == "fzoo" else directions
        self.layers = lora_layers(exp.loaded.model, params) if batched else None
        self.last: dict = {}

    def seeds(self, step: int) -> list[int]:
        return [derive(self.seed, "zo_pool", step, i, scheme=self.scheme) for i in range(self.pool)]

    # -- scoring: each perturbed model one forward pass ------------------------------------------------
    def score(self, batch, params, seeds: list[int], coefs: list[list[float]], with_start: bool = False) -> np.ndarray:
        """Losses of the models theta + sum_j coefs[k][j] draw(seeds[j]) for each k (+ theta itself first)."""
        if self.layers is not None and batch is not None:
            return self._score_batched(batch, params, seeds, coefs, with_start)
        out = [self.loss(batch)] if with_start else []
        for c in coefs:
            self._shift(params, seeds, c, 1.0)
            out.append(self.loss(batch))
            self._shift(params, seeds, c, -1.0)  # restored (up to rounding), as MeZO does
        return np.array(out)

    def _shift(self, params, seeds, coefs, sign: float) -> None:
        with torch.no_grad():
            for p, d in combined(params, self.draw, seeds, [sign * c for c in coefs], self.masks):
                p.add_(d)

    def _score_batched(self, batch, params, seeds, coefs, with_start) -> np.ndarray:
        rows = ([[0.0] * len(seeds)] if with_start else []) + [list(c) for c in coefs]
        names = list(params)
        deltas = {n: torch.zeros((len(rows), *params[n].shape), dtype=params[n].dtype, device=params[n].device)
                  for n in names}  # fmt: skip
        for j, s in enumerate(seeds):
            for n, (_p, z) in zip(names, self.draw(params, s, self.masks), strict=True):
                for k, row in enumerate(rows):
                    if row[j]:
                        deltas[n][k].add_(z, alpha=row[j])
        losses = pool_losses(self.exp, self.layers, self.params, deltas, batch, self.loss_fn)
        self.forward_rows += len(rows) * len(batch)
        return losses

    # -- the steps --------------------------------------------------------------------------------------
    def step(self, batch, step: int) -> float:
        params, seeds, M, eps = self.active(step), self.seeds(step), self.pool, self.eps
        one_hot = [[eps if j == i else 0.0 for j in range(M)] for i in range(M)]
        if self.variant == "fzoo":
            losses = self.score(batch, params, seeds, one_hot, with_start=True)
            l0, li = losses[0], losses[1:]
            sigma = float(np.std(li))
            self.last = {"l0": float(l0), "sigma": sigma}
            if not np.all(np.isfinite(losses)):
                return float("nan")
            if sigma > 0:
                self._shift(params, seeds, [-self.lr * (x - l0) / (M * sigma) for x in li], 1.0)
            return float(l0)
        li = self.score(batch, params, seeds, one_hot)
        if not np.all(np.isfinite(li)):
            return float("nan")
        order = np.argsort(li, kind="stable")
        if self.variant == "mezo-greedy":
            best = int(order[0])
            coef = [1.0 if j == best else 0.0 for j in range(M)]
            (minus,) = self.score(batch, params, seeds, [[-eps * c for c in coef]])
            plus = float(li[best])
        else:  # mezo-gv: the guiding vector, unit variance per entry
            k = max(1, int(round(self.guide_fraction * M)))
            scale = math.sqrt(k / 2)
            coef = [0.0] * M
            for j in order[:k]:
                coef[int(j)] += scale / k
            for j in order[-k:]:
                coef[int(j)] -= scale / k
            plus, minus = self.score(batch, params, seeds, [[eps * c for c in coef], [-eps * c for c in coef]])
        g = (plus - minus) / (2 * eps)
        self.last = {"projected_grad": float(g), "pool_best": float(li[order[0]]), "pool_worst": float(li[order[-1]])}
        if not math.isfinite(g):
            return float("nan")
        self._shift(params, seeds, [-self.lr * g * c for c in coef], 1.0)
        return float(0.5 * (plus + minus))

    def opt_state(self) -> dict:
        return {}  # stateless between steps: the directions are regenerated from the step's seeds

    def load_opt_state(self, state: dict) -> None:
        return None


def _run(method: str, exp, ctx) -> dict:
    cfg = exp.cfg
    b = cfg.baseline
    lr = b.lr or DEFAULT_LR[b.zo_params]
    eps = b.zo_eps or DEFAULT_EPS[b.zo_params]
    with trainable(exp, b.zo_params) as tr:
        with no_grad_params(tr.params):
            fo, zo_blocks = split_hybrid(tr, 0)
            blocks = zo_blocks if b.zo_block else None
            masks = magnitude_masks(tr.params, b.zo_sparsity, cfg.seed, cfg.seed_scheme) if b.zo_sparsity else None
            batched = b.zo_params == "lora"
            if method in LOZO_METHODS:
                from .lozo import LozoStep

                step = LozoStep(tr.exp, tr.params, lr, eps, cfg.seed, tr.full, rank=b.lozo_rank,
                                interval=b.lozo_interval, momentum=b.zo_momentum if method == "lozo-m" else None,
                                blocks=blocks, masks=masks, batched=batched)  # fmt: skip
            else:
                step = PoolStep(tr.exp, tr.params, lr, eps, method, cfg.seed, tr.full, pool=b.zo_pool,
                                guide_fraction=b.zo_guide_fraction, blocks=blocks, masks=masks, batched=batched)  # fmt: skip
            result = _finish(tr.exp, run_steps(step, tr.exp, ctx), tr.start_is_model)
            options = zo_options(cfg, tr, fo, blocks, masks)
    options.update(batched_scoring=batched, **({"pool": b.zo_pool} if method in POOL_METHODS else {}))
    if method == "mezo-gv":
        options["guide_fraction"] = b.zo_guide_fraction
    if method in LOZO_METHODS:
        options.update(lozo_rank=b.lozo_rank, lozo_interval=b.lozo_interval,
                       perturbs="each weight matrix by U V^T" if b.zo_params == "all"
                       else "each tensor (a LoRA factor matrix: a low-rank perturbation of the factor)")  # fmt: skip
    out = {**result, "lr": lr, "zo_eps": eps, "zo_params": b.zo_params, "zo_options": options,
           "params_optimised": options["perturbed_params"], "params_stored": tr.numel()}  # fmt: skip
    out.update(tr.info)
    return out


def run_mezo_gv(exp, ctx) -> dict:
    return _run("mezo-gv", exp, ctx)


def run_mezo_greedy(exp, ctx) -> dict:
    return _run("mezo-greedy", exp, ctx)


def run_fzoo(exp, ctx) -> dict:
    return _run("fzoo", exp, ctx)


def run_lozo(exp, ctx) -> dict:
    return _run("lozo", exp, ctx)


def run_lozo_m(exp, ctx) -> dict:
    return _run("lozo-m", exp, ctx)
