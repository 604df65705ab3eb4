"""What the zeroth-order family tunes (``baseline.zo_params``) and the benchmark's enhancements.

Fine-tuning schemes (ZO-Bench's table, docs/baselines.md), each a ``Trainable``: the tensors
a step perturbs in place, grouped into blocks by transformer layer, bottom to top.

- ``lora``: PEFT LoRA factors (the ``lora`` method's rank, alpha and targets; B = 0, so the
  start is the unadapted model).
- ``all``: every weight of the shared model, restored from a copy afterwards.
- ``prompt``: the input prompt vectors at BBT's positions (``prompt_tuning.prompt_experiment``
  inserts ``baseline.prompt_tokens`` positions; their embeddings start at p_0 and are the
  trainable tensor itself, no projection).
- ``prefix``: deep prompts at BBTv2's positions: the input prompt as above plus, at every
  layer l >= 1 of ``baseline.prompt_layers`` (None = all), a [tokens x hidden] tensor added to
  the hidden states entering layer l at those positions (zero at the start); the
  ``DeepPromptAdapter``'s hooks read the tensors directly.

Enhancements (each an option of every ZO method):

- block-wise ZO (``baseline.zo_block``): the layer-wise search's ``search.schedule.RoundRobin``
  visits one block per step, bottom to top and around again; a step perturbs and updates that block only.
- hybrid ZO/FO (``baseline.zo_hybrid_layers`` = K): ``split_hybrid`` gives the top K layers'
  tensors to backpropagation (the backward stops K layers down) and keeps the rest ZO.
- sparsity-induced ZO (``baseline.zo_sparsity`` = s): ``magnitude_masks`` keeps, per tensor,
  the (1 - s) fraction of largest magnitude (magnitude pruning, as the benchmark); the
  pruned entries are never perturbed. Ties (zero-initialised tensors: LoRA B, deep prompts)
  are broken by a seeded random order (stream ``zo_mask``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..experiment import Experiment
from ..lowrank.arch import transformer_layers
from ..seeds import derive
from ._common import snapshot
from .gradient import lora_seed, peft_lora
from .prompt_tuning import prompt_experiment

OUTSIDE = -1  # the block of the tensors outside every transformer layer (embeddings, final norm)


@dataclass
class Trainable:
    """The tensors a zeroth-order method tunes, how they group into layers, and what the run scores."""

    exp: Experiment  # the experiment the steps score (prompt schemes: prompts carrying the positions)
    params: dict[str, torch.Tensor]
    blocks: list[tuple[int, list[str]]]  # (model layer, or OUTSIDE first; tensor names), bottom to top
    full: bool  # every weight: the verbalizer head is re-read from the live output embedding
    start_is_model: bool  # the start is the unadapted model (a selected start scores as zero-shot)
    info: dict[str, Any] = field(default_factory=dict)
    # prompt schemes: {name: tensor} -> a context installing those tensors in the hooks (forward-mode AD)
    swap: Callable[[dict], contextlib.AbstractContextManager] | None = None

    def numel(self, names=None) -> int:
        return int(sum(self.params[n].numel() for n in (self.params if names is None else names)))


def layer_blocks(model, params: dict[str, torch.Tensor]) -> list[tuple[int, list[str]]]:
    """Tensor names grouped by the transformer layer that holds them (OUTSIDE first), bottom to top."""
    owner = {id(p): i for i, layer in enumerate(transformer_layers(model)) for p in layer.parameters()}
    by: dict[int, list[str]] = {}
    for name, p in params.items():
        by.setdefault(owner.get(id(p), OUTSIDE), []).append(name)
    return sorted(by.items())


@contextlib.contextmanager
def all_weights(exp: Experiment):
    """Every weight of the shared model as trainable tensors; restored from a copy afterwards."""
    params = dict(exp.loaded.model.named_parameters())
    original = snapshot(params)
    head = exp.head
    try:
        yield params
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(original[k].to(p.device))
        exp.head = head


@contextlib.contextmanager
def _prompts(exp: Experiment, deep: bool):
    exp_p, adapter = prompt_experiment(exp, input_only=not deep, project=False)
    slots: dict[str, int] = {}  # name -> adapter layer index (the input prompt: its p_0 tensor)
    params: dict[str, torch.Tensor] = {}
    try:
        for i, m in enumerate(adapter.model_layers):
            name = f"prompt.layer{m}"
            if m == 0:
                params[name] = adapter.p0  # the input prompt vectors themselves, from p_0
            else:
                params[name] = torch.zeros_like(adapter.p0)
                adapter.set(i, params[name])
            slots[name] = i
        blocks = [(adapter.model_layers[slots[n]], [n]) for n in params]

        @contextlib.contextmanager
        def swap(values: dict[str, torch.Tensor]):
            p0, states = adapter.p0, list(adapter.states)
            for name, value in values.items():
                i = slots[name]
                if adapter.model_layers[i] == 0:
                    adapter.p0 = value
                else:
                    adapter.states[i] = value
            try:
                yield
            finally:
                adapter.p0, adapter.states = p0, states

        info = {"prompt_tokens": adapter.n_tokens, "insert_at": adapter.start, "prompt_init": exp.cfg.baseline.prompt_init,
                "prompt_token_ids": adapter.token_ids, "model_layers": list(adapter.model_layers)}  # fmt: skip
        yield Trainable(exp_p, params, blocks, full=False, start_is_model=False, info=info, swap=swap)
    finally:
        adapter.remove()


@contextlib.contextmanager
def trainable(exp: Experiment, scheme: str):
    """The ``Trainable`` of a scheme (lora | all | prefix | prompt); the shared model is restored on exit."""
    b = exp.cfg.baseline
    model = exp.loaded.model
    if scheme == "lora":
        with peft_lora(exp, b.lora_rank, b.lora_alpha, b.lora_targets, lora_seed(exp)) as (params, info):
            yield Trainable(exp, params, layer_blocks(model, params), False, True, {"lora": info})
    elif scheme == "all":
        with all_weights(exp) as params:
            yield Trainable(exp, params, layer_blocks(model, params), True, True)
    else:
        with _prompts(exp, deep=scheme == "prefix") as tr:
            yield tr


def split_hybrid(tr: Trainable, top_layers: int) -> tuple[list[str], list[list[str]]]:
    """(first-order tensor names: the top ``top_layers`` layers' tensors, the zeroth-order blocks)."""
    layers = sorted({layer for layer, _names in tr.blocks if layer != OUTSIDE})
    top = set(layers[len(layers) - top_layers :]) if top_layers else set()
    fo = [n for layer, names in tr.blocks if layer in top for n in names]
    zo = [names for layer, names in tr.blocks if layer not in top]
    return fo, zo


def magnitude_masks(params: dict[str, torch.Tensor], sparsity: float, seed: int, scheme: int = 1):
    """Per tensor, a bool mask of the (1 - sparsity) fraction of entries of largest magnitude (at least one)."""
    gen = torch.Generator().manual_seed(derive(seed, "zo_mask", scheme=scheme))
    masks = {}
    for name, p in params.items():
        n = p.numel()
        keep = max(1, n - int(sparsity * n))
        perm = torch.randperm(n, generator=gen)
        magnitude = p.detach().abs().flatten().cpu().float()[perm]
        order = perm[torch.argsort(magnitude, descending=True, stable=True)]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:keep]] = True
        masks[name] = mask.view(p.shape).to(p.device)
    return masks
