"""Derivative-free prompt tuning: ``bbt`` (Sun et al. 2022) and ``bbtv2`` (deep prompts, Sun et al. 2022b).

Both run through the same layer-wise search and population evaluator as C-LoRA, with a
``DeepPromptAdapter`` in place of the low-rank one:

- n prompt positions (``baseline.prompt_tokens``, 50) are inserted into every prompt: after
  the tokenizer's leading special tokens (after <s> for a masked LM; at the very start for a
  causal LM such as SmolLM2, whose tokenizer adds none). Their input embeddings are p_0
  (``prompt_init``: the embeddings of n random vocabulary tokens, as BBT, or zeros).
- Layer 0 ("the input"): the word embeddings at those positions become p_0 + M_0 z_0.
- Layer l >= 1 (BBTv2 only): M_l z_l is added to the hidden states entering transformer
  layer l at those positions (a forward pre-hook), so z = 0 leaves the model unchanged.
- M_l: [n * hidden, d] normal, std = alpha * std_hat_l / (sqrt(d) * sigma) (the hidden-state
  based init, docs/design.md §1): std_hat_0 = the word-embedding std, std_hat_l = the clipped std
  of the residual stream entering layer l, measured on the train prompts with p_0 and z = 0.
  Each map comes from its own seed (run seed, model layer), regenerated when not cached.

``bbt`` = one adapted layer (the input), so the loop is plain CMA-ES over z_0 with the budget
in calls, dev selection every ``eval_every`` calls; ``bbtv2`` = every layer (or
``prompt_layers``), visited bottom to top as C-LoRA's layers are.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..experiment import Experiment
from ..lowrank.arch import transformer_layers
from ..lowrank.hidden_stats import hidden_arg, hidden_state_stats, projection_scales
from ..lowrank.patching import resolve_layers
from ..methods import RunContext
from ..models.scoring import EncodedSet
from ..search.loop import LayerwiseSearch
from ..search.method import ADAPTER, run_search, search_summary
from ..seeds import derive, generator
from ._common import leading_specials, max_positions


def prompt_token_ids(tokenizer, n: int, seed: int, scheme: int = 1) -> list[int]:
    """n random non-special vocabulary ids (the p_0 of BBT, and placeholders with valid positions)."""
    special = set(tokenizer.all_special_ids)
    pool = np.array([i for i in range(len(tokenizer)) if i not in special])
    rng = generator(seed, "prompt_tokens", scheme=scheme)
    return [int(i) for i in rng.choice(pool, size=n, replace=len(pool) < n)]


def insert_prompt(data: EncodedSet, start: int, token_ids: list[int]) -> EncodedSet:
    """The same prompts with ``token_ids`` inserted at ``start`` (the scored positions shift)."""
    n = len(token_ids)
    ids = [seq[:start] + list(token_ids) + seq[start:] for seq in data.ids]
    pos = [p + n if p >= start else p for p in data.positions]
    return EncodedSet(ids, pos, data.labels, data.pad_id, data.truncated)


class DeepPromptAdapter:
    """z_l -> a prompt at the input (l = 0) or added to the hidden states entering layer l (l >= 1).

    Implements ``dflora_core.lowrank.adapter.LayerAdapter``: a state is a [n, hidden] delta
    (one candidate) or [P, n, hidden] (a population, candidate-major rows).
    """

    def __init__(
        self,
        model: nn.Module,
        start: int,
        token_ids: list[int],
        p0: torch.Tensor,
        model_layers: tuple[int, ...],
        dim: int,
        alpha: float,
        sigma: float,
        seed: int,
        cache_bytes: int = 256 * 2**20,
        seed_scheme: int = 1,
    ):
        self.model = model
        try:
            self.layers = transformer_layers(model)
        except ModelError:
            if any(m > 0 for m in model_layers):
                raise
            self.layers = nn.ModuleList()  # input prompts only: no layer list needed
        self.start, self.n_tokens = start, len(token_ids)
        self.token_ids = list(token_ids)
        self.p0 = p0.detach().clone()
        self.hidden = int(p0.shape[1])
        self.model_layers = tuple(model_layers)
        self.num_layers = len(self.model_layers)
        self.dim = dim
        self.alpha, self.sigma, self.seed, self.seed_scheme = alpha, sigma, seed, seed_scheme
        self.scales: list[float] | None = None
        self.states: list[torch.Tensor | None] = [None] * self.num_layers
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        per_layer = self.n_tokens * self.hidden * dim * 4
        self._cache_layers = max(1, cache_bytes // max(1, per_layer))
        self._handles = [model.get_input_embeddings().register_forward_hook(self._embedding_hook)]
        for i, m in enumerate(self.model_layers):
            if m > 0:
                hook = self._layer_hook(i)
                self._handles.append(self.layers[m].register_forward_pre_hook(hook, with_kwargs=True))

    # -- projection --------------------------------------------------------------------------
    def set_scales(self, scales: list[float]) -> None:
        """std_hat per adapted layer (the map std is alpha * std_hat / (sqrt(d) sigma))."""
        self.scales = [float(s) for s in scales]
        self._cache.clear()

    def map_std(self, layer: int) -> float:
        return self.alpha * self.scales[layer] / (math.sqrt(self.dim) * self.sigma)

    def matrix(self, layer: int) -> torch.Tensor:
        if layer in self._cache:
            self._cache.move_to_end(layer)
            return self._cache[layer]
        seed = derive(self.seed, "prompt_projection", self.model_layers[layer], scheme=self.seed_scheme)
        gen = torch.Generator().manual_seed(seed)
        m = torch.randn(self.n_tokens * self.hidden, self.dim, generator=gen) * self.map_std(layer)
        m = m.to(self.p0.device)
        self._cache[layer] = m
        while len(self._cache) > self._cache_layers:
            self._cache.popitem(last=False)
        return m

    # -- LayerAdapter protocol -----------------------------------------------------------------
    def population(self, layer: int, Z) -> torch.Tensor:
        z = torch.as_tensor(np.asarray(Z), dtype=torch.float32, device=self.p0.device)
        single = z.dim() == 1
        zz = z.unsqueeze(0) if single else z
        out = (zz @ self.matrix(layer).T).view(-1, self.n_tokens, self.hidden)
        return out[0] if single else out

    def take(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return state[start:stop]

    def get(self, layer: int):
        return self.states[layer]

    def set(self, layer: int, state) -> None:
        self.states[layer] = state

    def set_z(self, layer: int, z: np.ndarray) -> None:
        z = np.asarray(z)
        self.states[layer] = self.population(layer, z) if z.any() else None

    def describe(self) -> dict:
        return {
            "kind": "deep_prompt" if any(m > 0 for m in self.model_layers) else "input_prompt",
            "prompt_tokens": self.n_tokens,
            "insert_at": self.start,
            "prompt_token_ids": self.token_ids,
            "model_layers": list(self.model_layers),
            "intrinsic_dim": self.dim,
            "alpha": self.alpha,
            "sigma": self.sigma,
            "seed": self.seed,
            "layer_std": self.scales,
            "map_std": [self.map_std(i) for i in range(self.num_layers)] if self.scales else None,
            "seed_scheme": self.seed_scheme,
            "map_seeds": "dflora_core.seeds.derive(seed, 'prompt_projection', model_layer) -> torch.Generator",
        }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- hooks ---------------------------------------------------------------------------------
    def _add(self, h: torch.Tensor, value: torch.Tensor, replace: bool) -> torch.Tensor:
        """h [rows, T, H] with positions start..start+n set to (or increased by) value (2-D or 3-D)."""
        s, e = self.start, self.start + self.n_tokens
        out = h.clone()  # never in place: a replayed prefix tensor is reused across chunks
        value = value.to(out.dtype)
        if value.dim() == 2:
            if replace:
                out[:, s:e] = value
            else:
                out[:, s:e] += value
            return out
        P = value.shape[0]
        if out.shape[0] % P:
            raise RuntimeError(f"{out.shape[0]} rows do not split into {P} candidates")
        view = out.view(P, out.shape[0] // P, *out.shape[1:])
        if replace:
            view[:, :, s:e] = value[:, None]
        else:
            view[:, :, s:e] += value[:, None]
        return out

    def _embedding_hook(self, _module, _args, output):
        value = self.p0
        if self.model_layers and self.model_layers[0] == 0 and self.states[0] is not None:
            value = self.p0 + self.states[0]
        return self._add(output, value, replace=True)

    def _layer_hook(self, i: int):
        def hook(_module, args, kwargs):
            state = self.states[i]
            if state is None:
                return None
            h = hidden_arg(args, kwargs)
            new = self._add(h, state, replace=False)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook


def prompt_experiment(
    exp: Experiment, input_only: bool | None = None, project: bool = True
) -> tuple[Experiment, DeepPromptAdapter]:
    """A copy of ``exp`` whose train/dev/test prompts carry the prompt positions, and the adapter.

    ``input_only``: prompts at the input alone (BBT's positions) or at ``baseline.prompt_layers``
    (BBTv2's); None = by the method (bbt or not). ``project=False`` skips measuring the
    projection scales: the zeroth-order prompt schemes (docs/baselines.md) set the adapter's
    prompt tensors directly and use no projection.
    """
    cfg, loaded = exp.cfg, exp.loaded
    b = cfg.baseline
    model = loaded.model
    total = model.config.num_hidden_layers
    if input_only is None:
        input_only = cfg.method == "bbt"
    if input_only:
        layers: tuple[int, ...] = (0,)
    else:
        layers = resolve_layers(b.prompt_layers, total)
    start = leading_specials(loaded.tokenizer)
    token_ids = prompt_token_ids(loaded.tokenizer, b.prompt_tokens, cfg.seed, cfg.seed_scheme)
    emb = model.get_input_embeddings().weight
    ids = torch.tensor(token_ids, device=emb.device)
    p0 = emb[ids].detach().clone() if b.prompt_init == "vocab" else torch.zeros(len(ids), emb.shape[1])
    p0 = p0.to(emb.device, torch.float32)
    sets = {k: insert_prompt(getattr(exp, k), start, token_ids) for k in ("train", "dev", "test_set")}
    limit = max_positions(model)
    longest = max(int(s.lengths.max()) for s in sets.values())
    if limit is not None and longest > limit:
        raise ConfigError(
            "data.max_length",
            f"prompts reach {longest} tokens with the {len(ids)} prompt positions, more than the model's "
            f"{limit}: lower data.max_length to {limit - len(ids)} or baseline.prompt_tokens",
        )
    adapter = DeepPromptAdapter(
        model, start, token_ids, p0, layers, b.prompt_dim, b.prompt_alpha, cfg.optim.sigma, cfg.seed,
        seed_scheme=cfg.seed_scheme,
    )
    exp_p = dataclasses.replace(exp, **sets)
    if not project:
        return exp_p, adapter
    try:
        emb_std = float(emb.float().std())
        if layers == (0,):
            scales = [emb_std]
        else:
            stats = hidden_state_stats(
                loaded, exp_p.train, "residual", cfg.lowrank.clip_rounds, cfg.lowrank.clip_sigma, exp.max_tokens
            )
            per_model_layer = projection_scales(loaded, stats)
            scales = [per_model_layer[m] for m in layers]
        adapter.set_scales(scales)
    except BaseException:
        adapter.remove()
        raise
    return exp_p, adapter


def run_prompt_tuning(exp: Experiment, ctx: RunContext) -> dict:
    exp_p, adapter = prompt_experiment(exp)
    search = None
    try:
        search = LayerwiseSearch(exp_p, ctx, ctx.callback("on_generation"), ctx.callback("on_eval"),
                                 adapter=adapter, train=exp_p.train)  # fmt: skip
        # p_0 changes the model even at z = 0: the test is always scored (not the zero-shot's)
        test, train_at_best = run_search(exp_p, search, ctx, test_exp=exp_p)
        ctx.save_arrays(ADAPTER, z_best_dev=search.z_best_dev, z_final=search.z,
                        prompt_token_ids=np.asarray(adapter.token_ids), layer_std=np.asarray(adapter.scales))  # fmt: skip
        n_opt = adapter.dim * adapter.num_layers
        return {
            **search_summary(search, test, train_at_best),
            "projection": adapter.describe(),
            "dev_curve": search.dev_curve,
            "params_optimised": n_opt,
            "params_stored": n_opt,  # z per layer; p_0 and the maps are regenerated from the seed
            "prompt_values": adapter.n_tokens * adapter.hidden * adapter.num_layers,
        }
    finally:
        if search is not None:
            search.close()
        else:
            adapter.remove()
