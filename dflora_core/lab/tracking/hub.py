"""The tracker: the chosen sinks, a run's callbacks that feed them, and the replay of a recorded run.

    tracker = Tracker(TrackingSpec(to=("tensorboard", "mlflow")))
    run(cfg, out, **tracker.callbacks(cfg, out))     # live: generation by generation, then the results
    tracker.replay("results/peers-smollm2/sst2/...")  # a finished record after the fact (`dflora log`)
    tracker.close()                                   # or `with Tracker(...) as tracker:`

No sink may fail a run: a sink that raises (or a library that is missing) is one warning line
and the run goes on without it; the other sinks keep logging. The libraries are imported only
when a sink is chosen, so a run without sinks imports none of them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from ...config import RunConfig
from ...errors import ConfigError, DfloraError, DfloraWarning
from ...identity import config_from_record
from ...reports.curves import run_curves
from ...results.record import RunFolder
from .rows import RowScalars, RunInfo, group_of, ordered_rows, run_info
from .sinks import SINKS, Sink, TrackerRun

DEFAULT_DIR = "runs/tracking"
REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class TrackingSpec:
    """Where a run is logged: a profile's ``tracking:`` section, the flags ``--log-to``/``--log-dir``/``--log-group``."""

    to: tuple[str, ...] = ()  # sinks: tensorboard, mlflow, wandb (empty: none; nothing is imported)
    dir: str = DEFAULT_DIR  # every sink writes below it (git-ignored runs/ by default; never results/)
    group: str = ""  # MLflow experiment / W&B group / TensorBoard folder; empty: the grid root's name, else dflora


FLAGS = {"to": "--log-to", "dir": "--log-dir"}  # the fields' names on the command line


def check_spec(spec: TrackingSpec, names: dict[str, str] | None = None) -> TrackingSpec:
    """Known sink names, and a folder that is neither the repository root nor inside its results/.
    ``names``: how the errors name the fields (default: the profile's ``tracking.<field>``)."""
    names = names or {f: f"tracking.{f}" for f in ("to", "dir")}
    bad = [s for s in spec.to if s not in SINKS]
    if bad:
        raise ConfigError(names["to"], f"unknown sink(s) {bad}; choose from {', '.join(SINKS)}")
    if not str(spec.dir).strip():
        raise ConfigError(names["dir"], "give a folder for the trackers' files")
    where = Path(spec.dir).expanduser().resolve()
    if where == REPO_ROOT or where.is_relative_to(REPO_ROOT / "results"):
        raise ConfigError(names["dir"], f"{spec.dir}: the trackers' files go elsewhere than the repository root "
                          f"and results/ (default {DEFAULT_DIR})")  # fmt: skip
    return spec


def _warn(message: str) -> None:
    warnings.warn(DfloraWarning(f"tracking: {message}"), stacklevel=3)


def _why(err: BaseException) -> str:
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class Tracker:
    """The sinks of ``spec`` and every run logged through them (``logs``, closed ones included)."""

    def __init__(self, spec: TrackingSpec, strict: bool = False, names: dict[str, str] | None = None):
        self.spec = check_spec(spec, names)
        self.dir = Path(spec.dir).expanduser()
        self.sinks: dict[str, Sink] = {}
        self.logs: list[RunLog] = []
        for name in dict.fromkeys(spec.to):
            try:
                self.sinks[name] = SINKS[name](self.dir)
            except ImportError as err:
                why = f"{name} is not installed (no module {err.name}; pip install 'dflora[tracking]', make setup does)"
                if strict:
                    raise DfloraError(f"--to {name}: {why}") from None
                _warn(f"{why}; the run is not logged to it")
            except Exception as err:  # noqa: BLE001 - a sink that cannot start is said, the run goes on
                if strict:
                    raise DfloraError(f"{name}: cannot start ({_why(err)})") from None
                _warn(f"{name} cannot start ({_why(err)}); the run is not logged to it")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def active(self) -> bool:
        return bool(self.sinks)

    def broken(self, name: str, err: BaseException) -> None:
        """A sink raised: said once, and left out from here on."""
        if self.sinks.pop(name, None) is not None:
            _warn(f"{name} failed ({_why(err)}); the run goes on without it")

    def group(self, folder: Path | None, cfg: RunConfig) -> str:
        return self.spec.group or group_of(folder, cfg)

    # -- live runs ------------------------------------------------------------------------------
    def callbacks(self, cfg: RunConfig, folder: str | Path | None, tags: dict | None = None) -> dict[str, Any]:
        """The callbacks of one run (``runner.run(..., **callbacks)``); none when no sink is active."""
        if not self.sinks:
            return {}
        log = RunLog(self, run_info(cfg, self.group(Path(folder) if folder else None, cfg), tags))
        return {"on_start": log.on_start, "on_generation": log.on_generation, "on_step": log.on_step,
                "on_eval": log.on_eval, "on_finish": log.on_finish}  # fmt: skip

    def finished(self, folder: Path) -> None:
        """A run that ran elsewhere (a local process, Ray) has finished: replayed from its folder."""
        if not self.sinks:
            return
        try:
            self.replay(folder)
        except Exception as err:  # noqa: BLE001 - the grid goes on; its record is intact
            _warn(f"{folder} not logged ({_why(err)})")

    # -- recorded runs --------------------------------------------------------------------------------
    def replay(self, folder: str | Path) -> int:
        """Log a finished run folder as its live run would have been logged; the number of scalars logged."""
        folder = Path(folder)
        rec = RunFolder(folder).finished()
        if rec is None:
            raise DfloraError(f"{folder}: no finished run here (record.json with status done)")
        cfg = config_from_record(rec.config)
        info = run_info(cfg, self.group(folder, cfg), rec.tags, rec.git or {}, rec.versions or {})
        log = RunLog(self, info)
        log.open(fresh=True)
        history, dev_curve = run_curves(rec)
        for kind, row in ordered_rows(history, dev_curve):
            log.emit(*(log.rows.history(row) if kind == "history" else log.rows.dev(row)))
        log.on_finish(rec)
        return log.scalars_logged

    def close(self) -> None:
        """Close every tracker run left open (a run that failed or was interrupted), then the sinks."""
        for log in self.logs:
            if log.runs:
                log.close(ok=False)
        for name, sink in list(self.sinks.items()):
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001 - nothing left to log; said once
                self.broken(name, err)


def _rows_of(obj: Any) -> tuple[list[dict], list[dict]]:
    """(history rows, dev rows) a search or a step method holds (as ``history.json``/``dev_curve.json``)."""
    history = [asdict(g) if is_dataclass(g) else dict(g) for g in getattr(obj, "history", None) or []]
    return history, list(getattr(obj, "dev_curve", None) or [])


class RunLog:
    """One dflora run in every active sink: opened at its start (fresh, or continued when it resumes),
    fed its rows, closed with its results. ``hook_seconds``: the time spent in the hooks per generation or
    step (the dev rows scored in it included; opening the tracker runs excluded)."""

    def __init__(self, tracker: Tracker, info: RunInfo):
        self.tracker, self.info = tracker, info
        self.rows = RowScalars()
        self.runs: dict[str, TrackerRun] | None = None  # None: not opened yet
        self.scalars_logged = 0
        self.hook_seconds: list[float] = []
        self._pending = 0.0  # hook time of dev rows since the last generation
        self.dead = False
        tracker.logs.append(self)

    # -- the sinks, guarded ----------------------------------------------------------------------
    def open(self, fresh: bool) -> None:
        self.runs = {}
        for name, sink in list(self.tracker.sinks.items()):
            try:
                self.runs[name] = sink.open(self.info, fresh, self.rows.last_step)
            except Exception as err:  # noqa: BLE001 - a broken sink never fails the run
                self.tracker.broken(name, err)

    def _each(self, call) -> None:
        for name, run in list((self.runs or {}).items()):
            if name not in self.tracker.sinks:  # broken meanwhile (in another run)
                del self.runs[name]
                continue
            try:
                call(run)
            except Exception as err:  # noqa: BLE001 - a broken sink never fails the run
                del self.runs[name]
                self.tracker.broken(name, err)

    def emit(self, step: int, values: dict[str, float]) -> None:
        if values:
            self._each(lambda run: run.scalars(step, values))
            self.scalars_logged += len(values)

    def close(self, ok: bool) -> None:
        if self.runs:
            self._each(lambda run: run.close(ok))
        self.runs = {}

    def _guarded(self, body) -> None:
        """A hook: whatever goes wrong in it is one warning, and this run is not logged further."""
        if self.dead:
            return
        try:
            body()
        except Exception as err:  # noqa: BLE001 - a hook never fails the run
            self.dead = True
            _warn(f"{self.info.key}: logging stopped ({_why(err)}); the run goes on")

    def _opened(self, obj: Any = None) -> None:
        """Open on the first event: continued when the run already has rows (a resumed run), else fresh."""
        if self.runs is None:
            history, dev_curve = _rows_of(obj)
            self.rows.seed(history, dev_curve)
            self.open(fresh=not (history or dev_curve))

    # -- the callbacks (methods.RunContext) --------------------------------------------------------------
    def on_start(self, obj: Any) -> None:
        self._guarded(lambda: self._opened(obj))

    def on_eval(self, obj: Any, row: dict) -> None:
        def body():
            if self.runs is None:
                self._opened()  # no on_start came (a driver of its own): nothing to seed
            t0 = time.perf_counter()
            self.emit(*self.rows.dev(row))
            self._pending += time.perf_counter() - t0

        self._guarded(body)

    def _history(self, row: dict) -> None:
        def body():
            if self.runs is None:
                self._opened()
            t0 = time.perf_counter()
            self.emit(*self.rows.history(row))
            self.hook_seconds.append(self._pending + time.perf_counter() - t0)
            self._pending = 0.0

        self._guarded(body)

    def on_generation(self, search: Any, gen: Any) -> None:
        self._history(asdict(gen) if is_dataclass(gen) else dict(gen))

    def on_step(self, method: Any, row: dict) -> None:
        self._history(row)

    def on_finish(self, record: Any) -> None:
        def body():
            if self.runs is None:
                self._opened()  # a method without generations (zero-shot, ICL ...): its results only
            step, values = self.rows.final(record)
            self._each(lambda run: run.final(step, values))
            self.scalars_logged += len(values)
            self.close(ok=True)

        self._guarded(body)
