"""The computations behind the notebooks: run plans, analyses and results tables.

Notebooks stay thin: each calls one or two functions of this module and one figure function
of :mod:`dflora_core.plotting`. Everything here either runs something and records it
under the profile's runs root, or reads those records back:

- ``training_plan`` / ``main_plan`` / ``ablation_plan``: the run configurations a profile
  asks for (03, 04); ``run_plan`` runs them through the results grid (finished runs are
  read back, interrupted ones resumed);
- ``hidden_stats_study`` (01) and ``ProjectionStudy`` (02): analyses of the frozen model,
  recorded as JSON under ``<runs_root>/analysis/``;
- ``init_without_optimisation`` (04, the paper's Table 4 "w/o optimisation" column);
- ``study_frame``, ``main_table``, ``cost_table``, ``study_table``, ``init_table``: tables
  from records only (05 regenerates every one of them without training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DFO_LORA_METHODS, METHODS, RunConfig, from_dict
from .results.grid import config_hash, run_dir, run_grid
from .results.io import atomic_write_json, read_json
from .results.record import RECORD, base_record

ANALYSIS = "analysis"
STUDIES = ("rank", "intrinsic_dim", "init", "targets", "optimizer")
ZERO_BUDGET_METHODS = ("zeroshot", "zeroshot-calibrated", "icl")  # no search: the budget does not apply

STUDY_TITLES = {
    "main": "main comparison",
    "training": "live training runs",
    "rank": "rank r",
    "intrinsic_dim": "intrinsic dimension d",
    "init": "projection initialisation",
    "targets": "target matrices",
    "optimizer": "per-layer optimizer",
}
NO_OPT = "no-opt"  # method name of the "without optimisation" records (not a registered method)


# -- run plans ------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    study: str  # "training", "main" or one of STUDIES
    axis: str  # the varied setting ("method", "lowrank.rank", ...)
    value: Any  # its value in this run
    cfg: RunConfig
    tags: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return config_hash(self.cfg)

    def describe(self) -> str:
        return f"{self.cfg.method} {self.cfg.data.task} seed {self.cfg.seed} {self.axis}={self.value}"


def _planned(profile, study: str, axis: str, value, cfg: RunConfig) -> PlannedRun:
    tags = {"profile": profile.name, "study": study, "axis": axis, "value": value}
    return PlannedRun(study, axis, value, cfg, tags)


def registered_peers(profile) -> tuple[list[str], list[str]]:
    """(peers of main.peers that are registered now, those that are not)."""
    from . import baselines  # noqa: F401 - registers the peers

    have = [m for m in profile.main.peers if m in METHODS]
    return have, [m for m in profile.main.peers if m not in METHODS]


def main_plan(profile) -> list[PlannedRun]:
    """Methods x tasks x seeds with the profile's run settings (peers only when registered)."""
    peers, _missing = registered_peers(profile)
    methods = list(dict.fromkeys([*profile.main.methods, *peers]))
    out = []
    for task in profile.main.tasks:
        for seed in profile.main.seeds:
            for m in methods:
                cfg = profile.base.replace(**{"method": m, "data.task": task, "seed": seed})
                out.append(_planned(profile, "main", "method", m, cfg))
    return out


def training_plan(profile) -> list[PlannedRun]:
    """The live runs of notebook 03: the main grid's settings, so 04 and 05 reuse them."""
    t = profile.training
    return [
        _planned(
            profile, "training", "method", m, profile.base.replace(**{"method": m, "data.task": t.task, "seed": t.seed})
        )
        for m in t.methods
    ]


def round_dim(d: int, n_targets: int) -> int:
    """The nearest intrinsic dimension that splits into 2 * n_targets equal chunks (at least one each)."""
    n = 2 * n_targets
    return max(n, int(round(d / n)) * n)


def ablation_plan(profile, studies: Iterable[str] | None = None) -> list[PlannedRun]:
    """One-factor-at-a-time variations of the ablation base, for every ablation seed."""
    a = profile.ablations
    chosen = list(studies) if studies else list(STUDIES)
    base = profile.ablation_base.replace(**{"data.task": a.task})
    n_targets = len(base.lowrank.targets)
    out = []
    for seed in a.seeds:
        b = base.replace(seed=seed)
        if "rank" in chosen:
            out += [_planned(profile, "rank", "lowrank.rank", r, b.replace(**{"lowrank.rank": r})) for r in a.rank]
        if "intrinsic_dim" in chosen:
            for d in a.intrinsic_dim:
                dd = round_dim(d, n_targets)
                out.append(
                    _planned(
                        profile,
                        "intrinsic_dim",
                        "lowrank.intrinsic_dim",
                        dd,
                        b.replace(**{"lowrank.intrinsic_dim": dd}),
                    )
                )
        if "init" in chosen:
            out += [
                _planned(profile, "init", "lowrank.projection_init", i, b.replace(**{"lowrank.projection_init": i}))
                for i in a.init
            ]
        if "targets" in chosen:
            for tg in a.targets:
                parts = tuple(x.strip() for x in tg.split(","))
                dd = round_dim(b.lowrank.intrinsic_dim, len(parts))
                cfg = b.replace(**{"lowrank.targets": list(parts), "lowrank.intrinsic_dim": dd})
                out.append(_planned(profile, "targets", "lowrank.targets", ",".join(parts), cfg))
        if "optimizer" in chosen:
            out += [_planned(profile, "optimizer", "method", m, b.replace(method=m)) for m in a.optimizer]
    return out


def all_planned(profile) -> list[PlannedRun]:
    return training_plan(profile) + main_plan(profile) + ablation_plan(profile)


def unique_runs(plan: Iterable[PlannedRun]) -> list[PlannedRun]:
    """One entry per distinct configuration (the first plan entry's tags win)."""
    seen: dict[str, PlannedRun] = {}
    for p in plan:
        seen.setdefault(p.key, p)
    return list(seen.values())


def is_recorded(root: str | Path, cfg: RunConfig) -> bool:
    rec = Path(run_dir(root, cfg)) / RECORD
    return rec.is_file() and read_json(rec).get("status") == "done"


def run_plan(plan: Iterable[PlannedRun], root: str | Path, progress=None) -> list[dict]:
    """Run every distinct configuration of the plan (recorded ones are read back); returns the records.

    One ``run_grid`` call, so the model is loaded once. ``progress``: an object with
    ``start_run(i, n, planned, cached)``, ``end_run(record)`` and ``callbacks()`` (the runner
    callbacks of the run in progress), e.g. live.GridProgress.
    """
    runs = unique_runs(plan)
    if not runs:
        return []
    configs, tags = [p.cfg for p in runs], [p.tags for p in runs]
    if progress is None:
        return run_grid(configs, root, tags)
    cached = [is_recorded(root, p.cfg) for p in runs]
    state = {"i": 0}

    def on_record(rec: dict) -> None:
        progress.end_run(rec)
        state["i"] += 1
        if state["i"] < len(runs):
            progress.start_run(state["i"], len(runs), runs[state["i"]], cached[state["i"]])

    progress.start_run(0, len(runs), runs[0], cached[0])
    return run_grid(configs, root, tags, on_record=on_record, **progress.callbacks())


# -- records <-> plans ------------------------------------------------------------------------------
def index_records(records: Iterable[dict]) -> dict[str, dict]:
    """config hash -> record (the hash ignores the progress flag, as run folders do)."""
    out = {}
    for rec in records:
        if rec.get("method") == NO_OPT:  # same config as the optimised run: kept apart
            continue
        try:
            out[config_hash(from_dict(rec["config"]))] = rec
        except Exception:  # noqa: BLE001 - a record of another code version: not part of any plan
            continue
    return out


def load_all_records(root: str | Path) -> list[dict]:
    from .results.grid import load_records

    return load_records(root) if Path(root).is_dir() else []


def record_row(rec: dict) -> dict[str, Any]:
    from .results.table import flat_row

    row = flat_row(rec)
    row.update(
        final_train_fitness=rec.get("final_train_fitness"),
        train_at_best=(rec.get("train_at_best") or {}).get("value"),
        selected_start=rec.get("selected_start"),
        stopped=rec.get("stopped"),
        dir=rec.get("_dir"),
    )
    return row


def study_frame(plan: Iterable[PlannedRun], records: Iterable[dict]):
    """One row per planned run that has a record: study, axis, value + the record's columns."""
    import pandas as pd

    idx = index_records(records)
    rows = []
    for p in plan:
        rec = idx.get(p.key)
        if rec is None:
            continue
        row = record_row(rec)
        row.update(study=p.study, axis=p.axis, value=p.value, seed=p.cfg.seed)
        rows.append(row)
    return pd.DataFrame(rows)


def missing_runs(plan: Iterable[PlannedRun], records: Iterable[dict]) -> list[PlannedRun]:
    idx = index_records(records)
    return [p for p in unique_runs(plan) if p.key not in idx]


# -- tables -------------------------------------------------------------------------------------------
def _fmt_pct(values) -> str:
    from .results.table import mean_std

    return mean_std(list(values))


def main_records(profile, records: list[dict]) -> list[dict]:
    """The records of the main comparison: the main plan's runs, plus any registered peer method's
    records (from the runs root or the profile's ``extra_roots``, e.g. ``dflora compare``) on the
    main tasks, seeds and model, scored on the same test set and (methods that search) at the
    same budget as the main runs."""
    idx = index_records(records)
    chosen = {id(idx[p.key]): idx[p.key] for p in main_plan(profile) if p.key in idx}
    tests = {(r.get("task"), (r.get("data") or {}).get("test_digest")) for r in chosen.values()}
    model = profile.base.model.name
    budget = profile.base.search.budget
    for rec in records:
        m = rec.get("method")
        if (
            m in METHODS
            and m not in DFO_LORA_METHODS
            # peers join only at the main runs' budget: a table mixing budgets would mislead
            and (m in ZERO_BUDGET_METHODS or ((rec.get("config") or {}).get("search") or {}).get("budget") == budget)
            and rec.get("task") in profile.main.tasks
            and rec.get("seed") in profile.main.seeds
            and rec.get("model") == model
            and (rec.get("task"), (rec.get("data") or {}).get("test_digest")) in tests
        ):
            chosen.setdefault(id(rec), rec)
    return list(chosen.values())


def profile_records(profile) -> list[dict]:
    """Every record under the runs root and the profile's extra roots (peer runs)."""
    out = load_all_records(profile.path("runs_root"))
    seen = {r.get("_dir") for r in out}
    for root in profile.extra_paths():
        out += [r for r in load_all_records(root) if r.get("_dir") not in seen]
    return out


def comparison_roots(profile) -> list[tuple[str, list[dict]]]:
    """(folder name, records) of every extra root that holds runs: ``dflora compare`` grids, such as
    the committed ``results/`` folders, each rendered as its own table and convergence figure."""
    out = []
    for root in profile.extra_paths():
        recs = load_all_records(root)
        if recs:
            out.append((Path(root).name, recs))
    return out


def method_order(methods: Iterable[str]) -> list[str]:
    """Zero-shot first, then the peers, then the layer-wise DFO methods."""
    from .plotting import METHOD_ORDER

    ms = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in ms]
    others = sorted(m for m in ms if m not in METHOD_ORDER)
    dfo = [m for m in known if m in DFO_LORA_METHODS]
    return [m for m in known if m not in DFO_LORA_METHODS] + others + dfo


def main_table(profile, records: list[dict]):
    """Methods x tasks, test metric x 100 as 'mean (std)' over seeds (``main_records``).

    Returns (table, counts).
    """
    import pandas as pd

    from .results.table import frame, pivot

    recs = main_records(profile, records)
    if not recs:
        return pd.DataFrame(), pd.DataFrame()
    df = frame(recs)
    tasks = [t for t in profile.main.tasks if t in set(df["task"])]
    return pivot(df, "method", "task", "test", row_order=method_order(df["method"]), col_order=tasks)


def cost_table(profile, records: list[dict]):
    """Memory and time per method (the paper's Table 3), from the main runs' records."""
    import pandas as pd

    df = study_frame(main_plan(profile), records)
    if df.empty:
        return pd.DataFrame()
    rows = []
    for m, g in df.groupby("method", sort=False):
        calls = g["calls"].astype(float)
        wall = g["wall_s"].astype(float)
        rows.append(
            {
                "method": m,
                "runs": len(g),
                "calls": int(calls.mean()) if calls.notna().any() else 0,
                "wall time (s)": round(float(wall.mean()), 1),
                "s / 100 calls": round(float((wall / calls * 100).mean()), 1) if (calls >= 100).all() else None,
                "fitness evals / s": _round(g["evals_per_s"].astype(float).mean(), 2),
                "forward passes": int(g["forward_passes"].fillna(0).astype(float).mean()),
                "backward passes": int(g["backward_passes"].fillna(0).astype(float).mean()),
                "peak memory (MiB)": _mib(g["peak_mem_bytes"].astype(float).max()),
                "params optimised": int(g["params_optimised"].fillna(0).astype(float).max()),
                "device": ",".join(sorted(set(g["device"].dropna()))),
            }
        )
    out = pd.DataFrame(rows).set_index("method").astype(object)
    return out.where(out.notna(), "-")


def _mib(n) -> int | None:
    return None if n is None or math.isnan(n) else int(round(n / 2**20))


def _round(x, digits):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def study_table(df, study: str):
    """One ablation: value -> test 'mean (std)' over seeds, the change against zero-shot, dev, train, time."""
    import pandas as pd

    g = df[df["study"] == study] if not df.empty else df
    if g.empty:
        return pd.DataFrame()
    rows = []
    for value, h in g.groupby("value", sort=False):
        delta = (h["test"].astype(float) - h["zero_shot"].astype(float)).tolist()
        rows.append(
            {
                STUDY_TITLES[study]: value,
                "test": _fmt_pct(h["test"]),
                "vs zero-shot": _fmt_pct(delta).replace(" (", " (±", 1) if len(h) > 1 else _fmt_pct(delta),
                "best dev": _fmt_pct(h["best_dev"]),
                "final train CE": _round(h["final_train_fitness"].astype(float).mean(), 3),
                "wall time (s)": _round(h["wall_s"].astype(float).mean(), 1),
                "seeds": len(h),
            }
        )
    out = pd.DataFrame(rows).set_index(STUDY_TITLES[study])
    if study in ("rank", "intrinsic_dim"):
        out = out.sort_index()
    return out


def init_table(df, noopt_records: list[dict]):
    """The paper's Table 4: initialisation (rows) x without / with optimisation (columns)."""
    import pandas as pd

    rows = {}
    g = df[df["study"] == "init"] if not df.empty else df
    for value, h in g.groupby("value", sort=False) if not g.empty else []:
        rows.setdefault(value, {})["with optimisation"] = _fmt_pct(h["test"])
    by_init: dict[str, list[float]] = {}
    for rec in noopt_records:
        by_init.setdefault(rec["tags"]["value"], []).append(rec["test"]["value"])
    for value, vals in by_init.items():
        rows.setdefault(value, {})["without optimisation"] = _fmt_pct(vals)
    if not rows:
        return pd.DataFrame()
    zs = [r["zero_shot"]["value"] for r in noopt_records] or (g["zero_shot"].tolist() if not g.empty else [])
    out = pd.DataFrame.from_dict(rows, orient="index")
    cols = [c for c in ("without optimisation", "with optimisation") if c in out.columns]
    out = out[cols].fillna("-")
    out.index.name = "initialisation"
    out.index = [str(i).upper() for i in out.index]
    out.index.name = "initialisation"
    if zs:
        out.loc["(zero-shot)"] = [_fmt_pct(zs[:1])] * len(cols)
    return out


def write_table(table, folder: str | Path, name: str, caption: str) -> list[Path]:
    """``name``.md (caption + GitHub table) and ``name``.csv; returns the paths."""
    from .results.io import atomic_write_bytes
    from .results.table import to_markdown

    folder = Path(folder)
    md = folder / f"{name}.md"
    csv = folder / f"{name}.csv"
    body = to_markdown(table) if not table.empty else "(no recorded runs yet)\n"
    atomic_write_bytes(md, f"{caption}\n\n{body}".encode())
    atomic_write_bytes(csv, table.to_csv().encode())
    return [md, csv]


# -- 01: hidden-state statistics --------------------------------------------------------------------
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
    from .experiment import Experiment
    from .lowrank.hidden_stats import hidden_state_stats, projection_scales
    from .models.registry import load_model

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
                stats = hidden_state_stats(loaded, exp.train, source, lr.clip_rounds, lr.clip_sigma, exp.max_tokens)
                scales = projection_scales(loaded, stats)
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
        import torch

        from .experiment import Experiment
        from .lowrank.hidden_stats import hidden_state_stats, projection_scales
        from .lowrank.patching import LowRankPatch

        self.profile = profile
        base = profile.base
        task = task or profile.projection.task
        self.seed = base.seed if seed is None else seed
        cfg = base.replace(**{"method": "zeroshot", "data.task": task, "seed": self.seed})
        self.exp = Experiment.prepare(cfg, loaded)
        self.loaded = self.exp.loaded
        lr = cfg.lowrank
        self.targets = lr.targets
        self.stats = {
            src: hidden_state_stats(
                self.loaded, self.exp.train, src, lr.clip_rounds, lr.clip_sigma, self.exp.max_tokens
            )
            for src in ("residual", "proj_input")
        }
        self.std_hat = {src: projection_scales(self.loaded, st) for src, st in self.stats.items()}
        patch = LowRankPatch(self.loaded.model, self.targets, None)
        try:
            self.model_layers = list(patch.model_layers)
            self.dims, self.W, self.X, self.Y = [], [], [], []
            inputs: dict[int, list] = {}
            max_rows = profile.projection.max_rows
            mask_box: list = []
            handles = []
            wrappers = {}
            for i, sites in enumerate(patch.sites):
                for _t, site in sites.items():
                    wrappers.setdefault(id(site.wrapper), (i, site.wrapper))
            for wid, (_i, w) in wrappers.items():

                def hook(_m, args, _wid=wid):
                    x = args[0][mask_box[0].bool()]
                    inputs.setdefault(_wid, []).append(x.detach().float())

                handles.append(w.register_forward_pre_hook(hook))
            with torch.no_grad():
                for batch in self.exp.train.batches(self.exp.max_tokens, self.loaded.device):
                    mask_box[:] = [batch.attention_mask]
                    self.loaded.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            for h in handles:
                h.remove()
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for sites in patch.sites:
                    dims, Ws, Xs, Ys = {}, {}, {}, {}
                    for t, site in sites.items():
                        w = site.wrapper
                        x = torch.cat(inputs[id(w)])
                        if len(x) > max_rows:
                            x = x[torch.randperm(len(x), generator=gen)[:max_rows]]
                        eye = torch.eye(w.in_features, device=self.loaded.device)
                        zero = torch.zeros(1, w.in_features, device=self.loaded.device)
                        sel = w.selects[t]
                        W = _select(w.base(eye) - w.base(zero), sel)
                        Y = _select(w.base(x) - w.base(zero), sel)
                        dims[t] = (site.in_features, site.out_features)
                        Ws[t], Xs[t], Ys[t] = W.cpu(), x.cpu(), Y.cpu()
                    self.dims.append(dims)
                    self.W.append(Ws)
                    self.X.append(Xs)
                    self.Y.append(Ys)
        finally:
            patch.remove()

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
    ) -> list[dict]:
        """Rows (layer, target, ratios averaged over draws) for one setting; None = the profile's value."""
        import torch

        from .lowrank.projection import IntrinsicProjection

        lr, op = self.profile.base.lowrank, self.profile.base.optim
        d = lr.intrinsic_dim if d is None else int(d)
        d = round_dim(d, len(self.targets))
        sigma = op.sigma if sigma is None else float(sigma)
        alpha = lr.alpha if alpha is None else float(alpha)
        rank = lr.rank if rank is None else int(rank)
        source = source or lr.stat_source
        draws = draws or self.profile.projection.draws
        ri_std = lr.ri_std if ri_std is None else float(ri_std)
        proj = IntrinsicProjection(
            self.dims,
            rank,
            d,
            init,
            self.seed,
            self.std_hat[source],
            alpha,
            sigma,
            ri_std,
            "cpu",
            model_layers=self.model_layers,
        )
        rng = np.random.default_rng([self.seed, 2])
        rows = []
        with torch.no_grad():
            for layer in range(self.num_layers):
                Z = rng.standard_normal((draws, d)) * sigma
                factors = proj.factors(layer, Z)
                for t, (A, B) in factors.items():
                    # ||A B||_F^2 = tr((A^T A)(B B^T)): r x r products, never the [in, out] update
                    gram = torch.bmm(A.transpose(1, 2), A) * torch.bmm(B, B.transpose(1, 2)).transpose(1, 2)
                    dw_norm = gram.sum(dim=(1, 2)).clamp_min(0).sqrt()  # [draws]
                    w_norm = float(self.W[layer][t].norm())
                    dY = torch.matmul(torch.matmul(self.X[layer][t], A), B)  # [draws, n, out]
                    y_norm = float(self.Y[layer][t].norm())
                    rows.append(
                        {
                            "init": init,
                            "source": source,
                            "layer": self.model_layers[layer],
                            "target": t,
                            "d": d,
                            "sigma": sigma,
                            "alpha": alpha,
                            "rank": rank,
                            "A_std": float(A.std()),
                            "B_std": float(B.std()),
                            "weight_ratio": float(dw_norm.mean()) / w_norm,
                            "output_ratio": float(dY.flatten(1).norm(dim=1).mean()) / y_norm,
                        }
                    )
                proj._cache.clear()
        return rows

    def study(self, settings: Iterable[dict]) -> dict:
        rows = []
        for s in settings:
            rows += self.magnitudes(**s)
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


def _select(y, sel):
    import torch

    if sel is None:
        return y
    if isinstance(sel, slice):
        return y[..., sel]
    return torch.index_select(y, -1, sel.to(y.device))


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


# -- 04: initialisation without optimisation ----------------------------------------------------------
def noopt_dir(root: str | Path, cfg: RunConfig) -> Path:
    model = Path(cfg.model.name).name.replace(".gguf", "")
    return Path(root) / cfg.data.task / NO_OPT / model / f"seed{cfg.seed}-{config_hash(cfg)}"


def init_without_optimisation(profile, root: str | Path, loaded=None, progress: Callable[[str], None] | None = None):
    """Test score of random intrinsic vectors from the start distribution (no search), per init and seed.

    z ~ N(0, sigma^2 I) for every adapted layer: what the initialisation alone does to the
    model. Recorded (and reused) under <root>/<task>/no-opt/...; returns the records.
    """
    from .experiment import Experiment
    from .models.registry import load_model
    from .runner import zero_shot
    from .search.loop import LayerwiseSearch

    a = profile.ablations
    records = []
    if a.init_draws <= 0:
        return records
    plan = [p for p in ablation_plan(profile, ["init"])]
    for p in plan:
        cfg = p.cfg
        folder = noopt_dir(root, cfg)
        path = folder / RECORD
        if path.is_file():
            rec = read_json(path)
            if rec.get("status") == "done" and rec.get("draws_requested") == a.init_draws:
                rec["_dir"] = str(folder)
                records.append(rec)
                continue
        t0 = time.perf_counter()
        if loaded is None or loaded.name != cfg.model.name:
            loaded = load_model(cfg.model.name, cfg.model.device)
        exp = Experiment.prepare(cfg, loaded)
        zs = zero_shot(exp)
        search = LayerwiseSearch(exp)
        values = []
        try:
            rng = np.random.default_rng([cfg.seed, 7])
            for _ in range(a.init_draws):
                z = rng.standard_normal((search.num_layers, search.adapter.dim)) * cfg.optim.sigma
                for layer in range(search.num_layers):
                    search.adapter.set_z(layer, z[layer])
                values.append(exp.evaluate(exp.test_set).as_dict())
        finally:
            search.close()
        rec = base_record(cfg.to_dict())
        rec.update(
            method=NO_OPT,
            status="done",
            tags={**p.tags, "optimisation": False},
            model_identity=exp.loaded.identity,
            data=exp.data_identity(),
            metric=exp.task.metric,
            draws_requested=a.init_draws,
            draws=values,
            test={
                "metric": exp.task.metric,
                "value": float(np.mean([v["value"] for v in values])),
                "std_over_draws": float(np.std([v["value"] for v in values])),
                "name": exp.test.name,
                "official": exp.test.official,
                "n": values[0]["n"],
            },
            zero_shot=zs,
            calls=0,
            wall_s=time.perf_counter() - t0,
        )
        atomic_write_json(path, rec)
        rec["_dir"] = str(folder)
        records.append(rec)
        if progress:
            progress(
                f"init {p.value} seed {cfg.seed} without optimisation: test {rec['test']['value']:.3f} "
                f"(zero-shot {zs['value']:.3f}, {a.init_draws} draws, {rec['wall_s']:.0f} s)"
            )
    return records


def noopt_records(profile, records: Iterable[dict]) -> list[dict]:
    """The "without optimisation" records that belong to the profile's init study."""
    keys = {p.key for p in ablation_plan(profile, ["init"])}
    out = []
    for rec in records:
        if rec.get("method") != NO_OPT:
            continue
        try:
            if config_hash(from_dict(rec["config"])) in keys:
                out.append(rec)
        except Exception:  # noqa: BLE001
            continue
    return out


# -- convergence data ---------------------------------------------------------------------------------
def run_curves(record: dict) -> tuple[list[dict], list[dict]]:
    """(history rows, dev-curve rows) of a recorded DFO run ([] when absent)."""
    folder = record.get("_dir")
    if not folder:
        return [], []
    hist = Path(folder) / "history.json"
    dev = Path(folder) / "dev_curve.json"
    return (read_json(hist) if hist.is_file() else []), (read_json(dev) if dev.is_file() else [])
