"""Notebook 06's figures: the zeroth-order estimators on a 2-D quadratic (their samples and steps), and
their test accuracy against forward passes on SmolLM2 from the committed records."""

from __future__ import annotations

import numpy as np

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


def passes_figure(records: list[dict], profile: str, title: str = "test accuracy against forward passes") -> object:
    """Per arm (``tags.label`` or method), the dev-selected test metric at the passes it was taken
    (``test_curve``, else the final test at the run's passes): mean and per-seed points."""
    points: dict[str, dict[float, list[float]]] = {}
    for rec in records:
        arm = (rec.get("tags") or {}).get("label") or rec["method"]
        rows = rec.get("test_curve") or [{"at": rec.get("calls"), "value": (rec.get("test") or {}).get("value")}]
        for row in rows:
            if row.get("value") is not None and row.get("at") is not None:
                points.setdefault(arm, {}).setdefault(float(row["at"]), []).append(100 * float(row["value"]))
    fig, axes = new_figure(1, 1, width=6.0, height=2.9)
    ax = axes[0][0]
    with style():
        for k, (arm, by_x) in enumerate(sorted(points.items())):
            xs = sorted(by_x)
            ax.plot(xs, [np.mean(by_x[x]) for x in xs], "-o", ms=3, lw=1.1, color=f"C{k % 10}", label=arm)
            for x in xs:
                ax.scatter([x] * len(by_x[x]), by_x[x], s=6, color=f"C{k % 10}", alpha=0.4)
        if not points:
            ax.text(0.5, 0.5, "no committed records in this profile", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("forward passes (calls)")
        ax.set_ylabel("test metric (%)")
        ax.set_title(title, fontsize=8)
        if points:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
        footer(fig, describe_records(records, profile))
    return fig
