"""Run a grid of configurations into one results folder, skipping what is already recorded.

A run's folder is derived from its configuration: ``<task>/<method>/<model>/seed<seed>-<id>``
with ``id`` a short hash of the fields that differ from the defaults (``config.identity``),
so re-running a grid, a notebook or ``make figures`` reuses finished runs and resumes
interrupted ones instead of recomputing them, and a field added later with a default keeps
every existing folder found. Folders named by an earlier identity version are found by that
version's hash (``identity.identity_aliases``) or by their record's configuration (``find_run``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import DfloraError, RunBusyError
from ..identity import identity, identity_aliases
from ..methods import chain_callbacks
from ..results.record import RunFolder, RunRecord
from ..runner import run, same_run
from .backend_base import RunHooks


def task_folder(task: str) -> str:
    """The task's part of a run folder: its name, or a task file's path as given, which must stay below the
    root: an absolute path or one leading up becomes the file's name and a hash of the path."""
    path = Path(task)
    if not path.is_absolute() and ".." not in path.parts:
        return task
    return f"{path.stem}-{hashlib.sha256(task.encode()).hexdigest()[:10]}{path.suffix}"


def run_dir(root: str | Path, cfg: RunConfig) -> Path:
    """The folder a new run of ``cfg`` is written to."""
    model = Path(cfg.model.name).name.replace(".gguf", "")
    return Path(root) / task_folder(cfg.data.task) / cfg.method / model / f"seed{cfg.seed}-{identity(cfg)}"


def find_run(root: str | Path, cfg: RunConfig) -> Path:
    """The folder holding ``cfg``'s run: ``run_dir``, or a folder of the same run named by an earlier rule.

    Returns ``run_dir`` when no folder holds the run yet.
    """
    canonical = run_dir(root, cfg)
    if canonical.is_dir():
        return canonical
    named = [canonical.with_name(f"seed{cfg.seed}-{alias}") for alias in identity_aliases(cfg)]
    others = sorted(set(canonical.parent.glob(f"seed{cfg.seed}-*")) - set(named))
    for folder in [f for f in named if f.is_dir()] + others:  # an earlier version's name first
        try:
            rec = RunFolder(folder).read()
        except DfloraError:
            continue  # an unreadable record belongs to no run; `dflora run --resume` reports it
        if rec is not None and same_run(rec, cfg):
            return folder
    return canonical


def finished_run(root: str | Path, cfg: RunConfig) -> RunRecord | None:
    """The finished record of ``cfg`` under ``root`` (None when it has not finished)."""
    return RunFolder(find_run(root, cfg)).finished()


def is_recorded(root: str | Path, cfg: RunConfig) -> bool:
    return finished_run(root, cfg) is not None


def variants(base: RunConfig, overrides: Iterable[dict[str, Any]]) -> list[RunConfig]:
    """One config per dict of dotted-path overrides, e.g. [{"lowrank.rank": 1}, {"lowrank.rank": 4}]."""
    return [base.replace(**o) for o in overrides]


def product(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """All combinations of dotted-path axes: product(**{"data.task": [...], "seed": [...]})."""
    out: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        out = [{**o, key: v} for o in out for v in values]
    return out


def run_grid(
    configs: Iterable[RunConfig],
    root: str | Path,
    tags: Iterable[dict] | None = None,
    on_record=None,
    skip_busy: bool = False,
    hooks: RunHooks | None = None,
    **callbacks,
) -> list[RunRecord]:
    """Run every config (finished ones are read back, unfinished ones resumed); returns the records.

    The model is loaded once per model name and shared by the runs that use it. ``skip_busy``: a run
    that another process is running (its folder's lock is held) is left to it, said on stderr and
    missing from the records, instead of stopping the grid; so two drivers of one grid share its runs.
    ``hooks``: per-run callbacks (a tracker) beside ``callbacks``, which every run shares.
    """
    import sys

    from ..models.registry import load_model

    configs = list(configs)
    tag_list = list(tags) if tags is not None else [{} for _ in configs]
    records, loaded = [], {}
    for cfg, tag in zip(configs, tag_list, strict=True):
        out = find_run(root, cfg)
        rec = RunFolder(out).finished()
        if rec is None:
            if cfg.model.name not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[cfg.model.name] = load_model(cfg.model.name, cfg.model.device)
            own = hooks.callbacks(cfg, out, tag) if hooks is not None else None
            try:
                rec = run(cfg, out=out, resume=True, loaded=loaded[cfg.model.name], tags=tag,
                          **chain_callbacks(callbacks, own))  # fmt: skip
            except RunBusyError as exc:
                if not skip_busy:
                    raise
                print(f"dflora: skipped (running elsewhere): {exc}", file=sys.stderr)
                continue
        records.append(rec)
        if on_record:
            on_record(rec)
    return records
