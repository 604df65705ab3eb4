"""What every backend of a grid shares (grids/backends.py runs them): the backend's settings
(``BackendSpec``, a profile's ``backend:`` section and `dflora compare`'s flags), the runs it
gets (``Pending``), how it reports them (``Report``: one line per failure, one bar over the
grid's runs, ``GridBar``) and a run's thread count. docs/scale-out.md.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..config import RunConfig
from ..errors import ConfigError, DfloraError
from ..models.sizing import SHARE_VARIABLE
from ..results.record import CONFIG, LOCK, RECORD, RunFolder

BACKENDS = ("inprocess", "local", "ray")
SHARED_FS = ("auto", "yes", "no")
LOG = "run.log"  # a run's own output (local processes, Ray tasks), in its folder
CONNECT_TIMEOUT = 30.0  # s: a cluster that answers joins in seconds; Ray itself would retry for minutes


@dataclass
class BackendSpec:
    """How the pending runs of a grid execute (a profile's ``backend:`` section, `dflora compare`'s flags)."""

    name: Literal[BACKENDS] = "inprocess"  # notebooks: in the kernel (live views); `dflora compare` defaults to local
    jobs: int = 1  # local: runs at a time, each in its own process; 0 = from the card (runs that fit a GPU; a CPU: one per core)
    address: str | None = None  # ray: a cluster to join ("HOST:PORT", "auto"); empty = a local instance on 127.0.0.1
    cpus_per_run: float | None = None  # ray: CPUs a run declares; empty = its config's threads, or 1
    gpus_per_run: float = 0.0  # ray: GPUs a run declares; fractions pack runs on one GPU (0.25 = four)
    shared_fs: Literal[SHARED_FS] = "auto"  # ray: workers see the root (yes), not (no: folders come back), auto = probe
    max_retries: int = 3  # ray: retries of a run whose worker process died (Ray's max_retries)
    scratch: str | None = None  # ray without a shared root: the workers' run folders; empty = a temporary folder
    connect_timeout: float = CONNECT_TIMEOUT  # ray with an address: seconds to reach the cluster, then a one-line error


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address ``HOST:PORT`` (``[v6]:PORT`` too), None for ``auto``; ValueError else."""
    if address.strip() == "auto":
        return None
    host, _, port = address.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bad_host = not host or any(c.isspace() or c in "/@" for c in host)  # ray://...: Ray Client, not a cluster's head
    if bad_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (the head's address, e.g. 10.0.0.5:6379) or auto")
    return host, int(port)


def check_backend(spec: BackendSpec, prefix: str = "backend.") -> BackendSpec:
    """Field checks, as one-line ConfigErrors naming the field."""

    def need(cond: bool, name: str, message: str) -> None:
        if not cond:
            raise ConfigError(prefix + (name.replace("_", "-") if prefix.startswith("-") else name), message)

    need(spec.jobs >= 0, "jobs", f"must be >= 0 (0: from the card, models/sizing.py), got {spec.jobs}")
    need(spec.jobs == 1 or spec.name == "local", "jobs", "runs several local processes: it needs the local backend")
    need(spec.cpus_per_run is None or spec.cpus_per_run > 0, "cpus_per_run", "must be > 0 or empty")
    need(spec.gpus_per_run >= 0, "gpus_per_run", f"must be >= 0, got {spec.gpus_per_run}")
    need(spec.max_retries >= 0, "max_retries", f"must be >= 0, got {spec.max_retries}")
    need(0 < spec.connect_timeout < math.inf, "connect_timeout", f"must be > 0 seconds, got {spec.connect_timeout}")
    try:
        split_address(spec.address) if spec.address else None
    except ValueError as err:
        need(False, "address", str(err))
    ray_only = {"address": spec.address, "cpus_per_run": spec.cpus_per_run, "scratch": spec.scratch,
                "gpus_per_run": spec.gpus_per_run or None, "shared_fs": None if spec.shared_fs == "auto" else 1,
                "connect_timeout": None if spec.connect_timeout == CONNECT_TIMEOUT else 1}  # fmt: skip
    for name, value in ray_only.items():
        need(value is None or spec.name == "ray", name, "is a setting of the ray backend")
    return spec


# -- progress -------------------------------------------------------------------------------------
class GridBar:
    """One bar over the runs of a grid: done, running and failed runs and the ETA.

    A terminal bar or a notebook widget (tqdm.auto). Where the bar is hidden (no terminal,
    ``disable=True``: a headless notebook), ``log`` gets one line per finished run instead.
    """

    def __init__(self, total: int, done: int = 0, disable: bool | None = None, log=None, desc: str = "runs"):
        from tqdm.auto import tqdm

        self.total, self.done, self.running, self.failed = total, done, 0, 0
        self.log = log
        self._bar = tqdm(total=total, initial=done, desc=desc, unit="run", disable=disable, dynamic_ncols=True)
        self._t0, self._here = time.perf_counter(), 0
        self._show()

    def set_running(self, n: int) -> None:
        self.running = n
        self._show()

    def finish(self, what: str, ok: bool = True) -> None:
        """One run is over (``ok``: recorded; else failed for good)."""
        self.running = max(0, self.running - 1)
        self.done += ok
        self.failed += not ok
        self._here += 1
        self._bar.update(1)
        self._show()
        if self._bar.disable and self.log is not None:
            self.log(f"[{self.done + self.failed}/{self.total}] {what}: {'done' if ok else 'FAILED'} · {self.status()}")

    def status(self) -> str:
        left = self.total - self.done - self.failed
        eta = (time.perf_counter() - self._t0) / self._here * left if self._here and left else 0.0
        return f"{self.done} done, {self.running} running, {self.failed} failed" + (f", ETA {eta:.0f} s" if eta else "")

    def write(self, line: str) -> None:
        """A line above the bar (the bar stays whole)."""
        if self._bar.disable:
            (self.log or stderr_line)(line)
        else:
            self._bar.write(line, file=sys.stderr)

    def _show(self) -> None:
        self._bar.set_postfix_str(f"running {self.running}, failed {self.failed}", refresh=True)

    def close(self) -> None:
        self._bar.close()


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- what runs where ------------------------------------------------------------------------------
@dataclass
class Pending:
    """A run of the grid that has not finished, and the folder it goes to."""

    cfg: RunConfig
    tags: dict
    folder: Path

    def describe(self) -> str:
        return f"{self.cfg.method} {self.cfg.data.task} seed {self.cfg.seed}"

    def payload(self, root: Path, threads: int) -> dict:
        """What a worker gets: JSON only (no pickled objects), the folder as the driver found it."""
        return {"config": self.cfg.to_dict(), "tags": self.tags, "root": str(root), "folder": str(self.folder),
                "threads": threads}  # fmt: skip


FAILED_LOG = ".failed.log"  # suffix of the log a failed run's removed folder leaves beside it


def clear_failed(folder: Path) -> Path | None:
    """A failed run's folder that holds nothing to resume (at most its log, lock, config and an unfinished
    record; no checkpoint) is removed, so no folder without a record stays behind; its log is kept beside it
    as ``<folder>.failed.log``, which is returned. None: the folder stays (it has a checkpoint to resume)."""
    try:
        names = {p.name for p in folder.iterdir()}
        if not names <= {LOG, LOCK, CONFIG, RECORD} or (RECORD in names and RunFolder(folder).finished()):
            return None
    except (OSError, DfloraError):  # no folder here (a Ray worker's), or an unreadable record: leave it
        return None
    kept = folder.with_name(folder.name + FAILED_LOG)
    if LOG in names:
        os.replace(folder / LOG, kept)
    RunFolder(folder).remove_unstarted()
    return kept if kept.is_file() else None


@dataclass
class Failure:
    run: Pending
    error: str
    log: Path | None = None  # the log of a removed folder (clear_failed)

    def line(self) -> str:
        folder = self.run.folder
        where = f"{folder}; log: {folder / LOG}" if (folder / LOG).is_file() else str(folder)
        if self.log is not None:
            where = f"folder removed, nothing to resume; log: {self.log}"
        return f"dflora: run failed: {self.run.describe()} ({where}): {self.error}"


class RunHooks(Protocol):
    """What the top floor attaches to a grid's runs (a tracker, lab/tracking): callbacks for a run in this
    process, and a word when a run that executed elsewhere (a local process, Ray) has finished."""

    def callbacks(self, cfg: RunConfig, folder: Path, tags: dict | None = None) -> dict[str, Any]: ...

    def finished(self, folder: Path) -> None: ...


@dataclass
class Report:
    """Collects the runs that failed for good and tells the bar (and the hooks) about every finished run."""

    bar: GridBar
    failures: list[Failure] = field(default_factory=list)
    hooks: RunHooks | None = None

    def finished(self, run: Pending, error: str | None = None) -> None:
        failed_log = run.folder.with_name(run.folder.name + FAILED_LOG)
        if error is not None:
            self.failures.append(Failure(run, error, clear_failed(run.folder)))
            self.bar.write(self.failures[-1].line())
        else:
            failed_log.unlink(missing_ok=True)  # an earlier failure of this run: it has its record now
            if self.hooks is not None:
                self.hooks.finished(run.folder)
        self.bar.finish(run.describe(), ok=error is None)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # numpy/pycma's BLAS, OpenMP


def run_environment(threads: int = 0, gpu_share: int = 0) -> dict[str, str]:
    """The environment of a run's process (a local one, a local Ray instance's workers): waiting OpenMP threads
    sleep instead of spinning, as in the notebook kernels (notebook_runner: on a shared 2-core machine spinning
    threads made SmolLM2 ~5x slower with 2 threads; passive waiting costs nothing when a run is alone). With
    ``threads``, numpy's BLAS (pycma's eigendecompositions) and OpenMP get that many too, not every core: ten
    runs side by side would otherwise each start a thread per core. A variable the user set is kept. With
    ``gpu_share``, the run knows how many runs share its GPU."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if threads:
        for name in THREAD_VARIABLES:
            env.setdefault(name, str(threads))
    if gpu_share > 1:  # runs that share a card size their token budget to their share (models/sizing.py)
        env[SHARE_VARIABLE] = str(gpu_share)
    return env


def run_threads(cfg: RunConfig, cores: float) -> int:
    """The torch threads of a run given ``cores`` by its backend: its config's ``threads``, else those cores."""
    return cfg.threads or max(1, int(cores))
