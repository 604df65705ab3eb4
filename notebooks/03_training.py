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
# # 03 · Training without gradients: one C-LoRA and one F-LoRA run, live
#
# **The objective.** With the update of every layer fixed by its vector $z_l$, the model scores
# the few-shot training set (16 examples per class). The fitness is the cross-entropy over the
# label words only (the verbalizer, e.g. " negative" / " positive"):
#
# $$f(z_1, \dots, z_L) = -\frac1N \sum_{i=1}^N \log \frac{e^{s_{y_i}(x_i)}}{\sum_{c} e^{s_c(x_i)}}$$
#
# One evaluation of $f$ for one candidate is one "API call"; the budget counts them.
#
# **Divide and conquer.** One optimizer per layer, each starting at $z_l = 0$. A round visits
# the layers bottom to top; at layer $l$: ask a population of candidates $z_l^{(1..P)}$,
# score each with the other layers held at their current values (all $P$ in one forward
# pass, the layers below reused), tell the optimizer the fitnesses, and keep the
# generation's best only if it lowers the fitness of the whole configuration ("elitist":
# the train loss can only go down).
#
# * **C-LoRA** uses CMA-ES: sample $z \sim \mathcal N(m, \sigma^2 C)$, move the mean $m$
#   toward the best samples, adapt the covariance $C$ and step size $\sigma$.
# * **F-LoRA** uses the loser-out tournament fireworks algorithm (LoTFWA): a few "fireworks"
#   explode into sparks within an amplitude, a guiding spark follows the best sparks'
#   direction, amplitudes grow on success and shrink on failure, and a firework that cannot
#   catch up with the best is restarted.
#
# **Model selection.** Every `eval_every` calls the dev set (another 16 per class) is scored
# and the best-dev snapshot kept; the test score uses that snapshot. Few-shot data over-fit:
# watch the train loss fall while dev stalls.
#
# Interactive mode shows a progress bar and a **"run N more generations"** control: each
# click runs $N$ more generations of the ask/tell loop and checkpoints; the next cell
# finishes the budget from there (the recorded run is the same either way). Headless runs
# (papermill) do the same computation without widgets.

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # progress bar, live curves and the run-N-more control; False runs headless
runs_root: str = ""  # where runs are recorded; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir

# %%
params = _guard.validate(globals())

from IPython.display import display

from dflora_core.grids import plans
from dflora_core.lab import live
from dflora_core.models.registry import load_model
from dflora_core.notebook_params import open_profile
from dflora_core.reports import style, tables, training_figures

prof = open_profile(params)
root, figdir = prof.path("runs_root"), prof.path("figures_dir")
plan = plans.training_plan(prof)
cfg0 = plan[0].cfg
print(
    f"task {cfg0.data.task}, seed {cfg0.seed}, model {cfg0.model.name}, layers {cfg0.lowrank.layers or 'all'}, "
    f"targets {','.join(cfg0.lowrank.targets)}, r={cfg0.lowrank.rank}, d={cfg0.lowrank.intrinsic_dim}, "
    f"popsize {cfg0.optim.popsize}, budget {cfg0.search.budget} calls"
)
loaded = load_model(cfg0.model.name, cfg0.model.device)
tracker = prof.tracker()  # the profile's `tracking:` (TensorBoard, MLflow, W&B; docs/tracking.md): none by default
sessions = {
    p.cfg.method: live.TrainingSession(
        p, root, loaded, params.interactive, prof.name, prof.training.more_generations, tracker=tracker
    )
    for p in plan
}

# %% [markdown]
# ## C-LoRA (CMA-ES per layer)
#
# The left panel: each dot is a generation's best candidate (colour: the layer), the black
# line the fitness of the whole configuration. Middle: how much each layer has lowered the
# train loss so far. Right: the dev metric at each evaluation, the selected snapshot, and the
# zero-shot test score for reference. A run already recorded under the runs root is shown
# from its record instead of being run again.

# %%
first = list(sessions)[0]
sessions[first].show()  # `;` keeps the cell to its figure and controls

# %%
# finishes the budget (live), then the final test score of the best-dev snapshot
records = {first: sessions[first].finish()}

# %% [markdown]
# ## F-LoRA (LoTFWA per layer)
#
# Same loop, same budget, another per-layer optimizer.

# %%
rest = list(sessions)[1:]
for m in rest:
    sessions[m].show()

# %%
for m in rest:
    records[m] = sessions[m].finish()
tracker.close()

# %% [markdown]
# ## Final test score against zero-shot
#
# `change (points)` is test minus zero-shot, in accuracy points (F1 for MRPC). When the best
# dev score was the unadapted model's (`selected the start`), the test score is zero-shot.

# %%
summary = live.training_summary(list(records.values()))
display(summary.set_index("method"))
caption = f"Live training runs ({prof.label}): final test score of the best-dev snapshot against zero-shot."
tables.write_table(summary.set_index("method"), figdir, "table_training", caption, list(records.values()))
for m, rec in records.items():
    fig = training_figures.record_training_figure(rec, prof.name)
    style.save(fig, figdir, f"training_{m}", prof.figures.formats, prof.figures.dpi)
