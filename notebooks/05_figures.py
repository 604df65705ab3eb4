# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (dflora)
#     language: python
#     name: dflora
# ---

# %% [markdown]
# # 05 · Every figure and table, from recorded results only
#
# Nothing here trains or loads a model: every figure and table is rebuilt from the records
# under the runs root (run records with their history and dev curves, and the analyses of
# notebooks 01 and 02). Delete `figures/` and run this notebook to get them back; change a
# plot here without rerunning anything.
#
# | file | what | the paper's |
# |---|---|---|
# | `table_main` | test metric, methods x tasks, mean (std) over seeds; peers with records included; paired differences to `main.vs` (BBT) with 95% intervals where it has runs | Tables 1-2 |
# | `table_cost` | time, calls, forward/backward passes, peak memory per method | Table 3 |
# | `subspace_dimension`, `table_intrinsic_dim` | test metric against $d$ | Figure 3 |
# | `rank`, `table_rank` | test metric against $r$ | Figure 4 |
# | `table_init` | RI vs RIL, with and without optimisation | Table 4 |
# | `table_targets` | which attention matrices are adapted | Table 6 |
# | `table_optimizer`, `convergence_optimizer` | CMA-ES vs LoTFWA vs random search | |
# | `convergence` | train fitness and dev metric against calls, main runs | |
# | `main_comparison` | the main table as bars | |
# | `hidden_state_stats`, `projection_scale`, `projection_calibrated` | notebooks 01 and 02 | |
# | `table_<folder>`, `convergence_<folder>` | each comparison grid in the profile's `extra_roots` (`dflora compare` runs, e.g. the committed `results/` folders) | Table 1 |
# | `PROVENANCE.md` | the run folder behind every table cell and figure curve | |
#
# Figures are written as PDF and PNG with fixed metadata: the same records give the same bytes.
# Where the profile's runs root and an extra root hold the same run, the profile's `prefer`
# setting says which copy is shown (`committed`, the default: the extra root's, so the committed
# figures are the same on every machine; `local`: this machine's); every footer says which, and
# `PROVENANCE.md` lists the folders, with the copies not shown.

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # no widgets here; kept so every notebook takes the same parameters
runs_root: str = ""  # where the records are read from; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir

# %%
params = _guard.validate(globals())

from IPython.display import Markdown, display

from dflora_core import methods
from dflora_core.grids import collect, plans
from dflora_core.lab import analyses
from dflora_core.lab.profiles import REPO_ROOT
from dflora_core.notebook_params import open_profile
from dflora_core.reports import (
    budget,
    comparison_figures,
    curves,
    provenance,
    statistics_figures,
    style,
    tables,
    training_figures,
    zo_figures,
    zo_tables,
)

prof = open_profile(params)
root, figdir = prof.path("runs_root"), prof.path("figures_dir")
fmt = {"formats": prof.figures.formats, "dpi": prof.figures.dpi}
records, shadowed = collect.profile_sources(prof)  # one copy per run: the one prof.prefer names
print(f"{len(records)} records under {root} and the extra roots (prefer: {prof.prefer}; {len(shadowed)} runs in both)")
written, sources = [], []  # sources: (file, records, other source) for PROVENANCE.md


def save(fig, name, recs=(), source=""):
    """A figure whose footer says which copy of a run it shows (``recs``: its runs; ``source``: else)."""
    recs = list(recs)
    if recs:
        style.extend_footer(fig, provenance.choice_text(prof.prefer, recs, shadowed))
    sources.append((name, recs, source))
    written.extend(style.save(fig, figdir, name, **fmt))
    display(fig)


def table(t, name, caption, recs=()):
    """A table file whose footer says which dev rule its runs used and which copy of a run it shows."""
    recs = list(recs)
    sources.append((name, recs, ""))
    note = provenance.choice_text(prof.prefer, recs, shadowed)
    written.extend(tables.write_table(t, figdir, name, f"{caption} ({prof.label}).", recs, note))
    display(Markdown(f"**{caption}**"))
    display(t)


# %% [markdown]
# ## Main comparison and cost (Tables 1-3)

# %%
main_recs = collect.main_records(prof, records)
vs = prof.main.vs if any(r["method"] == prof.main.vs for r in main_recs) else None  # main.vs, where it has runs
main, counts = tables.main_table(main_recs, prof.main.tasks, vs=vs)
caption = "Main comparison: test metric x 100, mean (std) over seeds"
table(main, "table_main", caption + (f"; {tables.VS_CAPTION.format(vs=vs).rstrip('.')}" if vs else ""), main_recs)
cost = tables.cost_table(collect.study_frame(plans.main_plan(prof), records))
idx = collect.index_records(records)
table(
    cost,
    "table_cost",
    "Memory and time per method (peak memory: the notebook kernel's peak RSS on CPU, CUDA max allocated on GPU)",
    [idx[p.key] for p in plans.main_plan(prof) if p.key in idx],
)
missing = collect.missing_runs(plans.main_plan(prof), records)
if missing:
    print(
        f"{len(missing)} planned main runs have no record yet (run notebook 04): "
        + "; ".join(p.describe() for p in missing[:5])
    )

# %%
save(comparison_figures.main_comparison_figure(main_recs, prof.name), "main_comparison", main_recs)

# %% [markdown]
# ## Convergence
#
# The train loss of the whole configuration (elitist acceptance: it only goes down) and the
# dev metric against fitness evaluations, for the layer-wise runs of the main grid.

# %%
dfo_main = [idx[p.key] for p in plans.main_plan(prof) if p.key in idx and methods.is_layerwise_lora(p.cfg.method)]
save(training_figures.convergence_figure(dfo_main, prof.name, "convergence: main runs"), "convergence", dfo_main)
plan_opt = plans.ablation_plan(prof, ["optimizer"])
opt_recs = [idx[p.key] for p in plan_opt if p.key in idx]
save(
    training_figures.convergence_figure(opt_recs, prof.name, "convergence: per-layer optimizer (ablation)"),
    "convergence_optimizer",
    opt_recs,
)

# %% [markdown]
# ## Comparison grids recorded elsewhere
#
# Every folder in the profile's `extra_roots` that holds runs (grids written by `dflora compare`,
# such as the committed `results/` folders) gets its own table: methods x tasks, mean (std) over
# seeds, with the cost columns; and, where it holds layer-wise runs, their convergence curves.

# %%
for name, recs in collect.comparison_roots(prof):
    if name == "zo-new":  # its tune, report and all-weight parts are their own tables (below)
        continue
    grid, _counts, zero_shot = tables.comparison_table(recs)
    zs = ", ".join(f"{t} {v}" for t, v in zero_shot.items())
    table(grid, f"table_{name}", f"Comparison grid {name}: test metric x 100, mean (std) over seeds "
          f"([n seeds]: fewer than the fullest cell); zero-shot {zs}", recs)
    dfo = [r for r in recs if methods.is_layerwise_lora(r["method"])]
    if dfo:
        save(training_figures.convergence_figure(dfo, prof.name, f"convergence: {name}"), f"convergence_{name}", dfo)
    if any(r.get("test_curve") for r in recs):  # runs that took the test metric against calls
        save(training_figures.calls_figure(recs, prof.name, f"test metric against calls: {name}"), f"calls_{name}",
             [r for r in recs if r.get("test_curve")])
    if any("scheme" in (r.get("tags") or {}) for r in recs):  # the zeroth-order benchmark's memory table
        table(tables.memory_table(recs), f"table_{name}_memory",
              f"{name}: methods x fine-tuning schemes, test x 100 mean (std) / largest peak memory", recs)
    labelled = [r for r in dfo if (r.get("tags") or {}).get("label")]
    if any((r.get("tags") or {}).get("label") == "default" for r in labelled):  # options of one method
        caption = (f"Options of {name}: test x 100 mean (std); paired differences to 'default' "
                   "(points, mean (standard error) [95% t interval] seeds won); default rule: the verdict "
                   "of docs/method.md (dev higher on every task, test not below -SE on any)")  # fmt: skip
        table(tables.options_table(labelled), f"table_{name}_paired", caption, labelled)
        table(tables.layer_table(curves.layer_gains_by_arm(labelled)), f"table_{name}_layers",
              f"Where the calls went ({name}): train-loss decrease per call, calls and decrease by layer third",
              labelled)

# %% [markdown]
# ## The paper's budget on one task
#
# C-LoRA, F-LoRA and C-LoRA on calibrated logits at 6,000 calls on SST-2 (all 30 layers,
# `results/paper-budget`, `benchmarks/grids/paper_budget.py`): the dev-selected snapshot's test
# metric at 300 to 6,000 calls from the same runs, beside the peers as bands: gradient LoRA at 600
# matched forward passes (`results/search-options`, part peers) and the calibrated zero-shot
# (`results/zo-family`), and the paired differences to each at 600, 1,200 and 6,000 calls
# (mean [95% t interval] seeds won; the same seeds, split and 300-sentence test sample).

# %%
roots = dict(collect.comparison_roots(prof))
budget_arms = roots.get("paper-budget", [])
budget_peers = [r for r in roots.get("search-options", []) if budget.arm_of(r) == "lora"]
budget_peers += [r for r in roots.get("zo-family", []) if r["method"] == "zeroshot-calibrated"]
if budget_arms:
    save(budget.budget_figure(budget_arms, budget_peers, prof.name, "test metric against calls to 6,000 (SST-2)"),
         "calls_paper-budget")  # fmt: skip
    table(budget.budget_table(budget_arms, budget_peers, ["lora", "zeroshot-calibrated"]), "table_paper-budget_paired",
          "The paper's budget: test x 100 mean (std) over seeds at 600, 1,200 and 6,000 calls; paired difference to "
          "gradient LoRA (600 passes) and to the calibrated zero-shot: mean [95% t] seeds won; wall time and "
          "evaluations per second of the whole run", budget_arms + budget_peers)  # fmt: skip

# %% [markdown]
# ## Zeroth-order peers, tuned
#
# `results/zo-new` (`benchmarks/grids/zo_new.py`): MeZO (zo-sgd), ZO-Adam and the 2025-2026 peers (MeZO-GV,
# MeZO-Greedy, FZOO, LOZO, LOZO-M) on the `lora` scheme, each with the learning rate one declared rule chose
# (three values around MeZO's 1e-4, 300 forward passes on the dev split of seed 21, a seed no table reports;
# the best dev metric, then the lower dev loss, then the smaller lr), then seeds 13/42/100 at 600 passes,
# test at 300 and 600 from the same runs; the new peers on every weight (`all`) at 300 passes, seed 13,
# untuned. Beside it: the untuned table of the same family at MeZO's defaults (`table_zo-family`).

# %%
zo_new = roots.get("zo-new", [])
if zo_new:
    tune = [r for r in zo_new if (r.get("tags") or {}).get("part") == "tune"]
    shown = [r for r in zo_new if (r.get("tags") or {}).get("part") in ("report", "all")]
    if tune:
        table(zo_tables.tuning_table(tune), "table_zo-new_tuning",
              "The learning-rate rule: dev metric x 100 (dev loss) at 300 forward passes, seed 21, per lr tried; "
              "the lr chosen; the rule's forward passes per arm", tune)  # fmt: skip
    if shown:
        table(zo_tables.report_table(shown), "table_zo-new",
              "Zeroth-order peers, tuned: test x 100 mean (std) over seeds at 300 and 600 forward passes (one run "
              "gives both), lr from the rule (untuned: MeZO's full-parameter defaults), passes per step, largest "
              "peak memory, mean wall time", shown)  # fmt: skip
        save(zo_figures.passes_figure(shown, prof.name, "zo-new: accuracy against forward passes"),
             "calls_zo-new", shown)  # fmt: skip

# %% [markdown]
# ## Ablations (Figures 3, 4 and Tables 4, 6)

# %%
plan_abl = plans.ablation_plan(prof)
frame = collect.study_frame(plan_abl, records)
abl_recs = [idx[p.key] for p in plan_abl if p.key in idx]
study_recs = {s: [idx[p.key] for p in plan_abl if p.key in idx and p.study == s] for s in plans.STUDIES}
save(comparison_figures.dimension_figure(frame, records, prof.name), "subspace_dimension", study_recs["intrinsic_dim"])
save(comparison_figures.rank_figure(frame, records, prof.name), "rank", study_recs["rank"])
noopt = collect.noopt_records(prof, records)
table(tables.init_table(frame, noopt), "table_init", "Initialisation (the paper's Table 4): test metric x 100",
      abl_recs + list(noopt))
for study in ("rank", "intrinsic_dim", "targets", "optimizer"):
    table(
        tables.study_table(frame, study, plans.STUDY_TITLES[study]),
        f"table_{study}",
        f"Ablation: {plans.STUDY_TITLES[study]}: test metric x 100, mean (std) over seeds",
        study_recs[study],
    )

# %% [markdown]
# ## The analyses of notebooks 01 and 02

# %%
for name, kind, figure in (("hidden_state_stats", "hidden_stats", statistics_figures.hidden_stats_figure),
                           ("projection_scale", "projection", statistics_figures.projection_figure),
                           ("projection_calibrated", "projection_calibrated", statistics_figures.projection_figure)):
    analysis = analyses.load_analysis(root, kind)
    if analysis:  # a frozen-model analysis of notebook 01/02, no run behind it
        where = analyses.analysis_path(root, kind)
        save(figure(analysis), name, source=f"The frozen-model analysis `{where.relative_to(root.parent)}`, no run.")
for m in prof.training.methods:
    p = [x for x in plans.training_plan(prof) if x.cfg.method == m][0]
    if p.key in idx:
        save(training_figures.record_training_figure(idx[p.key], prof.name), f"training_{m}", [idx[p.key]])

# %% [markdown]
# ## Provenance: the run folder behind every table cell and figure curve

# %%
written.append(provenance.write_provenance(figdir, sources, prof.prefer, shadowed, REPO_ROOT))
written = sorted(set(written))  # a file written twice is one file, as the runner counts it
print(f"{len(written)} files written to {figdir}:")
for p in written:
    print("  ", p.name)
