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
# # 01 · Hidden-state statistics: how big should a random update be?
#
# C-LoRA does not optimise the LoRA factors directly. Each layer $l$ gets a small vector
# $z_l \in \mathbb{R}^d$ (here $d$ = 500 by default), and a **fixed random matrix** $M$ maps a
# chunk of it to a factor, e.g. $A_q = \mathrm{reshape}(M_{qA}\, z_{qA}, [h, r])$. The optimizer
# (CMA-ES) only ever sees $z$. So the entries of $M$ decide how far a step in $z$ moves the
# model: too large and every candidate breaks the model, too small and nothing changes.
#
# The paper draws $M$ from a normal distribution whose scale follows the hidden states the
# update will act on ("RIL" initialisation):
#
# $$\mathrm{std}(M^l) = \frac{\alpha\, \hat\sigma_l}{\sqrt{d}\,\sigma}$$
#
# where $\sigma$ is CMA-ES's initial step size, $\alpha$ a stretch constant and
# $\hat\sigma_l$ the standard deviation of the hidden states entering layer $l$, measured on
# the few-shot training batch (real tokens only) after 5 rounds of clipping to
# $\mu \pm 3 s$ (mean and std recomputed after each round, so a few outlier dimensions do
# not dominate).
#
# This notebook measures $\hat\sigma_l$ for every layer, task and model, before and after
# clipping, at two places:
#
# * **residual**: the residual stream entering the layer (what the released code measures);
# * **proj_input**: what the adapted $W_q, W_k$ actually multiply: in a *pre-norm* model
#   such as SmolLM2 (Llama), the layer norm in front of attention rescales the residual stream.
#
# Watch for: the residual stream's std growing with depth in pre-norm models while the
# projection input stays flat; what that does to the implied scale of $M$ is the last panel.

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # widgets and live plots; False runs headless with the same computations
runs_root: str = ""  # where runs and analyses are recorded; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir
tasks: str = ""  # comma-separated tasks overriding the profile's stats.tasks; empty keeps them
models: str = ""  # comma-separated models overriding the profile's stats.models; empty keeps them

# %%
params = _guard.validate(globals())

from IPython.display import Markdown, display

from dflora_core.lab import analyses
from dflora_core.notebook_params import open_profile
from dflora_core.reports import statistics_figures, style

prof = open_profile(params)
root, figdir = prof.path("runs_root"), prof.path("figures_dir")
task_list = [t.strip() for t in params.tasks.split(",") if t.strip()] or list(prof.stats.tasks)
model_list = [m.strip() for m in params.models.split(",") if m.strip()] or list(prof.stats.models)

# %% [markdown]
# ## Measure
#
# One forward pass per task and model over the few-shot training batch with $z = 0$ (the
# unadapted model), hooks collecting the hidden states at both places. Cheap: a few seconds
# per task on a CPU.

# %%
result = analyses.hidden_stats_study(prof, task_list, model_list, progress=print)
path = analyses.save_analysis(root, "hidden_stats", result)
print(f"recorded: {path}")

# %% [markdown]
# ## Per-layer standard deviations
#
# Solid lines are after clipping, dashed lines the raw values: where they differ, a few
# extreme activations (outlier dimensions, the first token) inflate the raw std. The right
# panel is the projection std $\alpha \hat\sigma_l / (\sqrt d\, \sigma)$ each choice of
# statistic implies.

# %%
fig = statistics_figures.hidden_stats_figure(result)
style.save(fig, figdir, "hidden_state_stats", prof.figures.formats, prof.figures.dpi)
display(fig)

# %% [markdown]
# ## What it implies for the projection scale
#
# `growth (last / first)` is how much larger $\hat\sigma$ (hence every map $M$, hence the
# update a unit step in $z$ makes) is at the top layer than at the bottom one. For a pre-norm
# model measured on the residual stream, the top layers get maps an order of magnitude larger,
# although their projections see inputs of the same size as the bottom layers: a reason to
# measure `proj_input` (`lowrank.stat_source`) or to lower $\alpha$ (docs/design.md §6 found
# $\alpha = 1$ wrecks SmolLM2 and $\alpha = 0.05$ works).

# %%
summary = analyses.implied_scale_summary(result)
display(summary)
display(Markdown(f"`alpha` = {result['alpha']}, `d` = {result['intrinsic_dim']}, `sigma` = {result['sigma']}"))

# %% [markdown]
# ## Explore (interactive only)
#
# Pick a model, task and source to see the per-layer numbers. Headless runs skip the widget;
# the table above holds the same data.

# %%
if params.interactive:
    import ipywidgets as W
    import pandas as pd

    frame = pd.DataFrame(result["rows"])

    def show(model, task, source):
        cols = ["layer", "raw_mean", "raw_std", "mean", "std", "kept", "std_hat", "ril_std"]
        q = frame[(frame.model == model) & (frame.task == task) & (frame.source == source)]
        display(q[cols].set_index("layer").round(4))

    W.interact(
        show,
        model=W.Dropdown(options=model_list),
        task=W.Dropdown(options=task_list),
        source=W.Dropdown(options=list(prof.stats.sources)),
    )
