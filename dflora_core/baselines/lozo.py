"""LOZO and LOZO-M (arXiv 2410.07698): two-point zeroth-order steps along low-rank perturbations.

A weight matrix W [m, n] is perturbed by Z = U V^T / sqrt(r) with U [m, r] drawn every step and
V [n, r] kept for ``interval`` steps (the paper's nu); dividing by sqrt(r) gives Z's entries unit
variance, as MeZO's z, so lr and eps keep MeZO's meaning. A tensor of another rank (a bias, a norm)
gets a Gaussian z. The step: g = (L(theta + eps Z) - L(theta - eps Z)) / (2 eps), W -= lr g Z
(2 forward passes). LOZO-M adds momentum kept in factor form: N [m, r] with N = beta N + g U / sqrt(r)
and W -= lr N V^T, an m x r buffer per matrix instead of m x n; a 1-D tensor keeps a plain buffer.
When V is redrawn the buffer is projected onto the new V: N <- N (V_old^T V_new) / n (V's columns are
nearly orthogonal with squared norm about n). Everything is regenerated from seeds (streams
``lozo_u`` per step, ``lozo_v`` per interval): no perturbation is stored, a resume is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..seeds import derive
from .zeroth_order import DirectionalStep
from .zo_batch import lora_layers, pool_losses


class LozoStep(DirectionalStep):
    """LOZO (``momentum`` None) or LOZO-M (``momentum`` beta)."""

    def __init__(self, exp, params, lr: float, eps: float, seed: int, full: bool, *, rank: int = 2,
                 interval: int = 50, momentum: float | None = None, blocks=None, masks=None, batched: bool = False):  # fmt: skip
        super().__init__(exp, params, lr, seed, full, blocks=blocks, masks=masks)
        self.eps, self.rank, self.interval, self.momentum = eps, rank, interval, momentum
        self.layers = lora_layers(exp.loaded.model, params) if batched else None
        self.buffers: dict[str, torch.Tensor] = {}  # LOZO-M: N [m, r] of a matrix, a full buffer otherwise
        self.buffer_interval: int | None = None  # the interval whose V the factor buffers refer to
        self.last_projected_grad = 0.0

    # -- the perturbation -----------------------------------------------------------------------------
    def _gen(self, stream: str, index: int, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derive(self.seed, stream, index, scheme=self.scheme))

    def factors(self, params: dict[str, torch.Tensor], step: int):
        """Yield (name, tensor, U or z, V or None) for ``step``: a matrix's factors, another tensor's z."""
        interval = step // self.interval
        gens_u: dict = {}
        gens_v: dict = {}
        for name, p in params.items():
            dev = p.device
            if dev not in gens_u:
                gens_u[dev], gens_v[dev] = self._gen("lozo_u", step, dev), self._gen("lozo_v", interval, dev)
            if p.dim() == 2:
                r = min(self.rank, *p.shape)
                U = torch.randn(p.shape[0], r, generator=gens_u[dev], device=dev, dtype=p.dtype)
                V = torch.randn(p.shape[1], r, generator=gens_v[dev], device=dev, dtype=p.dtype)
                yield name, p, U, V
            else:
                yield name, p, torch.randn(p.shape, generator=gens_u[dev], device=dev, dtype=p.dtype), None

    def _z(self, U: torch.Tensor, V: torch.Tensor | None, name: str) -> torch.Tensor:
        z = U if V is None else (U @ V.T) / math.sqrt(U.shape[1])
        return z.mul(self.masks[name]) if self.masks is not None and name in self.masks else z

    def _shift(self, params, step: int, scale: float) -> None:
        with torch.no_grad():
            for name, p, U, V in self.factors(params, step):
                p.add_(self._z(U, V, name), alpha=scale)

    # -- the step ---------------------------------------------------------------------------------------
    def step(self, batch, step: int) -> float:
        params, eps = self.active(step), self.eps
        if self.layers is not None and batch is not None:
            deltas = {}
            for name, _p, U, V in self.factors(params, step):
                z = self._z(U, V, name)
                deltas[name] = torch.stack([eps * z, -eps * z])
            plus, minus = pool_losses(self.exp, self.layers, self.params, deltas, batch, self.loss_fn)
            self.forward_rows += 2 * len(batch)
        else:
            self._shift(params, step, eps)
            plus = self.loss(batch)
            self._shift(params, step, -2 * eps)
            minus = self.loss(batch)
            self._shift(params, step, eps)  # restored (up to rounding)
        g = (plus - minus) / (2 * eps)
        self.last_projected_grad = g
        if not (math.isfinite(g) and np.isfinite(plus) and np.isfinite(minus)):
            return float("nan")
        with torch.no_grad():
            if self.momentum is None:
                for name, p, U, V in self.factors(params, step):
                    p.add_(self._z(U, V, name), alpha=-self.lr * g)
            else:
                self._momentum_step(params, step, g)
        return float(0.5 * (plus + minus))

    def _momentum_step(self, params, step: int, g: float) -> None:
        interval = step // self.interval
        old_v = None
        if self.buffer_interval is not None and self.buffer_interval != interval and self.buffers:
            old_v = {name: V for name, _p, _U, V in self._factors_at(params, self.buffer_interval)}
        self.buffer_interval = interval
        beta = float(self.momentum)
        for name, p, U, V in self.factors(params, step):
            if V is None or (self.masks is not None and name in self.masks):  # a plain buffer
                z = self._z(U, V, name)
                buf = self.buffers.get(name)
                buf = z.mul(g) if buf is None else buf.mul_(beta).add_(z, alpha=g)
                self.buffers[name] = buf
                p.add_(buf, alpha=-self.lr)
                continue
            r = U.shape[1]
            buf = self.buffers.get(name)
            if buf is not None and old_v is not None and old_v.get(name) is not None:
                buf = buf @ (old_v[name].T @ V) / V.shape[0]  # onto the new V
            buf = U.mul(g / math.sqrt(r)) if buf is None else buf.mul_(beta).add_(U, alpha=g / math.sqrt(r))
            self.buffers[name] = buf
            p.add_(buf @ V.T, alpha=-self.lr)

    def _factors_at(self, params, interval: int):
        """The factors of the first step of ``interval`` (their V is that interval's)."""
        return self.factors(params, interval * self.interval)

    def opt_state(self) -> dict:
        return {"buffers": {k: v.cpu() for k, v in self.buffers.items()}, "buffer_interval": self.buffer_interval}

    def load_opt_state(self, state: dict) -> None:
        dev = {k: p.device for k, p in self.params.items()}
        self.buffers = {k: v.to(dev[k]) for k, v in state["buffers"].items()}
        self.buffer_interval = state["buffer_interval"]
