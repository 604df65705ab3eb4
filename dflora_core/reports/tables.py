"""Results tables from run records: one row per run, then mean (std) over seeds.

Tables know records and frames only; which records a table shows is chosen in ``collect``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import methods
from ..fileio import atomic_write_bytes
from .provenance import dev_rule_text

COLUMNS = (
    "method",
    "task",
    "model",
    "seed",
    "metric",
    "test",
    "zero_shot",
    "best_dev",
    "calls",
    "forward_passes",
    "backward_passes",
    "wall_s",
    "peak_mem_bytes",
    "params_optimised",
    "params_stored",
    "evals_per_s",
    "test_name",
    "test_official",
    "device",
    "dtype",
)


def flat_row(rec) -> dict[str, Any]:
    """The columns of one record that tables and figures use (tags become columns too)."""
    test = rec.get("test") or {}
    dev = rec.get("best_dev") or {}
    row = {
        "method": rec.get("method"),
        "task": rec.get("task"),
        "model": rec.get("model"),
        "seed": rec.get("seed"),
        "metric": test.get("metric"),
        "test": test.get("value"),
        "zero_shot": (rec.get("zero_shot") or {}).get("value"),
        "best_dev": dev.get("value"),
        "calls": rec.get("calls"),
        "forward_passes": rec.get("forward_passes"),
        "backward_passes": rec.get("backward_passes", 0),
        "wall_s": rec.get("wall_s"),
        "peak_mem_bytes": rec.get("peak_mem_bytes"),
        "params_optimised": rec.get("params_optimised"),
        "params_stored": rec.get("params_stored"),
        "evals_per_s": rec.get("evals_per_s"),
        "test_name": test.get("name"),
        "test_official": test.get("official"),
        "device": rec.get("device"),
        "dtype": rec.get("dtype"),
    }
    for k, v in (rec.get("tags") or {}).items():
        row[k] = v
    return row


def frame(records: Iterable[dict]):
    """One row per record; ``arm`` is the record's label (``tags.label``) or else its method."""
    import pandas as pd

    df = pd.DataFrame([flat_row(r) for r in records])
    if not df.empty:
        labels = df["label"] if "label" in df else pd.Series([None] * len(df))
        df["arm"] = [lab if isinstance(lab, str) and lab else m for lab, m in zip(labels, df["method"], strict=True)]
    return df


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean (std)' over seeds, as the paper's tables (accuracy in %); std of one value is shown as '-'."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return "-"
    m = v.mean() * scale
    s = v.std(ddof=1) * scale if v.size > 1 else float("nan")
    return f"{m:.{digits}f} ({s:.{digits}f})" if v.size > 1 else f"{m:.{digits}f} (-)"


def seeds_mark(n: int, most: int) -> str:
    """' [n seeds]' for a cell with fewer (but some) seeds than the table's fullest cell, else ''."""
    return f" [{n} seed{'s' if n > 1 else ''}]" if 0 < n < most else ""


def pivot(df, rows: str = "method", cols: str = "task", value: str = "test", row_order=None, col_order=None):
    """rows x cols of 'mean (std)' over the remaining runs (seeds), a cell with fewer runs than the
    fullest marked ' [n seeds]'; also the counts."""
    import pandas as pd

    row_keys = row_order or list(dict.fromkeys(df[rows]))
    col_keys = col_order or list(dict.fromkeys(df[cols]))
    table = pd.DataFrame(index=row_keys, columns=col_keys, dtype=object)
    counts = pd.DataFrame(0, index=row_keys, columns=col_keys)
    for r in row_keys:
        for c in col_keys:
            vals = df[(df[rows] == r) & (df[cols] == c)][value].tolist()
            table.loc[r, c] = mean_std(vals)
            counts.loc[r, c] = len(vals)
    most = int(counts.to_numpy().max()) if counts.size else 0
    for r in row_keys:  # a partial grid says which cells have fewer seeds than the rest
        for c in col_keys:
            table.loc[r, c] += seeds_mark(int(counts.loc[r, c]), most)
    table.index.name = rows
    return table, counts


def to_markdown(df, index: bool = True) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    names = [n or "" for n in df.index.names] if index else []  # a MultiIndex: one column per level
    cols = names + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        keys = [str(k) for k in (idx if isinstance(idx, tuple) else (idx,))] if index else []
        cells = keys + ["" if v is None else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_pct(values) -> str:
    return mean_std(list(values))


def _mib(n) -> int | None:
    return None if n is None or math.isnan(n) else int(round(n / 2**20))


def _round(x, digits):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def method_order(names: Iterable[str]) -> list[str]:
    """Zero-shot first, then the peers, then the layer-wise DFO methods (the methods table's order)."""
    ms = list(dict.fromkeys(names))
    known = [m for m in methods.ordered(ms) if m in methods.METHODS and methods.METHODS[m].order < 100]
    others = sorted(m for m in ms if m not in known)
    dfo = [m for m in known if methods.is_layerwise_lora(m)]
    return [m for m in known if m not in dfo] + others + dfo


def main_table(records, tasks: Sequence[str], vs: str | None = None):
    """Methods x tasks, test metric x 100 as 'mean (std)' over seeds; returns (table, counts).
    ``vs``: a method of the records; adds its paired differences per task (:func:`paired_columns`)."""
    import pandas as pd

    if not records:
        return pd.DataFrame(), pd.DataFrame()
    df = frame(records)
    cols = [t for t in tasks if t in set(df["task"])]
    table, counts = pivot(df, "method", "task", "test", row_order=method_order(df["method"]), col_order=cols)
    for k, v in paired_columns(df, list(table.index), cols, vs, by="method").items():
        table[k] = v
    return table, counts


def vs_column(task: str, vs: str) -> str:
    return f"Δ{task} vs {vs}"


def paired_columns(df, arms: Sequence[str], tasks: Sequence[str], vs: str | None, by: str = "arm") -> dict:
    """Per task, the column 'Δ<task> vs <vs>': each arm's test metric minus ``vs``'s paired by seed,
    'mean [95% t interval] seeds won/seeds paired' in points (``paired.fmt_points``); none without ``vs``."""
    from .paired import fmt_points, paired

    if not vs or vs not in set(df[by]):
        return {}
    diffs = {arm: paired(df, arm, vs, "test", by=by) for arm in arms if arm != vs}
    return {
        vs_column(task, vs): [
            "reference" if arm == vs else fmt_points(diffs[arm][task]) if task in diffs[arm] else "-" for arm in arms
        ]
        for task in tasks
    }


VS_CAPTION = (
    "Δ<task> vs {vs}: the row's test metric minus {vs}'s on the same task and seed (same split, prompt and "
    "test set), x 100: mean over the seeds both ran [95% confidence interval, Student's t over seeds] and "
    "the seeds where the row is better / seeds paired."
)


def cost_table(df):
    """Memory and time per method (the paper's Table 3), from a study frame of the main runs."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame()
    rows = []
    for m, g in df.groupby("method", sort=False):
        calls = g["calls"].astype(float)
        wall = g["wall_s"].astype(float)
        rows.append(
            {
                "method": m,
                "runs": len(g),
                "calls": int(calls.mean()) if calls.notna().any() else 0,
                "wall time (s)": round(float(wall.mean()), 1),
                "s / 100 calls": round(float((wall / calls * 100).mean()), 1) if (calls >= 100).all() else None,
                "fitness evals / s": _round(g["evals_per_s"].astype(float).mean(), 2),
                "forward passes": int(g["forward_passes"].fillna(0).astype(float).mean()),
                "backward passes": int(g["backward_passes"].fillna(0).astype(float).mean()),
                "peak memory (MiB)": _mib(g["peak_mem_bytes"].astype(float).max()),
                "params optimised": int(g["params_optimised"].fillna(0).astype(float).max()),
                "device": ",".join(sorted(set(g["device"].dropna()))),
            }
        )
    out = pd.DataFrame(rows).set_index("method").astype(object)
    return out.where(out.notna(), "-")


def study_table(df, study: str, title: str):
    """One ablation: value -> test 'mean (std)' over seeds, the change against zero-shot, dev, train, time."""
    import pandas as pd

    g = df[df["study"] == study] if not df.empty else df
    if g.empty:
        return pd.DataFrame()
    rows = []
    for value, h in g.groupby("value", sort=False):
        delta = (h["test"].astype(float) - h["zero_shot"].astype(float)).tolist()
        rows.append(
            {
                title: value,
                "test": _fmt_pct(h["test"]),
                "vs zero-shot": _fmt_pct(delta).replace(" (", " (±", 1) if len(h) > 1 else _fmt_pct(delta),
                "best dev": _fmt_pct(h["best_dev"]),
                "final train CE": _round(h["final_train_fitness"].astype(float).mean(), 3),
                "wall time (s)": _round(h["wall_s"].astype(float).mean(), 1),
                "seeds": len(h),
            }
        )
    out = pd.DataFrame(rows).set_index(title)
    if study in ("rank", "intrinsic_dim"):
        out = out.sort_index()
    return out


def init_table(df, noopt_records: list):
    """The paper's Table 4: initialisation (rows) x without / with optimisation (columns)."""
    import pandas as pd

    rows = {}
    g = df[df["study"] == "init"] if not df.empty else df
    for value, h in g.groupby("value", sort=False) if not g.empty else []:
        rows.setdefault(value, {})["with optimisation"] = _fmt_pct(h["test"])
    by_init: dict[str, list[float]] = {}
    for rec in noopt_records:
        by_init.setdefault(rec["tags"]["value"], []).append(rec["test"]["value"])
    for value, vals in by_init.items():
        rows.setdefault(value, {})["without optimisation"] = _fmt_pct(vals)
    if not rows:
        return pd.DataFrame()
    zs = [r["zero_shot"]["value"] for r in noopt_records] or (g["zero_shot"].tolist() if not g.empty else [])
    out = pd.DataFrame.from_dict(rows, orient="index")
    cols = [c for c in ("without optimisation", "with optimisation") if c in out.columns]
    out = out[cols].fillna("-")
    out.index = [str(i).upper() for i in out.index]
    out.index.name = "initialisation"
    if zs:
        out.loc["(zero-shot)"] = [_fmt_pct(zs[:1])] * len(cols)
    return out


def write_table(table, folder: str | Path, name: str, caption: str, records=None, note: str = "") -> list[Path]:
    """``name``.md (caption + GitHub table + a footer on the ``records`` behind it and ``note``) and ``name``.csv."""
    folder = Path(folder)
    md = folder / f"{name}.md"
    csv = folder / f"{name}.csv"
    body = to_markdown(table) if not table.empty else "(no recorded runs yet)\n"
    parts = [text[0].upper() + text[1:] + "." for text in (dev_rule_text(records or []), note) if text]
    footer = "".join(f"\n{text}\n" for text in parts)
    atomic_write_bytes(md, f"{caption}\n\n{body}{footer}".encode())
    atomic_write_bytes(csv, table.to_csv().encode())
    return [md, csv]


def _fmt_int(values) -> str:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "-"
    lo, hi = min(v), max(v)
    if lo == hi:
        return _short(lo)
    return f"{_short(lo)}-{_short(hi)}"


def _short(x: float) -> str:
    x = float(x)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}" if x == int(x) else f"{x:.3g}"


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def comparison_table(records, method_names: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                     vs: str | None = None):  # fmt: skip
    """(table, counts): arms x tasks 'mean (std)' of the test metric (x100), plus the cost columns.

    An arm is a method, or a labelled variant of one (``tags.label``, e.g. a search option).
    ``vs``: an arm; adds its paired differences per task after Avg (:func:`paired_columns`).
    """
    import pandas as pd

    df = frame(records)
    names = list(method_names or method_order(df["arm"]))
    tasks = list(tasks or dict.fromkeys(df["task"]))
    table, counts = pivot(df, "arm", "task", "test", row_order=names, col_order=tasks)
    avg, cols = [], {}
    for m in names:
        rows = df[df["arm"] == m]
        per_task = [_mean(rows[rows["task"] == t]["test"].tolist()) for t in tasks]
        avg.append(f"{100 * sum(per_task) / len(per_task):.1f}" if all(p is not None for p in per_task) else "-")
        cols.setdefault("#Params", []).append(_fmt_int(rows["params_optimised"].tolist()))
        cols.setdefault("stored", []).append(_fmt_int(rows["params_stored"].tolist()))
        cols.setdefault("calls", []).append(_fmt_int([_mean(rows["calls"].tolist())]))
        cols.setdefault("fwd", []).append(_fmt_int([_mean(rows["forward_passes"].tolist())]))
        cols.setdefault("bwd", []).append(_fmt_int([_mean(rows["backward_passes"].fillna(0).tolist())]))
        t = _mean(rows["wall_s"].tolist())
        cols.setdefault("time (s)", []).append("-" if t is None else f"{t:.0f}" if t >= 10 else f"{t:.1f}")
        mem = rows["peak_mem_bytes"].dropna()
        cols.setdefault("memory", []).append(human_bytes(float(mem.max())) if len(mem) else "-")
    if len(tasks) > 1:
        table["Avg"] = avg
    cols = {**paired_columns(df, names, tasks, vs), **cols}
    for k, v in cols.items():
        table[k] = v
    zs = []
    for t in tasks:
        zs.append(mean_std(df[(df["task"] == t)].drop_duplicates("seed")["zero_shot"].tolist()))
    table.index.name = "method"
    return table, counts, pd.Series(zs, index=tasks, name="zero-shot")


def options_table(records, reference: str = "default"):
    """Arms x tasks: test mean (std), the paired differences to ``reference`` in dev and test
    (points: mean (SE) [95% CI] seeds won), and the verdict of the decision rule of docs/method.md
    ("A default only on evidence", :func:`paired.default_rule`) over every task of the records."""
    import pandas as pd

    from .paired import default_rule, fmt_points, paired

    df = frame(records)
    if df.empty:
        return pd.DataFrame()
    ref_methods = set(df.loc[df["arm"] == reference, "method"])
    if ref_methods:  # options of the reference's method; a peer method run beside them is not one
        df = df[df["method"].isin(ref_methods)]
    rows = []
    arms = list(dict.fromkeys(df["arm"]))
    tasks = list(dict.fromkeys(df["task"]))
    most = int(df.groupby(["arm", "task"])["seed"].nunique().max())
    for arm in sorted(arms, key=lambda a: a != reference):  # the reference first, the others as recorded
        row = {"arm": arm}
        dev, test = paired(df, arm, reference, "best_dev"), paired(df, arm, reference, "test")
        for task in tasks:
            g = df[(df["arm"] == arm) & (df["task"] == task)]
            row[f"{task} test"] = (
                mean_std(g["test"].tolist()) + seeds_mark(g["seed"].nunique(), most) if len(g) else "-"
            )
            if arm != reference:
                row[f"{task} Δdev"] = fmt_points(dev[task], se=True) if task in dev else "-"
                row[f"{task} Δtest"] = fmt_points(test[task], se=True) if task in test else "-"
        row["default rule"] = default_rule(dev, test, tasks) if arm != reference else "reference"
        rows.append(row)
    out = pd.DataFrame(rows).set_index("arm").fillna("")
    return out[[c for c in out.columns if c != "default rule"] + ["default rule"]]


def layer_table(gains: dict[str, list[dict]], groups: int = 3):
    """Where the calls went: per arm, the train-loss decrease per call of each third of the layers
    (x 1e4), their share of the calls and of the decrease; ``gains``: arm -> rows of ``collect.layer_gains``."""
    import pandas as pd

    rows = []
    for arm, per_run in gains.items():
        if not per_run:
            continue
        layers = sorted({r["layer"] for r in per_run})
        size = math.ceil(len(layers) / groups)
        row = {"arm": arm}
        total_calls = sum(r["calls"] for r in per_run) or 1
        total_drop = sum(r["decrease"] for r in per_run) or float("nan")
        for g in range(groups):
            members = set(layers[g * size : (g + 1) * size])
            if not members:
                continue
            sel = [r for r in per_run if r["layer"] in members]
            calls, drop = sum(r["calls"] for r in sel), sum(r["decrease"] for r in sel)
            name = f"layers {min(members)}-{max(members)}"
            row[f"{name}: decrease/call x1e4"] = _round(drop / calls * 1e4 if calls else float("nan"), 2)
            row[f"{name}: calls"] = f"{100 * calls / total_calls:.0f}%"
            row[f"{name}: decrease"] = f"{100 * drop / total_drop:.0f}%" if math.isfinite(total_drop) else "-"
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm") if rows else pd.DataFrame()


def memory_table(records):
    """The zeroth-order benchmark's memory table (Zhang et al. 2024): methods x fine-tuning schemes
    (``tags.scheme``), each cell 'test mean (std) / largest peak memory', seeds counted where < the most."""
    import pandas as pd

    df = frame(records)
    if df.empty or "scheme" not in df:
        return pd.DataFrame()
    df = df[df["scheme"].notna()]
    most = df.groupby(["arm", "task"])["seed"].nunique().max()
    cells: dict[str, dict[str, str]] = {}
    for (method, scheme), g in df.groupby(["method", "scheme"], sort=False):
        for arm, a in g.groupby("arm", sort=False):  # an enhancement of a scheme: its own row
            row = method if arm in (method, f"{method} {scheme}") else arm
            mem = a["peak_mem_bytes"].dropna()
            seeds = seeds_mark(a["seed"].nunique(), most)
            cells.setdefault(row, {})[scheme] = (f"{mean_std(a['test'].tolist())} / "
                                                 f"{human_bytes(float(mem.max())) if len(mem) else '-'}{seeds}")  # fmt: skip
    out = pd.DataFrame.from_dict(cells, orient="index").fillna("")
    out.index.name = "method"
    return out
