"""Figures of the notebooks and of ``make figures``: from records only, deterministic files.

Every figure function takes recorded results (run records, analysis JSON, frames built from
them by :mod:`dflora_core.workbench.collect`) and the profile name, never a model, and returns a
matplotlib Figure whose footer says which profile and settings produced it. ``save`` writes
PDF and PNG that are byte-identical for the same data: seaborn "paper" context,
``pdf.fonttype`` 42 (embedded TrueType), a fixed ``svg.hashsalt``, and no creation date or
software version in the metadata.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import methods
from ..fileio import atomic_write_bytes
from .collect import run_curves
from .tables import frame

RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "dflora",
    "svg.fonttype": "path",
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.titlesize": 10,
}
METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": "dflora", "Creator": "dflora"},
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": "dflora"},
}
SOURCE_TITLES = {"residual": "residual stream entering the layer", "proj_input": "input of the q/k projections"}


@contextlib.contextmanager
def style():
    """seaborn "paper" context and white grid, plus the deterministic-output settings."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context():
        sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
        matplotlib.rcParams.update(RC)
        yield


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 7.0, height: float = 2.6, **kw):
    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)
    return fig, axes


def wrap_parts(text: str, width: int, sep: str = " · ") -> str:
    """Break a ' · '-separated provenance line into lines of at most ``width`` characters."""
    lines, line = [], ""
    for part in text.split(sep):
        candidate = f"{line}{sep}{part}" if line else part
        if line and len(candidate) > width:
            lines.append(line)
            line = part
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


def footer(fig, text: str) -> None:
    """The provenance lines at the bottom of every figure (profile, model, settings, test set),
    wrapped to the figure's width so they never widen it."""
    width = max(40, int(fig.get_figwidth() * 24))
    fig.text(0.0, -0.02, wrap_parts(text, width), fontsize=5.5, color="0.35", ha="left", va="top", linespacing=1.3)


def save(fig, folder: str | Path, name: str, formats: Sequence[str] = ("pdf", "png"), dpi: int = 200) -> list[Path]:
    """Write ``name``.<format> for each format; same data, same bytes. Returns the paths."""
    import io

    import matplotlib

    paths = []
    with matplotlib.rc_context(RC):
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=METADATA.get(fmt), bbox_inches="tight", pad_inches=0.05)
            path = Path(folder) / f"{name}.{fmt}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def _scale(ax, values, integer_x: bool = True) -> None:
    """Log y only when the values span more than a factor 4; integer ticks on a layer axis."""
    from matplotlib.ticker import MaxNLocator

    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], float)
    if v.size and v.max() / v.min() > 4:
        ax.set_yscale("log")
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# -- provenance text ---------------------------------------------------------------------------------
def _layers_text(cfg: dict) -> str:
    layers = cfg["lowrank"].get("layers")
    if not layers:
        return "all layers"
    if all(i < 0 for i in layers):
        return f"top {len(layers)} layers"
    return "layers " + ",".join(str(i) for i in layers)


def describe_records(records: Iterable[dict], profile: str, extra: str = "") -> str:
    """'<profile> profile · model · layers · popsize · calls · seeds · test set' from the records."""
    recs = [r for r in records if r.get("config")]
    parts = [f"{profile} profile"]
    if recs:
        cfgs = [r["config"] for r in recs]
        models = sorted({c["model"]["name"] for c in cfgs})
        parts.append(", ".join(models))
        dfo = [c for c in cfgs if methods.is_layerwise_lora(c["method"])]
        if dfo:
            parts.append(" / ".join(sorted({_layers_text(c) for c in dfo})))
            parts.append("popsize " + "/".join(str(x) for x in sorted({c["optim"]["popsize"] for c in dfo})))
            parts.append("/".join(str(x) for x in sorted({c["search"]["budget"] for c in dfo})) + " calls")
        seeds = sorted({r.get("seed") for r in recs if r.get("seed") is not None})
        if seeds:
            parts.append("seed" + ("s " if len(seeds) > 1 else " ") + ",".join(str(s) for s in seeds))
        tests = sorted({(r.get("test") or {}).get("name") for r in recs if (r.get("test") or {}).get("name")})
        if tests:
            parts.append("test: " + "; ".join(tests))
    if extra:
        parts.append(extra)
    return " · ".join(parts)


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
                _scale(ax, list(g["std"]) + list(g["raw_std"]))
                ax.set_title(f"{model}: {SOURCE_TITLES.get(src, src)}", fontsize=7)
                ax.set_xlabel("layer l")
                ax.set_ylabel("std (solid: clipped, dashed: raw)" if j == 0 else "")
            ax = axes[i][-1]
            g = df[df["model"] == model]
            for k, src in enumerate(sources):
                h = g[g["task"] == tasks[0]].query("source == @src").sort_values("layer")
                ax.plot(h["layer"], h["ril_std"], lw=1.2, ls="-" if k == 0 else ":", color="0.2", label=src)
            _scale(ax, g["ril_std"])
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
            _scale(ax, df[col])
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


# -- 03: training curves ------------------------------------------------------------------------------
def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def draw_training(
    axes,
    history: list[dict],
    dev_curve: list[dict],
    model_layers: Sequence[int] | None = None,
    zero_shot: float | None = None,
    test: float | None = None,
    label: str = "",
) -> None:
    """Three panels: train fitness vs calls, fitness gained per layer, dev metric vs calls."""
    ax_fit, ax_layer, ax_dev = axes
    for ax in axes:
        ax.clear()
    if history:
        calls = np.array([g["calls"] for g in history])
        best = np.array([g["best"] if _finite(g["best"]) else np.nan for g in history])
        layer = np.array([g["layer"] for g in history])
        conf = [g.get("config_fitness") for g in history]
        ax_fit.scatter(calls, best, c=layer, cmap="viridis", s=6, lw=0, label="generation best (colour: layer)")
        if any(_finite(c) for c in conf):
            ax_fit.plot(
                calls, [c if _finite(c) else np.nan for c in conf], color="k", lw=1.2, label="whole configuration"
            )
        else:
            lb = np.minimum.accumulate(np.where(np.isfinite(best), best, np.inf))
            ax_fit.plot(calls, lb, color="k", lw=1.2, label="best so far")
        ax_fit.legend(fontsize=5.5, loc="upper right")
        # fitness gained per layer: drop of the configuration fitness at that layer's generations
        names = list(model_layers) if model_layers is not None else sorted(set(layer.tolist()))
        gain = np.zeros(len(names))
        prev = None
        for g, c in zip(history, conf, strict=True):
            if _finite(c):
                if prev is not None and g["layer"] < len(gain):
                    gain[g["layer"]] += max(0.0, prev - c)
                prev = c
        ax_layer.bar(range(len(names)), gain, color="C2")
        step = max(1, len(names) // 8)
        ax_layer.set_xticks(range(0, len(names), step), [str(n) for n in names[::step]])
    for ax in (ax_fit, ax_layer, ax_dev):
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_fit.set_xlabel("fitness evaluations (calls)")
    ax_fit.set_ylabel("train loss (CE over verbalizer)")
    ax_fit.set_title("train fitness", fontsize=8)
    ax_layer.set_xlabel("model layer")
    ax_layer.set_ylabel("train loss decrease")
    ax_layer.set_title("fitness gained per layer", fontsize=8)
    if dev_curve:
        c = [r["calls"] for r in dev_curve]
        v = [r["value"] for r in dev_curve]
        ax_dev.plot(c, v, marker="o", ms=2.5, lw=1.1, label="dev")
        sel = [r for r in dev_curve if r.get("selected")]
        if sel:
            ax_dev.scatter(
                [sel[-1]["calls"]], [sel[-1]["value"]], marker="*", s=60, color="C3", zorder=3, label="selected"
            )
    if _finite(zero_shot):
        ax_dev.axhline(zero_shot, color="0.4", ls="--", lw=0.9, label=f"zero-shot test {zero_shot:.3f}")
    if _finite(test):
        ax_dev.axhline(test, color="C3", ls=":", lw=0.9, label=f"final test {test:.3f}")
    ax_dev.set_xlabel("fitness evaluations (calls)")
    ax_dev.set_ylabel("dev metric")
    ax_dev.set_title(f"dev set {label}".strip(), fontsize=8)
    if dev_curve or _finite(zero_shot):
        ax_dev.legend(fontsize=5.5, loc="lower right")


def training_figure(history, dev_curve, model_layers=None, zero_shot=None, test=None, title: str = "", note: str = ""):
    fig, axes = new_figure(1, 3, width=7.5, height=2.3)
    with style():
        draw_training(axes[0], history, dev_curve, model_layers, zero_shot, test)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        if note:
            footer(fig, note)
    return fig


def record_training_figure(record: dict, profile: str):
    """The three training panels of one recorded run."""
    hist, dev = run_curves(record)
    t = (record.get("test") or {}).get("value")
    z = (record.get("zero_shot") or {}).get("value")
    layers = (record.get("projection") or {}).get("model_layers")
    title = f"{record['method']} on {record['task']}, seed {record['seed']}"
    return training_figure(hist, dev, layers, z, t, title, describe_records([record], profile))


def convergence_figure(records: list[dict], profile: str, title: str = "convergence"):
    """Train fitness of the whole configuration and dev metric against calls, per method (seeds: thin lines)."""
    fig, axes = new_figure(1, 2, width=7.0, height=2.5)
    names = methods.ordered(r["method"] for r in records)
    with style():
        for k, m in enumerate(names):
            color = f"C{k}"
            for j, rec in enumerate(r for r in records if r["method"] == m):
                hist, dev = run_curves(rec)
                lab = m if j == 0 else None
                if hist:
                    calls = [g["calls"] for g in hist]
                    conf = [g.get("config_fitness") for g in hist]
                    if not any(_finite(c) for c in conf):
                        conf = list(np.minimum.accumulate([g["best"] if _finite(g["best"]) else np.inf for g in hist]))
                    axes[0][0].plot(
                        calls, [c if _finite(c) else np.nan for c in conf], color=color, lw=1.0, alpha=0.85, label=lab
                    )
                if dev:
                    axes[0][1].plot(
                        [r["calls"] for r in dev],
                        [r["value"] for r in dev],
                        color=color,
                        lw=1.0,
                        marker=".",
                        ms=3,
                        alpha=0.85,
                        label=lab,
                    )
        axes[0][0].set_xlabel("fitness evaluations (calls)")
        axes[0][0].set_ylabel("train loss of the configuration")
        axes[0][1].set_xlabel("fitness evaluations (calls)")
        axes[0][1].set_ylabel("dev metric")
        axes[0][0].set_title("train fitness", fontsize=8)
        axes[0][1].set_title("dev set (model selection)", fontsize=8)
        for ax in axes[0]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        footer(fig, describe_records(records, profile))
    return fig


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
            ax.legend(fontsize=6, ncol=2)
        ax.set_ylabel("test metric (%)")
        ax.set_title("main comparison", fontsize=8)
        fig.tight_layout()
        footer(fig, describe_records(table_records, profile))
    return fig


def calls_figure(records: list, profile: str, title: str = "test accuracy against calls"):
    """The paper's convergence claim: the dev-selected snapshot's test metric at fixed calls, per arm,
    one panel per task (tasks' metrics differ: SST-2 accuracy, MRPC F1)."""
    by_task: dict[str, dict[str, dict[int, list[float]]]] = {}
    for rec in records:
        arm = (rec.get("tags") or {}).get("label") or rec["method"]
        for row in rec.get("test_curve") or []:
            by_task.setdefault(rec["task"], {}).setdefault(arm, {}).setdefault(row["at"], []).append(row["value"])
    # the legend sits right of each panel: with eight arms there is no free corner inside it
    fig, axes = new_figure(1, max(len(by_task), 1), width=5.4 * max(len(by_task), 1), height=2.6)
    with style():
        for ax, (task, by_arm) in zip(axes[0], by_task.items() or [("", {})], strict=True):
            for k, (arm, points) in enumerate(by_arm.items()):
                xs = sorted(points)
                n = len(points[xs[0]])
                means = [100 * float(np.mean(points[x])) for x in xs]
                stds = [100 * float(np.std(points[x], ddof=1)) if len(points[x]) > 1 else 0.0 for x in xs]
                ax.errorbar(xs, means, yerr=stds, marker="o", ms=3, lw=1.1, capsize=2, color=f"C{k}",
                            label=f"{arm} ({n} seed{'s' if n > 1 else ''})")  # fmt: skip
            if not by_arm:
                ax.text(0.5, 0.5, "no runs with search.test_at", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("fitness evaluations (calls)")
            ax.set_ylabel("test metric (%)")
            ax.set_title(title if len(by_task) < 2 else f"{title} ({task})", fontsize=8)
            if by_arm:
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
        footer(fig, describe_records(records, profile))
    return fig
