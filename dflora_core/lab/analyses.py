"""The analyses of the frozen model behind notebooks 01 and 02, recorded as JSON under
``<runs_root>/analysis/``: per-layer hidden-state statistics (the "ril" scale) and the update
magnitudes an initialisation implies, per layer (``ProjectionStudy``, fast enough for sliders).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..experiment import Experiment
from ..fileio import atomic_write_json, read_json
from ..grids.plans import round_dim
from ..lowrank.build import build_projection, measure_scales
from ..lowrank.hidden_stats import SOURCES
from ..lowrank.probe import ProjectionProbe
from ..models.registry import load_model
from ..search.calibration import output_multiplier, power_of
from ..seeds import generator

ANALYSIS = "analysis"


# -- 01: hidden-state statistics ---------------------------------------------------------------
def analysis_path(root: str | Path, name: str) -> Path:
    return Path(root) / ANALYSIS / f"{name}.json"


def _stats_config(profile, model: str, task: str, seed: int) -> RunConfig:
    return profile.base.replace(
        **{"method": "zeroshot", "model.name": model, "data.task": task, "seed": seed, "lowrank.layers": None}
    )


def hidden_stats_study(profile, tasks=None, models=None, progress: Callable[[str], None] | None = None) -> dict:
    """Per-layer mean/std (raw and clipped) of the hidden states on each task's few-shot batch.

    For every model, task and source (residual stream entering the layer, or the input of the
    adapted projection), plus the projection std the "ril" init derives from it
    (alpha * std_hat / (sqrt(d) * sigma) with the profile's alpha, d, sigma).
    """
    s = profile.stats
    tasks = list(tasks or s.tasks)
    models = list(models or s.models)
    lr, sigma = profile.base.lowrank, profile.base.optim.sigma
    rows, meta = [], []
    for model in models:
        t0 = time.perf_counter()
        loaded = load_model(model, profile.base.model.device)
        embed_std = float(loaded.model.get_input_embeddings().weight.float().std())
        for task in tasks:
            cfg = _stats_config(profile, model, task, s.seed)
            exp = Experiment.prepare(cfg, loaded)
            for source in s.sources:
                settings = dataclasses.replace(lr, stat_source=source)
                stats, scales = measure_scales(loaded, exp.train, settings, exp.max_tokens)
                for st, scale in zip(stats, scales, strict=True):
                    rows.append(
                        {
                            "model": model,
                            "model_type": loaded.model_type,
                            "task": task,
                            **st.as_dict(),
                            "std_hat": scale,
                            "ril_std": lr.alpha * scale / (math.sqrt(lr.intrinsic_dim) * sigma),
                        }
                    )
            meta.append(
                {
                    "model": model,
                    "task": task,
                    "train_size": len(exp.train),
                    "tokens": int(exp.train.lengths.sum()),
                    "template": exp.encoder.template.pattern,
                }
            )
            if progress:
                progress(f"hidden-state statistics: {model} {task} done ({time.perf_counter() - t0:.0f} s)")
        meta.append({"model": model, "embedding_std": embed_std, "layers": loaded.model.config.num_hidden_layers})
        del loaded
    return {
        "kind": "hidden_stats",
        "profile": profile.name,
        "seed": s.seed,
        "alpha": lr.alpha,
        "intrinsic_dim": lr.intrinsic_dim,
        "sigma": sigma,
        "clip_rounds": lr.clip_rounds,
        "clip_sigma": lr.clip_sigma,
        "rows": rows,
        "meta": meta,
    }


def save_analysis(root: str | Path, name: str, result: dict) -> Path:
    path = analysis_path(root, name)
    atomic_write_json(path, result)
    return path


def load_analysis(root: str | Path, name: str) -> dict | None:
    path = analysis_path(root, name)
    return read_json(path) if path.is_file() else None


def implied_scale_summary(result: dict):
    """Per model/task/source: the std_hat range over layers and the ratio top/bottom layer."""
    import pandas as pd

    df = pd.DataFrame(result["rows"])
    if df.empty:
        return df
    g = df.groupby(["model", "source", "task"], sort=False)
    out = g.agg(
        layers=("layer", "count"),
        std_first=("std_hat", "first"),
        std_last=("std_hat", "last"),
        std_min=("std_hat", "min"),
        std_max=("std_hat", "max"),
        kept_min=("kept", "min"),
    )
    out["growth (last / first)"] = (out["std_last"] / out["std_first"]).round(2)
    return out.round(4)


# -- 02: projection initialisation ------------------------------------------------------------------
class ProjectionStudy:
    """Update magnitudes per layer implied by an initialisation, on the frozen model.

    For layer l and target t, with z ~ N(0, sigma^2 I) (the optimizer's starting spread):
    A = reshape(M_A z_A), B = reshape(M_B z_B), Delta W = A B, and two ratios:
    ||Delta W||_F / ||W||_F (against the frozen weight) and ||X Delta W||_F / ||X W||_F on the
    projection's real inputs X (the few-shot batch). The frozen model is read once; each
    ``magnitudes`` call only regenerates the projection maps (fast enough for sliders).
    """

    def __init__(self, profile, task: str | None = None, loaded=None, seed: int | None = None):
        self.profile = profile
        base = profile.base
        task = task or profile.projection.task
        self.seed = base.seed if seed is None else seed
        self.seed_scheme = base.seed_scheme
        cfg = base.replace(**{"method": "zeroshot", "data.task": task, "seed": self.seed})
        self.exp = Experiment.prepare(cfg, loaded)
        self.loaded = self.exp.loaded
        lr = cfg.lowrank
        self.targets = lr.targets
        self.stats, self.std_hat = {}, {}
        for src in SOURCES:
            self.stats[src], self.std_hat[src] = measure_scales(
                self.loaded, self.exp.train, dataclasses.replace(lr, stat_source=src), self.exp.max_tokens
            )
        self.probe = ProjectionProbe(self.loaded, self.exp.train, self.targets, None, profile.projection.max_rows,
                                     self.exp.max_tokens)  # fmt: skip
        self.model_layers, self.dims = self.probe.model_layers, self.probe.dims

    @property
    def num_layers(self) -> int:
        return len(self.dims)

    def magnitudes(
        self,
        init: str,
        d: int | None = None,
        sigma: float | None = None,
        alpha: float | None = None,
        rank: int | None = None,
        source: str | None = None,
        draws: int | None = None,
        ri_std: float | None = None,
        multipliers: dict[int, float] | None = None,
        label: str | None = None,
    ) -> list[dict]:
        """Rows (layer, target, ratios averaged over draws) for one setting; None = the profile's value.

        ``multipliers`` rescale std_hat of some model layers (a scale calibration); ``label`` names the rows.
        """
        lr, op = self.profile.base.lowrank, self.profile.base.optim
        d = lr.intrinsic_dim if d is None else int(d)
        d = round_dim(d, len(self.targets))
        sigma = op.sigma if sigma is None else float(sigma)
        alpha = lr.alpha if alpha is None else float(alpha)
        rank = lr.rank if rank is None else int(rank)
        source = source or lr.stat_source
        draws = draws or self.profile.projection.draws
        ri_std = lr.ri_std if ri_std is None else float(ri_std)
        scales = list(self.std_hat[source])
        for m, factor in (multipliers or {}).items():
            scales[m] *= factor
        proj = build_projection(
            self.dims, self.model_layers, lr, self.seed, sigma, scales, "cpu", self.seed_scheme,
            rank=rank, intrinsic_dim=d, init=init, alpha=alpha, ri_std=ri_std,
        )  # fmt: skip
        rng = generator(self.seed, "projection_study", scheme=self.seed_scheme)
        rows = []
        with torch.no_grad():
            for layer in range(self.num_layers):
                Z = rng.standard_normal((draws, d)) * sigma
                factors = proj.factors(layer, Z)
                for t, (A, B) in factors.items():
                    weight_ratio, output_ratio = self.probe.ratios(layer, t, A, B)
                    rows.append(
                        {
                            "init": label or init,
                            "source": source,
                            "layer": self.model_layers[layer],
                            "target": t,
                            "d": d,
                            "sigma": sigma,
                            "alpha": alpha,
                            "rank": rank,
                            "A_std": float(A.std()),
                            "B_std": float(B.std()),
                            "weight_ratio": weight_ratio,
                            "output_ratio": output_ratio,
                        }
                    )
                proj._cache.clear()
        return rows

    def calibrated(self, init: str = "ril", source: str | None = None, calibration_range=None) -> dict:
        """The ``output`` scale calibration of the search (search/calibration.py) beside the plain init."""
        low, high = calibration_range or self.profile.base.lowrank.calibration_range
        plain = self.magnitudes(init, source=source)
        multipliers = {}
        for m in self.model_layers:
            before = float(np.mean([r["output_ratio"] for r in plain if r["layer"] == m]))
            multipliers[m] = output_multiplier(before, low, high, power_of(init, m))
        label = f"{init}, calibrated into {low:g}-{high:g}"
        rows = plain + self.magnitudes(init, source=source, multipliers=multipliers, label=label)
        return {**self._describe(rows), "calibration_range": [low, high], "multipliers": multipliers}

    def study(self, settings: Iterable[dict]) -> dict:
        rows = []
        for s in settings:
            rows += self.magnitudes(**s)
        return self._describe(rows)

    def _describe(self, rows: list[dict]) -> dict:
        return {
            "kind": "projection",
            "profile": self.profile.name,
            "model": self.loaded.name,
            "task": self.exp.task.name,
            "seed": self.seed,
            "targets": list(self.targets),
            "std_hat": self.std_hat,
            "rows": rows,
        }


def default_projection_settings(profile) -> list[dict]:
    """The headless settings of notebook 02: each init at the profile's d, sigma, alpha, rank;
    "ril" with both statistic sources."""
    out = []
    for init in profile.projection.inits:
        if init == "ri":
            out.append({"init": "ri"})
        else:
            for src in ("residual", "proj_input"):
                out.append({"init": init, "source": src})
    return out
