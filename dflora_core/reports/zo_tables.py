"""The tuned zeroth-order table (``results/zo-new``): the learning-rate rule's runs, its choice per arm, and
the reported runs at 300 and 600 forward passes beside the untuned all-weight runs.

The rule (``benchmarks/grids/zo_new.py`` runs it, ``rule_choice`` decides it): per arm, three learning rates
scored at 300 forward passes on the dev split of a seed no table reports; the best dev metric wins, ties go
to the lower dev loss, then to the smaller learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .curves import test_points
from .tables import mean_std, method_order


def _part(rec: dict) -> str:
    return str((rec.get("tags") or {}).get("part", ""))


def _arm(rec: dict) -> str:
    return str(rec.get("method"))


def _lr(rec: dict) -> float:
    return float(
        rec.get("lr") if rec.get("lr") is not None else ((rec.get("config") or {}).get("baseline") or {})["lr"]
    )


def rule_choice(tune_records: Iterable[dict]) -> float | None:
    """The learning rate the rule keeps among one arm's tune runs (None without any)."""
    scored = [(-r["best_dev"]["value"], r["best_dev"]["loss"], _lr(r)) for r in tune_records if r.get("best_dev")]
    return min(scored)[2] if scored else None


# the rule's learning rates: MeZO's LoRA lr 1e-4 x 0.1, 1, 10 (benchmarks/grids/zo_new.py runs them)
RULE_LRS = (1e-5, 1e-4, 1e-3)


def tuning_table(records: Iterable[dict], tried: Sequence[float] = RULE_LRS):
    """One row per arm: the dev metric x 100 (dev loss) of each learning rate of the rule, the lr chosen (open
    until every lr of ``tried`` has its run), the forward passes the rule spent on the arm."""
    import pandas as pd

    tune = [r for r in records if _part(r) == "tune"]
    rows = []
    for arm in method_order({_arm(r) for r in tune}):
        recs = [r for r in tune if _arm(r) == arm]
        row = {"arm": arm}
        found = 0
        for lr in tried:
            r = next((r for r in recs if math.isclose(_lr(r), lr, rel_tol=1e-9)), None)
            best = (r or {}).get("best_dev") or {}
            found += bool(best)
            row[f"lr {lr:g}"] = f"{100 * best['value']:.1f} ({best['loss']:.4f})" if best else "-"
        row["chosen lr"] = f"{rule_choice(recs):g}" if found == len(tried) else f"open ({found} of {len(tried)})"
        row["passes"] = int(sum(float(r.get("calls") or 0) for r in recs))
        row["seed"] = ", ".join(str(s) for s in sorted({r.get("seed") for r in recs}))
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm") if rows else pd.DataFrame()


def report_table(records: Iterable[dict], points: tuple[float, ...] = (300.0, 600.0)):
    """Per arm and scheme: test x 100 mean (std) over seeds at each of ``points`` forward passes (one run gives
    both), the learning rate, passes per step, the largest peak memory and the mean wall time; the reported runs
    (part ``report``, tuned by the rule) first, then the all-weight runs (part ``all``, untuned)."""
    import pandas as pd

    shown = [r for r in records if _part(r) in ("report", "all")]
    rows = []
    for part in ("report", "all"):
        for arm in method_order({_arm(r) for r in shown if _part(r) == part}):
            recs = [r for r in shown if _part(r) == part and _arm(r) == arm]
            scheme = (recs[0].get("tags") or {}).get("scheme") or (recs[0].get("zo_options") or {}).get("scheme", "")
            row = {"arm": arm, "scheme": scheme, "lr": ", ".join(f"{x:g}" for x in sorted({_lr(r) for r in recs})),
                   "tuned": "rule" if part == "report" else "no (untuned)"}  # fmt: skip
            for at in points:
                values = [v for r in recs if (v := test_points(r).get(at)) is not None]
                row[f"test @{at:g}"] = mean_std(values) if values else "-"
            steps = [float(r["calls"]) / r["steps"] for r in recs if r.get("steps") and r.get("calls")]
            row["passes / step"] = f"{steps[0]:g}" if steps and len(set(steps)) == 1 else "-"
            peaks = [r["peak_mem_bytes"] for r in recs if r.get("peak_mem_bytes")]
            row["peak memory (MiB)"] = round(max(peaks) / 2**20) if peaks else "-"
            row["wall (s)"] = round(sum(float(r.get("wall_s") or 0) for r in recs) / len(recs))
            row["seeds"] = ", ".join(str(s) for s in sorted({r.get("seed") for r in recs}))
            rows.append(row)
    return pd.DataFrame(rows).set_index("arm") if rows else pd.DataFrame()
