"""Zeroth-order and forward-gradient baselines (the ZO-LLM benchmark's family), on four schemes.

- ``zo-sgd`` (MeZO, Malladi et al. 2023): a step draws z ~ N(0, I) from a per-step seed,
  perturbs the weights in place, theta + eps z, then theta - eps z, measures the loss twice
  (2 forward passes, no backward, no gradient memory), restores theta by regenerating z
  from the same seed and steps theta -= lr g z with g = (L+ - L-) / (2 eps).
- ``zo-sgd-sign``: theta -= lr sign(g z) (ZO-SignSGD).
- ``zo-adam``: Adam on the estimate g z (keeps two moments: no longer memory-free).
- ``zo-sgd-mmt`` (ZO-Bench): heavy-ball momentum, m = beta m + g z, theta -= lr m (one buffer).
- ``zo-sgd-cons`` (ZO-Bench's conservative ZO-SGD): after the estimate, the losses at theta,
  theta - lr g z and theta + lr g z are measured (3 more forwards) and the lowest is kept
  (the step first, the reverse step next, theta last on ties): a step never raises the loss.
- ``forward-grad`` (Baydin et al. 2022): one Jacobian-vector product per step gives the
  exact directional derivative d = grad L . v for a random v; theta -= lr d v. It runs
  ``torch.func.jvp`` through the model with the math attention kernel (the fused kernels
  have no forward-mode derivative).

What is tuned (``baseline.zo_params``: lora | all | prefix | prompt) and the benchmark's
block-wise, hybrid and sparse options are ``zo_schemes``; budget accounting is
``_common.step_passes`` (docs/baselines.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..experiment import Experiment
from ..methods import RunContext
from ..models.scoring import body_forward, class_logits
from ..search.schedule import RoundRobin
from ..seeds import derive
from ._common import StepMethod, batch_loss_terms, make_loss, no_grad_params, run_steps
from .gradient import _finish, live_head
from .zo_schemes import Trainable, magnitude_masks, split_hybrid, trainable

# MeZO's settings, the same for every method of the family: LoRA lr 1e-4 / eps 1e-2, full
# parameters lr 1e-6 / eps 1e-3, prefix (and input prompt) lr 1e-3 / eps 1e-1 (untuned here)
DEFAULT_LR = {"lora": 1e-4, "all": 1e-6, "prefix": 1e-3, "prompt": 1e-3}
DEFAULT_EPS = {"lora": 1e-2, "all": 1e-3, "prefix": 1e-1, "prompt": 1e-1}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
UPDATES = {"zo-sgd": "sgd", "zo-sgd-sign": "sign", "zo-adam": "adam", "zo-sgd-mmt": "mmt", "zo-sgd-cons": "sgd"}


def step_seed(seed: int, step: int, scheme: int = 1) -> int:
    """The seed of a step's random direction (regenerated, never stored), from the run's seed."""
    return derive(seed, "zo_directions", step, scheme=scheme)


def directions(params: dict[str, torch.Tensor], seed: int, masks: dict[str, torch.Tensor] | None = None):
    """Yield (tensor, z) with z ~ N(0, I) of the tensor's shape (zero outside its mask), the same for the same seed."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in params.items():
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        z = torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=p.dtype)
        if masks is not None and name in masks:
            z.mul_(masks[name])
        yield p, z


def perturb(params: dict[str, torch.Tensor], seed: int, scale: float, masks=None) -> None:
    """theta += scale * z(seed), in place, one tensor at a time (no copy of the weights)."""
    with torch.no_grad():
        for p, z in directions(params, seed, masks):
            p.add_(z, alpha=scale)


class DirectionalStep(StepMethod):
    """What the ZO family shares: seeded directions, block-wise cycling, sparse masks, the loss of a batch."""

    def __init__(self, exp: Experiment, params, lr: float, seed: int, full: bool, *,
                 blocks: list[list[str]] | None = None, masks=None):  # fmt: skip
        super().__init__(exp, params, lr)
        self.seed, self.full, self.masks = seed, full, masks
        self.scheme = exp.cfg.seed_scheme
        self.loss_fn = make_loss(exp.cfg.search.loss, exp.task.metric)
        self.blocks = [b for b in blocks if b] if blocks is not None else None
        self.cycle = RoundRobin(len(self.blocks)) if self.blocks else None  # the layer-wise search's schedule

    def active(self, step: int, names=None) -> dict[str, torch.Tensor]:
        """The tensors perturbed at ``step``: its block (block-wise ZO) or all of ``names``."""
        if self.cycle is not None:
            names = self.blocks[self.cycle.layer_at(step)]
        return {n: self.params[n] for n in (self.params if names is None else names)}

    def loss(self, batch) -> float:
        head = live_head(self.exp) if self.full else self.exp.head
        logits = class_logits(self.exp.loaded, head, batch, self.exp.max_tokens, self.exp.dtype)
        self.forward_rows += len(batch)
        return float(self.loss_fn(logits, batch.labels))

    def refresh(self) -> None:
        if self.full:
            self.exp.head = live_head(self.exp)


class ZerothOrderStep(DirectionalStep):
    """Two-point (SPSA) estimate along a seeded Gaussian direction; sgd, sign, adam or momentum update.

    ``fo_names`` (hybrid ZO/FO) get their exact gradient (one forward + one backward of the
    batch) and the same update rule; ``conservative`` keeps the best of theta, theta - lr e,
    theta + lr e (sgd only).
    """

    def __init__(self, exp: Experiment, params, lr: float, eps: float, update: str, seed: int, full: bool, *,
                 blocks=None, masks=None, fo_names=(), momentum: float = 0.9, conservative: bool = False):  # fmt: skip
        super().__init__(exp, params, lr, seed, full, blocks=blocks, masks=masks)
        self.eps, self.update, self.momentum, self.conservative = eps, update, momentum, conservative
        self.fo_names = list(fo_names)
        self.zo_names = [n for n in params if n not in set(self.fo_names)]
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.kept = {"step": 0, "reverse": 0, "start": 0}
        self.t = 0
        self.last_projected_grad = 0.0

    def step(self, batch, step: int) -> float:
        seed = step_seed(self.seed, step, self.scheme)
        zo = self.active(step, self.zo_names)
        perturb(zo, seed, self.eps, self.masks)
        plus = self.loss(batch)
        perturb(zo, seed, -2 * self.eps, self.masks)
        minus = self.loss(batch)
        perturb(zo, seed, self.eps, self.masks)  # restored (up to rounding)
        g = (plus - minus) / (2 * self.eps)
        self.last_projected_grad = g
        if not math.isfinite(g):
            return float("nan")
        grads = self.first_order(batch) if self.fo_names else {}
        if self.conservative:
            return self.conservative_step(batch, zo, seed, g, grads)
        self.apply(zo, seed, g, grads)
        return 0.5 * (plus + minus)

    def first_order(self, batch) -> dict[str, torch.Tensor]:
        """Gradients of the first-order tensors at theta (autograd stops below the lowest of them)."""
        fo = [self.params[n] for n in self.fo_names]
        head = (lambda h: live_head(self.exp)(h)) if self.full else None
        with torch.enable_grad():
            for p in fo:
                p.grad = None
                p.requires_grad_(True)
            try:
                for weight, loss in batch_loss_terms(self.exp, batch, self.loss_fn, head):
                    (loss * weight).backward()
                grads = {n: p.grad for n, p in zip(self.fo_names, fo, strict=True)}
            finally:
                for p in fo:
                    p.grad = None
                    p.requires_grad_(False)
        self.forward_rows += len(batch)
        self.backward_rows += len(batch)
        return grads

    def estimates(self, zo, seed: int, g: float, grads):
        """(name, tensor, direction, scale): the step's estimate of each gradient is scale * direction."""
        for name, (p, z) in zip(zo, directions(zo, seed, self.masks), strict=True):
            yield name, p, z, g
        for name, grad in grads.items():
            yield name, self.params[name], grad, 1.0

    def apply(self, zo, seed: int, g: float, grads, sign: float = 1.0) -> None:
        with torch.no_grad():
            if self.update == "adam":
                self.t += 1
            for name, p, d, scale in self.estimates(zo, seed, g, grads):
                if self.update == "sgd":
                    p.add_(d, alpha=-self.lr * scale * sign)
                elif self.update == "sign":
                    p.add_(torch.sign(d), alpha=-self.lr * float(np.sign(scale)))
                elif self.update == "mmt":
                    if name not in self.buffers:
                        self.buffers[name] = torch.zeros_like(p)
                    m = self.buffers[name].mul_(self.momentum).add_(d, alpha=scale)
                    p.add_(m, alpha=-self.lr)
                else:  # adam on the estimate
                    self._adam(name, p, d.mul(scale))

    def _adam(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        b1, b2 = ADAM_BETAS
        if name not in self.moments:
            self.moments[name] = (torch.zeros_like(p), torch.zeros_like(p))
        m, v = self.moments[name]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        mhat = m / (1 - b1**self.t)
        vhat = v / (1 - b2**self.t)
        p.add_(mhat / (vhat.sqrt() + ADAM_EPS), alpha=-self.lr)

    def conservative_step(self, batch, zo, seed: int, g: float, grads) -> float:
        """Keep the lowest of L(theta - lr e), L(theta + lr e), L(theta), in that order on ties; returns L(theta)."""
        start = self.loss(batch)
        self.apply(zo, seed, g, grads)  # theta - lr e
        down = self.loss(batch)
        self.apply(zo, seed, g, grads, sign=-2.0)  # theta + lr e
        up = self.loss(batch)
        kept = min(("step", down), ("reverse", up), ("start", start), key=lambda kv: kv[1])[0]
        if kept != "reverse":
            self.apply(zo, seed, g, grads, sign=2.0 if kept == "step" else 1.0)
        self.kept[kept] += 1
        return start

    def opt_state(self) -> dict:
        return {"t": self.t, "moments": {k: (m.cpu(), v.cpu()) for k, (m, v) in self.moments.items()},
                "buffers": {k: m.cpu() for k, m in self.buffers.items()}, "kept": dict(self.kept)}  # fmt: skip

    def load_opt_state(self, state: dict) -> None:
        self.t = state["t"]
        dev = {k: p.device for k, p in self.params.items()}
        self.moments = {k: (m.to(dev[k]), v.to(dev[k])) for k, (m, v) in state["moments"].items()}
        self.buffers = {k: m.to(dev[k]) for k, m in state.get("buffers", {}).items()}
        self.kept = dict(state.get("kept", self.kept))


class _Scorer(nn.Module):
    """model -> class logits at the scored positions, so that torch.func can re-parametrize it."""

    def __init__(self, exp: Experiment, full: bool):
        super().__init__()
        self.model = exp.loaded.model
        self.exp, self.full = exp, full

    def forward(self, input_ids, attention_mask, positions):
        hidden = body_forward(self.model, input_ids, attention_mask).last_hidden_state
        picked = hidden[torch.arange(len(positions), device=hidden.device), positions]
        head = live_head(self.exp) if self.full else self.exp.head
        return head(picked).float()


def directional_derivative(exp: Experiment, params: dict[str, torch.Tensor], tangents, data, loss_fn, full=False,
                           swap=None):  # fmt: skip
    """(loss, d loss . v) on ``data`` with one jvp per token-budget chunk (torch.func.jvp).

    ``params`` are model parameters (re-parametrised with ``functional_call``) unless ``swap``
    is given: a context installing {name: tensor} where the model reads them (prompt schemes).
    """
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..models.scoring import autocast

    scorer = _Scorer(exp, full)
    names = list(params)
    primals = tuple(p.detach() for p in params.values())
    loss, deriv, n = 0.0, 0.0, len(data)
    for batch in data.batches(exp.max_tokens, exp.loaded.device):
        labels = data.labels[batch.index.cpu()].to(exp.loaded.device)
        args = (batch.input_ids, batch.attention_mask, batch.positions)

        def f(*values, args=args, labels=labels):
            bound = dict(zip(names, values, strict=True))
            if swap is None:
                logits = functional_call(scorer, {"model." + k: v for k, v in bound.items()}, args)
            else:
                with swap(bound):
                    logits = scorer(*args)
            return loss_fn(logits, labels)

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), autocast(exp.loaded.device, exp.dtype):
            value, dot = jvp(f, primals, tuple(tangents))
        w = len(batch.index) / n
        loss += float(value) * w
        deriv += float(dot) * w
    return loss, deriv


class ForwardGradientStep(DirectionalStep):
    """theta -= lr (grad L . v) v with v ~ N(0, I) from a per-step seed; one jvp of the batch per step."""

    def __init__(self, exp: Experiment, params, lr: float, seed: int, full: bool, *, blocks=None, masks=None,
                 swap=None):  # fmt: skip
        super().__init__(exp, params, lr, seed, full, blocks=blocks, masks=masks)
        self.swap = swap

    def step(self, batch, step: int) -> float:
        seed = step_seed(self.seed, step, self.scheme)
        active = self.active(step)
        tangents = [z for _p, z in directions(active, seed, self.masks)]
        loss, d = directional_derivative(self.exp, active, tangents, batch, self.loss_fn, self.full, self.swap)
        self.forward_rows += len(batch)
        self.jvp_rows += len(batch)
        if not math.isfinite(d):
            return float("nan")
        with torch.no_grad():
            for p, v in zip(active.values(), tangents, strict=True):
                p.add_(v, alpha=-self.lr * d)
        return loss


def zo_options(cfg, tr: Trainable, fo: list[str], blocks, masks) -> dict:
    """The record's account of what a ZO run tuned and how (scheme, blocks, hybrid split, sparsity)."""
    b = cfg.baseline
    zo = [n for n in tr.params if n not in set(fo)]
    perturbed = int(sum(int(masks[n].sum()) for n in zo)) if masks else tr.numel(zo)
    out = {"scheme": b.zo_params, "block_wise": blocks is not None, "blocks": len(blocks) if blocks else 1,
           "hybrid_layers": b.zo_hybrid_layers, "fo_params": tr.numel(fo), "fo_tensors": len(fo),
           "zo_params": tr.numel(zo), "sparsity": b.zo_sparsity, "perturbed_params": perturbed}  # fmt: skip
    if cfg.method == "zo-sgd-mmt":
        out["momentum"] = b.zo_momentum
    return out


def _run(method: str, exp: Experiment, ctx: RunContext) -> dict:
    cfg = exp.cfg
    b = cfg.baseline
    lr = b.lr or DEFAULT_LR[b.zo_params]
    eps = b.zo_eps or DEFAULT_EPS[b.zo_params]
    seed = cfg.seed  # the directions derive from it per step (seeds stream "zo_directions")
    with trainable(exp, b.zo_params) as tr, no_grad_params(tr.params):
        fo, zo_blocks = split_hybrid(tr, b.zo_hybrid_layers)
        blocks = zo_blocks if b.zo_block else None
        zo = {n: p for n, p in tr.params.items() if n not in set(fo)}
        masks = magnitude_masks(zo, b.zo_sparsity, seed, cfg.seed_scheme) if b.zo_sparsity else None
        if method == "forward-grad":
            step = ForwardGradientStep(tr.exp, tr.params, lr, seed, tr.full, blocks=blocks, masks=masks, swap=tr.swap)
        else:
            step = ZerothOrderStep(tr.exp, tr.params, lr, eps, UPDATES[method], seed, tr.full, blocks=blocks,
                                   masks=masks, fo_names=fo, momentum=b.zo_momentum,
                                   conservative=method == "zo-sgd-cons")  # fmt: skip
        result = run_steps(step, tr.exp, ctx)
        result = _finish(tr.exp, result, tr.start_is_model)
        options = zo_options(cfg, tr, fo, blocks, masks)
    out = {**result, "lr": lr, "zo_params": b.zo_params, "zo_options": options,
           "params_optimised": options["perturbed_params"] + options["fo_params"], "params_stored": tr.numel()}  # fmt: skip
    if method != "forward-grad":
        out["zo_eps"] = eps
    if method == "zo-sgd-cons":
        out["conservative_kept"] = dict(step.kept)
    out.update(tr.info)
    return out


def run_zo_sgd(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd", exp, ctx)


def run_zo_sgd_sign(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd-sign", exp, ctx)


def run_zo_adam(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-adam", exp, ctx)


def run_zo_sgd_mmt(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd-mmt", exp, ctx)


def run_zo_sgd_cons(exp: Experiment, ctx: RunContext) -> dict:
    return _run("zo-sgd-cons", exp, ctx)


def run_forward_grad(exp: Experiment, ctx: RunContext) -> dict:
    return _run("forward-grad", exp, ctx)
