"""The self-describing folder every run writes (config, identity, history, metrics, adapter).

    DIR/config.json        the full RunConfig
    DIR/record.json        summary: config, seed, versions, commit, model and data identity,
                           calls, test, best_dev, zero_shot, wall_s, peak_mem_bytes, evals_per_s
    DIR/history.json       one row per generation (calls, layer, best/mean fitness, step size...)
    DIR/dev_curve.json     one row per dev evaluation
    DIR/adapter.npz        learned z per layer (best-dev snapshot and final) + projection scales
    DIR/checkpoint.pkl     resumable state (DFO methods)
All files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_json, git_commit, machine_info, package_versions, read_json

RECORD = "record.json"
CHECKPOINT = "checkpoint.pkl"


class RunFolder:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, obj: Any) -> None:
        if self.path:
            atomic_write_json(self.path / name, obj)

    def save_checkpoint(self, state: dict) -> None:
        if self.path:
            atomic_write_bytes(self.path / CHECKPOINT, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load_checkpoint(self) -> dict | None:
        if self.path and (self.path / CHECKPOINT).is_file():
            with open(self.path / CHECKPOINT, "rb") as f:
                return pickle.load(f)
        return None

    def read_record(self) -> dict | None:
        if self.path and (self.path / RECORD).is_file():
            return read_json(self.path / RECORD)
        return None


def base_record(cfg_dict: dict) -> dict:
    """The identity part of every record: what ran, where, with which code."""
    return {
        "format": "dflora-run/1",
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": cfg_dict["method"],
        "task": cfg_dict["data"]["task"],
        "model": cfg_dict["model"]["name"],
        "seed": cfg_dict["seed"],
        "config": cfg_dict,
        "versions": package_versions(),
        "git": git_commit(),
        "machine": machine_info(),
    }


def load_record(path: str | Path) -> dict:
    p = Path(path)
    return read_json(p / RECORD if p.is_dir() else p)
