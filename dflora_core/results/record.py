"""The self-describing folder every run writes, and its record.

    DIR/config.json        the full RunConfig
    DIR/record.json        RunRecord: config, seed, versions, commit, model and data identity,
                           calls, test, best_dev, zero_shot, wall_s, peak_mem_bytes, evals_per_s
    DIR/history.json       one row per generation (calls, layer, best/mean fitness, step size...)
    DIR/dev_curve.json     one row per dev evaluation
    DIR/adapter.npz        learned z per layer (best-dev snapshot and final) + projection scales
    DIR/checkpoint.npz     resumable state: JSON + arrays, never code (methods.RunContext, statefile)
All files are written atomically (temporary file, then rename). A record is JSON: reading
one cannot execute code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..environment import git_commit, machine_info, package_versions
from ..errors import DfloraError, RunBusyError
from ..fileio import atomic_write_json, read_json

RECORD = "record.json"
CONFIG = "config.json"
LOCK = ".lock"  # flock'ed by the process writing the folder; names its host and pid
REPLACED = "record.replaced.json"  # a finished record set aside by --overwrite (never lost)
RECORD_FORMAT = "dflora-run/2"  # 2: seed_scheme, start_fitness, test_curve, data verification, code-free checkpoints
READABLE_FORMATS = ("dflora-run/1", "dflora-run/2")  # every version committed results use stays readable


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A record of any readable version in the current form (the fields' meaning as recorded)."""
    fmt = data.get("format", "dflora-run/1")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"record format {fmt!r} is newer than this dflora reads ({', '.join(READABLE_FORMATS)})")
    if fmt == "dflora-run/1" and isinstance(data.get("config"), dict):
        # version 1 predates seed schemes: its streams are scheme 1, whatever the default becomes
        data = {**data, "config": {"seed_scheme": 1, **data["config"]}}
    return data


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class RunRecord:
    """What one run was and what it measured; ``result`` holds the method's own fields.

    It reads like its JSON (``rec["test"]["value"]``, ``rec.get("calls")``): the fields below
    and the keys of ``result`` form one flat namespace, which is how record.json stores it.
    """

    method: str
    task: str
    model: str
    seed: int
    config: dict[str, Any]
    format: str = RECORD_FORMAT
    status: str = "running"  # "running" until the method finished, then "done"
    started: str = field(default_factory=now)
    versions: dict[str, Any] = field(default_factory=package_versions)
    git: dict[str, Any] = field(default_factory=git_commit)
    machine: dict[str, Any] = field(default_factory=machine_info)
    model_identity: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    metric: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)  # free labels (e.g. the ablation a run belongs to)
    finished: str | None = None
    zero_shot: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)  # method-specific: calls, best_dev, history summary...
    wall_s: float | None = None
    prepare_s: float | None = None
    peak_mem_bytes: int | None = None
    peak_mem_kind: str | None = None
    device: str | None = None
    dtype: str | None = None
    folder: Path | None = field(default=None, compare=False)  # where it was read from (not stored)

    _HEAD = ("format", "status", "started", "method", "task", "model", "seed", "config", "versions", "git",
             "machine", "model_identity", "data", "metric", "tags", "finished", "zero_shot", "test")  # fmt: skip
    _TAIL = ("wall_s", "prepare_s", "peak_mem_bytes", "peak_mem_kind", "device", "dtype")

    @classmethod
    def new(cls, cfg_dict: dict[str, Any], **fields_: Any) -> RunRecord:
        return cls(cfg_dict["method"], cfg_dict["data"]["task"], cfg_dict["model"]["name"], cfg_dict["seed"],
                   cfg_dict, **fields_)  # fmt: skip

    # -- the JSON form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._HEAD}
        out.update({k: v for k, v in self.result.items() if k not in out})
        out.update({k: getattr(self, k) for k in self._TAIL})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: str | Path | None = None) -> RunRecord:
        if not isinstance(data, dict):
            raise ValueError(f"not a run record (a JSON {type(data).__name__}, not an object)")
        data = upgrade(data)
        names = {f.name for f in dataclasses.fields(cls)} - {"result", "folder"}
        known = {k: v for k, v in data.items() if k in names}
        for k in ("started", "versions", "git", "machine"):  # a record read back never describes this machine
            known.setdefault(k, None)
        extra = {k: v for k, v in data.items() if k not in names}
        missing = [k for k in ("method", "task", "model", "seed", "config") if k not in known]
        if missing:
            raise ValueError(f"not a run record (no {', '.join(missing)})")
        if known.get("status") == "done" and not isinstance(known.get("test"), dict):
            raise ValueError("a finished run record without its test score")  # every finished run has one
        return cls(**known, result=extra, folder=Path(folder) if folder is not None else None)

    # -- reading like the JSON ----------------------------------------------------------------
    def _flat(self, key: str) -> Any:
        if key == "_dir":
            if self.folder is None:
                raise KeyError(key)
            return str(self.folder)
        if key in self._HEAD or key in self._TAIL:
            return getattr(self, key)
        return self.result[key]

    def __getitem__(self, key: str) -> Any:
        return self._flat(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._flat(key)
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    @property
    def done(self) -> bool:
        return self.status == "done"


_MISSING = object()


# open locks of this process: path -> [file, depth] (re-entrant within a process)
_HELD: dict[str, list] = {}


class RunFolder:
    """A run's folder: its record and config (the method's own files go through methods.RunContext)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def create(self) -> None:
        """Make the folder (one-line error when ``path`` cannot hold a run: a file, read-only, full...)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise DfloraError(f"--out {self.path}: cannot write a run there ({err.strerror or err})") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder exclusively (an OS lock on ``.lock``): a second writer gets a one-line error.

        Re-entrant within one process; the OS releases it when the holder dies (kill -9
        included), so a retried task elsewhere can take it.
        """
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        self.create()
        f = open(self.path / LOCK, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunBusyError(f"{self.path} is in use by {holder}; wait for it or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()} since {now()}\n")
        f.flush()
        _HELD[key] = [f, 1]
        try:
            yield
        finally:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                del _HELD[key]
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()

    def remove_unstarted(self) -> None:
        """Remove the folder when it holds no result: at most its lock, config and a ``running`` record
        (a run refused before its first checkpoint, e.g. a projection that would overflow)."""
        with contextlib.suppress(OSError, DfloraError):
            names = {p.name for p in self.path.iterdir()}
            if names <= {LOCK, CONFIG, RECORD} and (RECORD not in names or not self.read().done):
                for name in names:
                    (self.path / name).unlink()
                self.path.rmdir()

    def set_aside(self) -> None:
        """Before a run is redone (--overwrite): keep its finished record, drop its state files."""
        rec = self.record_path
        if rec.is_file():
            if self.finished() is not None:
                os.replace(rec, self.path / REPLACED)
            else:
                rec.unlink()
        for name in ("checkpoint.npz", "checkpoint.pkl", "history.json", "dev_curve.json", "adapter.npz"):
            (self.path / name).unlink(missing_ok=True)

    @property
    def record_path(self) -> Path:
        return self.path / RECORD

    def read(self) -> RunRecord | None:
        """The record in the folder, finished or not (None when there is none)."""
        if not self.record_path.is_file():
            return None
        try:
            return RunRecord.from_dict(read_json(self.record_path), self.path)
        except (OSError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise DfloraError(f"{self.record_path}: unreadable run record ({err})") from None

    def finished(self) -> RunRecord | None:
        """The record when the run is done, else None."""
        rec = self.read()
        return rec if rec is not None and rec.done else None

    def write(self, record: RunRecord) -> None:
        atomic_write_json(self.record_path, record.to_dict())
        record.folder = self.path

    def write_config(self, cfg_dict: dict[str, Any]) -> None:
        atomic_write_json(self.path / CONFIG, cfg_dict)


def load_record(path: str | Path) -> RunRecord:
    """The record of a run folder (or of a record.json path)."""
    p = Path(path)
    folder = RunFolder(p.parent if p.name == RECORD and not p.is_dir() else p)
    rec = folder.read()
    if rec is None:  # name the folder the user gave, and what is missing in it
        where = folder.path
        if not where.exists():
            raise DfloraError(f"{where}: no such run folder")
        if not where.is_dir():
            raise DfloraError(f"{where}: not a folder (give a run folder, the one with {RECORD})")
        raise DfloraError(f"{where}: no {RECORD} in this folder (not a run folder, or its run has not started)")
    return rec


def load_records(root: str | Path, status: str = "done") -> list[RunRecord]:
    """Every record under ``root`` (recursively) with the given status."""
    out = []
    for path in sorted(Path(root).glob(f"**/{RECORD}")):
        rec = RunFolder(path.parent).read()
        if rec is not None and rec.status == status:
            out.append(rec)
    return out
