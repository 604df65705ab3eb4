"""Paired comparisons over seeds: is one arm better than another, and by how much?

With three to five seeds and a 32-example dev set, a table of means and standard deviations
cannot say whether one method beats another. Runs of two arms on the same task and seed share
the split, the prompts and the test set, so their difference is paired: the mean difference
over seeds, its standard error, a 95% confidence interval from Student's t with n - 1 degrees
of freedom, and the number of seeds where the arm wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, by degrees of freedom (standard tables); beyond 30: normal
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
Z975 = 1.960


def t975(dof: int) -> float:
    return T975[dof - 1] if dof <= len(T975) else Z975


def summarize(diffs: Sequence[float]) -> dict:
    """Mean, standard error, 95% t interval and wins of paired differences (an arm minus the reference)."""
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "se": None, "ci_low": None, "ci_high": None, "wins": 0}
    mean = sum(diffs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "se": None, "ci_low": None, "ci_high": None, "wins": int(diffs[0] > 0)}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t975(n - 1) * se
    return {"n": n, "mean": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half,
            "wins": sum(d > 0 for d in diffs)}  # fmt: skip


def paired(df, arm: str, reference: str, value: str = "test", by: str = "arm", pair: Sequence[str] = ("task", "seed")):
    """Per task: ``summarize`` of ``value`` (arm minus reference), over the pairs both arms ran (several
    runs of one arm on one pair, e.g. a method's runs from two grids, count as their mean)."""
    import pandas as pd

    def side(name):
        rows = df[df[by] == name].assign(**{value: lambda d: pd.to_numeric(d[value], errors="coerce")})
        return rows.groupby(list(pair), sort=False)[value].mean()

    a, r = side(arm), side(reference)
    common = a.index.intersection(r.index)
    out = {}
    for task in dict.fromkeys(k[0] for k in common):
        keys = [k for k in common if k[0] == task]
        out[task] = summarize([float(a[k]) - float(r[k]) for k in keys if _known(a[k]) and _known(r[k])])
    return out


def _known(x) -> bool:
    """A value of a run that has one (a missing test metric reads as None or NaN from a frame)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_points(s: dict, scale: float = 100.0, se: bool = False) -> str:
    """'+1.2 [-0.4, +2.8] 4/5': mean difference (points), 95% interval, seeds won;
    ``se``: '+1.2 (SE 0.6) [-0.4, +2.8] 4/5'."""
    if not s["n"]:
        return "-"
    text = f"{s['mean'] * scale:+.1f}"
    if se and s["se"] is not None:
        text += f" (SE {s['se'] * scale:.1f})"
    if s["ci_low"] is not None:
        text += f" [{s['ci_low'] * scale:+.1f}, {s['ci_high'] * scale:+.1f}]"
    return f"{text} {s['wins']}/{s['n']}"


def default_rule(dev: dict, test: dict, tasks: Sequence[str], scale: float = 100.0) -> str:
    """The rule of docs/method.md ("A default only on evidence") on per-task paired summaries
    (:func:`paired` of the dev and the test metric): an option may become the default if its mean
    dev difference is positive on every task and its mean test difference is not below minus its
    standard error on any. Returns 'yes', 'no: <why>', or 'open: <what is missing>' (a task without
    two paired seeds has no standard error); a failure found on partial data is said as 'no so far'."""
    fails, missing = [], []
    for task in tasks:
        d, t = dev.get(task) or {"n": 0}, test.get(task) or {"n": 0}
        if not d["n"] or not t["n"]:
            missing.append(f"{task} not run")
            continue
        if d["mean"] <= 0:
            fails.append(f"{task} Δdev {d['mean'] * scale:+.1f} not higher")
        if t["se"] is None:
            missing.append(f"{task} {t['n']} seed")
        elif t["mean"] < -t["se"]:
            fails.append(f"{task} Δtest {t['mean'] * scale:+.1f} below -SE {t['se'] * scale:.1f}")
    open_part = "open: " + "; ".join(missing) if missing else ""
    if fails:
        return ("no so far: " if missing else "no: ") + "; ".join(fails) + (f"; {open_part}" if missing else "")
    return open_part or "yes"
