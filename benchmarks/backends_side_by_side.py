"""`dflora compare` on the default backend and on `--backend ray`, timed side by side in one run, and
whether they give the same records and table cells (issue 13; docs/scale-out.md).

    .venv/bin/python benchmarks/backends_side_by_side.py --out benchmarks/results/cpu-backends.json \\
        -- --config configs/quick.yaml --tasks sst2 --methods zeroshot,c-lora,f-lora,zeroshot-calibrated --seeds 13,42

Everything after ``--`` goes to both `dflora compare` calls, each into its own fresh root; the Ray
call also gets ``--ray-args`` (default ``--cpus-per-run <all cores>``: one run at a time with the
default backend's thread count, so the numbers can be identical). Compared: per run ``test``,
``best_dev``, ``calls``, the per-generation fitnesses of ``history.json`` and ``adapter.npz``; the
table's cells except time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SAME_FIELDS = ("test", "best_dev", "calls")
MEASURED = ("time (s)", "memory")  # table columns that measure the run, not its outcome


def run_compare(root: Path, args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "dflora_core", "compare", *args, "--root", str(root)]
    t0, load = time.perf_counter(), os.getloadavg()
    env = {**os.environ, "DFLORA_ZS_CACHE": str(root / "zero-shot-cache")}  # neither reuses the other's zero-shot
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = {"command": shlex.join(["dflora", *cmd[3:]]), "exit": proc.returncode, "wall_s": time.perf_counter() - t0,
           "loadavg_start": load, "loadavg_end": os.getloadavg()}  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{out['command']} failed:\n{proc.stderr[-3000:]}")
    return out


def _outcome(value):
    """A record field without its timings (a test score's ``seconds`` measure the machine, not the run)."""
    return {k: v for k, v in value.items() if k != "seconds"} if isinstance(value, dict) else value


def run_outcomes(root: Path) -> dict[str, dict]:
    out = {}
    for rec_path in sorted(root.glob("**/record.json")):
        folder, rec = rec_path.parent, json.loads(rec_path.read_text())
        item = {k: _outcome(rec.get(k)) for k in SAME_FIELDS}
        if (folder / "history.json").is_file():
            item["history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((folder / "history.json").read_text())]
        if (folder / "adapter.npz").is_file():
            with np.load(folder / "adapter.npz") as z:
                item["z"] = {k: z[k].tolist() for k in z.files}
        item["wall_s"], item["torch_threads"] = rec["wall_s"], rec["machine"].get("torch_threads")
        out[str(folder.relative_to(root))] = item
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--ray-args", default=f"--cpus-per-run {len(os.sched_getaffinity(0))}")
    p.add_argument("compare_args", nargs=argparse.REMAINDER)
    p.add_argument("--compare-only", metavar="BASE", help="compare the roots BASE/local and BASE/ray of an earlier "
                   "run again (its times from --out's JSON), running nothing")  # fmt: skip
    a = p.parse_args()
    args = [x for x in a.compare_args if x != "--"]
    base = Path(a.compare_only or tempfile.mkdtemp(prefix="dflora-side-by-side-"))
    doc: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(), "backends": {}}
    if a.compare_only:  # keep the earlier run's times and commands, compare its folders again
        earlier = json.loads(Path(a.out).read_text())
        doc = {**earlier, "compared_again": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    outcomes, tables = {}, {}
    for name, extra in (("local", []), ("ray", ["--backend", "ray", *shlex.split(a.ray_args)])):
        root = base / name
        if not a.compare_only:
            doc["backends"][name] = run_compare(root, [*args, *extra])
        outcomes[name] = run_outcomes(root)
        tables[name] = pd.read_csv(root / "compare_table.csv", index_col=0)
        doc["backends"][name]["runs"] = {k: {"wall_s": v["wall_s"], "torch_threads": v["torch_threads"]}
                                         for k, v in outcomes[name].items()}  # fmt: skip
        print(f"{name}: {doc['backends'][name]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    strip = {n: {k: {f: v for f, v in r.items() if f not in ("wall_s", "torch_threads")} for k, r in o.items()}
             for n, o in outcomes.items()}  # fmt: skip
    cells = [c for c in tables["local"].columns if c not in MEASURED]
    doc["same_runs"] = sorted(strip["local"]) == sorted(strip["ray"])
    doc["same_records"] = strip["local"] == strip["ray"]
    doc["differing_runs"] = sorted(k for k in strip["local"] if strip["local"][k] != strip["ray"].get(k))
    doc["same_table_cells"] = tables["local"][cells].astype(str).equals(tables["ray"][cells].astype(str))
    doc["table_local"] = tables["local"].astype(str).to_dict()
    doc["table_ray"] = tables["ray"].astype(str).to_dict()
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("same_runs", "same_records", "same_table_cells", "differing_runs")}))
    return 0 if doc["same_records"] and doc["same_table_cells"] else 1


if __name__ == "__main__":
    sys.exit(main())
