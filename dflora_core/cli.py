"""Command line: ``dflora`` (also ``python -m dflora_core``).

Bad input gives a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .errors import DfloraError

# flag -> dotted config path; help texts and choices come from the config itself (config.field_help)
RUN_FLAGS: dict[str, str] = {
    "--task": "data.task",
    "--method": "method",
    "--model": "model.name",
    "--seed": "seed",
    "--shots": "data.shots",
    "--max-test": "data.max_test",
    "--budget": "search.budget",
    "--popsize": "optim.popsize",
    "--sigma": "optim.sigma",
    "--optimizer": "optim.name",
    "--rank": "lowrank.rank",
    "--intrinsic-dim": "lowrank.intrinsic_dim",
    "--alpha": "lowrank.alpha",
    "--targets": "lowrank.targets",
    "--layers": "lowrank.layers",
    "--init": "lowrank.projection_init",
    "--stat-source": "lowrank.stat_source",
    "--acceptance": "search.acceptance",
    "--loss": "search.loss",
    "--eval-every": "search.eval_every",
    "--patience": "search.patience",
    "--device": "model.device",
    "--dtype": "model.dtype",
}
# what a zero-shot score depends on: the prompt, the model and the test set (no search, no split)
ZEROSHOT_FLAGS = ("--task", "--model", "--max-test", "--device", "--dtype")


def build_config(args) -> RunConfig:  # noqa: F821 - string annotation, imported lazily
    from .config import _merge, _nest, from_dict, load_run_settings, parse_assignments

    data = load_run_settings(args.config) if getattr(args, "config", None) else {}
    flat = {}
    for flag, path in RUN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            flat[path] = value
    flat.update(parse_assignments(getattr(args, "set", None)))  # the same parser as `dflora compare --set`
    if getattr(args, "no_progress", False):
        flat["progress"] = False
    if getattr(args, "allow_task_files_outside", False):
        flat["data.allow_task_files_outside"] = True
    return from_dict(_merge(data, _nest(flat)))


def _print(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=1, default=str) if as_json else text)


# -- commands ---------------------------------------------------------------------------------
def cmd_tasks(args) -> int:
    from .data import TASKS, load_test, pool_report

    def pool_size(name):
        return pool_report(name)["raw_rows"] if TASKS[name].pool_kind != "none" else None

    rows = []
    for name, t in TASKS.items():
        test = load_test(name)
        rows.append(
            {
                "task": name,
                "title": t.title,
                "classes": list(t.classes),
                "metric": t.metric,
                "train_pool": pool_size(name),
                "pool_kind": t.pool_kind,
                "fixed_seeds": list(t.fixed_seeds),
                "default_split_source": t.default_split_source,
                "test_size": len(test.examples),
                "test_name": t.test_name,
                "test_official": t.test_official,
                "notes": t.notes,
            }
        )
    if args.json:
        _print(rows, True, "")
        return 0
    hdr = f"{'task':8} {'classes':>7} {'pool':>7} {'split':>6} {'test':>6}  test set"
    print(hdr)
    for r in rows:
        official = "" if r["test_official"] else "  [sample, not the official test set]"
        print(
            f"{r['task']:8} {len(r['classes']):>7} {r['train_pool'] or '-':>7} {r['default_split_source']:>6} "
            f"{r['test_size']:>6}  {r['test_name']}{official}"
        )
    return 0


def cmd_models(args) -> int:
    from .models.registry import LOCAL_OBTAIN, REGISTRY

    rows = [
        {
            "name": e.name,
            "family": e.family,
            "model_type": e.model_type,
            "layers": e.num_layers,
            "default": e.default,
            "description": e.description,
            "obtain": e.obtain,
            "installed": e.installed(),
        }
        for e in REGISTRY.values()
    ]
    if args.json:
        _print(rows, True, "")
        return 0
    import shutil
    import textwrap

    width = max(80, min(120, shutil.get_terminal_size((100, 24)).columns))
    indent = " " * 20
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        state = "" if r["installed"] else "  [not installed]"
        print(f"{name:19} {r['family']:7} {r['layers']:>3} layers  {r['description']}{state}")
        print(textwrap.fill("get it: " + r["obtain"], width, initial_indent=indent, subsequent_indent=indent + "  "))
    print(
        textwrap.fill(LOCAL_OBTAIN, width, initial_indent=f"{'any other model':19} ", subsequent_indent=indent + "  ")
    )
    return 0


def cmd_methods(args) -> int:
    from .methods import METHODS, ordered

    rows = [{"name": m, "family": METHODS[m].family, "description": METHODS[m].description} for m in ordered(METHODS)]
    if args.json:
        _print(rows, True, "")
        return 0
    for r in rows:
        print(f"{r['name']:20} {r['family']:13} {r['description']}")
    return 0


def cmd_zeroshot(args) -> int:
    from .runner import run

    args.method = "zeroshot"
    cfg = build_config(args)
    rec = run(cfg, out=None)
    t = rec["test"]
    out = {
        "task": rec["task"],
        "model": rec["model"],
        "metric": t["metric"],
        "value": t["value"],
        "accuracy": t["accuracy"],
        "test_name": t["name"],
        "test_official": t["official"],
        "n": t["n"],
        "seconds": rec["zero_shot"].get("seconds"),
        "wall_s": rec["wall_s"],
    }
    _print(
        out,
        args.json,
        f"{out['task']} zero-shot {out['metric']} {out['value']:.4f} on {out['test_name']} "
        f"(n={out['n']}) with {out['model']}",
    )
    return 0


def _terminate(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM stops a run like Ctrl-C: checkpoint between generations, one line


def cmd_run(args) -> int:
    import signal

    from .runner import run, summary_line

    out = args.out
    if out is not None and not out.strip():
        raise DfloraError("--out: give a folder name (an empty --out writes nothing)")
    if (args.resume or args.overwrite) and out is None:
        raise DfloraError(f"--{'resume' if args.resume else 'overwrite'} needs --out: the run folder")
    if args.resume and args.overwrite:
        raise DfloraError("--resume continues a run, --overwrite restarts it: choose one")
    cfg = build_config(args)
    from .lab.tracking.command import tracker_of

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with tracker_of(args) as tracker:  # an interrupted run's tracker runs are closed as killed
            rec = run(cfg, out=out, resume=args.resume, overwrite=args.overwrite, **tracker.callbacks(cfg, out))
    except KeyboardInterrupt:
        where = f"dflora run ... --out {out} --resume" if out else "the same command (no --out: nothing was kept)"
        print(f"interrupted; continue with: {where}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        _print({k: v for k, v in rec.to_dict().items() if k != "layer_stats"}, True, "")
    else:
        print(summary_line(rec))
        if out:
            print(f"record: {Path(out) / 'record.json'}")
    return 0


def cmd_compare(args) -> int:
    """`dflora compare` with the trackers of --log-to (or its profile's tracking:) attached to its runs."""
    from .grids.compare import _cmd
    from .lab.tracking.command import tracker_of

    with tracker_of(args, args.config) as tracker:
        return _cmd(args, hooks=tracker if tracker.active else None)


def cmd_config(args) -> int:
    """Print the full default config (or a profile) with every field's rationale."""
    import yaml

    cfg = build_config(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _add_run_flags(p: argparse.ArgumentParser, flags=tuple(RUN_FLAGS), progress: bool = True) -> None:
    """``flags`` (of RUN_FLAGS) with their config help, ``--config``, ``--set`` and (``progress``) ``--no-progress``."""
    from .config import field_help
    from .data.user_task import add_outside_flag

    for flag in flags:
        path = RUN_FLAGS[flag]
        p.add_argument(flag, default=None, metavar=path.rsplit(".", 1)[-1].upper(), help=field_help(path))
    p.add_argument("--config", help="a YAML profile (e.g. configs/paper.yaml); flags override it")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config field, e.g. search.acceptance=released",
    )
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_outside_flag(p)


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dflora", description="derivative-free low-rank adaptation workbench")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tasks", help="list the tasks, their splits and test sets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_tasks)
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_models)
    p = sub.add_parser("methods", help="list the methods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser("zeroshot", help="manual-prompt (zero-shot) test score")
    _add_run_flags(p, ZEROSHOT_FLAGS, progress=False)  # the run-only flags would do nothing here
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_zeroshot)
    p = sub.add_parser("run", help="run one method and write DIR/record.json")
    _add_run_flags(p)
    p.add_argument("--out", help="run folder (record, history, checkpoint)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (or read a finished one)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="run again in --out from scratch (a finished record is kept aside)"
    )
    p.add_argument("--json", action="store_true")
    from .lab.tracking.command import add_flags as add_tracking

    add_tracking(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    _add_run_flags(p)
    p.set_defaults(fn=cmd_config)
    from .bench.cli import add_parser as add_bench
    from .grids.compare import add_arguments as add_compare

    p = sub.add_parser("compare", help="run methods x tasks x seeds and render the main table")
    add_compare(p)
    add_tracking(p)
    p.set_defaults(fn=cmd_compare)
    add_bench(sub.add_parser("bench", help="speed, fidelity and memory benchmarks (benchmarks/README.md)"))
    from .lab.tracking import command as tracking

    tracking.add_arguments(sub.add_parser("log", help="replay finished runs into TensorBoard, MLflow or W&B"))
    # using a tuned run (docs/export.md): the parsers live beside their commands in the workbench
    from .tuned import export, predict, reproduce

    for name, add, text in (
        ("export", export.add_arguments, "a tuned run as a PEFT adapter, a merged model, BBT prompts or lm-eval results"),
        ("predict", predict.add_predict, "classify texts with a tuned run: label and class probabilities"),
        ("evaluate", predict.add_evaluate, "score a tuned run on its test set or another task's"),
        ("reproduce", reproduce.add_arguments, "rerun a finished run from its record and compare"),
    ):
        add(sub.add_parser(name, help=text))
    return ap


def _permissions(args):
    """What the user's flags allow for the whole command: task files naming files outside their folder."""
    if not getattr(args, "allow_task_files_outside", False):
        return contextlib.nullcontext()
    from .data.user_task import files_outside_allowed

    return files_outside_allowed()


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"dflora: note: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import os
    import warnings

    # waiting OpenMP threads sleep instead of spinning, as in the notebook kernels and the grids' run processes:
    # beside other jobs on a 2-core CPU spinning made the README's own-data example 5x slower (134 s against 24 s)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch first runs in parallel: before that

    from .errors import DfloraWarning

    parser = make_parser()
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = lambda m, c, *a, **k: (
        _one_line_warning(m, c, *a) if issubclass(c, DfloraWarning) else shown(m, c, *a, **k)
    )
    try:
        with _permissions(args):
            return int(args.fn(args) or 0)
    except DfloraError as err:
        print(f"dflora: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dflora tasks --json | head`
        sys.stderr.close()
        return 0
    except OSError as err:  # a full disk, a vanished folder...: the environment, not a bug
        print(f"dflora: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
