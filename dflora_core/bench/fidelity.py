"""Whether a faster path ranks the candidates as fp32 does (``dflora bench fidelity``).

The fitness is the mean cross-entropy over the verbalizer logits. A strategy is compared with
the fp32 reference on the same candidates: Spearman correlation, same best candidate, largest
absolute difference. ``run_fidelity`` does this for reduced precision over tasks and layers,
on the production path (prefix reuse). Synthetic shapes (``*-shape``) have random weights:
their fidelity numbers say little. Results and their reading: docs/method.md ("Reduced
precision") and benchmarks/README.md.
"""

from __future__ import annotations

import numpy as np

from ..lowrank.population import PopulationEvaluator
from ..metrics import losses
from .setup import Setup
from .strategies import DTYPES

FAITHFUL_SPEARMAN = 0.99  # a faster path must rank the candidates like fp32 (issue 7)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average the ranks of ties
            tie = x == v
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity(f, ref) -> dict:
    """Fitnesses ``f`` against the reference's ``ref`` on the same candidates."""
    f, ref = np.asarray(f, dtype=float), np.asarray(ref, dtype=float)
    return {
        "spearman_vs_fp32": spearman(f, ref),
        "same_best": bool(np.argmin(f) == np.argmin(ref)),
        "max_abs_fitness_diff": float(np.max(np.abs(f - ref))),
    }


def is_faithful(same_best: bool | None, rho: float | None) -> bool:
    """Same best candidate and a ranking at least ``FAITHFUL_SPEARMAN`` like fp32's."""
    return bool(same_best and rho is not None and rho >= FAITHFUL_SPEARMAN)


def run_fidelity(s: Setup, layers, dtypes=("bfloat16", "float16"), log=print) -> list[dict]:
    """fp32 vs autocast fitnesses of the same candidates, on the production path (prefix reuse)."""
    out = []
    P = len(s.Z)
    n = s.adapter.num_layers
    for layer in layers:
        li = layer % n
        Z = np.random.default_rng([42, 7, li]).standard_normal((P, s.adapter.dim)) * float(np.std(s.Z))
        fits = {}
        for name in ("float32", *dtypes):
            ev = PopulationEvaluator(s.loaded, s.head, s.adapter, s.data, DTYPES[name], s.max_tokens, True)
            try:
                fits[name] = losses(ev.logits(li, Z), s.data.labels, "ce").double().numpy()
            except RuntimeError as err:
                fits[name] = err
        ref = fits["float32"]
        for name in dtypes:
            row = {
                "model": s.name,
                "task": s.task,
                "layer": li,
                "model_layer": int(s.adapter.model_layers[li]),
                "dtype": name,
                "device": str(s.device),
                "population": P,
                "fp32_fitness_spread": float(np.std(ref)),
                "fp32_fitness_range": [float(ref.min()), float(ref.max())],
            }
            if s.options:
                row["options"] = dict(s.options)
            if s.multipliers is not None:
                row["scale_multiplier"] = s.multipliers[li]
            if isinstance(fits[name], Exception):
                row["error"] = str(fits[name])[:300]
            else:
                row.update(fidelity(fits[name], ref))
                row["faithful"] = is_faithful(row["same_best"], row["spearman_vs_fp32"])
            out.append(row)
            log(
                f"  {s.name} {s.task} layer {li:2d} {name}: spearman {row.get('spearman_vs_fp32', float('nan')):.4f}"
                f" same_best {row.get('same_best')} max|df| {row.get('max_abs_fitness_diff', float('nan')):.2e}"
                f" (fp32 spread {row['fp32_fitness_spread']:.2e})"
            )
    return out
