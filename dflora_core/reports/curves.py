"""A recorded run's curves read back from its folder: history rows, dev-curve rows, and where the calls went
(the train-loss decrease bought per layer)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import read_json
from ..results.record import RunRecord


def run_curves(record: RunRecord) -> tuple[list[dict], list[dict]]:
    """(history rows, dev-curve rows) of a recorded run ([] when absent)."""
    folder = record.get("_dir")
    if not folder:
        return [], []
    hist = Path(folder) / "history.json"
    dev = Path(folder) / "dev_curve.json"
    return (read_json(hist) if hist.is_file() else []), (read_json(dev) if dev.is_file() else [])


def test_points(record: RunRecord) -> dict[float, float]:
    """The dev-selected snapshot's test metric (a fraction) by calls: every ``test_curve`` point at its target
    (``at``), and the final test at the run's budget where the curve stops below it (a zeroth-order run with
    ``test_at`` 300 of 600 passes ends with its 600-pass test in ``test`` only; a step of 9 passes stops at 594
    of 600, so the budget, not the calls spent, places the point beside the other arms)."""
    points = {
        float(row["at"]): float(row["value"])
        for row in record.get("test_curve") or []
        if row.get("at") is not None and row.get("value") is not None
    }
    final = (record.get("test") or {}).get("value")
    budget = ((record.get("config") or {}).get("search") or {}).get("budget") or record.get("calls")
    if final is not None and budget is not None and float(budget) > max(points, default=0.0):
        points[float(budget)] = float(final)
    return points


def layer_gains_by_arm(records: list[RunRecord]) -> dict[str, list[dict]]:
    """``layer_gains`` of every labelled run, pooled per arm (``tags.label``), and per task where
    the runs span several tasks (one task's losses are not another's): "arm (task)"."""
    several = len({r["task"] for r in records}) > 1
    out: dict[str, list[dict]] = {}
    for r in records:
        key = r["tags"]["label"] + (f" ({r['task']})" if several else "")
        out.setdefault(key, []).extend(layer_gains(r))
    return out


def layer_gains(record: RunRecord) -> list[dict]:
    """Per generation layer of a layer-wise run: the calls it spent and the decrease of the
    configuration's train loss it bought (summed over the run's generations at that layer)."""
    history, _ = run_curves(record)
    out: dict[int, dict] = {}
    previous = record.get("start_fitness")  # the configuration at z = 0
    for g in history:
        cur = g.get("config_fitness")
        row = out.setdefault(g["layer"], {"layer": g["layer"], "calls": 0, "decrease": 0.0})
        row["calls"] += g["n"]
        if previous is not None and cur is not None:
            row["decrease"] += previous - cur
        previous = cur if cur is not None else previous
    return list(out.values())
