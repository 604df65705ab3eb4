"""What a tracker logs, made from the rows a run writes anyway (``history.json``, ``dev_curve.json``,
``record.json``): the same functions serve a live run (its callbacks get these rows) and a recorded
one replayed by ``dflora log``, so both give the same scalars (docs/tracking.md).

Step (the x axis every sink gets): the generations a layer-wise search (or BBT) has completed, the
optimiser steps a step-based peer has taken. A dev row is logged at the step it was scored after;
the final values at the run's last step.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import RunConfig, flatten
from ...environment import git_commit, package_versions
from ...grids.grid import run_dir
from ...identity import identity

DEFAULT_GROUP = "dflora"  # a run outside a grid's folder layout (`dflora run --out DIR`)


@dataclass
class RunInfo:
    """Who a tracker run is: the same for a live run, its resumption and its replay."""

    key: str  # task/method/model/seed<seed>-<identity>: the run's folder below a grid's root
    group: str  # MLflow experiment, W&B group, TensorBoard folder: one per grid
    run_id: str  # stable (group and key): a resumed run or a replay finds its tracker run again
    config: dict[str, Any]  # the nested RunConfig (W&B's config)
    params: dict[str, str | int | float | bool] = field(default_factory=dict)  # flattened, scalar values
    tags: dict[str, str] = field(default_factory=dict)  # task, method, model, seed, commit, versions, labels


def run_key(cfg: RunConfig) -> str:
    return run_dir(Path(), cfg).as_posix()


def group_of(folder: Path | None, cfg: RunConfig) -> str:
    """The grid a run folder belongs to (its root's name), when it sits where a grid puts ``cfg``'s run."""
    if folder is None:
        return DEFAULT_GROUP
    rel = run_dir(Path(), cfg).parts
    parts = Path(folder).resolve().parts
    inside = len(parts) > len(rel) and parts[-len(rel) : -1] == rel[:-1] and parts[-1].startswith(f"seed{cfg.seed}-")
    return parts[-len(rel) - 1] if inside else DEFAULT_GROUP


def _param(value: Any) -> str | int | float | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, separators=(",", ":"))  # None, lists: every sink takes text


def run_info(cfg: RunConfig, group: str, tags: dict | None = None, git: dict | None = None,
             versions: dict | None = None) -> RunInfo:  # fmt: skip
    """The tracker run of ``cfg``; ``git``/``versions``: the record's (a replay), else this process's."""
    key = run_key(cfg)
    git = git if git is not None else git_commit()
    versions = versions if versions is not None else package_versions()
    labels = {
        "task": cfg.data.task, "method": cfg.method, "model": cfg.model.name, "seed": str(cfg.seed),
        "identity": identity(cfg), "git_commit": str(git.get("commit")), "git_dirty": str(git.get("dirty")),
        **{f"version.{name}": str(v) for name, v in sorted(versions.items())},
        **{f"label.{name}": str(v) for name, v in sorted((tags or {}).items())},
    }  # fmt: skip
    run_id = hashlib.sha256(f"{group}\n{key}".encode()).hexdigest()[:16]
    params = {k: _param(v) for k, v in flatten(cfg.to_dict()).items()}
    return RunInfo(key, group, run_id, cfg.to_dict(), params, labels)


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """Numbers only, finite only (a generation whose candidates all diverged has no best)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, int | float) and math.isfinite(v):
            out[k] = float(v)
    return out


class RowScalars:
    """A run's rows, in the order the run made them, as (step, scalars): the running values (search seconds,
    best dev, last step) live here, so a resumed run is first ``seed``ed with the rows it already has."""

    def __init__(self) -> None:
        self.search_s = 0.0
        self.best: tuple[float, float] | None = None  # (value, -loss): the dev selection's rule
        self.last_step = 0

    def seed(self, history: list[dict], dev_curve: list[dict]) -> None:
        for row in history:
            self.history(row)
        for row in dev_curve:
            self.dev(row)

    def _at(self, step: int) -> int:
        self.last_step = max(self.last_step, int(step))
        return int(step)

    def history(self, row: dict) -> tuple[int, dict[str, float]]:
        """A ``history.json`` row: a search's generation or a step-based peer's step."""
        self.search_s += float(row.get("seconds") or 0.0)
        values = {
            "budget/calls": row.get("calls"),
            "budget/forward_passes": row.get("forward_passes"),
            "budget/backward_passes": row.get("backward_passes"),
        }
        if "seconds" in row:
            values["time/search_s"] = self.search_s
        if "generation" in row:
            step = row["generation"] + 1
            values.update({
                "train/loss": row.get("config_fitness"),  # the whole configuration's (None: released acceptance)
                "train/generation_best": row.get("best"), "train/generation_mean": row.get("mean"),
                "search/layer": row.get("layer"), "search/round": row.get("round"),
                "search/step_size": row.get("step_size"), "search/accepted": row.get("accepted"),
            })  # fmt: skip
        else:
            step = row["step"]
            values["train/loss"] = row.get("loss")
        return self._at(step), _finite(values)

    def dev(self, row: dict) -> tuple[int, dict[str, float]]:
        """A ``dev_curve.json`` row, with the best dev value so far (higher metric, then lower loss)."""
        rank = (float(row["value"]), -float(row.get("loss", math.inf)))
        if self.best is None or rank > self.best:
            self.best = rank
        step = row["generation"] if "generation" in row else row.get("step", 0)
        metric = row.get("metric", "value")
        return self._at(step), _finite({f"dev/{metric}": row["value"], "dev/loss": row.get("loss"),
                                        "dev/best": self.best[0]})  # fmt: skip

    def final(self, record) -> tuple[int, dict[str, float]]:
        """The record's results, at the last step: test, zero-shot, totals, wall time, peak memory."""
        test, zero = record.get("test") or {}, record.get("zero_shot") or {}
        metric = test.get("metric", "value")
        values = {
            f"test/{metric}": test.get("value"), "test/accuracy": test.get("accuracy"), "test/loss": test.get("loss"),
            f"zero_shot/{metric}": zero.get("value"),
            "budget/calls": record.get("calls"), "budget/forward_passes": record.get("forward_passes"),
            "budget/backward_passes": record.get("backward_passes"),
            "time/wall_s": record.get("wall_s"), "memory/peak_bytes": record.get("peak_mem_bytes"),
        }  # fmt: skip
        return self.last_step, _finite(values)


def ordered_rows(history: list[dict], dev_curve: list[dict]) -> list[tuple[str, dict]]:
    """A recorded run's rows in the order its callbacks saw them: by step, a step's dev rows first
    (a search scores dev inside a generation, before ``on_generation``)."""
    rows = [("dev", r) for r in dev_curve] + [("history", r) for r in history]

    def order(item: tuple[str, dict]) -> tuple[int, int]:
        kind, row = item
        if kind == "dev":
            return int(row["generation"] if "generation" in row else row.get("step", 0)), 0
        return int(row["generation"] + 1 if "generation" in row else row["step"]), 1

    return sorted(rows, key=order)  # stable: rows of one kind keep their order
