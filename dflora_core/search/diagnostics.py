"""How strongly random candidates move the fitness, per layer: a cheap check of the projection scale.

With z ~ N(0, sigma^2 I) (what CMA-ES asks in its first generation), a well-scaled projection
changes the few-shot loss by a modest amount at every layer; too large a scale (the released
alpha = 1 on SmolLM2, docs/design.md §6) makes every candidate worse than z = 0 by a wide margin,
too small a scale leaves the loss unchanged. One population forward per layer measures it.
"""

from __future__ import annotations

import numpy as np

from .loop import LayerwiseSearch


def candidate_spread(search: LayerwiseSearch, n: int = 20, seed: int = 0, layers=None) -> list[dict]:
    """Per adapted layer: fitness of z = 0 and of n random candidates (mean, min, max, fraction better)."""
    rng = np.random.default_rng(seed)
    dim = search.adapter.dim
    sigma = search.cfg.optim.sigma
    rows = []
    for layer in layers if layers is not None else range(search.num_layers):
        X = np.vstack([np.zeros((1, dim)), rng.standard_normal((n, dim)) * sigma])
        f = search.fitness(layer, X)
        f0, fr = float(f[0]), f[1:]
        rows.append(
            {
                "layer": layer,
                "model_layer": search.adapter.model_layers[layer],
                "f_zero": f0,
                "f_mean": float(fr.mean()),
                "f_min": float(fr.min()),
                "f_max": float(fr.max()),
                "frac_better": float((fr < f0).mean()),
                "rel_change": float(np.abs(fr - f0).mean() / max(abs(f0), 1e-12)),
            }
        )
    return rows
