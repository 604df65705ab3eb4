"""The measurements of issue 30: the 2025-2026 zeroth-order peers beside MeZO and ZO-Adam, each tuned by
one declared rule, as a resumable grid in three parts.

    python benchmarks/grids/zo_new.py --part tune [--arms ...] [--jobs N] [--dry-run]
    python benchmarks/grids/zo_new.py --part report   # needs the tune part: takes each arm's chosen lr
    python benchmarks/grids/zo_new.py --part all      # the new arms on every weight, seed 13
    python benchmarks/grids/zo_new.py --choices       # the rule's choice per arm, from the tune records

Protocol (stated next to every table): SmolLM2-135M, SST-2, the stratified 300-sentence test
sample (seed 0, as results/zo-family), ``lora`` scheme, full-batch steps, every perturbed model one
forward pass of the 32 train examples. **The rule**: each tuned arm (zo-sgd = MeZO, zo-adam, mezo-gv,
mezo-greedy, fzoo, lozo, lozo-m) tries three learning rates around its published default (MeZO's LoRA
lr 1e-4 for all: x 0.1, x 1, x 10; eps stays MeZO's 1e-2) at 300 forward passes on seed 21 (a seed
no table reports), and keeps the one with the best dev metric (ties: the lower dev loss, then the
smaller lr); the reported runs (seeds 13, 42, 100) use it: 600 forward passes, test at 300 and 600
from the same run (``search.test_at``). The rule's 21 runs x 300 passes are reported beside the table.
Part ``all``: the five new arms on every weight (their native setting for LOZO), 300 passes, seed 13
only, at MeZO's full-parameter defaults (lr 1e-6, eps 1e-3; untuned, marked so).
"""

from __future__ import annotations

import argparse
import json
import sys

from driver import add_common, arms_of, launch, parse, seeds_of

from dflora_core.config import RunConfig

BASE = {
    "model.name": "smollm2", "model.device": "cpu", "data.task": "sst2", "data.max_test": 300,
    "search.eval_every": 60, "progress": False, "threads": 1, "baseline.zo_params": "lora",
}  # fmt: skip
TUNED = ("zo-sgd", "zo-adam", "mezo-gv", "mezo-greedy", "fzoo", "lozo", "lozo-m")
NEW = ("mezo-gv", "mezo-greedy", "fzoo", "lozo", "lozo-m")
DEFAULT_LR = 1e-4  # MeZO's LoRA lr: the published default every arm starts from
FACTORS = (0.1, 1.0, 10.0)
TUNE_SEED, TUNE_PASSES = 21, 300
SEEDS, REPORT_PASSES = (13, 42, 100), 600
ROOT = "results/zo-new"


def tune_plan(arms) -> list[tuple[RunConfig, dict]]:
    base = RunConfig().replace(**{**BASE, "search.budget": TUNE_PASSES, "seed": TUNE_SEED})
    return [(base.replace(**{"method": m, "baseline.lr": DEFAULT_LR * f}),
             {"label": m, "part": "tune", "lr_factor": f, "arm_of": "issue 30"}) for m in arms for f in FACTORS]  # fmt: skip


def choices(root: str, arms) -> dict[str, float]:
    """The rule (reports/zo_tables.rule_choice): per arm whose three tune runs are recorded, the lr kept."""
    from dflora_core.grids.grid import finished_run
    from dflora_core.reports.zo_tables import rule_choice

    out = {}
    for m in arms:
        recs = [finished_run(root, cfg) for cfg, _tags in tune_plan([m])]
        if all(rec is not None for rec in recs):
            out[m] = rule_choice(recs)
    return out


def report_plan(arms, chosen: dict[str, float], seeds) -> list[tuple[RunConfig, dict]]:
    base = RunConfig().replace(**{**BASE, "search.budget": REPORT_PASSES, "search.test_at": [TUNE_PASSES]})
    return [(base.replace(**{"method": m, "seed": s, "baseline.lr": chosen[m]}),
             {"label": m, "scheme": "lora", "part": "report", "tuned": "lr by the rule", "arm_of": "issue 30"})
            for s in seeds for m in arms if m in chosen]  # fmt: skip


def all_plan(arms) -> list[tuple[RunConfig, dict]]:
    base = RunConfig().replace(**{**BASE, "search.budget": TUNE_PASSES, "seed": 13, "baseline.zo_params": "all"})
    return [(base.replace(method=m), {"label": f"{m} (all)", "scheme": "all", "part": "all", "tuned": "untuned",
                                      "seeds_note": "1 seed (CPU cost)", "arm_of": "issue 30"}) for m in arms]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("tune", "report", "all"), default="tune")
    ap.add_argument("--arms", default=None, help="comma-separated methods (default: the part's)")
    ap.add_argument("--choices", action="store_true", help="print the rule's choice per arm and stop")
    add_common(ap, root=ROOT)
    args = parse(ap)
    default = NEW if args.part == "all" else TUNED
    arms = arms_of(ap, args.arms, default, default)
    if args.choices:
        print(json.dumps(choices(args.root, TUNED), indent=1))
        sys.exit(0)
    if args.part == "tune":
        runs = tune_plan(arms)
    elif args.part == "report":
        chosen = choices(args.root, arms)
        missing = [m for m in arms if m not in chosen]
        if missing:
            print(
                f"no choice yet for {', '.join(missing)} (their tune runs are not all recorded): skipped",
                file=sys.stderr,
            )
        runs = report_plan(arms, chosen, seeds_of(args, SEEDS))
    else:
        runs = all_plan(arms)
    launch(runs, args)


if __name__ == "__main__":
    main()
