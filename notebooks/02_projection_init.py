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
# # 02 · Projection initialisation: random vs hidden-state based
#
# A layer's update is built from its intrinsic vector $z$ (dimension $d$), split into one
# chunk of size $c = d / (2 \cdot \#\text{targets})$ per factor, and fixed random maps:
#
# $$A = \mathrm{reshape}(M_A z_A,\ [h, r]), \qquad B = \mathrm{reshape}(M_B z_B,\ [r, h]), \qquad \Delta W = A B .$$
#
# The optimizer starts at $z = 0$ (the unadapted model) and samples around it with spread
# $\sigma$: $z \sim \mathcal N(0, \sigma^2 I)$. How much does such a first step change the
# model? Every entry of $A$ is a sum of $c$ products, so
# $\mathrm{Var}(A_{ij}) = c\, s_A^2 \sigma^2$ when $M_A$ has entries of std $s_A$, and
# $\|\Delta W\|_F \approx \sqrt{h^2 r}\; \mathrm{std}(A)\,\mathrm{std}(B)$.
#
# Three initialisations of the maps:
#
# * **RI** (random): $s = $ a fixed small constant (`lowrank.ri_std`), the same for every layer;
# * **RIL** (the paper's default): $s_l = \alpha\,\hat\sigma_l / (\sqrt d\, \sigma)$ with the
#   hidden-state std $\hat\sigma_l$ of notebook 01. Then $\mathrm{std}(A) = \alpha \hat\sigma_l /\sqrt{2\cdot\#\text{targets}}$:
#   **$\sigma$ and $d$ cancel out**, only $\alpha$ and the statistic matter;
# * **released**: the authors' code, RIL for the $A$-maps of layers $\ge 1$ and PyTorch's
#   default uniform init ($\pm 1/\sqrt{c}$) for the rest, which makes the $B$ factors large.
#
# Below: the ratio of the update to the frozen weight, $\|\Delta W\|_F / \|W\|_F$, and its
# effect on the projection output on the real few-shot inputs $X$, $\|X \Delta W\|_F / \|X W\|_F$,
# per layer. A ratio near 1 means a random first step already rewrites the projection.

# %%
# ruff: noqa: E402 - the imports follow the parameter validation on purpose
from dflora_core.notebook_params import ParameterGuard

_guard = ParameterGuard(globals())

# %% tags=["parameters"]
profile: str = "quick"  # a profile in configs/ (smoke, quick, paper) or a path to a profile YAML
interactive: bool = True  # sliders for d, sigma, alpha, rank; False runs headless at the profile's values
runs_root: str = ""  # where runs and analyses are recorded; empty means the profile's runs_root
figures_dir: str = ""  # where figures and tables are written; empty means the profile's figures_dir

# %%
params = _guard.validate(globals())

from IPython.display import display

from dflora_core.grids import plans
from dflora_core.lab import analyses
from dflora_core.notebook_params import open_profile
from dflora_core.reports import statistics_figures, style

prof = open_profile(params)
root, figdir = prof.path("runs_root"), prof.path("figures_dir")
lr, op = prof.base.lowrank, prof.base.optim
print(f"profile values: d={lr.intrinsic_dim}, r={lr.rank}, sigma={op.sigma}, alpha={lr.alpha}, ri_std={lr.ri_std}")

# %% [markdown]
# ## Read the frozen model once
#
# Hidden-state statistics (both sources), the frozen weights $W_q, W_k$ of every layer and a
# sample of their real inputs $X$ from the few-shot batch of the profile's projection task.

# %%
study = analyses.ProjectionStudy(prof)
print(f"{study.loaded.name}: {study.num_layers} layers, targets {','.join(study.targets)}")

# %% [markdown]
# ## Update magnitudes at the profile's values
#
# Each initialisation at the profile's $d$, $r$, $\sigma$, $\alpha$; RIL and "released" with
# the statistic measured on the residual stream and on the projection input.

# %%
result = study.study(analyses.default_projection_settings(prof))
analyses.save_analysis(root, "projection", result)
fig = statistics_figures.projection_figure(result)
style.save(fig, figdir, "projection_scale", prof.figures.formats, prof.figures.dpi)
display(fig)

# %%
import pandas as pd

frame = pd.DataFrame(result["rows"])
frame["setting"] = frame["init"] + " / " + frame["source"]
display(
    frame.groupby("setting")[["A_std", "B_std", "weight_ratio", "output_ratio"]].agg(["min", "median", "max"]).round(5)
)

# %% [markdown]
# ## Calibrated scales (`lowrank.scale_calibration=output`)
#
# RIL leaves the bottom layers' first steps orders of magnitude smaller than the top layers'.
# The search's "output" calibration rescales each adapted layer so that a first random step
# moves its q/k outputs by a share inside `lowrank.calibration_range` (layers already inside are
# left alone); the "fitness" calibration instead tries a few scales per layer on the train loss
# (its choices are in each run's record, `scale_calibration`). Below: RIL and RIL calibrated.

# %%
calibrated = study.calibrated("ril")
analyses.save_analysis(root, "projection_calibrated", calibrated)
fig = statistics_figures.projection_figure(calibrated)
style.save(fig, figdir, "projection_calibrated", prof.figures.formats, prof.figures.dpi)
display(fig)

# %% [markdown]
# ## Explore: sliders for $d$, $\sigma$, $\alpha$, $r$ (interactive only)
#
# Move $\sigma$ or $d$ with RIL: the curves do not move (they cancel). Move them with RI: they
# do. Move $\alpha$: RIL scales as $\alpha^2$ (both factors scale with $\alpha$). Headless runs
# skip the widgets; the figure above is the same computation at the profile's values.

# %%
if params.interactive:
    import ipywidgets as W
    import matplotlib.pyplot as plt

    d_profile = plans.round_dim(lr.intrinsic_dim, len(study.targets))
    d_options = sorted(
        {plans.round_dim(x, len(study.targets)) for x in (10, 50, 100, 200, 500, 1000, 1600)} | {d_profile}
    )

    def explore(init, source, d, sigma, alpha, rank):
        setting = {"init": init, "source": source, "d": d, "sigma": sigma, "alpha": alpha, "rank": rank}
        res = study.study([setting])
        f = statistics_figures.projection_figure(res)
        display(f)
        plt.close(f)

    W.interact(
        explore,
        init=W.Dropdown(options=["ril", "ri", "released"], value="ril"),
        source=W.Dropdown(options=["residual", "proj_input"], value=lr.stat_source),
        d=W.SelectionSlider(options=d_options, value=d_profile, continuous_update=False),
        sigma=W.FloatLogSlider(value=op.sigma, base=10, min=-2, max=1, step=0.1, continuous_update=False),
        alpha=W.FloatLogSlider(value=lr.alpha, base=10, min=-3, max=1, step=0.1, continuous_update=False),
        rank=W.SelectionSlider(options=sorted({1, 2, 4, 8, 16, lr.rank}), value=lr.rank, continuous_update=False),
    )
