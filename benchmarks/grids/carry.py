"""Carry a grid's runs between results roots (dflora_core.grids.carry): finished runs without their
checkpoints, unfinished ones with them, so the grid continues from a commit on the next machine.

    python carry.py /scratch/clone/results/paper-budget ../../results/paper-budget   # then git add (-f), commit
    python carry.py ../../results/paper-budget /scratch/clone/results/paper-budget   # next session: back
"""

from __future__ import annotations

import argparse
import sys

from dflora_core.errors import DfloraError
from dflora_core.grids.carry import carry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="the results root the grid wrote")
    ap.add_argument("dst", help="where its runs go (the same layout)")
    args = ap.parse_args()
    try:
        carried = carry(args.src, args.dst)
    except DfloraError as exc:
        sys.exit(f"dflora: {exc}")
    for c in carried:
        print(c.line())
    counts = {o: sum(c.outcome == o for c in carried) for o in ("finished", "in flight", "unchanged")}
    print(", ".join(f"{n} {o}" for o, n in counts.items()), f"of {len(carried)} run folders", file=sys.stderr)
    flying = [c.path for c in carried if c.outcome == "in flight"]
    if flying:  # results/**/checkpoint.npz is git-ignored so that a finished run's state is never committed
        print("commit the runs in flight with their checkpoints: git add -f "
              + " ".join(f"{args.dst}/{p}/checkpoint.npz" for p in flying), file=sys.stderr)


if __name__ == "__main__":
    main()
