"""The paper's budget on one task (issue 28): the test metric against calls to 6,000, with the peers
as bands, and the paired differences of each arm to gradient LoRA and to the calibrated zero-shot.

An arm's point at ``c`` calls is the test metric of its dev-selected snapshot at ``c`` (``test_curve``,
``search.test_at``); a peer is one number per seed (its final test). Pairs share the seed: the same
split, prompts and test sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..fileio import read_json
from .curves import test_points
from .paired import fmt_points, summarize
from .style import describe_records, footer, new_figure, style
from .tables import mean_std, seeds_mark


def _seeds(n: int) -> str:
    return f"{n} seed" + "s" * (n != 1)


def arm_of(rec: dict) -> str:
    return (rec.get("tags") or {}).get("label") or rec["method"]


def curve_points(records: Iterable[dict]) -> dict[str, dict[int, dict[int, float]]]:
    """arm -> calls -> seed -> test metric of the dev-selected snapshot at those calls (``curves.test_points``)."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for rec in records:
        for at, value in test_points(rec).items():
            out.setdefault(arm_of(rec), {}).setdefault(int(at), {})[rec["seed"]] = value
    return out


def full_test_points(records: Iterable[dict]) -> dict[str, dict[int, float]]:
    """arm -> seed -> the final dev-selected snapshot's test metric on the whole test set (``dflora evaluate``
    written to the run's ``evaluations/``: the evaluation whose ``n`` is the test set's full size)."""
    out: dict[str, dict[int, float]] = {}
    for rec in records:
        folder = Path(rec["_dir"]) / "evaluations" if rec.get("_dir") else None
        for path in sorted(folder.glob("*.json")) if folder and folder.is_dir() else []:
            ev = read_json(path)
            test = ev.get("test") or {}
            if ev.get("task") == rec.get("task") and test.get("n") and test.get("n") == ev.get("test_full_size"):
                out.setdefault(arm_of(rec), {})[rec["seed"]] = float(test["value"])
    return out


def peer_points(records: Iterable[dict]) -> dict[str, dict[int, float]]:
    """peer -> seed -> final test metric."""
    out: dict[str, dict[int, float]] = {}
    for rec in records:
        if (rec.get("test") or {}).get("value") is not None:
            out.setdefault(arm_of(rec), {})[rec["seed"]] = float(rec["test"]["value"])
    return out


def budget_figure(arms: list[dict], peers: list[dict], profile: str, title: str = "test metric against calls"):
    """Each arm's mean (line) and seeds (dots) against calls; each peer a band (mean +- std over its seeds)."""
    curves, bands = curve_points(arms), peer_points(peers)
    fig, axes = new_figure(1, 1, width=6.4, height=3.0)
    ax = axes[0][0]
    with style():
        for k, (label, by_seed) in enumerate(sorted(bands.items())):
            v = 100 * np.array(list(by_seed.values()))
            color = f"C{(k + 5) % 10}"
            ax.axhspan(v.mean() - v.std(ddof=1 if len(v) > 1 else 0), v.mean() + v.std(ddof=1 if len(v) > 1 else 0),
                       color=color, alpha=0.15, lw=0)  # fmt: skip
            ax.axhline(v.mean(), color=color, lw=1, ls="--", label=f"{label} ({_seeds(len(v))})")
        for k, (arm, by_calls) in enumerate(sorted(curves.items())):
            xs = sorted(by_calls)
            ax.plot(xs, [100 * np.mean(list(by_calls[x].values())) for x in xs], "-o", ms=3, lw=1.2, color=f"C{k}",
                    label=f"{arm} ({_seeds(max(len(s) for s in by_calls.values()))})")  # fmt: skip
            for x in xs:
                ax.scatter(
                    [x] * len(by_calls[x]), [100 * v for v in by_calls[x].values()], s=6, color=f"C{k}", alpha=0.4
                )
        if not curves:
            ax.text(0.5, 0.5, "no runs with search.test_at yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_xlabel("fitness evaluations (calls)")
        ax.set_ylabel("test metric (%)")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
        footer(fig, describe_records([*arms, *peers], profile))
    return fig


def budget_table(arms: list[dict], peers: list[dict], references: Sequence[str], at: Sequence[int] = (600, 1200, 6000)):
    """Rows: arm x calls. Test mean (std) over seeds, and per reference peer the paired difference
    (mean [95% t interval] seeds won); then the arm's mean wall time and evaluations per second; on the last
    row of an arm, its final snapshots on the whole test set where they were scored (``--full-test``)."""
    import pandas as pd

    curves, bands, full = curve_points(arms), peer_points(peers), full_test_points(arms)
    cost: dict[str, list[tuple[float, float]]] = {}
    for rec in arms:
        cost.setdefault(arm_of(rec), []).append((rec.get("wall_s") or np.nan, rec.get("evals_per_s") or np.nan))
    rows = []
    for arm in sorted(curves):
        for c in at:
            by_seed = curves[arm].get(c)
            if not by_seed:
                continue
            row = {"arm": arm, "calls": c, "seeds": len(by_seed), "test": mean_std(list(by_seed.values()))}
            for ref in references:
                common = sorted(set(by_seed) & set(bands.get(ref, {})))
                s = summarize([by_seed[k] - bands[ref][k] for k in common])
                row[f"vs {ref}"] = fmt_points(s) if s["n"] else "-"
            walls, speeds = zip(*cost.get(arm, [(np.nan, np.nan)]), strict=True)
            row["wall time (s)"] = f"{np.nanmean(walls):.0f}" if np.isfinite(np.nanmean(walls)) else "-"
            row["evaluations/s"] = f"{np.nanmean(speeds):.2f}" if np.isfinite(np.nanmean(speeds)) else "-"
            whole = list(full.get(arm, {}).values()) if c == max(at) else []
            row["final, whole test set"] = mean_std(whole) + seeds_mark(len(whole), len(by_seed))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["arm", "calls"]) if rows else pd.DataFrame()
