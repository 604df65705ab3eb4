"""Which recorded runs belong to which plan, table or figure (records are only read here).

Records meet plans by identity (``PlannedRun.key`` = ``config.identity`` of the record's
configuration), so a record is found wherever its folder lives and whatever it is named.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import methods
from ..errors import DfloraError
from ..identity import config_from_record, identity
from ..reports.tables import flat_row
from ..results.record import RunRecord, load_records
from .plans import PlannedRun, main_plan, noopt_plan, unique_runs


def record_key(rec: RunRecord) -> str | None:
    """The identity of a record's run; None for a record that belongs to no plan."""
    if rec.get("method") != (rec.get("config") or {}).get("method"):
        return None  # an early no-optimisation record (it kept its optimised run's config)
    try:
        return identity(config_from_record(rec["config"]))
    except DfloraError:  # a record of another code version: not part of any plan
        return None


def record_keys(rec: RunRecord) -> list[str]:
    """Every identity under which a record's run is found: its own, and for a run that asked for
    ``model.device: auto`` also the identity of the device it resolved to (a run with ``auto`` that ran on the
    CPU is the same computation as one that asked for ``cpu``: one run, not two seeds, in a table)."""
    key = record_key(rec)
    if key is None:
        return []
    keys = [key]
    config = rec["config"]
    resolved = rec.get("device")
    if (config.get("model") or {}).get("device") == "auto" and resolved not in (None, "auto"):
        try:
            keys.append(identity(config_from_record({**config, "model": {**config["model"], "device": resolved}})))
        except DfloraError:  # a device spelling the config does not take (e.g. "cuda:1"): its own key only
            pass
    return list(dict.fromkeys(keys))


def index_records(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """identity -> record, under each of ``record_keys`` (the identity ignores display settings such as the
    progress flag); of two records of one run the last wins (``profile_records`` keeps only the one its
    profile prefers)."""
    return {key: rec for rec in records for key in record_keys(rec)}


def load_all_records(root: str | Path) -> list[RunRecord]:
    return load_records(root) if Path(root).is_dir() else []


def record_row(rec: RunRecord) -> dict[str, Any]:
    row = flat_row(rec)
    row.update(
        final_train_fitness=rec.get("final_train_fitness"),
        train_at_best=(rec.get("train_at_best") or {}).get("value"),
        selected_start=rec.get("selected_start"),
        stopped=rec.get("stopped"),
        dir=rec.get("_dir"),
    )
    return row


def study_frame(plan: Iterable[PlannedRun], records: Iterable[RunRecord]):
    """One row per planned run that has a record: study, axis, value + the record's columns."""
    import pandas as pd

    idx = index_records(records)
    rows = []
    for p in plan:
        rec = idx.get(p.key)
        if rec is None:
            continue
        row = record_row(rec)
        row.update(study=p.study, axis=p.axis, value=p.value, seed=p.cfg.seed)
        rows.append(row)
    return pd.DataFrame(rows)


def missing_runs(plan: Iterable[PlannedRun], records: Iterable[RunRecord]) -> list[PlannedRun]:
    idx = index_records(records)
    return [p for p in unique_runs(plan) if p.key not in idx]


def main_records(profile, records: list[RunRecord]) -> list[RunRecord]:
    """The records of the main comparison: the main plan's runs, plus any peer method's records
    (from the runs root or the profile's ``extra_roots``, e.g. ``dflora compare``) on the main
    tasks, seeds and model, scored on the same test set and (methods that search) at the same
    budget as the main runs."""
    idx = index_records(records)
    chosen = {id(idx[p.key]): idx[p.key] for p in main_plan(profile) if p.key in idx}
    seen = {k for r in chosen.values() for k in record_keys(r)}  # a run found twice counts once
    tests = {(r.get("task"), (r.get("data") or {}).get("test_digest")) for r in chosen.values()}
    model = profile.base.model.name
    budget = profile.base.search.budget
    for rec in records:
        m = rec.get("method")
        spec = methods.METHODS.get(m)
        if (
            spec is not None
            and spec.family not in ("dfo-lora", "control")
            # peers join only at the main runs' budget: a table mixing budgets would mislead
            and (not spec.searches or ((rec.get("config") or {}).get("search") or {}).get("budget") == budget)
            and rec.get("task") in profile.main.tasks
            and rec.get("seed") in profile.main.seeds
            and rec.get("model") == model
            and (rec.get("task"), (rec.get("data") or {}).get("test_digest")) in tests
            and seen.isdisjoint(keys := record_keys(rec))
        ):
            chosen.setdefault(id(rec), rec)
            seen.update(keys)
    return list(chosen.values())


def profile_sources(profile) -> tuple[list[RunRecord], dict[str, list[str]]]:
    """(records, shadowed): every record under the runs root and the profile's extra roots, where the two hold
    the same run (one identity) only the copy ``profile.prefer`` names: ``committed`` the extra root's (the
    committed figures stay the same on every machine), ``local`` the runs root's; ``shadowed`` maps a kept
    record's folder to the folders of the same run it was preferred to (PROVENANCE.md names them)."""
    own = load_all_records(profile.path("runs_root"))
    seen = {r.get("_dir") for r in own}
    extra = [r for root in profile.extra_paths() for r in load_all_records(root) if r.get("_dir") not in seen]
    first, second = (extra, own) if profile.prefer == "committed" else (own, extra)
    kept = index_records(first)  # within one side the last record of a run wins, as in index_records
    shadowed: dict[str, list[str]] = {}
    out = list(first)
    for rec in second:
        key = next((k for k in record_keys(rec) if k in kept), None)
        if key is not None:
            shadowed.setdefault(kept[key].get("_dir"), []).append(rec.get("_dir"))
        else:
            out.append(rec)
    return out, shadowed


def profile_records(profile) -> list[RunRecord]:
    """Every record under the runs root and the profile's extra roots, one copy per run (``profile_sources``)."""
    return profile_sources(profile)[0]


def comparison_roots(profile) -> list[tuple[str, list[RunRecord]]]:
    """(folder name, records) of every extra root that holds runs: ``dflora compare`` grids, such as
    the committed ``results/`` folders, each rendered as its own table and convergence figure."""
    out = []
    for root in profile.extra_paths():
        recs = load_all_records(root)
        if recs:
            out.append((Path(root).name, recs))
    return out


def noopt_records(profile, records: Iterable[RunRecord]) -> list[RunRecord]:
    """The "without optimisation" records that belong to the profile's init study."""
    keys = {p.key for p in noopt_plan(profile)}
    found = {id(rec): rec for key, rec in index_records(records).items() if key in keys}  # one per run
    return list(found.values())
