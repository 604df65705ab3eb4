"""``dflora compare``: every method under the same protocol, and the main table.

    dflora compare --tasks sst2,rte,agnews --methods zeroshot,c-lora,bbt,lora,zo-sgd \\
        --seeds 13,42,100 --model smollm2 --budget 300 --max-test 300 --root runs/compare

runs the grid (methods x tasks x seeds; finished runs are read back, unfinished ones resumed,
through ``results.grid.run_grid``) and writes, under ``--root``:

    compare_runs.csv     one row per run (test, calls, passes, time, memory, #params ...)
    compare_table.csv    methods x tasks, 'mean (std)' over seeds, plus Avg, #Params, calls,
    compare_table.md     forward/backward passes, time and memory columns (also printed)

Every run gets the same split, prompt, metric and ``search.budget`` (fitness evaluations;
step-based methods convert it to steps, docs/baselines.md). ``--set [METHOD:]KEY=VALUE``
overrides a config field for every run or for one method only, e.g.
``--set c-lora:lowrank.layers=[-6,-5,-4,-3,-2,-1]``.

A per-method ``--set`` for a method outside ``--methods`` is ignored, so one list of settings
can serve several calls; ``--table-only`` runs nothing and renders the runs of the grid that
are already recorded (e.g. after running some methods with fewer seeds).

By default each pending run executes in its own Python process, so that the peak resident
memory in its record (process peak RSS on CPU) is that run's own; ``--in-process`` runs them
in this process (faster start, but on CPU a run's peak then includes the earlier runs').
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import methods
from ..config import _merge, _nest, from_dict, load_yaml, parse_assignments
from ..errors import DfloraError
from ..results.record import RunRecord
from .grid import finished_run, run_grid
from .tables import comparison_table, frame, to_markdown

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
    """One validated RunConfig per (task, method, seed), in that order."""
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
                methods.validate(cfg)
                configs.append(cfg)
    return configs


def _run_isolated(cfg, root: Path) -> None:
    """One run in a fresh Python process (its record's peak memory is then its own)."""
    code = (
        "import json, sys\n"
        "from dflora_core.config import from_dict\n"
        "from dflora_core.workbench.grid import run_grid\n"
        "run_grid([from_dict(json.loads(sys.argv[1]))], sys.argv[2])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(root)], check=False)
    if proc.returncode != 0:
        raise DfloraError(
            f"compare: the run {cfg.method} / {cfg.data.task} / seed {cfg.seed} failed "
            f"(exit {proc.returncode}); its messages are above"
        )


def render(records: list[RunRecord], root: Path, method_names, tasks, header: dict) -> dict:
    """Write the runs CSV and the table as CSV and Markdown; returns their paths and the Markdown."""
    root.mkdir(parents=True, exist_ok=True)
    df = frame(records)
    df.to_csv(root / RUNS_CSV, index=False)
    table, counts, zero_shot = comparison_table(records, method_names, tasks)
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
) -> dict:
    """Run the grid (skipping recorded runs), render the table; returns paths, records and the Markdown.

    ``table_only``: run nothing, render the runs of the grid that are already recorded.
    """
    root = Path(root)
    configs = build_configs(tasks, method_names, seeds, model, budget, max_test, sets, base)
    finished = [finished_run(root, c) for c in configs]
    pending = [c for c, rec in zip(configs, finished, strict=True) if rec is None]
    if table_only:
        records = [rec for rec in finished if rec is not None]
        if not records:
            raise DfloraError(f"no finished run of this grid under {root}")
        method_names = [m for m in method_names if any(r["method"] == m for r in records)]
        tasks = [t for t in tasks if any(r["task"] == t for r in records)]
        pending = []
    else:
        if isolate:
            for i, cfg in enumerate(pending):
                print(
                    f"[{i + 1}/{len(pending)}] {cfg.method} {cfg.data.task} seed {cfg.seed}",
                    file=sys.stderr,
                    flush=True,
                )
                _run_isolated(cfg, root)
        records = run_grid(configs, root, on_record=on_record)
    first = configs[0]
    header = {
        "model": first.model.name,
        "budget (calls)": first.search.budget,
        "max test": first.data.max_test,
        "seeds": ",".join(str(s) for s in seeds),
        "device": records[0].get("device") if records else None,
    }
    out = render(records, root, list(method_names), list(tasks), header)
    return {**out, "records": records, "ran": len(pending)}


# -- command line ---------------------------------------------------------------------------------
def _cmd(args) -> int:
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise DfloraError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 13,42,100") from None
    base = None
    if args.config:
        data = load_yaml(args.config)
        base = data.get("run", data)
    sets = list(args.set or [])
    if args.device:
        sets.append(f"model.device={args.device}")
    out = compare(
        _split(args.tasks),
        _split(args.methods),
        seeds,
        root=args.root,
        model=args.model,
        budget=args.budget,
        max_test=args.max_test,
        sets=sets,
        isolate=not args.in_process,
        base=base,
        table_only=args.table_only,
    )
    print(out["markdown"])
    print(f"wrote {out['table_md']}, {out['table_csv']} and {out['runs_csv']} ({out['ran']} new runs)")
    return 0


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
    p.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs already recorded")
    p.set_defaults(fn=_cmd)

