"""Where the pending runs of a grid execute: in this process, in local processes, or on Ray.

    spec = BackendSpec(name="local", jobs=4)          # `dflora compare --jobs 4`
    failures = execute(configs, root, tags, spec)     # then grid.run_grid reads every record back

- ``inprocess``: ``grid.run_grid`` in this process (the notebooks: live views of each run);
- ``local``: each run in a fresh Python process, ``jobs`` at a time (a record's peak memory
  is then its own run's); the process's output goes to ``run.log`` in the run's folder;
- ``ray``: each run a Ray task with declared resources (``grids/rayrun.py``; Ray is
  imported only there, and only when chosen).

A run that fails for good is reported in one line (what, folder, error) and the others go
on; the same grid again runs only what is missing: finished runs are found by
``grid.find_run``, an interrupted one resumes from its ``checkpoint.npz``. One bar
(``GridBar``) follows the grid's runs. Threads, backends and folders: docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..config import RunConfig, from_dict
from ..errors import DfloraError
from ..models.sizing import auto_jobs
from ..results.record import RunFolder
from .backend_base import (
    LOG,
    BackendSpec,
    Failure,
    GridBar,
    Pending,
    Report,
    RunHooks,
    check_backend,
    run_environment,
    run_threads,
)
from .grid import find_run, run_grid


def pending_runs(configs: Sequence[RunConfig], root: Path, tags: Iterable[dict] | None = None) -> list[Pending]:
    tag_list = list(tags) if tags is not None else [{} for _ in configs]
    out = []
    for cfg, tag in zip(configs, tag_list, strict=True):
        folder = find_run(root, cfg)
        if RunFolder(folder).finished() is None:
            out.append(Pending(cfg, dict(tag), folder))
    return out


def execute(configs: Sequence[RunConfig], root: str | Path, tags: Iterable[dict] | None = None,
            spec: BackendSpec | None = None, bar: GridBar | None = None,
            hooks: RunHooks | None = None) -> list[Failure]:  # fmt: skip
    """Run the grid's unfinished configs on ``spec``'s backend; returns the runs that failed for good.

    Finished runs are skipped (and counted as done on the bar); each failure is reported in
    one line as it happens; the caller reads the records back (``grid.run_grid``). ``hooks``: the
    callbacks of a run in this process, or a word when a run elsewhere has finished (its folder).
    """
    spec = check_backend(spec or BackendSpec(name="local"))
    root = Path(root).expanduser().resolve()
    configs = list(configs)
    check_gpu_accounting(spec, configs)
    pending = pending_runs(configs, root, tags)
    if not pending:
        return []
    own = bar is None
    report = Report(bar or GridBar(len(configs), len(configs) - len(pending)), hooks=hooks)
    try:
        if spec.name == "ray":
            from .rayrun import run_on_ray

            run_on_ray(pending, root, spec, report)
        elif spec.name == "local":
            run_local(pending, root, spec.jobs, report)
        else:
            report.hooks = None  # here the hooks see the runs live, through their callbacks
            for run in pending:
                report.bar.set_running(1)
                run_grid([run.cfg], root, [run.tags], hooks=hooks)
                report.finished(run)
    finally:
        if own:
            report.bar.close()
    return report.failures


def check_gpu_accounting(spec: BackendSpec, configs: Sequence[RunConfig]) -> None:
    """Ray with ``gpus_per_run`` 0 while the runs would use a visible GPU: refused (Ray 2.60 no longer hides
    the GPU from zero-GPU tasks, so every task would use it without Ray counting it)."""
    if spec.name != "ray" or spec.gpus_per_run:
        return
    import torch

    wants = [c for c in configs if c.model.device == "auto" or c.model.device.startswith("cuda")]
    if wants and torch.cuda.is_available():
        raise DfloraError(f"--gpus-per-run is 0 but the runs use the GPU (model.device {wants[0].model.device}): "
                          "Ray would not count it; give --gpus-per-run (0.25 packs four runs on a GPU) "
                          "or --device cpu")  # fmt: skip


# -- local processes ------------------------------------------------------------------------------
_CHILD = "from dflora_core.grids.backends import child_main; child_main()"


def run_local(pending: list[Pending], root: Path, jobs: int, report: Report) -> None:
    """Each run in its own Python process, ``jobs`` at a time (0: from the card), in the order given."""
    import torch

    cores = os.cpu_count() or 1
    cfg = pending[0].cfg
    if jobs == 0:
        jobs = auto_jobs(cfg.model.name, cfg.model.device)
        print(f"jobs: {jobs} (from the {'card' if torch.cuda.is_available() else 'cores'})", file=sys.stderr)
    share = jobs if cfg.model.device != "cpu" and torch.cuda.is_available() else 0
    queue, active = list(pending), {}
    try:
        while queue or active:
            while queue and len(active) < jobs:
                run = queue.pop(0)
                threads = run_threads(run.cfg, cores / jobs) if jobs > 1 else run.cfg.threads  # 0: torch's default
                active[_spawn(run, root, threads, share)] = run
                report.bar.set_running(len(active))
            done = [p for p in active if p.poll() is not None]
            if not done:
                time.sleep(0.1)
            for proc in done:
                run = active.pop(proc)
                report.finished(run, None if proc.returncode == 0 else _exit_error(run.folder / LOG, proc.returncode))
    finally:
        for proc in active:  # interrupted (Ctrl-C, SIGTERM): the runs stop at their last checkpoint
            proc.terminate()
        for proc in active:
            proc.wait()


def _spawn(run: Pending, root: Path, threads: int, gpu_share: int = 0) -> subprocess.Popen:
    run.folder.mkdir(parents=True, exist_ok=True)
    with open(run.folder / LOG, "ab") as log:  # the child keeps its own descriptor
        cmd = [sys.executable, "-c", _CHILD, json.dumps(run.payload(root, threads))]
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=run_environment(threads, gpu_share)
        )


def _exit_error(log: Path, code: int) -> str:
    """The last line a failed process wrote (its one-line error), and how it ended."""
    how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    last = lines[-1].removeprefix("dflora: error: ") if lines else "no output"
    return f"{last} ({how})"  # the failure line names the log (Failure.line)


def child_main(argv: list[str] | None = None) -> None:
    """A local backend's run process: the payload's run through ``grid.run_grid`` (resumes, skips if done)."""
    payload = json.loads((argv or sys.argv[1:])[0])
    if payload["threads"]:
        import torch

        torch.set_num_threads(payload["threads"])
    try:
        run_grid([from_dict(payload["config"])], payload["root"], [payload["tags"]])
    except DfloraError as err:
        print(f"dflora: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
