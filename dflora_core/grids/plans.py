"""The runs a profile asks for: the live training runs (notebook 03), the main comparison and
the ablations (04), and running them through the grid (finished runs are read back,
interrupted ones resumed).

A ``PlannedRun`` is a configuration plus what it is for (study, varied axis, value); its
``key`` is the run's identity (``config.identity``), so records and plans meet by key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import methods
from ..config import RunConfig
from ..errors import DfloraError
from ..identity import identity
from .backend_base import BackendSpec, RunHooks
from .backends import execute
from .grid import is_recorded, run_grid

STUDIES = ("rank", "intrinsic_dim", "init", "targets", "optimizer")
STUDY_TITLES = {
    "main": "main comparison",
    "training": "live training runs",
    "rank": "rank r",
    "intrinsic_dim": "intrinsic dimension d",
    "init": "projection initialisation",
    "targets": "target matrices",
    "optimizer": "per-layer optimizer",
}


@dataclass
class PlannedRun:
    study: str  # "training", "main" or one of STUDIES
    axis: str  # the varied setting ("method", "lowrank.rank", ...)
    value: Any  # its value in this run
    cfg: RunConfig
    tags: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return identity(self.cfg)

    def describe(self) -> str:
        return f"{self.cfg.method} {self.cfg.data.task} seed {self.cfg.seed} {self.axis}={self.value}"


def _planned(profile, study: str, axis: str, value, cfg: RunConfig, **extra_tags) -> PlannedRun:
    tags = {"profile": profile.name, "study": study, "axis": axis, "value": value, **extra_tags}
    return PlannedRun(study, axis, value, cfg, tags)


def registered_peers(profile) -> tuple[list[str], list[str]]:
    """(peers of main.peers that are in the methods table, those that are not)."""
    have = [m for m in profile.main.peers if m in methods.METHODS]
    return have, [m for m in profile.main.peers if m not in methods.METHODS]


def main_plan(profile) -> list[PlannedRun]:
    """Methods x tasks x seeds with the profile's run settings (peers only when registered)."""
    peers, _missing = registered_peers(profile)
    names = list(dict.fromkeys([*profile.main.methods, *peers]))
    out = []
    for task in profile.main.tasks:
        for seed in profile.main.seeds:
            for m in names:
                cfg = profile.base.replace(**{"method": m, "data.task": task, "seed": seed})
                out.append(_planned(profile, "main", "method", m, cfg))
    return out


def training_plan(profile) -> list[PlannedRun]:
    """The live runs of notebook 03: the main grid's settings, so 04 and 05 reuse them."""
    t = profile.training
    return [
        _planned(
            profile, "training", "method", m, profile.base.replace(**{"method": m, "data.task": t.task, "seed": t.seed})
        )
        for m in t.methods
    ]


def round_dim(d: int, n_targets: int) -> int:
    """The nearest intrinsic dimension that splits into 2 * n_targets equal chunks (at least one each)."""
    n = 2 * n_targets
    return max(n, int(round(d / n)) * n)


def ablation_plan(profile, studies: Iterable[str] | None = None) -> list[PlannedRun]:
    """One-factor-at-a-time variations of the ablation base, for every ablation seed."""
    a = profile.ablations
    chosen = list(studies) if studies else list(STUDIES)
    base = profile.ablation_base.replace(**{"data.task": a.task})
    n_targets = len(base.lowrank.targets)
    out = []
    for seed in a.seeds:
        b = base.replace(seed=seed)
        if "rank" in chosen:
            out += [_planned(profile, "rank", "lowrank.rank", r, b.replace(**{"lowrank.rank": r})) for r in a.rank]
        if "intrinsic_dim" in chosen:
            for d in a.intrinsic_dim:
                dd = round_dim(d, n_targets)
                cfg = b.replace(**{"lowrank.intrinsic_dim": dd})
                out.append(_planned(profile, "intrinsic_dim", "lowrank.intrinsic_dim", dd, cfg))
        if "init" in chosen:
            out += [
                _planned(profile, "init", "lowrank.projection_init", i, b.replace(**{"lowrank.projection_init": i}))
                for i in a.init
            ]
        if "targets" in chosen:
            for tg in a.targets:
                parts = tuple(x.strip() for x in tg.split(","))
                dd = round_dim(b.lowrank.intrinsic_dim, len(parts))
                cfg = b.replace(**{"lowrank.targets": list(parts), "lowrank.intrinsic_dim": dd})
                out.append(_planned(profile, "targets", "lowrank.targets", ",".join(parts), cfg))
        if "optimizer" in chosen:
            out += [_planned(profile, "optimizer", "method", m, b.replace(method=m)) for m in a.optimizer]
    return out


def noopt_plan(profile) -> list[PlannedRun]:
    """The init study's "without optimisation" arm (the paper's Table 4): the ``no-opt`` method
    with the init study's settings, ``ablations.init_draws`` random draws each (none when 0)."""
    draws = profile.ablations.init_draws
    if draws <= 0:
        return []
    out = []
    for p in ablation_plan(profile, ["init"]):
        cfg = p.cfg.replace(**{"method": "no-opt", "baseline.init_draws": draws})
        out.append(_planned(profile, "init", p.axis, p.value, cfg, optimisation=False))
    return out


def all_planned(profile) -> list[PlannedRun]:
    return training_plan(profile) + main_plan(profile) + ablation_plan(profile) + noopt_plan(profile)


def unique_runs(plan: Iterable[PlannedRun]) -> list[PlannedRun]:
    """One entry per distinct configuration (the first plan entry's tags win)."""
    seen: dict[str, PlannedRun] = {}
    for p in plan:
        seen.setdefault(p.key, p)
    return list(seen.values())


def run_plan(plan: Iterable[PlannedRun], root: str | Path, progress=None, backend: BackendSpec | None = None,
             hooks: RunHooks | None = None) -> list:  # fmt: skip
    """Run every distinct configuration of the plan (recorded ones are read back); returns the records.

    In this process by default: one ``run_grid`` call, so the model is loaded once.
    ``progress``: an object with ``start_run(i, n, planned, cached)``, ``end_run(record)``,
    ``callbacks()`` (the runner callbacks of the run in progress) and ``grid_bar(total, done)``,
    e.g. live.GridProgress. ``backend``: a profile's ``backend`` section; local processes or
    Ray run the pending runs elsewhere (backends.execute), then the records are read back.
    ``hooks``: a tracker (lab/tracking), attached to every run that runs.
    """
    runs = unique_runs(plan)
    if not runs:
        return []
    configs, tags = [p.cfg for p in runs], [p.tags for p in runs]
    cached = [is_recorded(root, p.cfg) for p in runs] if progress is not None else []
    if backend is not None and backend.name != "inprocess":
        bar = progress.grid_bar(len(runs), sum(cached)) if progress is not None else None
        failures = execute(configs, root, tags, backend, bar, hooks)
        if failures:
            raise DfloraError(f"{len(failures)} of {len(runs)} runs failed (each named above); "
                              "running the plan again runs only what is missing")  # fmt: skip
        return run_grid(configs, root, tags)
    if progress is None:
        return run_grid(configs, root, tags, hooks=hooks)
    state = {"i": 0}

    def on_record(rec) -> None:
        progress.end_run(rec)
        state["i"] += 1
        if state["i"] < len(runs):
            progress.start_run(state["i"], len(runs), runs[state["i"]], cached[state["i"]])

    progress.start_run(0, len(runs), runs[0], cached[0])
    return run_grid(configs, root, tags, on_record=on_record, hooks=hooks, **progress.callbacks())
