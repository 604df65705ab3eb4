"""Carry a grid's runs between results roots (dflora_core.grids.carry): finished runs without their
checkpoints, unfinished ones with them, so the grid continues from a commit on the next machine.

    python carry.py /scratch/clone/results/paper-budget ../../results/paper-budget   # then git add (-f), commit
    python carry.py ../../results/paper-budget /scratch/clone/results/paper-budget   # next session: back
"""

from __future__ import annotations

import argparse
import sys

from dflora_core.errors import DfloraError
from dflora_core.grids.carry import carry, commit_advice


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
    advice = commit_advice(args.dst, carried)
    if advice:
        print(advice, file=sys.stderr)


if __name__ == "__main__":
    main()
