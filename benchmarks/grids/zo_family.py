"""The measurements of issue 15 (the zeroth-order family and the newer derivative-free peers), as a
resumable grid of labelled runs beside C-LoRA, F-LoRA, MeZO and calibrated zero-shot.

    python benchmarks/grids/zo_family.py --root results/zo-family [--arms a,b] [--seeds 13,42]
        [--set KEY=VALUE] [--jobs N] [--dry-run]

Protocol (stated next to every table): SmolLM2-135M, SST-2, 300 calls for every method (a call
is one forward pass over the 32 train examples; ``budget_match=calls``), the stratified
300-sentence test subsample (seed 0), seeds 13, 42, 100. The layer-wise methods adapt the top 6
layers (300 calls = 2.5 rounds; 30 layers would not afford one round of 20 candidates). ``es-full``
perturbs all 135M weights (about a minute per 30-member step on 2 CPU cores), so it runs one
seed (``ONE_SEED``) on a CPU and its row says so (``tags.seeds_note``); on a GPU (benchmarks/gpu/run.sh:
``--set model.device=cuda --jobs 10``) it runs every seed. Every run is labelled with its arm in
``tags.label`` and its fine-tuning scheme in ``tags.scheme``; ``reports.tables.comparison_table``
and ``memory_table`` render them (notebook 05). Seed-major: after k seeds every arm has k seeds.
"""

from __future__ import annotations

import argparse

from driver import add_common, arms_of, launch, parse, seeds_of

from dflora_core.config import RunConfig

BASE = {
    "model.name": "smollm2", "model.device": "cpu", "data.task": "sst2", "search.budget": 300,
    "search.eval_every": 60, "data.max_test": 300, "progress": False, "threads": 1,
    # the committed runs were made before the end of a run became a selection candidate: the grid keeps
    # their rule, so its records stay found and its arms comparable (docs/method.md, "The dev rule")
    "search.dev_rule": "periodic",
}  # fmt: skip
TOP6 = {"lowrank.layers": [-6, -5, -4, -3, -2, -1]}
# label -> (method, scheme, overrides). Peers first (the reference rows), then the new methods.
ARMS: dict[str, tuple[str, str, dict]] = {
    "zeroshot-calibrated": ("zeroshot-calibrated", "-", {}),
    "c-lora": ("c-lora", "lora", TOP6),
    "f-lora": ("f-lora", "lora", TOP6),
    "zo-sgd": ("zo-sgd", "lora", {}),
    "zo-sgd-mmt": ("zo-sgd-mmt", "lora", {}),
    "zo-sgd-cons": ("zo-sgd-cons", "lora", {}),
    "c-lora-diag": ("c-lora-diag", "lora", TOP6),
    "ng-lora": ("ng-lora", "lora", TOP6),
    "zo-sgd prefix": ("zo-sgd", "prefix", {"baseline.zo_params": "prefix"}),
    "zo-sgd prompt": ("zo-sgd", "prompt", {"baseline.zo_params": "prompt"}),
    "zo-sgd all": ("zo-sgd", "all", {"baseline.zo_params": "all"}),
    "zo-sgd block": ("zo-sgd", "lora", {"baseline.zo_block": True}),
    "zo-sgd hybrid": ("zo-sgd", "lora", {"baseline.zo_hybrid_layers": 2}),
    "zo-sgd sparse": ("zo-sgd", "lora", {"baseline.zo_sparsity": 0.75}),
    "es-full": ("es-full", "all", {}),
}
SEEDS = (13, 42, 100)
ONE_SEED = {"es-full"}  # CPU cost: one seed only, marked in the table


def plan(arms: dict[str, tuple[str, str, dict]], seeds=SEEDS, device: str = "cpu") -> list[tuple[RunConfig, dict]]:
    base = RunConfig().replace(**BASE)
    out = []
    one_seed = ONE_SEED if device == "cpu" else set()
    for i, seed in enumerate(seeds):
        for label, (method, scheme, over) in arms.items():
            if label in one_seed and i > 0:
                continue
            tags = {"label": label, "scheme": scheme, "arm_of": "issue 15"}
            if label in one_seed:
                tags["seeds_note"] = "1 seed (CPU cost)"
            out.append((base.replace(**{"method": method, "seed": seed, **over}), tags))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=None, help="comma-separated labels (default: all)")
    add_common(ap, root="results/zo-family")
    args = parse(ap)
    arms = {k: ARMS[k] for k in arms_of(ap, args.arms, ARMS, ARMS)}
    device = args.overrides.get("model.device", BASE["model.device"])
    launch(plan(arms, seeds_of(args, SEEDS), device), args)


if __name__ == "__main__":
    main()
