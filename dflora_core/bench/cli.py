"""``dflora bench speed|sweep|fidelity|memory|memory-worker|table``: the arguments and the commands."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..config import parse_assignments
from ..models.registry import resolve_device
from ..models.tiny import SHAPES
from .fidelity import run_fidelity
from .memory import MEMORY_CONFIGS, memory_worker, run_memory
from .report import TABLES, fidelity_table, header, memory_table, speed_table, write
from .setup import Setup, make_setup
from .speed import run_speed
from .strategies import STRATEGIES, strategy_names

# expected time of `dflora bench speed` with its defaults, measured (README, benchmarks/README.md)
SPEED_TIME = "SmolLM2: about 3 min on 2 idle CPU cores, 7.5 min measured beside other jobs; tiny models: seconds"
SPEED_DESCRIPTION = (
    "Scores one generation (--popsize candidates at --layer) with every strategy in one process: an untimed pass "
    "each (fitnesses, memory), then --reps timed passes, one progress line per strategy and pass, and after the "
    f"untimed passes the expected time of the timed ones. Expected time with the defaults: {SPEED_TIME}; the "
    "one-candidate-per-forward reference is the slow one (about 50 s for its untimed pass on SmolLM2). The "
    "committed table (benchmarks/results/cpu-speed.json) adds population and compile, --reps 3 and "
    "--one-by-one-candidates 5: about 10 min."
)


def _common(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--quiet", action="store_true")


def _setup_args(p) -> None:
    p.add_argument("--model", default="smollm2", help=f"comma list: registry names, paths or {sorted(SHAPES)}")
    p.add_argument("--task", default="sst2", help="task of the few-shot train set (real models)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--shots", type=int, default=None, help="examples per class (default: the config's, 16)")
    p.add_argument("--popsize", type=int, default=20, help="candidates of the generation scored (the fidelity check "
                   "ranks them: fewer make it weaker)")  # fmt: skip
    p.add_argument("--layer", type=int, default=None, help="adapted layer benchmarked (default: the middle one)")
    p.add_argument("--examples", type=int, default=32, help="synthetic shapes: prompts")
    p.add_argument("--mean-tokens", type=int, default=40, help="synthetic shapes: mean prompt length")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a RunConfig setting, e.g. lowrank.scale_calibration=output or search.calibrated_logits=true:"
                        " real models are measured on the adapter and head a search started with it scores")  # fmt: skip


def _log(args):
    return (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))


def _start(args):
    """The torch threads asked for, the log function and the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return _log(args), resolve_device(args.device)


def _models(spec: str) -> list[str]:
    return [m.strip() for m in spec.split(",") if m.strip()]


def _setup(args, model: str, device: str, max_tokens: int | None) -> Setup:
    return make_setup(model, device, args.task, args.seed, args.popsize, args.layer, max_tokens,
                      args.examples, args.mean_tokens, shots=args.shots, cfg_overrides=parse_assignments(args.set))  # fmt: skip


def cmd_speed(args) -> int:
    log, dev = _start(args)
    doc = {**header(args.argv), "mode": "speed", "reps": args.reps, "models": {}, "rows": []}
    names = strategy_names(args.strategies, dev)
    for model in _models(args.model):
        log(f"{model}: preparing")
        s = _setup(args, model, args.device, args.max_tokens)
        log(f"{model}: {s.describe()}")
        rows, extra = run_speed(s, names, args.reps, log, args.one_by_one_candidates)
        s.adapter.remove()
        meta = {**s.describe(), **extra, "prepare_s": s.prepare_s}
        doc["models"][model] = meta
        for r in rows:
            d = asdict(r)
            d.update(command=doc["command"], versions=doc["versions"], machine=doc["machine"])
            doc["rows"].append(d)
        log(speed_table(rows))
        del s
        write(args.out, doc, quiet=True)  # each model's rows on disk as soon as they are measured
    write(args.out, doc)
    return 0


def cmd_sweep(args) -> int:
    log, dev = _start(args)
    budgets = [int(x) for x in args.max_tokens.split(",")]
    base = [STRATEGIES[n] for n in args.strategies.split(",")]
    doc = {**header(args.argv), "mode": "sweep", "reps": args.reps, "rows": []}
    for model in _models(args.model):
        s = _setup(args, model, str(dev), budgets[0])
        variants = [STRATEGIES["reference"]] if args.with_reference else []
        variants += [replace(st, name=f"{st.name}@{mt}", max_tokens=mt, base=st.name) for st in base for mt in budgets]
        rows, extra = run_speed(
            s, variants, args.reps, log, args.one_by_one_candidates, with_reference=args.with_reference
        )
        s.adapter.remove()
        for r in rows:
            d = asdict(r)
            d.update(command=doc["command"], **extra)
            doc["rows"].append(d)
        log(speed_table(rows))
        write(args.out, doc, quiet=True)
    write(args.out, doc)
    return 0


def cmd_fidelity(args) -> int:
    log, dev = _start(args)
    layers = [int(x) for x in args.layers.split(",")]
    doc = {**header(args.argv), "mode": "fidelity", "rows": []}
    overrides = parse_assignments(args.set)
    for model in _models(args.model):
        loaded = None
        for task in args.tasks.split(","):
            s = make_setup(model, str(dev), task, args.seed, args.popsize, None, args.max_tokens, loaded=loaded,
                           shots=args.shots, cfg_overrides=overrides)  # fmt: skip
            loaded = s.loaded
            doc["rows"] += run_fidelity(s, layers, tuple(args.dtypes.split(",")), log)
            s.adapter.remove()
            write(args.out, doc, quiet=True)  # each task's rows on disk as soon as they are measured
    log(fidelity_table(doc["rows"]))
    write(args.out, doc)
    return 0


def cmd_memory(args) -> int:
    log = _log(args)  # the workers set their threads and pick their device
    doc = {**header(args.argv), "mode": "memory", "rows": []}

    def partial(rows):  # each configuration's row is on disk as soon as it is measured
        doc["rows"] = list(rows)
        write(args.out, doc, quiet=True)

    doc["rows"] = run_memory(args, log, on_row=partial)
    log(memory_table(doc["rows"]))
    write(args.out, doc)
    return 0


def cmd_memory_worker(args) -> int:
    print(json.dumps(memory_worker(args)))
    return 0


def cmd_table(args) -> int:
    doc = json.loads(Path(args.path).read_text())
    print(TABLES[doc.get("mode")](doc["rows"]))
    print(f"\n`{doc['command']}`")
    return 0


def _memory_args(p) -> None:
    _common(p)
    p.add_argument("--model", default="gpt2-shape")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", default="auto", help="autocast dtype of both methods")
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--steps", type=int, default=2, help="gradient LoRA: training steps (AdamW state after 1)")


def add_parser(parser) -> None:
    """The ``bench`` modes as subcommands of ``parser``; each sets ``fn`` to its command."""
    sub = parser.add_subparsers(dest="bench_mode", required=True)
    p = sub.add_parser("speed", help=f"evaluations per second of every strategy, side by side ({SPEED_TIME})",
                       description=SPEED_DESCRIPTION)  # fmt: skip
    _common(p)
    _setup_args(p)
    p.add_argument("--strategies", default=None, help=f"comma list from {list(STRATEGIES)}; default per device "
                   "(on a CPU all but population and compile)")  # fmt: skip
    p.add_argument("--reps", type=int, default=1, help="timed repetitions after the untimed pass, interleaved "
                   "(median; default 1: each costs about what the untimed passes cost; the committed table: 3)")  # fmt: skip
    p.add_argument(
        "--one-by-one-candidates",
        type=int,
        default=2,
        help="candidates timed per repetition by the one-per-forward strategies (default 2; 0: all of them)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="padded-token budget (default: the device's)")
    p.set_defaults(fn=cmd_speed)
    p = sub.add_parser("sweep", help="the fast path at several padded-token budgets (max_tokens)")
    _common(p)
    _setup_args(p)
    p.add_argument("--max-tokens", default="512,1024,2048,4096")
    p.add_argument("--strategies", default="prefix-reuse,bf16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--one-by-one-candidates", type=int, default=2, help="reference candidates timed per repetition")
    p.add_argument(
        "--with-reference",
        action="store_true",
        help="include the one-by-one fp32 reference (slow); otherwise ratios and fidelity are against the first row",
    )
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("fidelity", help="reduced precision against fp32 over tasks and layers")
    _common(p)
    _setup_args(p)
    p.add_argument("--tasks", default="sst2,rte,agnews")
    p.add_argument("--layers", default="0,10,20,29", help="adapted layers (negative = from the top)")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--max-tokens", type=int, default=None)
    p.set_defaults(fn=cmd_fidelity)
    p = sub.add_parser("memory", help="peak memory of C-LoRA against gradient LoRA (fresh process each)")
    _memory_args(p)
    p.add_argument("--configs", default=",".join(MEMORY_CONFIGS))
    p.add_argument("--timeout", type=int, default=3600)
    p.set_defaults(fn=cmd_memory)
    p = sub.add_parser("memory-worker", help="one memory configuration (internal)")
    _memory_args(p)
    p.add_argument("--config", required=True, choices=MEMORY_CONFIGS)
    p.set_defaults(fn=cmd_memory_worker)
    p = sub.add_parser("table", help="print a results JSON as a markdown table")
    p.add_argument("path")
    p.set_defaults(fn=cmd_table)
    parser.set_defaults(argv=None)
