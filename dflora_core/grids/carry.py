"""Carry a grid's runs from one results root to another: each finished run's files, and each unfinished
run with its checkpoint, so that a grid stopped on one machine (or at the end of a working session)
continues on the next one from what was committed.

    carry("/scratch/clone/results/paper-budget", "results/paper-budget")   # into the repository, commit
    carry("results/paper-budget", "/scratch/clone/results/paper-budget")   # back, on the next machine

A run's folder is replaced whole at the destination, so a finished run takes its stale checkpoint with
it; a finished run is never replaced by an unfinished copy of itself, and an unfinished run that has
not saved a checkpoint yet is not carried (there is nothing to continue from). ``checkpoint.npz`` is a
statefile (JSON and arrays, read with ``allow_pickle=False``), so a carried folder is data, never code;
the process lock and half-written ``*.tmp`` files never travel, nor does a dflora 0.1 pickle checkpoint.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DfloraError
from ..methods import CHECKPOINT, LEGACY_CHECKPOINT
from ..results.record import LOCK, RECORD, RunFolder

NEVER_CARRIED = (LOCK, "*.tmp", LEGACY_CHECKPOINT)


@dataclass(frozen=True)
class Carried:
    """What happened to one run folder (``path`` relative to the roots)."""

    path: str
    outcome: str  # "finished", "in flight", "unchanged", "kept: finished there", "skipped: ..."

    def line(self) -> str:
        return f"{self.outcome:<28} {self.path}"


def _status(folder: Path) -> str | None:
    try:
        rec = RunFolder(folder).read()
    except DfloraError:
        return None  # an unreadable record is carried as nothing
    return None if rec is None else rec.status


def _same_files(a: Path, b: Path, ignore: tuple[str, ...]) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and not any(p.match(pat) for pat in ignore):
                out[str(p.relative_to(root))] = p.read_bytes()
        return out

    return b.is_dir() and files(a) == files(b)


def carry_run(src: Path, dst: Path, rel: str) -> Carried:
    """Carry the run folder ``src`` to ``dst`` (see the module docstring)."""
    status = _status(src)
    if status is None:
        return Carried(rel, "skipped: unreadable record")
    finished = status == "done"
    if not finished and not (src / CHECKPOINT).is_file():
        return Carried(rel, "skipped: no checkpoint yet")
    if not finished and _status(dst) == "done":
        return Carried(rel, "kept: finished there")
    ignore = NEVER_CARRIED + ((CHECKPOINT,) if finished else ())
    if _same_files(src, dst, ignore):
        return Carried(rel, "unchanged")
    staging = dst.with_name(dst.name + ".carry.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns(*ignore))
    if dst.exists():
        shutil.rmtree(dst)
    staging.rename(dst)
    return Carried(rel, "finished" if finished else "in flight")


def carry(src_root: str | Path, dst_root: str | Path) -> list[Carried]:
    """Carry every run folder under ``src_root`` to the same place under ``dst_root``."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    if not src_root.is_dir():
        raise DfloraError(f"{src_root}: no such results root")
    if src_root.resolve() == dst_root.resolve():
        raise DfloraError(f"{src_root}: source and destination are the same folder")
    out = []
    for record in sorted(src_root.rglob(RECORD)):
        folder = record.parent
        if any(part.endswith(".carry.tmp") for part in folder.parts):
            continue
        rel = folder.relative_to(src_root)
        out.append(carry_run(folder, dst_root / rel, str(rel)))
    return out


def commit_advice(dst_root: str | Path, carried: list[Carried]) -> str | None:
    """The ``git add -f`` line for the runs carried in flight, with the bytes their checkpoints add to the tree
    (``results/**/checkpoint.npz`` is git-ignored so that a finished run's state is never committed by accident).
    A committed checkpoint travels with the tree to a GPU machine (64 MiB a call: tests/test_gpu_script.py
    fails when the tree leaves no room for a piece of the model wheel) and stays in the history, so only
    runs that outlive a session are worth committing; a short run restarts cheaper."""
    paths = [Path(dst_root) / c.path / CHECKPOINT for c in carried if c.outcome == "in flight"]
    if not paths:
        return None
    size = sum(p.stat().st_size for p in paths)
    return (
        f"{len(paths)} runs in flight, {size / 1e6:.1f} MB of checkpoints: commit those that outlive a session "
        "(a short run restarts cheaper than its checkpoint travels): git add -f " + " ".join(map(str, paths))
    )
