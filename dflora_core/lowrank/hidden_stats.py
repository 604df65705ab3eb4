"""Per-layer hidden-state statistics that scale the "ril" projections (docs/design.md §1).

std_hat_l is the std of the hidden states entering layer l, measured with z = 0 on the
few-shot train batch, over real tokens only (no padding), after 5 rounds of clipping to
mean +- 3 std (mean and std recomputed after each round). Source "residual" measures the
residual stream entering the layer (the released code; layer 0 uses the word-embedding
matrix's std); source "proj_input" measures what the adapted projection itself sees (after
the layer norm in pre-norm models such as SmolLM2, whose residual stream grows with depth).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.registry import LoadedModel
from ..models.scoring import EncodedSet, body_forward
from .arch import arch_spec, get_module, transformer_layers

SOURCES = ("residual", "proj_input")


@dataclass(frozen=True)
class LayerStats:
    layer: int
    source: str
    mean: float  # after clipping
    std: float  # after clipping
    raw_mean: float
    raw_std: float
    kept: float  # fraction of values kept by the clipping
    n_values: int

    def as_dict(self) -> dict:
        return asdict(self)


def clipped_mean_std(values: torch.Tensor, rounds: int = 5, k: float = 3.0) -> tuple[float, float, float]:
    """Mean and std after ``rounds`` of clipping to mean +- k std; also the fraction kept."""
    v = values.double().flatten()
    n = v.numel()
    for _ in range(rounds):
        m, s = v.mean(), v.std()
        v = v[(v - m).abs() <= k * s]
    return float(v.mean()), float(v.std()), v.numel() / max(1, n)


def hidden_arg(args, kwargs) -> torch.Tensor:
    """The hidden states a layer's forward pre-hook receives (positional or keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def hidden_state_stats(
    loaded: LoadedModel,
    data: EncodedSet,
    source: str = "residual",
    rounds: int = 5,
    k: float = 3.0,
    max_tokens: int = 16384,
) -> list[LayerStats]:
    """Statistics of the hidden states entering every layer (or its projection), current model state."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    model = loaded.model
    layers = transformer_layers(model)
    first_target = next(iter(arch_spec(model).targets.values())).path
    collected: list[list[torch.Tensor]] = [[] for _ in layers]
    current_mask: list[torch.Tensor] = []

    def hook_for(i):
        def hook(_module, args, kwargs):
            h = hidden_arg(args, kwargs)
            collected[i].append(h[current_mask[0].bool()].detach().float().cpu())

        return hook

    handles = []
    for i, layer in enumerate(layers):
        module = layer if source == "residual" else get_module(layer, first_target)
        handles.append(module.register_forward_pre_hook(hook_for(i), with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in data.batches(max_tokens, loaded.device):
                current_mask[:] = [batch.attention_mask]
                body_forward(model, batch.input_ids, batch.attention_mask)
    finally:
        for h in handles:
            h.remove()
    stats = []
    for i, chunks in enumerate(collected):
        values = torch.cat(chunks)
        m, s, kept = clipped_mean_std(values, rounds, k)
        stats.append(LayerStats(i, source, m, s, float(values.mean()), float(values.std()), kept, values.numel()))
    return stats


def projection_scales(loaded: LoadedModel, stats: list[LayerStats]) -> list[float]:
    """std_hat per layer for the "ril" init: layer 0 from the embedding matrix for the residual source."""
    scales = [s.std for s in stats]
    if stats and stats[0].source == "residual":
        scales[0] = float(loaded.model.get_input_embeddings().weight.float().std())
    return scales
