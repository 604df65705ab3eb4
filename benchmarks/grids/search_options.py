"""The measurements of issue 14 (the search options), as a resumable grid of labelled runs.

    python benchmarks/grids/search_options.py [--part sst2|mrpc|peers|sst2-1200] [--arms a,b] [--budget N]
        [--root DIR] [--seeds 13,42] [--set KEY=VALUE] [--jobs N] [--dry-run]

Every run is recorded under the part's root (a finished run is read back, an interrupted one
resumed), labelled with its arm in ``tags.label``; ``dflora_core.reports.tables.options_table``
renders them. Protocol (stated next to every table): SmolLM2-135M, all 30 layers, 600 calls
(1,200 in part sst2-1200), test on the stratified 300-example subsample (seed 0), the
dev-selected snapshot's test metric also at 120, 300 and 600 (and 1,200) calls. One thread per run.
On a GPU (benchmarks/gpu/run.sh) the same arms run at the paper's 6,000 calls (``--budget 6000``, their
own root, snapshots also at 1,200, 3,000 and 6,000 calls) with ``--set model.device=cuda --jobs 10``.
"""

from __future__ import annotations

import argparse

from driver import add_common, arms_of, launch, parse, seeds_of

from dflora_core.config import RunConfig

BASE = {
    "model.name": "smollm2", "model.device": "cpu", "search.budget": 600, "search.eval_every": 100,
    "data.max_test": 300, "search.test_at": [120, 300, 600], "progress": False,
    # the committed runs were made before the end of a run became a selection candidate: the grid keeps
    # their rule, so its records stay found and its arms comparable (docs/method.md, "The dev rule")
    "search.dev_rule": "periodic",
}  # fmt: skip
ARMS = {  # label -> overrides of C-LoRA's defaults (each new option alone, then the combination)
    "default": {},
    "output-calibrated": {"lowrank.scale_calibration": "output"},
    "calibrated-logits": {"search.calibrated_logits": True},
    "output+logits": {"lowrank.scale_calibration": "output", "search.calibrated_logits": True},
    "fitness-calibrated": {"lowrank.scale_calibration": "fitness"},
    "bandit": {"search.schedule": "bandit"},
}
# At 600 calls on 30 layers with a population of 20 the budget is exactly one round, so two options
# cannot act there: the bandit has to visit every layer once before it can prefer one (its record
# equals the default's, measured on seed 13), and the fitness rule's 180 calibration calls (3
# factors x an antithetic pair x 30 layers) leave less than a round. Both are measured in the
# part "sst2-1200" (two rounds), in its own root so that its pairs are not mixed with 600-call ones.
PARTS = {  # part -> (task, seeds, budget, default arms, default root)
    "sst2": ("sst2", (13, 21, 42, 87, 100), 600, ["default", "output-calibrated", "calibrated-logits", "output+logits"],
             "results/search-options"),
    # MRPC: the default against the best option by SST-2's paired dev difference over its 5 seeds
    # (calibrated logits and output+logits tie at +3.1; the one with fewer options is taken)
    "mrpc": ("mrpc", (13, 42, 100), 600, ["default", "calibrated-logits"], "results/search-options"),
    "peers": ("sst2", (13, 42, 100), 600, [], "results/search-options"),
    "sst2-1200": ("sst2", (13, 42, 100), 1200, ["default", "bandit", "fitness-calibrated"],
                  "results/search-options-1200"),
}  # fmt: skip
PEERS = ("f-lora", "zo-sgd", "lora")  # accuracy against calls at matched forward passes


def plan(part: str, arms: dict[str, dict], budget: int | None = None, seeds=None) -> list[tuple[RunConfig, dict]]:
    task, part_seeds, part_budget, _, _ = PARTS[part]
    budget, seeds = budget or part_budget, seeds or part_seeds
    at = [a for a in (120, 300, 600, 1200, 3000, 6000) if a <= budget]
    base = RunConfig().replace(**{**BASE, "search.budget": budget, "search.test_at": at, "data.task": task})
    out = []
    for seed in seeds:  # seed-major: after k seeds every arm has k paired seeds
        if part == "peers":
            for m in PEERS:
                out.append((base.replace(**{"method": m, "seed": seed}), {"label": m}))
            continue
        for label, over in arms.items():
            cfg = base.replace(**{"method": "c-lora", "seed": seed, **over})
            out.append((cfg, {"label": label, "arm_of": "issue 14"}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=tuple(PARTS), default="sst2")
    ap.add_argument("--arms", default=None, help=f"comma-separated labels of {', '.join(ARMS)}; default: the part's")
    ap.add_argument("--budget", type=int, default=None, help="calls per run (default: the part's)")
    add_common(ap, root=None)
    args = parse(ap)
    _, seeds, _, part_arms, part_root = PARTS[args.part]
    arms = {k: ARMS[k] for k in arms_of(ap, args.arms, ARMS, part_arms)}
    args.root = args.root or part_root
    launch(plan(args.part, arms, args.budget, seeds_of(args, seeds)), args)


if __name__ == "__main__":
    main()
