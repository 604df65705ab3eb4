"""Run a grid of configurations into one results folder, skipping what is already recorded.

A run's folder is derived from its configuration (task/method/model/seed plus a short hash
of everything else), so re-running a grid, a notebook or ``make figures`` reuses finished
runs and resumes interrupted ones instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import RunConfig, from_dict
from ..results.io import read_json
from ..results.record import RECORD


def config_hash(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("progress", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(root: str | Path, cfg: RunConfig) -> Path:
    model = Path(cfg.model.name).name.replace(".gguf", "")
    return Path(root) / cfg.data.task / cfg.method / model / f"seed{cfg.seed}-{config_hash(cfg)}"


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
    **callbacks,
) -> list[dict]:
    """Run every config (finished ones are read back, unfinished ones resumed); returns the records.

    The model is loaded once per model name and shared by the runs that use it.
    """
    from ..runner import run

    configs = list(configs)
    tag_list = list(tags) if tags is not None else [{} for _ in configs]
    records, loaded = [], {}
    for cfg, tag in zip(configs, tag_list, strict=True):
        out = run_dir(root, cfg)
        done = out / RECORD
        if done.is_file() and read_json(done).get("status") == "done":
            rec = read_json(done)
        else:
            if cfg.model.name not in loaded:
                from ..models.registry import load_model

                loaded.clear()  # one model in memory at a time
                loaded[cfg.model.name] = load_model(cfg.model.name, cfg.model.device)
            rec = run(cfg, out=out, resume=True, loaded=loaded[cfg.model.name], tags=tag, **callbacks)
        rec["_dir"] = str(out)
        records.append(rec)
        if on_record:
            on_record(rec)
    return records


def load_records(root: str | Path, status: str = "done") -> list[dict]:
    """Every record under ``root`` (recursively) with the given status."""
    out = []
    for path in sorted(Path(root).glob(f"**/{RECORD}")):
        rec = read_json(path)
        if rec.get("status") == status:
            rec["_dir"] = str(path.parent)
            out.append(rec)
    return out


def config_of(record: dict) -> RunConfig:
    return from_dict(record["config"])
