"""Notebook 06's figures: the zeroth-order estimators on a 2-D quadratic (their samples and steps), and
their test accuracy against forward passes on SmolLM2 from the committed records."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from .curves import run_curves, test_points
from .style import describe_records, footer, new_figure, style


def quadratic_figure(traces: dict[str, dict], f, title: str = "") -> object:
    """One panel per method: the contours of f, the points it evaluated (dots) and its iterates (line)."""
    n = len(traces)
    cols = 3
    rows = (n + cols - 1) // cols
    fig, axes = new_figure(rows, cols, width=9.0, height=2.9 * rows)
    xs = np.linspace(-2.0, 2.0, 121)
    X, Y = np.meshgrid(xs, xs)
    Z = np.vectorize(lambda a, b: f(np.array([a, b])))(X, Y)
    with style():
        for ax, (label, t) in zip(axes.flat, traces.items(), strict=False):
            ax.contour(X, Y, Z, levels=np.geomspace(0.05, 60, 12), colors="0.8", linewidths=0.6)
            pts = [s for s in t["samples"] if len(s)]
            if pts:
                allpts = np.concatenate(pts)
                ax.scatter(allpts[:, 0], allpts[:, 1], s=3, color="C1", alpha=0.5, label="evaluated")
            it = t["iterates"]
            ax.plot(it[:, 0], it[:, 1], "-o", ms=2, lw=1, color="C0", label="iterates")
            ax.plot([0], [0], "k*", ms=6)
            ax.set_xlim(-2, 2)
            ax.set_ylim(-2, 2)
            ax.set_aspect("equal")
            ax.set_title(f"{label}\n{len(it) - 1} steps, f = {t['losses'][-1]:.3g}", fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        footer(fig, title or "f(x) = x1^2 + 10 x2^2 from (1.6, 1.2); the same number of function evaluations each")
    return fig


def losses_figure(traces: dict[str, dict]) -> object:
    """f against function evaluations, every method (log scale)."""
    fig, axes = new_figure(1, 1, width=5.0, height=2.8)
    ax = axes[0][0]
    with style():
        for k, (label, t) in enumerate(traces.items()):
            ax.plot(t["evaluations"], np.maximum(t["losses"], 1e-12), lw=1.2, color=f"C{k}", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("function evaluations (forward passes)")
        ax.set_ylabel("f")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
    return fig


def _by_passes(rows, x_key: str) -> dict[float, float]:
    return {
        float(r[x_key]): 100 * float(r["value"])
        for r in rows
        if r.get(x_key) is not None and r.get("value") is not None
    }


def _look(k: int) -> dict:
    """Arm k's colour and line style: ten colours, then the same colours dashed, then dotted (notebook 06
    shows 16 arms: two never share a look)."""
    return {"color": f"C{k % 10}", "ls": ("-", "--", ":")[k // 10 % 3]}


def passes_figure(records: list[dict], profile: str, title: str = "accuracy against forward passes") -> object:
    """Per arm (``tags.label`` or method), mean over seeds (line) and each seed (dots): left, the dev metric
    at every dev evaluation (``dev_curve``, in the record or its folder); right, the dev-selected snapshot's test metric, from the zero-shot
    at 0 passes to each ``test_curve`` point and the final test at the run's budget (``curves.test_points``)."""
    panels: list[dict[str, dict[float, list[float]]]] = [{}, {}]
    for rec in records:
        arm = (rec.get("tags") or {}).get("label") or rec["method"]
        test = {x: 100 * v for x, v in test_points(rec).items()}
        if (rec.get("zero_shot") or {}).get("value") is not None and test:
            test[0.0] = 100 * float(rec["zero_shot"]["value"])
        dev = _by_passes(rec.get("dev_curve") or run_curves(rec)[1], "calls")  # layer-wise runs: dev_curve.json
        for panel, curve in zip(panels, (dev, test), strict=True):
            for x, v in curve.items():
                panel.setdefault(arm, {}).setdefault(x, []).append(v)
    fig, axes = new_figure(1, 2, width=8.4, height=2.9)
    arms = sorted(set(panels[0]) | set(panels[1]))
    with style():
        for ax, points, what in zip(axes[0], panels, ("dev metric (%), 32 examples", "test metric (%)"), strict=True):
            for arm, by_x in sorted(points.items()):
                k = arms.index(arm)
                xs = sorted(by_x)
                ax.plot(xs, [np.mean(by_x[x]) for x in xs], marker="o", ms=2.5, lw=1.0, label=arm, **_look(k))
                for x in xs:
                    ax.scatter([x] * len(by_x[x]), by_x[x], s=5, color=_look(k)["color"], alpha=0.35)
            if not points:
                ax.text(0.5, 0.5, "no committed records in this profile", ha="center", va="center",
                        transform=ax.transAxes)  # fmt: skip
            ax.set_xlabel("forward passes (calls)")
            ax.set_ylabel(what)
        axes[0][0].set_title("dev, at every evaluation", fontsize=8)
        axes[0][1].set_title("test of the dev-selected snapshot (0: zero-shot)", fontsize=8)
        fig.suptitle(title, fontsize=9)
        if arms:  # one legend for both panels: an arm with a dev curve only is named too
            handles = [Line2D([], [], marker="o", ms=2.5, lw=1.0, **_look(k)) for k in range(len(arms))]
            axes[0][1].legend(
                handles, arms, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0
            )
        fig.tight_layout()
        footer(fig, describe_records(records, profile))
    return fig
