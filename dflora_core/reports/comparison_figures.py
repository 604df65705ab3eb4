"""Comparison figures of notebooks 04/05: ablation curves (intrinsic dimension, rank) and the main comparison."""

from __future__ import annotations

import numpy as np

from .. import methods
from .style import describe_records, footer, new_figure, style
from .tables import frame


# -- 04/05: ablations and comparisons -------------------------------------------------------------------
def _mean_std_by(df, key: str):
    g = df.groupby(key)["test"]
    return g.mean().sort_index(), g.std(ddof=1).sort_index().fillna(0.0), g.count().sort_index()


def ablation_curve_figure(df, study: str, records: list[dict], profile: str, xlabel: str, title: str, logx=False):
    """Test metric (mean ± std over seeds) against an ablation axis, with the zero-shot line."""
    fig, axes = new_figure(1, 1, width=3.4, height=2.5)
    ax = axes[0][0]
    g = df[df["study"] == study] if not df.empty else df
    with style():
        if not g.empty:
            g = g.assign(value=g["value"].astype(float))
            mean, std, n = _mean_std_by(g, "value")
            ax.errorbar(
                mean.index,
                mean.values * 100,
                yerr=std.values * 100,
                marker="o",
                ms=3.5,
                lw=1.2,
                capsize=2,
                label="test (mean ± std over seeds)",
            )
            zs = g["zero_shot"].dropna()
            if len(zs):
                ax.axhline(float(zs.iloc[0]) * 100, color="0.4", ls="--", lw=0.9, label="zero-shot")
            if logx:
                ax.set_xscale("log")
            ax.set_xticks(list(mean.index), [f"{v:g}" for v in mean.index])
            ax.minorticks_off()
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no recorded runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test metric (%)")
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        recs = [r for r in records if r.get("_dir") in set(g["dir"])] if not g.empty else []
        footer(fig, describe_records(recs, profile))
    return fig


def dimension_figure(df, records, profile: str):
    """The paper's Figure 3: test metric against the intrinsic dimension d."""
    return ablation_curve_figure(
        df, "intrinsic_dim", records, profile, "intrinsic dimension d per layer", "subspace dimension", logx=True
    )


def rank_figure(df, records, profile: str):
    """The paper's Figure 4: test metric against the LoRA rank r."""
    return ablation_curve_figure(df, "rank", records, profile, "rank r", "rank of the low-rank update", logx=True)


def main_comparison_figure(table_records: list[dict], profile: str):
    """Bars: test metric per method and task (mean ± std over seeds), from the main-table records."""
    df = frame(table_records)
    fig, axes = new_figure(
        1, 1, width=max(3.4, 1.2 + 0.9 * max(1, df["task"].nunique() if not df.empty else 1)), height=2.5
    )
    ax = axes[0][0]
    with style():
        if not df.empty:
            names = methods.ordered(df["method"])
            tasks = list(dict.fromkeys(df["task"]))
            width = 0.8 / len(names)
            for k, m in enumerate(names):
                means, stds = [], []
                for t in tasks:
                    v = df[(df["method"] == m) & (df["task"] == t)]["test"].astype(float)
                    means.append(v.mean() * 100 if len(v) else np.nan)
                    stds.append(v.std(ddof=1) * 100 if len(v) > 1 else 0.0)
                x = np.arange(len(tasks)) + (k - (len(names) - 1) / 2) * width
                ax.bar(x, means, width, yerr=stds, capsize=2, label=m, color=f"C{k}")
            ax.set_xticks(range(len(tasks)), tasks)
            lo = np.nanmin(df["test"].astype(float)) * 100
            ax.set_ylim(max(0, lo - 10), min(100, np.nanmax(df["test"].astype(float)) * 100 + 8))
            # right of the bars: inside, a corner would hide a bar or an error bar (ICL's reaches the top)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.set_ylabel("test metric (%)")
        ax.set_title("main comparison", fontsize=8)
        fig.tight_layout()
        footer(fig, describe_records(table_records, profile))
    return fig
