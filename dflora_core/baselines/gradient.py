"""Gradient baselines: ``lora`` (LoRA through PEFT, AdamW) and ``ft`` (full fine-tuning, AdamW).

Both minimise the same objective as the derivative-free methods (``search.loss`` over the
verbalizer logits, cross-entropy by default) on the same few-shot train set, take
``plan_budget`` steps (a full-batch step = 1 forward + 1 backward over the train set = one
"call" under matched forward passes), evaluate dev every ``search.eval_every`` calls and keep
the best-dev state for the test score. The model stays in eval mode (no dropout): the same
deterministic function the DFO methods search over.

The frozen model is shared between runs (``run_grid`` loads it once), so both methods undo
themselves: LoRA layers are unloaded, fine-tuned weights are restored from a copy.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..errors import DfloraError
from ..experiment import Experiment
from ..lowrank.arch import arch_spec
from ..methods import RunContext
from ..models.scoring import VerbalizerHead
from ..seeds import derive
from ._common import StepMethod, batch_loss_terms, make_loss, run_steps, snapshot

DEFAULT_LR = {"lora": 5e-4, "ft": 1e-5}  # LoRA: usual few-shot range 1e-4..1e-3; FT: LM-BFF's 1e-5


def peft_targets(model, targets: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """PEFT ``target_modules`` (module paths inside a layer) for target letters, and notes."""
    spec = arch_spec(model)
    paths, notes = [], []
    for t in targets:
        ts = spec.targets[t]
        if ts.select is not None:
            notes.append(
                f"{t} lives in the fused module {ts.path}: PEFT adapts the whole module "
                "(q, k and v together), not the slice"
            )
        if ts.path not in paths:
            paths.append(ts.path)
    return paths, notes


@contextlib.contextmanager
def peft_lora(exp: Experiment, rank: int, alpha: float, targets: tuple[str, ...], seed: int):
    """Inject PEFT LoRA layers into the shared model (in place); yields (trainable tensors, info); unloads after.

    PEFT's init: A Kaiming-uniform (drawn here from ``seed`` without touching the global
    random state), B = 0, so the start is the unadapted model.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # peft is a dev extra
        raise DfloraError("the lora/zeroth-order baselines need PEFT: pip install peft") from err
    from transformers.pytorch_utils import Conv1D

    model = exp.loaded.model
    paths, notes = peft_targets(model, targets)
    fused = any(isinstance(m, Conv1D) for n, m in model.named_modules() if any(n.endswith(p) for p in paths))
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=paths, lora_dropout=0.0, bias="none", fan_in_fan_out=fused
    )
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices inside PEFT
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    try:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        info = {
            "peft_target_modules": paths,
            "rank": rank,
            "alpha": alpha,
            "scaling": alpha / rank,
            "notes": notes,
            "lora_params": int(sum(p.numel() for p in params.values())),
        }
        yield params, info
    finally:
        peft_model.unload()
        for p in model.parameters():
            p.requires_grad_(False)


def live_head(exp: Experiment) -> VerbalizerHead:
    """A verbalizer head gathered from the current output-embedding weights (they change under full FT)."""
    return VerbalizerHead(exp.loaded, exp.encoder.label_token_ids, exp.cfg.model.zero_lm_bias)


class GradientStep(StepMethod):
    """AdamW on the trainable tensors; one forward + one backward of the batch per step."""

    def __init__(self, exp: Experiment, params, lr: float, weight_decay: float, full: bool):
        super().__init__(exp, params, lr)
        self.full = full
        self.opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
        self.loss_fn = make_loss(exp.cfg.search.loss, exp.task.metric)

    def step(self, batch, step: int) -> float:
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        head = (lambda h: live_head(self.exp)(h)) if self.full else None
        for weight, loss in batch_loss_terms(self.exp, batch, self.loss_fn, head):
            (loss * weight).backward()
            total += float(loss.detach()) * weight
        self.opt.step()
        self.forward_rows += len(batch)
        self.backward_rows += len(batch)
        return total

    def opt_state(self) -> dict:
        return self.opt.state_dict()

    def load_opt_state(self, state: dict) -> None:
        self.opt.load_state_dict(state)

    def refresh(self) -> None:
        if self.full:
            with torch.no_grad():
                self.exp.head = live_head(self.exp)


def lora_seed(exp: Experiment) -> int:
    """The seed of PEFT's LoRA initialisation (shared by the gradient and zeroth-order baselines)."""
    return derive(exp.cfg.seed, "lora_init", scheme=exp.cfg.seed_scheme)


def _finish(exp: Experiment, result: dict, start_is_model: bool = True) -> dict:
    """Score the selected state on test (skipped when it is the unadapted model: test = zero-shot)."""
    if result["selected_start"] and start_is_model:
        result["test"] = None  # the start is the unadapted model: test = zero-shot
    else:
        result["test"] = exp.evaluate(exp.test_set).as_dict()
    result["train_at_best"] = exp.evaluate(exp.train).as_dict()
    return result


def run_lora(exp: Experiment, ctx: RunContext) -> dict:
    b = exp.cfg.baseline
    lr = b.lr or DEFAULT_LR["lora"]
    with peft_lora(exp, b.lora_rank, b.lora_alpha, b.lora_targets, lora_seed(exp)) as (params, info):
        method = GradientStep(exp, params, lr, b.weight_decay, full=False)
        result = run_steps(method, exp, ctx)
        result = _finish(exp, result)
    n = info["lora_params"]
    return {**result, "lr": lr, "optimizer": "adamw", "lora": info, "params_optimised": n, "params_stored": n}


def run_ft(exp: Experiment, ctx: RunContext) -> dict:
    b = exp.cfg.baseline
    lr = b.lr or DEFAULT_LR["ft"]
    model = exp.loaded.model
    params = dict(model.named_parameters())
    original = snapshot(params)
    head = exp.head
    try:
        for p in params.values():
            p.requires_grad_(True)
        method = GradientStep(exp, params, lr, b.weight_decay, full=True)
        result = run_steps(method, exp, ctx)
        result = _finish(exp, result)
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(original[k].to(p.device))
                p.requires_grad_(False)
        exp.head = head
    n = int(sum(p.numel() for p in params.values()))
    return {**result, "lr": lr, "optimizer": "adamw", "params_optimised": n, "params_stored": n}

