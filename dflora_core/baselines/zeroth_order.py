"""Zeroth-order and forward-gradient baselines (the ZO-LLM benchmark's family), on LoRA or all weights.

- ``zo-sgd`` (MeZO, Malladi et al. 2023): a step draws z ~ N(0, I) from a per-step seed,
  perturbs the weights in place, theta + eps z, then theta - eps z, measures the loss twice
  (2 forward passes, no backward, no gradient memory), restores theta by regenerating z
  from the same seed and steps theta -= lr g z with g = (L+ - L-) / (2 eps).
- ``zo-sgd-sign``: theta -= lr sign(g z) (ZO-SignSGD).
- ``zo-adam``: Adam on the estimate g z (keeps two moments: no longer memory-free).
- ``forward-grad`` (Baydin et al. 2022): one Jacobian-vector product per step gives the
  exact directional derivative d = grad L . v for a random v; theta -= lr d v. It runs
  ``torch.func.jvp`` through the model with the math attention kernel (the fused kernels
  have no forward-mode derivative).

``baseline.zo_params``: "lora" tunes PEFT LoRA factors (the ``lora`` method's rank, alpha and
targets; B starts at 0 so the start is the unadapted model), "all" tunes every weight in
place (the model is restored from a copy afterwards because the loaded model is shared).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from ..experiment import Experiment
from ..methods import RunContext
from ..models.scoring import class_logits
from ..seeds import derive
from ._common import StepMethod, make_loss, no_grad_params, run_steps, snapshot
from .gradient import _finish, live_head, lora_seed, peft_lora

# MeZO's settings: LoRA lr 1e-4 / eps 1e-2, full parameters lr 1e-6 / eps 1e-3 (untuned here)
DEFAULT_LR = {
    ("zo-sgd", "lora"): 1e-4,
    ("zo-sgd", "all"): 1e-6,
    ("zo-sgd-sign", "lora"): 1e-4,
    ("zo-sgd-sign", "all"): 1e-6,
    ("zo-adam", "lora"): 1e-4,
    ("zo-adam", "all"): 1e-6,
    ("forward-grad", "lora"): 1e-4,
    ("forward-grad", "all"): 1e-6,
}
DEFAULT_EPS = {"lora": 1e-2, "all": 1e-3}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def step_seed(seed: int, step: int, scheme: int = 1) -> int:
    """The seed of a step's random direction (regenerated, never stored), from the run's seed."""
    return derive(seed, "zo_directions", step, scheme=scheme)


def directions(params: dict[str, torch.Tensor], seed: int):
    """Yield (tensor, z) with z ~ N(0, I) of the tensor's shape, always the same for the same seed."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params.values():
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        yield p, torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=p.dtype)


def perturb(params: dict[str, torch.Tensor], seed: int, scale: float) -> None:
    """theta += scale * z(seed), in place, one tensor at a time (no copy of the weights)."""
    with torch.no_grad():
        for p, z in directions(params, seed):
            p.add_(z, alpha=scale)


class ZerothOrderStep(StepMethod):
    """Two-point (SPSA) estimate along a seeded Gaussian direction; sgd, sign or adam update."""

    def __init__(self, exp: Experiment, params, lr: float, eps: float, update: str, seed: int, full: bool):
        super().__init__(exp, params, lr)
        self.eps, self.update, self.seed, self.full = eps, update, seed, full
        self.scheme = exp.cfg.seed_scheme
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.t = 0
        self.loss_fn = make_loss(exp.cfg.search.loss, exp.task.metric)
        self.last_projected_grad = 0.0

    def loss(self, batch) -> float:
        head = live_head(self.exp) if self.full else self.exp.head
        logits = class_logits(self.exp.loaded, head, batch, self.exp.max_tokens, self.exp.dtype)
        self.forward_rows += len(batch)
        return float(self.loss_fn(logits, batch.labels))

    def step(self, batch, step: int) -> float:
        seed = step_seed(self.seed, step, self.scheme)
        perturb(self.params, seed, self.eps)
        plus = self.loss(batch)
        perturb(self.params, seed, -2 * self.eps)
        minus = self.loss(batch)
        perturb(self.params, seed, self.eps)  # restored (up to rounding)
        g = (plus - minus) / (2 * self.eps)
        self.last_projected_grad = g
        if not math.isfinite(g):
            return float("nan")
        self.apply(seed, g)
        return 0.5 * (plus + minus)

    def apply(self, seed: int, g: float) -> None:
        with torch.no_grad():
            if self.update == "sgd":
                for p, z in directions(self.params, seed):
                    p.add_(z, alpha=-self.lr * g)
            elif self.update == "sign":
                for p, z in directions(self.params, seed):
                    p.add_(torch.sign(z), alpha=-self.lr * float(np.sign(g)))
            else:  # adam on g z
                self.t += 1
                b1, b2 = ADAM_BETAS
                names = list(self.params)
                for name, (p, z) in zip(names, directions(self.params, seed), strict=True):
                    grad = z.mul_(g)
                    if name not in self.moments:
                        self.moments[name] = (torch.zeros_like(p), torch.zeros_like(p))
                    m, v = self.moments[name]
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    mhat = m / (1 - b1**self.t)
                    vhat = v / (1 - b2**self.t)
                    p.add_(mhat / (vhat.sqrt() + ADAM_EPS), alpha=-self.lr)

    def opt_state(self) -> dict:
        return {"t": self.t, "moments": {k: (m.cpu(), v.cpu()) for k, (m, v) in self.moments.items()}}

    def load_opt_state(self, state: dict) -> None:
        self.t = state["t"]
        dev = {k: p.device for k, p in self.params.items()}
        self.moments = {k: (m.to(dev[k]), v.to(dev[k])) for k, (m, v) in state["moments"].items()}

    def refresh(self) -> None:
        if self.full:
            self.exp.head = live_head(self.exp)


class _Scorer(nn.Module):
    """model -> class logits at the scored positions, so that torch.func can re-parametrize it."""

    def __init__(self, exp: Experiment, full: bool):
        super().__init__()
        self.model = exp.loaded.model
        self.exp, self.full = exp, full

    def forward(self, input_ids, attention_mask, positions):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = hidden[torch.arange(len(positions), device=hidden.device), positions]
        head = live_head(self.exp) if self.full else self.exp.head
        return head(picked).float()


def directional_derivative(exp: Experiment, params: dict[str, torch.Tensor], tangents, data, loss_fn, full=False):
    """(loss, d loss . v) on ``data`` with one jvp per token-budget chunk (torch.func.jvp)."""
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..models.scoring import autocast

    scorer = _Scorer(exp, full)
    names = ["model." + n for n in params]
    primals = tuple(p.detach() for p in params.values())
    loss, deriv, n = 0.0, 0.0, len(data)
    for batch in data.batches(exp.max_tokens, exp.loaded.device):
        labels = data.labels[batch.index.cpu()].to(exp.loaded.device)

        def f(*values, batch=batch, labels=labels):
            logits = functional_call(
                scorer, dict(zip(names, values, strict=True)), (batch.input_ids, batch.attention_mask, batch.positions)
            )
            return loss_fn(logits, labels)

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), autocast(exp.loaded.device, exp.dtype):
            value, dot = jvp(f, primals, tuple(tangents))
        w = len(batch.index) / n
        loss += float(value) * w
        deriv += float(dot) * w
    return loss, deriv


class ForwardGradientStep(StepMethod):
    """theta -= lr (grad L . v) v with v ~ N(0, I) from a per-step seed; one jvp of the batch per step."""

    def __init__(self, exp: Experiment, params, lr: float, seed: int, full: bool):
        super().__init__(exp, params, lr)
        self.seed, self.full = seed, full
        self.scheme = exp.cfg.seed_scheme
        self.loss_fn = make_loss(exp.cfg.search.loss, exp.task.metric)

    def step(self, batch, step: int) -> float:
        seed = step_seed(self.seed, step, self.scheme)
        tangents = [z for _p, z in directions(self.params, seed)]
        loss, d = directional_derivative(self.exp, self.params, tangents, batch, self.loss_fn, self.full)
        self.forward_rows += len(batch)
        self.jvp_rows += len(batch)
        if not math.isfinite(d):
            return float("nan")
        with torch.no_grad():
            for p, v in zip(self.params.values(), tangents, strict=True):
                p.add_(v, alpha=-self.lr * d)
        return loss

    def refresh(self) -> None:
        if self.full:
            self.exp.head = live_head(self.exp)


@contextlib.contextmanager
def _all_weights(exp: Experiment):
    """Every weight of the shared model as trainable tensors; restored from a copy afterwards."""
    params = dict(exp.loaded.model.named_parameters())
    original = snapshot(params)
    head = exp.head
    try:
        yield params, {}
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(original[k].to(p.device))
        exp.head = head


def _run(method: str, exp: Experiment, ctx: RunContext) -> dict:
    b = exp.cfg.baseline
    full = b.zo_params == "all"
    lr = b.lr or DEFAULT_LR[(method, b.zo_params)]
    eps = b.zo_eps or DEFAULT_EPS[b.zo_params]
    seed = exp.cfg.seed  # the directions derive from it per step (seeds stream "zo_directions")
    ctx_params = _all_weights(exp) if full else peft_lora(exp, b.lora_rank, b.lora_alpha, b.lora_targets, lora_seed(exp))
    with ctx_params as (params, info), no_grad_params(params):
        if method == "forward-grad":
            step = ForwardGradientStep(exp, params, lr, seed, full)
        else:
            update = {"zo-sgd": "sgd", "zo-sgd-sign": "sign", "zo-adam": "adam"}[method]
            step = ZerothOrderStep(exp, params, lr, eps, update, seed, full)
        result = run_steps(step, exp, ctx)
        result = _finish(exp, result)
        n = int(sum(p.numel() for p in params.values()))
    out = {**result, "lr": lr, "zo_params": b.zo_params, "params_optimised": n, "params_stored": n}
    if method != "forward-grad":
        out["zo_eps"] = eps
    if info:
        out["lora"] = info
    return out


def run_zo_sgd(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd", exp, ctx)


def run_zo_sgd_sign(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd-sign", exp, ctx)


def run_zo_adam(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-adam", exp, ctx)


def run_forward_grad(exp: Experiment, ctx: RunContext) -> dict:
    return _run("forward-grad", exp, ctx)
