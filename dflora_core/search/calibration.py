"""Per-layer projection scales from the model at hand (``lowrank.scale_calibration``; docs/method.md,
"Calibrated scales").

RIL sets layer l's map std from its hidden-state statistic; on SmolLM2 a first random step then
moves the q/k outputs by 2e-5 at layer 0 and by about 100% at layer 29, so the lower layers'
candidates all score the same and the top layers' steps are mostly rejected. Two rules rescale
each adapted layer's maps (``IntrinsicProjection.rescale``) before the search:

- ``output``: measure the relative output change ||X A B|| / ||X W|| of a first random step
  z ~ N(0, sigma^2 I) (notebook 02's measurement, on the train prompts, no fitness calls) and
  rescale the layer so that it lands inside ``calibration_range`` (layers inside are unchanged);
- ``fitness``: try each of ``calibration_factors`` x the RIL scale on an antithetic pair +-z and
  keep the factor whose better candidate improves most on the current configuration (2 calls
  per factor and layer, charged to the budget; ties go to the factor closest to 1).

The update is x A B with both factors carrying the scale under "ril" (output change ~ scale^2),
the A factor only under "released" (~ scale); "released" leaves model layer 0 alone.
"""

from __future__ import annotations

import math

import numpy as np

from ..lowrank.probe import ProjectionProbe
from ..seeds import generator

DRAWS = 2  # random first steps averaged per layer by the output rule


def output_multiplier(before: float, low: float, high: float, power: int) -> float:
    """The scale multiplier that moves a layer's output change ``before`` into [low, high]."""
    if not power or not before > 0 or not math.isfinite(before):
        return 1.0
    return (min(max(before, low), high) / before) ** (1 / power)


def power_of(init: str, model_layer: int) -> int:
    """How the output change grows with the scale multiplier (its exponent)."""
    if init == "ril":
        return 2
    return 1 if model_layer >= 1 else 0  # released: A maps of layers >= 1 only


def output_rule(search) -> dict:
    """Rescale every adapted layer into ``lowrank.calibration_range``; returns what was done (no calls)."""
    cfg, proj = search.cfg, search.adapter.projection
    low, high = cfg.lowrank.calibration_range
    probe = ProjectionProbe(search.exp.loaded, search.train, cfg.lowrank.targets, search.adapter.model_layers,
                            max_tokens=search.exp.max_tokens)  # fmt: skip
    rows = []
    for layer in range(search.num_layers):
        rng = generator(cfg.seed, "scale_calibration", layer, scheme=cfg.seed_scheme)
        Z = rng.standard_normal((DRAWS, proj.d)) * cfg.optim.sigma
        factors = proj.factors(layer, Z)
        before = float(np.mean([probe.ratios(layer, t, A, B)[1] for t, (A, B) in factors.items()]))
        power = power_of(proj.init, proj.model_layers[layer])
        multiplier = output_multiplier(before, low, high, power)
        if multiplier != 1.0:
            proj.rescale(layer, multiplier)
        rows.append({"layer": layer, "model_layer": proj.model_layers[layer], "output_change_ril": before,
                     "output_change": before * multiplier**power, "multiplier": multiplier})  # fmt: skip
    return {"rule": "output", "range": [low, high], "calls": 0, "layers": rows}


def fitness_rule(search) -> dict:
    """Try the factors per adapted layer on an antithetic pair; keep the best improvement (calls charged)."""
    cfg, proj = search.cfg, search.adapter.projection
    f0 = search.reference_fitness()
    rows, calls = [], 0
    for layer in range(search.num_layers):
        rng = generator(cfg.seed, "scale_calibration", layer, scheme=cfg.seed_scheme)
        z = rng.standard_normal(proj.d) * cfg.optim.sigma
        X = np.stack([z, -z])
        tried, current = [], 1.0
        for factor in cfg.lowrank.calibration_factors:
            proj.rescale(layer, factor / current)
            current = factor
            f = search.fitness(layer, X)
            calls += len(X)
            tried.append({"factor": factor, "improvement": f0 - float(np.min(f))})
        best = max(tried, key=lambda r: (r["improvement"], -abs(math.log(r["factor"]))))
        proj.rescale(layer, best["factor"] / current)
        rows.append({"layer": layer, "model_layer": proj.model_layers[layer], "multiplier": best["factor"],
                     "tried": tried})  # fmt: skip
    return {"rule": "fitness", "factors": list(cfg.lowrank.calibration_factors), "calls": calls, "layers": rows}


def reapply(search, calibration: dict) -> None:
    """Install the multipliers of a recorded calibration (resume)."""
    for row in calibration["layers"]:
        if row["multiplier"] != 1.0:
            search.adapter.projection.rescale(row["layer"], row["multiplier"])
