"""Model selection on the dev set, and patience: one rule for every method that tunes.

Every ``eval_every`` calls the dev metric of the current state is measured; the best one
(higher metric, ties broken by lower dev loss) is kept, and its state is what the test
score uses. ``patience`` stops a run after that many calls without a new best (the paper's
timing table uses 1,500). The layer-wise loop and the step-based baselines share this class.
"""

from __future__ import annotations

import copy


class DevSelection:
    """The dev curve, its best row, and the patience rule."""

    def __init__(self, patience: int | None = None):
        self.patience = patience
        self.curve: list[dict] = []
        self.best: dict | None = None

    def offer(self, row: dict) -> bool:
        """Record a dev row (``calls``, ``value``, ``loss``...); True when it is the new best (``row["selected"]``)."""
        better = self.best is None or (row["value"], -row["loss"]) > (self.best["value"], -self.best["loss"])
        row["selected"] = better
        if better:
            self.best = dict(row)
        self.curve.append(row)
        return better

    def out_of_patience(self, calls: float) -> bool:
        return bool(self.patience and self.best is not None and calls - self.best["calls"] >= self.patience)

    def state_dict(self) -> dict:
        return {"curve": copy.deepcopy(self.curve), "best": copy.deepcopy(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.best = state["curve"], state["best"]


class TestCheckpoints:
    """Accuracy against calls: the test metric of the dev-selected state at given call counts.

    Taken during the run (not charged, like dev evaluations), so a curve of test against calls
    comes from the runs themselves; a point the run cannot reach is taken at its end.
    """

    def __init__(self, at=()):
        self.pending = sorted(set(int(c) for c in at))
        self.rows: list[dict] = []

    def due(self, calls: float) -> list[int]:
        """The targets reached by ``calls`` (removed from the pending ones)."""
        reached = [c for c in self.pending if calls >= c]
        self.pending = [c for c in self.pending if calls < c]
        return reached

    def rest(self) -> list[int]:
        """Every target not reached (at the end of a run)."""
        rest, self.pending = self.pending, []
        return rest

    def record(self, target: int, calls: float, best_dev: dict | None, test: dict) -> dict:
        row = {"at": target, "calls": calls, "selected_at": (best_dev or {}).get("calls"), **test}
        self.rows.append(row)
        return row

    def state_dict(self) -> dict:
        return {"pending": list(self.pending), "rows": copy.deepcopy(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.pending, self.rows = list(state["pending"]), state["rows"]
