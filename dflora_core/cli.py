"""Command line: ``dflora`` (also ``python -m dflora_core``).

Bad input gives a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DfloraError

# flag -> dotted config path (one table: the CLI cannot drift from the dataclasses)
RUN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--task": ("data.task", str, "task name (see `dflora tasks`)"),
    "--method": ("method", str, "c-lora, f-lora, fwa-lora, rs-lora or a baseline (see `dflora methods`)"),
    "--model": ("model.name", str, "registry name (see `dflora models`) or a local folder / .gguf file"),
    "--seed": ("seed", int, "few-shot split, projection and optimizer seed"),
    "--shots": ("data.shots", int, "examples per class in train and dev"),
    "--max-test": ("data.max_test", int, "stratified test subsample size (quick runs)"),
    "--budget": ("search.budget", int, "fitness evaluations (API calls)"),
    "--popsize": ("optim.popsize", int, "candidates per generation"),
    "--sigma": ("optim.sigma", float, "initial step size"),
    "--rank": ("lowrank.rank", int, "LoRA rank r"),
    "--intrinsic-dim": ("lowrank.intrinsic_dim", int, "intrinsic dimension d per layer"),
    "--alpha": ("lowrank.alpha", float, "projection stretch constant"),
    "--targets": ("lowrank.targets", str, "comma-separated subset of q,k,v,o"),
    "--init": ("lowrank.projection_init", str, "ril, ri or released"),
    "--stat-source": ("lowrank.stat_source", str, "residual or proj_input"),
    "--acceptance": ("search.acceptance", str, "elitist or released"),
    "--loss": ("search.loss", str, "ce, hinge or neg_metric"),
    "--eval-every": ("search.eval_every", int, "dev evaluation period in calls"),
    "--patience": ("search.patience", int, "stop after this many calls without dev improvement"),
    "--device": ("model.device", str, "auto, cpu, cuda, cuda:1 ..."),
    "--dtype": ("model.dtype", str, "auto, float32, bfloat16 or float16"),
}


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DfloraError(f"--set {item!r}: expected key=value, e.g. search.budget=200")
        k, v = item.split("=", 1)
        out[k.strip()] = None if v.strip().lower() in ("none", "null", "") else v.strip()
    return out


def build_config(args) -> RunConfig:  # noqa: F821 - string annotation, imported lazily
    from .config import _merge, _nest, from_dict, load_yaml

    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    flat = {}
    for flag, (path, _tp, _help) in RUN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            flat[path] = value
    flat.update(_parse_set(getattr(args, "set", None)))
    if getattr(args, "no_progress", False):
        flat["progress"] = False
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
    from . import baselines  # noqa: F401 - registers the peers
    from .config import METHODS

    for name, desc in METHODS.items():
        print(f"{name:20} {desc}")
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


def cmd_run(args) -> int:
    from .runner import run, summary_line

    cfg = build_config(args)
    out = args.out
    try:
        rec = run(cfg, out=out, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: dflora run ... --out {out} --resume", file=sys.stderr)
        return 130
    if args.json:
        _print({k: v for k, v in rec.items() if k not in ("layer_stats",)}, True, "")
    else:
        print(summary_line(rec))
        if out:
            print(f"record: {Path(out) / 'record.json'}")
    return 0


def cmd_config(args) -> int:
    """Print the full default config (or a profile) with every field's rationale."""
    import yaml

    cfg = build_config(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _add_run_flags(p: argparse.ArgumentParser, required_out: bool = False) -> None:
    for flag, (path, tp, help_) in RUN_FLAGS.items():
        p.add_argument(flag, type=tp, default=None, help=f"{help_} [{path}]")
    p.add_argument("--config", help="a YAML profile (e.g. configs/paper.yaml); flags override it")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config field, e.g. search.acceptance=released",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser("zeroshot", help="manual-prompt (zero-shot) test score")
    _add_run_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_zeroshot)
    p = sub.add_parser("run", help="run one method and write DIR/record.json")
    _add_run_flags(p)
    p.add_argument("--out", help="run folder (record, history, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    _add_run_flags(p)
    p.set_defaults(fn=cmd_config)
    for name, adder in _EXTRA_COMMANDS.items():
        adder(sub.add_parser(name, help=_EXTRA_HELP[name]))
    return ap


_EXTRA_COMMANDS: dict = {}
_EXTRA_HELP: dict = {}


def register_command(name: str, help_: str, adder) -> None:
    """Other modules add subcommands (compare, bench): ``adder(parser)`` sets args and ``fn``."""
    _EXTRA_COMMANDS[name] = adder
    _EXTRA_HELP[name] = help_


def _load_extra_commands() -> None:
    import importlib

    for mod in ("dflora_core.compare", "dflora_core.bench"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    _load_extra_commands()
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except DfloraError as err:
        print(f"dflora: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dflora tasks --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
