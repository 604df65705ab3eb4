"""``dflora compare``: every method under the same protocol, and the main table.

    dflora compare --tasks sst2,rte,agnews --methods zeroshot,c-lora,bbt,lora,zo-sgd \\
        --seeds 13,42,100 --model smollm2 --budget 300 --max-test 300 --root runs/compare

runs the grid (methods x tasks x seeds; finished runs are read back, unfinished ones resumed,
through ``results.grid.run_grid``) and writes, under ``--root``:

    compare_runs.csv     one row per run (test, calls, passes, time, memory, #params ...)
    compare_table.csv    methods x tasks, 'mean (std)' over seeds, plus Avg, #Params, calls,
    compare_table.md     forward/backward passes, time and memory columns (also printed)

Every run gets the same split, prompt, metric and ``search.budget`` (fitness evaluations;
step-based methods convert it to steps, docs/baselines.md). ``--vs METHOD`` adds, per task, the
paired difference of every method to METHOD over the seeds both ran: mean, 95% t interval over
seeds and seeds won (``reports.paired``), to both tables. ``--set [METHOD:]KEY=VALUE``
overrides a config field for every run or for one method only, e.g.
``--set c-lora:lowrank.layers=[-6,-5,-4,-3,-2,-1]``.

A per-method ``--set`` for a method outside ``--methods`` is ignored, so one list of settings
can serve several calls; ``--table-only`` runs nothing and renders the runs of the grid that
are already recorded (e.g. after running some methods with fewer seeds).

Where the pending runs execute (``--backend``, ``grids/backends.py``, docs/scale-out.md):
by default each in its own local Python process, so that the peak resident memory in its
record (process peak RSS on CPU) is that run's own, ``--jobs N`` of them at a time;
``--backend ray`` makes each a Ray task (``--cpus-per-run``, ``--gpus-per-run``, ``--address``
to join a cluster); ``--in-process`` runs them in this process (faster start, but on CPU a
run's peak then includes the earlier runs'). Every run is checked against its model's layer
count before any starts, so a grid that cannot run (a budget below one round) fails once, in one
line. A run that fails is reported in one line and the others go on (a folder with nothing to
resume is removed, its log kept beside it: ``backend_base.clear_failed``); the table holds the
runs that finished, and the same command again runs only what is missing. Fields a method never
reads (``identity.IGNORED_FIELDS``: the zero-shot arms and ``--budget``) are not part of its run,
so another budget reruns only the methods that spend it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import methods
from ..config import _merge, _nest, from_dict, load_run_settings, parse_assignments
from ..data.user_task import add_outside_flag
from ..errors import ConfigError, DfloraError
from ..experiment import Experiment
from ..reports.tables import VS_CAPTION, comparison_table, frame, to_markdown
from ..results.record import RunRecord
from .backend_base import BACKENDS, CONNECT_TIMEOUT, BackendSpec, GridBar, RunHooks, check_backend, stderr_line
from .backends import execute
from .grid import finished_run, run_grid

DEFAULT_ROOT = "runs/compare"
RUNS_CSV, TABLE_CSV, TABLE_MD = "compare_runs.csv", "compare_table.csv", "compare_table.md"


def _split(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return [t.strip() for t in text.split(",") if t.strip()]
    return [str(t).strip() for t in text]


def parse_sets(items: Sequence[str] | None) -> tuple[dict, dict[str, dict]]:
    """``[METHOD:]KEY=VALUE`` items -> (overrides for all runs, {method: overrides}); values are YAML."""
    common: dict = {}
    per_method: dict[str, dict] = {}
    for key, value in parse_assignments(items).items():
        if ":" in key:
            method, key = key.split(":", 1)
            per_method.setdefault(method.strip(), {})[key.strip()] = value
        else:
            common[key] = value
    return common, per_method


def build_configs(
    tasks: Sequence[str],
    method_names: Sequence[str],
    seeds: Sequence[int],
    model: str | None = None,
    budget: int | None = None,
    max_test: int | None = None,
    sets: Sequence[str] | None = None,
    base: dict | None = None,
):
    """One RunConfig per (task, method, seed), in that order, each validated against its model's layer count
    (no weights loaded): a budget below one round fails here in one line, not once per run."""
    if not tasks or not method_names or not seeds:
        raise DfloraError("compare needs at least one task, one method and one seed")
    unknown = [m for m in method_names if m not in methods.METHODS]
    if unknown:
        raise DfloraError(f"unknown method(s) {unknown}; known: {sorted(methods.METHODS)}")
    common, per_method = parse_sets(sets)
    stray = sorted(set(per_method) - set(methods.METHODS))  # a method not in --methods is fine (shared scripts)
    if stray:
        raise DfloraError(f"--set names unknown method(s) {stray}; known: {sorted(methods.METHODS)}")
    flat = {"progress": False}
    if model is not None:
        flat["model.name"] = model
    if budget is not None:
        flat["search.budget"] = budget
    if max_test is not None:
        flat["data.max_test"] = max_test
    flat.update(common)
    configs = []
    for task in tasks:
        for method in method_names:
            for seed in seeds:
                over = {**flat, **per_method.get(method, {}), "data.task": task, "method": method, "seed": int(seed)}
                cfg = from_dict(_merge(dict(base or {}), _nest(over)))
                try:  # against the model's layers (read, not loaded): a bad grid fails once, before any run
                    Experiment.check(cfg)
                except ConfigError as err:
                    raise ConfigError(f"{method} on {task}, seed {seed}: {err.field}", err.message) from None
                configs.append(cfg)
    return configs


def render(records: list[RunRecord], root: Path, method_names, tasks, header: dict, vs: str | None = None) -> dict:
    """Write the runs CSV and the table as CSV and Markdown; returns their paths and the Markdown.
    ``vs``: a method; the tables get its paired differences per task (``tables.paired_columns``)."""
    root.mkdir(parents=True, exist_ok=True)
    df = frame(records)
    df.to_csv(root / RUNS_CSV, index=False)
    table, counts, zero_shot = comparison_table(records, method_names, tasks, vs)
    table.to_csv(root / TABLE_CSV)
    metrics = sorted({str(m) for m in df["metric"].dropna()})
    n = sorted({int(c) for c in counts.to_numpy().ravel()})
    lines = [
        "# Main comparison",
        "",
        ", ".join(f"{k}: {v}" for k, v in header.items() if v is not None),
        "",
        to_markdown(table).rstrip(),
        "",
        f"Cells: test {'/'.join(metrics)} x 100, mean (std) over seeds (runs per cell: {n}); "
        "Avg: mean of the task means. #Params: optimised parameters (stored: what a run keeps); "
        "calls: fitness-evaluation equivalents spent (one forward over the train set); fwd/bwd: example "
        "sequences through the model during the search; time: mean wall time per run; memory: the "
        "largest peak (process peak RSS on CPU, CUDA peak allocated on GPU).",
        "Zero-shot (manual prompt) on the same test sets: " + ", ".join(f"{t} {v}" for t, v in zero_shot.items()),
        "",
    ]
    if vs:
        lines[-1:-1] = [VS_CAPTION.format(vs=vs)]
    text = "\n".join(lines)
    (root / TABLE_MD).write_text(text)
    return {"runs_csv": root / RUNS_CSV, "table_csv": root / TABLE_CSV, "table_md": root / TABLE_MD, "markdown": text}


def compare(
    tasks: Sequence[str],
    method_names: Sequence[str],
    seeds: Sequence[int],
    root: str | Path = DEFAULT_ROOT,
    model: str | None = None,
    budget: int | None = None,
    max_test: int | None = None,
    sets: Sequence[str] | None = None,
    isolate: bool = True,
    base: dict | None = None,
    on_record: Callable[[dict], None] | None = None,
    table_only: bool = False,
    backend: BackendSpec | None = None,
    vs: str | None = None,
    hooks: RunHooks | None = None,
) -> dict:
    """Run the grid (skipping recorded runs), render the table; returns paths, records, the Markdown
    and the runs that failed for good (``failures``, each already reported in one line).

    ``backend``: where the pending runs execute (default: local processes, one at a time;
    ``isolate=False``: this process). ``table_only``: run nothing, render the runs of the grid
    that are already recorded. ``vs``: one of ``method_names``, the reference of the paired differences.
    ``hooks``: a tracker (lab/tracking): live callbacks in this process, else each run's folder once it finished.
    """
    root = Path(root)
    if vs is not None and vs not in method_names:
        raise DfloraError(f"--vs {vs!r}: the reference must be one of --methods ({', '.join(method_names)})")
    configs = build_configs(tasks, method_names, seeds, model, budget, max_test, sets, base)
    spec = check_backend(backend or BackendSpec(name="local" if isolate else "inprocess"))
    finished = [finished_run(root, c) for c in configs]
    pending = [c for c, rec in zip(configs, finished, strict=True) if rec is None]
    failures = []
    if not table_only and spec.name == "inprocess":
        records = run_grid(configs, root, on_record=on_record, hooks=hooks)
    else:
        if not table_only and pending:
            bar = GridBar(len(configs), len(configs) - len(pending), log=stderr_line)  # lines where no terminal
            try:
                failures = execute(configs, root, spec=spec, bar=bar, hooks=hooks)
            finally:
                bar.close()
            finished = [finished_run(root, c) for c in configs]
        records = [rec for rec in finished if rec is not None]
        if not records:
            why = f"all {len(failures)} runs failed (each named above)" if failures else "no finished run of this grid"
            raise DfloraError(f"{why} under {root}")
        for rec in records if on_record and not table_only else []:
            on_record(rec)
        method_names = [m for m in method_names if any(r["method"] == m for r in records)]
        tasks = [t for t in tasks if any(r["task"] == t for r in records)]
    first = configs[0]
    header = {
        "model": first.model.name,
        "budget (calls)": first.search.budget,
        "max test": first.data.max_test,
        "seeds": ",".join(str(s) for s in seeds),
        "device": records[0].get("device") if records else None,
        "paired vs": vs,
    }
    out = render(records, root, list(method_names), list(tasks), header, vs)
    ran = 0 if table_only else len(pending) - len(failures)
    return {**out, "records": records, "ran": ran, "failures": failures}


# -- command line ---------------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a grid like Ctrl-C: its runs stop at their last checkpoint


def _cmd(args, hooks: RunHooks | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _compare_cmd(args, hooks)
    except KeyboardInterrupt:
        print("interrupted; the same command again runs only what is missing (finished runs are kept, "
              "interrupted ones resume from their checkpoint)", file=sys.stderr)  # fmt: skip
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _compare_cmd(args, hooks: RunHooks | None) -> int:
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise DfloraError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 13,42,100") from None
    base = None
    if args.config:
        base = load_run_settings(args.config, section="run")
    sets = list(args.set or [])
    if args.device:
        sets.append(f"model.device={args.device}")
    if args.allow_task_files_outside:  # every run carries the permission to its worker
        sets.append("data.allow_task_files_outside=true")
    out = compare(
        _split(args.tasks),
        _split(args.methods),
        seeds,
        root=args.root,
        model=args.model,
        budget=args.budget,
        max_test=args.max_test,
        sets=sets,
        base=base,
        table_only=args.table_only,
        backend=backend_of(args),
        vs=args.vs,
        hooks=hooks,
    )
    print(out["markdown"])
    print(f"wrote {out['table_md']}, {out['table_csv']} and {out['runs_csv']} ({out['ran']} new runs)")
    if out["failures"]:
        raise DfloraError(
            f"{len(out['failures'])} run(s) failed (each named above); the table holds the others; "
            "the same command again runs only what is missing"
        )
    return 0


def backend_of(args) -> BackendSpec:
    """The backend the flags ask for (one-line errors for flags of another backend)."""
    name = "inprocess" if args.in_process else args.backend
    if args.in_process and args.backend not in (None, "inprocess"):
        raise DfloraError(f"--in-process and --backend {args.backend}: choose one")
    return check_backend(
        BackendSpec(
            name=name or "local",
            jobs=args.jobs,
            address=args.address,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            shared_fs="no" if args.no_shared_fs else "auto",
            max_retries=args.max_retries,
            connect_timeout=args.connect_timeout,
        ),
        prefix="--",
    )


def add_arguments(p) -> None:
    p.add_argument("--tasks", required=True, help="comma-separated task names (see `dflora tasks`)")
    p.add_argument("--methods", required=True, help="comma-separated method names (see `dflora methods`)")
    p.add_argument("--seeds", required=True, help="comma-separated seeds (paper: 13,21,42,87,100)")
    p.add_argument("--model", default=None, help="registry name or local path (default: the config's)")
    p.add_argument("--budget", type=int, default=None, help="fitness evaluations per run [search.budget]")
    p.add_argument("--max-test", type=int, default=None, help="stratified test subsample [data.max_test]")
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"results folder (default {DEFAULT_ROOT})")
    p.add_argument("--device", default=None, help="auto, cpu, cuda ... [model.device]")
    p.add_argument("--config", default=None, help="a YAML profile for the base config")
    p.add_argument("--set", action="append", metavar="[METHOD:]KEY=VALUE", help="a config field (YAML value)")
    p.add_argument("--in-process", action="store_true", help="run in this process (CPU memory then cumulative)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="where runs execute (default: local processes)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="local backend: runs at a time, each its own process (0: as many as the GPU holds, one per core on a CPU)",
    )
    p.add_argument("--address", default=None, help="ray: a cluster to join (default: a local instance on 127.0.0.1)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="ray: CPUs per run (default: its threads, or 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="ray: GPUs per run; fractions share a GPU")
    p.add_argument("--no-shared-fs", action="store_true", help="ray: workers do not see --root (folders come back)")
    p.add_argument("--max-retries", type=int, default=3, help="ray: retries of a run whose worker died")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="SECONDS",
                   help=f"ray --address: give up joining the cluster after this long (default {CONNECT_TIMEOUT:g})")  # fmt: skip
    p.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs already recorded")
    add_outside_flag(p)
    p.add_argument("--vs", default=None, metavar="METHOD",
                   help="add per task the paired difference to METHOD over seeds: mean, 95%% t interval, wins")  # fmt: skip
    p.set_defaults(fn=_cmd)
