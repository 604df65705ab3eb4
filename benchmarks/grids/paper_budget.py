"""The measurements of issue 28 (the paper's budget on one task): C-LoRA, F-LoRA and C-LoRA on
calibrated logits at 6,000 calls on SmolLM2-135M SST-2, as a resumable grid.

    python benchmarks/grids/paper_budget.py [--arms c-lora,f-lora,calibrated-logits] [--seeds 13,42,100]
        [--root results/paper-budget] [--set KEY=VALUE] [--jobs N] [--dry-run]
    python benchmarks/grids/paper_budget.py --full-test   # each finished run's selected snapshot on all 872

Protocol (stated next to every table): all 30 layers, population 20, 6,000 calls (10 rounds), the
new dev rule (dev every 100 calls, at each test_at call and at the end), seeds 13, 42, 100 (the seeds
of the committed 600/1,200-call runs: the comparisons are paired), test on the stratified 300 of the
872 SST-2 validation sentences (seed 0, the committed runs' sample) at 300, 600, 1,200, 2,400,
3,600, 4,800 and 6,000 calls from the same run (``search.test_at``), and, after the run, the final
dev-selected snapshot on all 872 sentences (``--full-test``: ``dflora evaluate``, written to the run's
``evaluations/``). One thread per run. Arm-major (C-LoRA's three seeds first), so that a partial grid
already answers the main question. Every run is labelled with its arm in ``tags.label``.
"""

from __future__ import annotations

import argparse
import sys

from driver import add_common, arms_of, launch, parse, seeds_of

from dflora_core.config import RunConfig

BASE = {
    "model.name": "smollm2", "model.device": "cpu", "data.task": "sst2", "search.budget": 6000,
    "search.eval_every": 100, "data.max_test": 300, "search.test_at": [300, 600, 1200, 2400, 3600, 4800, 6000],
    "progress": False, "threads": 1,
}  # fmt: skip
ARMS: dict[str, tuple[str, dict]] = {  # label -> (method, overrides)
    "c-lora": ("c-lora", {}),
    "f-lora": ("f-lora", {}),
    "calibrated-logits": ("c-lora", {"search.calibrated_logits": True}),  # the best single option at 600 calls
}
SEEDS = (13, 42, 100)
FULL_TEST = ("sst2", 872)  # the task and size of its whole test set (GLUE validation): the final snapshot's score


def plan(arms: dict[str, tuple[str, dict]], seeds=SEEDS) -> list[tuple[RunConfig, dict]]:
    base = RunConfig().replace(**BASE)
    return [(base.replace(**{"method": method, "seed": seed, **over}), {"label": label, "arm_of": "issue 28"})
            for label, (method, over) in arms.items() for seed in seeds]  # fmt: skip


def full_test(runs: list[tuple[RunConfig, dict]], root: str) -> None:
    """``dflora evaluate`` on all 872 sentences for every finished run that has no such evaluation yet."""
    from dflora_core.grids.grid import find_run
    from dflora_core.results.record import RunFolder
    from dflora_core.tuned.classifier import load_tuned
    from dflora_core.tuned.predict import EVALUATIONS, evaluate

    task, size = FULL_TEST
    for cfg, tags in runs:
        folder = find_run(root, cfg)
        if RunFolder(folder).finished() is None or (folder / EVALUATIONS / f"{task}-{size}.json").is_file():
            continue
        with load_tuned(folder, what="evaluate") as tuned:
            res = evaluate(tuned, task, max_test=size)
        print(f"{tags['label']} seed {cfg.seed}: {task} all {res['test']['n']}: {res['test']['value']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=None, help="comma-separated labels (default: all, in the order above)")
    ap.add_argument("--full-test", action="store_true", help="score finished runs on the whole SST-2 test set")
    add_common(ap, root="results/paper-budget")
    args = parse(ap)
    arms = {k: ARMS[k] for k in arms_of(ap, args.arms, ARMS, ARMS)}
    runs = plan(arms, seeds_of(args, SEEDS))
    if args.full_test:
        import torch

        torch.set_num_threads(1)
        full_test([(cfg.replace(**args.overrides), t) for cfg, t in runs], args.root)
        sys.exit(0)
    launch(runs, args)


if __name__ == "__main__":
    main()
