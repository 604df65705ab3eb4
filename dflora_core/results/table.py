"""Results tables from run records: one row per run, then mean (std) over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

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


def flat_row(rec: dict) -> dict[str, Any]:
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
    import pandas as pd

    return pd.DataFrame([flat_row(r) for r in records])


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean (std)' over seeds, as the paper's tables (accuracy in %); std of one value is shown as '-'."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return "-"
    m = v.mean() * scale
    s = v.std(ddof=1) * scale if v.size > 1 else float("nan")
    return f"{m:.{digits}f} ({s:.{digits}f})" if v.size > 1 else f"{m:.{digits}f} (-)"


def pivot(df, rows: str = "method", cols: str = "task", value: str = "test", row_order=None, col_order=None):
    """rows x cols of 'mean (std)' over the remaining runs (seeds); also the seed counts."""
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
    table.index.name = rows
    return table, counts


def to_markdown(df, index: bool = True) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if index else []) + ["" if v is None else str(v) for v in row.tolist()]
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
