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
# # 06 · Zeroth order: from a two-point estimate to a ranked population
#
# Every method of this notebook tunes a model with forward passes only. They differ in what they do
# with the losses of the perturbed models they score.
#
# * **Two-point SPSA** (MeZO): draw $z \sim \mathcal N(0, I)$, score $L(\theta + \epsilon z)$ and
#   $L(\theta - \epsilon z)$, and step along $z$ by
#   $$g = \frac{L(\theta+\epsilon z) - L(\theta-\epsilon z)}{2\epsilon} \approx \nabla L \cdot z, \qquad
#   \theta \leftarrow \theta - \eta\, g\, z .$$
#   $\mathbb E[g z] = \nabla L$ (for small $\epsilon$): right on average, very noisy per step (the noise grows
#   with the number of parameters). MeZO perturbs in place from a seed and regenerates $z$, so it needs no
#   memory beyond inference: 2 forward passes per step.
# * **Forward gradient**: the exact $\nabla L \cdot v$ by one Jacobian-vector product, $\theta \leftarrow
#   \theta - \eta (\nabla L \cdot v) v$ (no $\epsilon$, but a forward with a tangent).
# * **FZOO**: $N$ Rademacher perturbations $u_i \in \{\pm 1\}^D$ scored *together* (a batch), one-sided
#   differences against $L(\theta)$, and the step divided by the spread of the losses:
#   $\theta \leftarrow \theta - \frac{\eta}{N \sigma} \sum_i (l_i - l_0) u_i$ ($N+1$ passes).
# * **MeZO-GV**: a pool of $M$ perturbations scored; the *guiding vector*
#   $v = \overline{z}_\text{low loss} - \overline{z}_\text{high loss}$ points downhill, and the two-point step
#   goes along it ($M+2$ passes). **MeZO-Greedy** steps along the pool's best perturbation ($M+1$).
# * **CMA-ES** (C-LoRA's optimizer) keeps the whole population: it ranks the candidates, moves its mean
#   towards the best ones, and learns a covariance from them, so it adapts its step size and its shape to the
#   valley. No gradient is estimated at all.
#
# First on a function whose gradient we know, $f(x) = x_1^2 + 10\,x_2^2$ (curvatures 2 and 20: an
# ill-conditioned valley), every method with the same number of function evaluations; then what they do on
# SmolLM2, read from the committed runs (no long run inside this notebook).

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # a slider for the evaluation budget and eps; False runs headless at the defaults
runs_root: str = ""  # where runs and analyses are recorded; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir

# %%
params = _guard.validate(globals())

from IPython.display import display

from dflora_core.grids import collect
from dflora_core.lab import zo_tutorial
from dflora_core.notebook_params import open_profile
from dflora_core.reports import style, tables, zo_figures

prof = open_profile(params)
figdir = prof.path("figures_dir")
fmt = {"formats": prof.figures.formats, "dpi": prof.figures.dpi}

# %% [markdown]
# ## The estimators on a 2-D quadratic
#
# Each panel: the contours of $f$, the points a method evaluated (orange: the perturbed models it scored)
# and its iterates (blue), from $(1.6, 1.2)$, each with 90 function evaluations. MeZO's pairs sit on both
# sides of its iterate; FZOO's and MeZO-GV's pools surround it; CMA-ES's populations start wide and shrink
# as its step size adapts. The learning rates are the largest stable ones on this $f$ (for a two-point
# method, $\eta \lVert z \rVert^2$ times the largest curvature must stay below 2); $\epsilon = 0.1$ makes the
# perturbed points visible.

# %%
traces = zo_tutorial.traces()
fig = zo_figures.quadratic_figure(traces, zo_tutorial.f)
written = style.save(fig, figdir, "zo_quadratic", **fmt)
display(fig)

# %%
fig = zo_figures.losses_figure(traces)
written += style.save(fig, figdir, "zo_quadratic_losses", **fmt)
display(fig)

# %% [markdown]
# Forward gradient is the most efficient per evaluation here (an exact directional derivative per pass)
# and MeZO close behind: with $D = 2$ a random direction is never far from the gradient. The pool methods
# spend 9-10 evaluations per step on a better direction; their advantage is that a pool is scored in one
# batched forward on an accelerator (dflora does so for LoRA factors), so per *second* they can win where
# per *evaluation* they lose. CMA-ES pays for its population with robustness: it needs no $\epsilon$, no
# learning rate, and its ranked update does not care about the loss's scale.

# %% [markdown]
# ## Explore: the budget and $\epsilon$ (interactive only)
#
# Fewer evaluations leave the pool methods with only a few steps; a larger $\epsilon$ biases FZOO's
# one-sided estimate ($\epsilon^2\, \mathrm{tr}(H)/2$) and spreads every method's samples.

# %%
if params.interactive:
    import ipywidgets as W
    import matplotlib.pyplot as plt

    def explore(evaluations, eps_scale):
        f2 = zo_figures.quadratic_figure(zo_tutorial.traces(evaluations, eps_scale), zo_tutorial.f)
        display(f2)
        plt.close(f2)

    W.interact(
        explore,
        evaluations=W.IntSlider(value=zo_tutorial.EVALUATIONS, min=20, max=300, step=10, continuous_update=False),
        eps_scale=W.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.1, continuous_update=False),
    )

# %% [markdown]
# ## On SmolLM2: accuracy against forward passes
#
# From the committed grids of the profile (`results/zo-family`: 300 passes, MeZO's defaults, untuned;
# `results/zo-new`: the new peers and MeZO/ZO-Adam with their learning rate chosen by one declared rule,
# test at 300 and 600 passes from the same runs). Every perturbed model scored is one forward pass over the
# 32 train examples, whether it was scored alone or in a batch. Left, the dev metric at every dev evaluation;
# right, the test metric of the dev-selected snapshot (0 passes: the zero-shot). Mean over seeds (line) and
# each seed (dots).

# %%
roots = dict(collect.comparison_roots(prof))
zo = [r for name in ("zo-family", "zo-new") for r in roots.get(name, [])]
zo = [r for r in zo if (r.get("tags") or {}).get("part") != "tune"]  # the lr rule's seed-21 runs are not reported
# MeZO and ZO-Adam are in both grids: the tuned runs (lr by the rule, 600 passes) are their own arms
zo = [{**r, "tags": {**r["tags"], "label": f"{r['tags']['label']} (tuned)"}} if (r.get("tags") or {}).get("part") == "report" else r for r in zo]  # fmt: skip
lora = [r for r in zo if (r.get("tags") or {}).get("scheme") in ("lora", None) and r["method"] != "zeroshot-calibrated"]
fig = zo_figures.passes_figure(lora, prof.name)
written += style.save(fig, figdir, "zo_passes", **fmt)
display(fig)
if zo:
    grid, _counts, zero_shot = tables.comparison_table(zo)
    display(grid)

# %%
print(f"{len(written)} files written to {figdir}:")
for p in written:
    print("  ", p.name)
