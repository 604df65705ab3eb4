"""Training figures from run records: a run's curves (notebook 03), convergence of several runs, and the
test metric against calls (``search.test_at``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import methods
from .curves import run_curves, test_points
from .style import describe_records, finite, footer, new_figure, style


# -- 03: training curves ------------------------------------------------------------------------------
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
        best = np.array([g["best"] if finite(g["best"]) else np.nan for g in history])
        layer = np.array([g["layer"] for g in history])
        conf = [g.get("config_fitness") for g in history]
        ax_fit.scatter(calls, best, c=layer, cmap="viridis", s=6, lw=0, label="generation best (colour: layer)")
        if any(finite(c) for c in conf):
            ax_fit.plot(
                calls, [c if finite(c) else np.nan for c in conf], color="k", lw=1.2, label="whole configuration"
            )
        else:
            lb = np.minimum.accumulate(np.where(np.isfinite(best), best, np.inf))
            ax_fit.plot(calls, lb, color="k", lw=1.2, label="best so far")
        # fitness gained per layer: drop of the configuration fitness at that layer's generations
        names = list(model_layers) if model_layers is not None else sorted(set(layer.tolist()))
        gain = np.zeros(len(names))
        prev = None
        for g, c in zip(history, conf, strict=True):
            if finite(c):
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
    if finite(zero_shot):
        ax_dev.axhline(zero_shot, color="0.4", ls="--", lw=0.9, label=f"zero-shot test {zero_shot:.3f}")
    if finite(test):
        ax_dev.axhline(test, color="C3", ls=":", lw=0.9, label=f"final test {test:.3f}")
    ax_dev.set_xlabel("fitness evaluations (calls)")
    ax_dev.set_ylabel("dev metric")
    ax_dev.set_title(f"dev set {label}".strip(), fontsize=8)
    # one legend for both curve panels, right of the figure: a corner inside a panel hid data (the last dev point)
    (h_fit, l_fit), (h_dev, l_dev) = ax_fit.get_legend_handles_labels(), ax_dev.get_legend_handles_labels()
    if h_fit or h_dev:
        ax_dev.legend(h_fit + h_dev, l_fit + l_dev, fontsize=5.5, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      borderaxespad=0.0)  # fmt: skip


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


# methods whose curves coincide (the same dev points: a two-point dev curve) stay distinguishable
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def convergence_figure(records: list[dict], profile: str, title: str = "convergence"):
    """Train fitness of the whole configuration and dev metric against calls, per method (seeds: thin lines);
    each method its colour, line style and open marker, so a curve under another's stays visible."""
    fig, axes = new_figure(1, 2, width=7.0, height=2.5)
    names = methods.ordered(r["method"] for r in records)
    with style():
        for k, m in enumerate(names):
            color, ls, marker = f"C{k}", LINESTYLES[k % len(LINESTYLES)], MARKERS[k % len(MARKERS)]
            for j, rec in enumerate(r for r in records if r["method"] == m):
                hist, dev = run_curves(rec)
                lab = m if j == 0 else None
                if hist:
                    calls = [g["calls"] for g in hist]
                    conf = [g.get("config_fitness") for g in hist]
                    if not any(finite(c) for c in conf):
                        conf = list(np.minimum.accumulate([g["best"] if finite(g["best"]) else np.inf for g in hist]))
                    axes[0][0].plot(calls, [c if finite(c) else np.nan for c in conf], color=color, ls=ls, lw=1.0,
                                    alpha=0.85, label=lab)  # fmt: skip
                if dev:
                    axes[0][1].plot([r["calls"] for r in dev], [r["value"] for r in dev], color=color, ls=ls, lw=1.0,
                                    marker=marker, ms=3.5 + 1.0 * k, mfc="none", alpha=0.85, label=lab)  # fmt: skip
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


def calls_figure(records: list, profile: str, title: str = "test accuracy against calls"):
    """The paper's convergence claim: the dev-selected snapshot's test metric at fixed calls, per arm,
    one panel per task (tasks' metrics differ: SST-2 accuracy, MRPC F1)."""
    by_task: dict[str, dict[str, dict[int, list[float]]]] = {}
    for rec in records:
        arm = (rec.get("tags") or {}).get("label") or rec["method"]
        if not rec.get("test_curve"):  # a run without search.test_at has no curve, only its final test
            continue
        for at, value in test_points(rec).items():
            by_task.setdefault(rec["task"], {}).setdefault(arm, {}).setdefault(at, []).append(value)
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
