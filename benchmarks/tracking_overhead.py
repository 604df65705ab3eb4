"""What logging costs a run (docs/tracking.md): a short SmolLM2-135M C-LoRA run (top 2 layers) once
without a sink and once per sink, each in a fresh run folder, one model load for all.

Per sink: the median time spent inside the tracker's hooks per generation (its dev rows included;
opening the tracker run, the set-up, excluded: ``RunLog.hook_seconds``) beside the median generation
time (from one ``on_generation`` to the next: fitness evaluations, the optimizer, dev scoring, hooks).

    .venv/bin/python benchmarks/tracking_overhead.py [--budget 101] [--popsize 10] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from dflora_core.config import from_dict
from dflora_core.environment import git_commit, machine_info, package_versions
from dflora_core.lab.tracking import Tracker, TrackingSpec
from dflora_core.methods import chain_callbacks
from dflora_core.models.registry import load_model
from dflora_core.runner import run

REPO = Path(__file__).resolve().parents[1]
SINKS = ("none", "tensorboard", "mlflow", "wandb")


def one_run(cfg, loaded, sink: str, scratch: Path) -> dict:
    ticks: list[float] = []
    clock = {"on_generation": lambda search, gen: ticks.append(time.perf_counter())}
    spec = TrackingSpec(to=() if sink == "none" else (sink,), dir=str(scratch / "tracking"))
    t0 = time.perf_counter()
    with Tracker(spec) as tracker:
        callbacks = chain_callbacks(tracker.callbacks(cfg, scratch / sink), clock)  # the tracker's hooks first
        rec = run(cfg, out=scratch / sink, loaded=loaded, **callbacks)
        hooks = tracker.logs[0].hook_seconds if tracker.logs else []
    generation_s = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    return {
        "sink": sink,
        "generations": len(ticks),
        "median_hook_ms": 1000 * statistics.median(hooks) if hooks else 0.0,
        "max_hook_ms": 1000 * max(hooks) if hooks else 0.0,
        "median_generation_ms": 1000 * statistics.median(generation_s),
        "hook_share": statistics.median(hooks) / statistics.median(generation_s) if hooks else 0.0,
        "run_wall_s": time.perf_counter() - t0,
        "test": rec["test"]["value"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=101, help="calls (1 for the start, then popsize per generation)")
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tracking-overhead.json"))
    args = ap.parse_args()
    cfg = from_dict({"method": "c-lora", "seed": 42, "progress": False, "threads": args.threads,
                     "data": {"task": "sst2", "max_test": 64}, "lowrank": {"layers": [-2, -1]},
                     "optim": {"popsize": args.popsize}, "search": {"budget": args.budget, "eval_every": 20}})  # fmt: skip
    load_before = os.getloadavg()
    loaded = load_model(cfg.model.name, cfg.model.device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for sink in SINKS:
            rows.append(one_run(cfg, loaded, sink, Path(scratch)))
            r = rows[-1]
            print(f"{sink:12} {r['generations']:3} generations: hook median {r['median_hook_ms']:7.2f} ms "
                  f"(max {r['max_hook_ms']:.1f}), generation median {r['median_generation_ms']:8.1f} ms, "
                  f"share {100 * r['hook_share']:.2f}%", flush=True)  # fmt: skip
    doc = {
        "command": "python benchmarks/tracking_overhead.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                        if k != "out"),  # fmt: skip
        "config": cfg.to_dict(), "versions": package_versions(), "git": git_commit(), "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()}, "rows": rows,
    }  # fmt: skip
    for name in ("tensorboard", "mlflow-skinny", "wandb"):
        from importlib import metadata

        doc["versions"][name] = metadata.version(name)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
