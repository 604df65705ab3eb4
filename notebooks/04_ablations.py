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
# # 04 · The main comparison and the ablations
#
# **Main comparison.** Every method of the profile on every task and seed, with the same
# split, prompts, budget and test set (zero-shot = the manual prompt, no tuning). Peers
# (`main.peers`, e.g. the calibrated zero-shot baseline) run when their implementation is
# registered.
#
# **Ablations**, one factor at a time around one base configuration (the profile's
# `ablations.run`), each over the profile's seeds:
#
# | study | varied | the paper's |
# |---|---|---|
# | rank | $r \in \{1, 2, 4, 8, 16\}$: $\Delta W = AB$ with $A \in \mathbb R^{h\times r}$ | Figure 4 |
# | intrinsic dimension | $d$, the length of each layer's $z$ (rounded to a multiple of the factor count) | Figure 3 |
# | initialisation | RI vs RIL maps (notebook 02), with and without optimisation | Table 4 |
# | target matrices | which of $W_q, W_k, W_v$ get an update | Table 6 |
# | optimizer | CMA-ES (C-LoRA), LoTFWA (F-LoRA), random search | |
#
# "Without optimisation" evaluates random intrinsic vectors from the optimizer's starting
# distribution, $z_l \sim \mathcal N(0, \sigma^2 I)$ for every layer, on the test set: what
# the initialisation alone does to the model, before any search.
#
# Every run is recorded under the runs root; a run that is already recorded is read back,
# an interrupted one resumes from its checkpoint. Notebook 05 rebuilds all tables and
# figures from these records without training.

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # progress bars; False runs headless with the same computations
runs_root: str = ""  # where runs are recorded; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir
studies_to_run: str = ""  # comma-separated: main, rank, intrinsic_dim, init, targets, optimizer; empty: all

# %%
params = _guard.validate(globals())

from IPython.display import Markdown, display

from dflora_core.errors import ConfigError
from dflora_core.grids import collect, grid, plans
from dflora_core.lab import live
from dflora_core.notebook_params import open_profile
from dflora_core.reports import comparison_figures, style, tables
from dflora_core.reports.provenance import choice_text

prof = open_profile(params)
root, figdir = prof.path("runs_root"), prof.path("figures_dir")
chosen = [s.strip() for s in params.studies_to_run.split(",") if s.strip()] or ["main", *plans.STUDIES]
bad = [s for s in chosen if s not in ("main", *plans.STUDIES)]
if bad:
    raise ConfigError("studies_to_run", f"unknown {bad}; choose from main, {', '.join(plans.STUDIES)}")
plan_main = plans.main_plan(prof) if "main" in chosen else []
plan_abl = plans.ablation_plan(prof, [s for s in chosen if s != "main"])
plan_noopt = plans.noopt_plan(prof) if "init" in chosen else []  # the init study's "w/o optimisation" arm
peers, missing = plans.registered_peers(prof)
if missing:
    print(f"peers not registered (skipped): {', '.join(missing)}")
todo = plans.unique_runs(plan_main + plan_abl + plan_noopt)
fresh = [p for p in todo if not grid.is_recorded(root, p.cfg)]
print(f"{len(todo)} distinct runs, {len(todo) - len(fresh)} already recorded, {len(fresh)} to run")
b = prof.ablation_base
print(
    f"ablation base: {b.method}, layers {b.lowrank.layers or 'all'}, targets {','.join(b.lowrank.targets)}, "
    f"r={b.lowrank.rank}, d={b.lowrank.intrinsic_dim}, init {b.lowrank.projection_init}, popsize {b.optim.popsize}, "
    f"budget {b.search.budget} calls, seeds {list(prof.ablations.seeds)}"
)

# %% [markdown]
# ## Run (or read back) every planned run

# %%
progress = live.GridProgress(params.interactive)
tracker = prof.tracker()  # the profile's `tracking:` (TensorBoard, MLflow, W&B; docs/tracking.md): none by default
records = plans.run_plan(plan_main + plan_abl + plan_noopt, root, progress, prof.backend, hooks=tracker)
tracker.close()
progress.close()
noopt = collect.noopt_records(prof, records)

# %% [markdown]
# ## Main comparison
#
# Test metric $\times 100$, mean (std) over seeds.

# %%
all_records, shadowed = collect.profile_sources(prof)  # one copy per run: the one prof.prefer names
main_recs = collect.main_records(prof, all_records)
table, counts = tables.main_table(main_recs, prof.main.tasks)
display(table)
caption = f"Main comparison ({prof.label}): test metric x 100, mean (std) over seeds."
tables.write_table(table, figdir, "table_main", caption, main_recs, choice_text(prof.prefer, main_recs, shadowed))

# %% [markdown]
# ## Ablation tables
#
# `vs zero-shot` is the test metric minus the zero-shot score (points); `final train CE`
# the train loss of the final configuration (low values with no test gain: over-fitting).

# %%
frame = collect.study_frame(plan_abl, records)
idx = collect.index_records(records)
for study in [s for s in plans.STUDIES if s in chosen]:
    if study == "init":
        t = tables.init_table(frame, noopt)
        title = "Initialisation (the paper's Table 4): test metric x 100, mean (std) over seeds"
    else:
        t = tables.study_table(frame, study, plans.STUDY_TITLES[study])
        title = f"Ablation: {plans.STUDY_TITLES[study]}: test metric x 100, mean (std) over seeds"
    display(Markdown(f"**{title}**"))
    display(t)
    study_recs = [idx[p.key] for p in plan_abl if p.study == study and p.key in idx] + (
        noopt if study == "init" else []
    )
    tables.write_table(t, figdir, f"table_{study}", f"{title} ({prof.label}).", study_recs)

# %% [markdown]
# ## Subspace dimension and rank

# %%
for study, fn, name in (
    ("intrinsic_dim", comparison_figures.dimension_figure, "subspace_dimension"),
    ("rank", comparison_figures.rank_figure, "rank"),
):
    if study in chosen:
        fig = fn(frame, records, prof.name)
        style.save(fig, figdir, name, prof.figures.formats, prof.figures.dpi)
        display(fig)
