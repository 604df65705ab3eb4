"""Figures of notebooks 01 and 02: hidden-state statistics and the projection's initialisation (from
analysis JSON, docs/figures.md)."""

from __future__ import annotations

import numpy as np

from .style import SOURCE_TITLES, footer, new_figure, scale_axis, style


# -- 01: hidden-state statistics ------------------------------------------------------------------
def hidden_stats_figure(result: dict):
    """Per-layer std of the hidden states, raw (dashed) and after 3-sigma clipping (solid), by task.

    One row per model; columns: the residual stream and the projection input (both std), and the
    "ril" projection std they imply.
    """
    import pandas as pd

    df = pd.DataFrame(result["rows"])
    models = list(dict.fromkeys(df["model"]))
    sources = list(dict.fromkeys(df["source"]))
    tasks = list(dict.fromkeys(df["task"]))
    ncols = len(sources) + 1
    fig, axes = new_figure(len(models), ncols, width=2.4 * ncols, height=1.9 * len(models) + 0.4)
    import seaborn as sns

    colors = dict(zip(tasks, sns.color_palette("colorblind", len(tasks)), strict=False))
    with style():
        for i, model in enumerate(models):
            for j, src in enumerate(sources):
                ax = axes[i][j]
                g = df[(df["model"] == model) & (df["source"] == src)]
                for task in tasks:
                    h = g[g["task"] == task].sort_values("layer")
                    ax.plot(h["layer"], h["std"], color=colors[task], lw=1.2, label=task)
                    ax.plot(h["layer"], h["raw_std"], color=colors[task], lw=0.8, ls="--", alpha=0.7)
                scale_axis(ax, list(g["std"]) + list(g["raw_std"]))
                ax.set_title(f"{model}: {SOURCE_TITLES.get(src, src)}", fontsize=7)
                ax.set_xlabel("layer l")
                ax.set_ylabel("std (solid: clipped, dashed: raw)" if j == 0 else "")
            ax = axes[i][-1]
            g = df[df["model"] == model]
            for k, src in enumerate(sources):
                h = g[g["task"] == tasks[0]].query("source == @src").sort_values("layer")
                ax.plot(h["layer"], h["ril_std"], lw=1.2, ls="-" if k == 0 else ":", color="0.2", label=src)
            scale_axis(ax, g["ril_std"])
            ax.set_title(f"{model}: implied ril std ({tasks[0]})", fontsize=7)
            ax.set_xlabel("layer l")
            ax.legend(title="statistic from", fontsize=6, title_fontsize=6)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="upper center", ncol=min(len(tasks), 7), bbox_to_anchor=(0.5, 1.04), frameon=False
        )
        fig.tight_layout()
        footer(
            fig,
            f"{result['profile']} profile · few-shot train batch (seed {result['seed']}), real tokens only · "
            f"{result['clip_rounds']} rounds of clipping at ±{result['clip_sigma']:g} std · ril std = "
            f"alpha·std_hat/(sqrt(d)·sigma), alpha={result['alpha']:g}, d={result['intrinsic_dim']}, "
            f"sigma={result['sigma']:g} · tiny-* models have random weights",
        )
    return fig


# -- 02: projection initialisation ----------------------------------------------------------------
def projection_figure(result: dict, profile: str | None = None):
    """||Delta W|| / ||W|| and ||X Delta W|| / ||X W|| per layer for each initialisation (log scale)."""
    import pandas as pd

    df = pd.DataFrame(result["rows"])
    df["setting"] = df["init"] + np.where(df["init"] == "ri", "", " (" + df["source"] + ")")
    fig, axes = new_figure(1, 2, width=7.0, height=2.6)
    with style():
        for ax, col, title in zip(
            axes[0],
            ("weight_ratio", "output_ratio"),
            ("update vs frozen weight: ||ΔW||/||W||", "effect on the projection output: ||XΔW||/||XW||"),
            strict=True,
        ):
            for setting, g in df.groupby("setting", sort=False):
                h = g.groupby("layer")[col].mean()
                ax.plot(h.index, h.values, marker=".", ms=3, lw=1.1, label=setting)
            scale_axis(ax, df[col])
            ax.axhline(1.0, color="0.5", lw=0.6, ls=":")
            ax.set_xlabel("layer l")
            ax.set_title(title, fontsize=8)
        axes[0][0].set_ylabel("ratio (mean over targets and draws)")
        axes[0][1].legend(
            fontsize=6, title="init (statistic)", title_fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5)
        )
        fig.tight_layout()
        first = df.iloc[0]
        footer(
            fig,
            f"{profile or result['profile']} profile · {result['model']} · {result['task']} few-shot batch · "
            f"targets {','.join(result['targets'])} · d={first['d']}, r={first['rank']}, sigma={first['sigma']:g}, "
            f"alpha={first['alpha']:g} · z ~ N(0, sigma² I), seed {result['seed']}",
        )
    return fig
