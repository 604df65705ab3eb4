"""What the grid drivers of this folder share: the common flags, the checks before the first run, and
where the runs execute (this process with the model loaded once, or ``--jobs N`` local processes, as
on the GPU machine: benchmarks/gpu/run.sh).

    --root DIR  --seeds 13,42  --set KEY=VALUE (repeatable, after the driver's own settings)
    --jobs N  --dry-run

Two drivers of one grid may run side by side (one per core): each leaves a run the other holds
to it (said on stderr) and goes on with the next, and a finished run is read back, never redone.
"""

from __future__ import annotations

import argparse
import sys

from dflora_core.config import RunConfig, parse_assignments
from dflora_core.errors import DfloraError
from dflora_core.experiment import Experiment


def add_common(ap: argparse.ArgumentParser, root: str | None) -> None:
    ap.add_argument("--root", default=root, help=f"results root (default: {root or 'the part’s'})")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the driver's)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                    help="a RunConfig override for every run (e.g. model.device=cuda), after the driver's own")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default: 1, in here)")
    ap.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")


def parse(ap: argparse.ArgumentParser):
    """The flags, with ``--set`` parsed once into ``args.overrides`` (a bad item: a usage error)."""
    args = ap.parse_args()
    try:
        args.overrides = parse_assignments(args.set)
    except DfloraError as exc:
        ap.error(str(exc))
    return args


def seeds_of(args, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(s) for s in args.seeds.split(",")) if args.seeds else default


def arms_of(ap: argparse.ArgumentParser, arms: str | None, known, default) -> list[str]:
    """The ``--arms`` labels (default: ``default``); an unknown label is a usage error naming the known ones."""
    labels = arms.split(",") if arms else list(default)
    unknown = set(labels) - set(known)
    if unknown:
        ap.error(f"--arms: unknown {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return labels


def launch(runs: list[tuple[RunConfig, dict]], args) -> None:
    """Apply ``--set``, check every configuration before the first run, then list (--dry-run) or run them."""
    try:
        runs = [(cfg.replace(**args.overrides), tags) for cfg, tags in runs]
        for cfg, _ in runs:
            Experiment.check(cfg)
    except DfloraError as exc:
        sys.exit(f"dflora: {exc}")
    if args.dry_run:
        for cfg, tags in runs:
            print(tags["label"], cfg.data.task, cfg.method, cfg.seed, cfg.search.budget, cfg.model.device)
        return
    configs, tags = [cfg for cfg, _ in runs], [t for _, t in runs]
    if args.jobs > 1:  # local processes (the GPU machine): each loads its model, runs side by side
        from dflora_core.grids.backend_base import BackendSpec
        from dflora_core.grids.backends import execute

        failures = execute(configs, args.root, tags, BackendSpec(name="local", jobs=args.jobs))
        for f in failures:
            print(f.line(), file=sys.stderr)
        if failures:
            sys.exit(1)
        return
    import torch

    from dflora_core.grids.grid import run_grid

    torch.set_num_threads(1)  # two grids side by side on 2 cores; the record says so (machine.torch_threads)
    # in order; each run's folder is written as soon as it finishes, and the model is loaded once
    # a run another driver holds is left to it (two drivers of one grid share its runs)
    try:
        run_grid(configs, args.root, tags, skip_busy=True)
    except DfloraError as exc:
        sys.exit(f"dflora: {exc}")
