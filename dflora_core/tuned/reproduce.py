"""``dflora reproduce DIR``: rerun a finished run from its record and say whether it comes out the same.

    dflora reproduce results/clora-sst2-all-layers                # in a temporary folder, removed after
    dflora reproduce runs/x --scratch /tmp/rerun                   # keep the rerun

The rerun is ``runner.run`` on the record's own config in a scratch folder, with a zero-shot cache
of its own (so the zero-shot reference is scored again, not read back). The report is either
"identical" or the fields that differ: test, best dev, calls, zero-shot, the data digests and the
learned z of ``adapter.npz``; with the package versions and the commit that differ between the
record and now. Runs are deterministic (docs/design.md §7): on the same versions and thread count
a difference means the code, the data or the record changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import experiment
from ..data.user_task import add_outside_flag
from ..environment import git_commit, package_versions
from ..errors import DfloraError
from ..identity import config_from_record
from ..search.adapter_file import ADAPTER, read_adapter
from .classifier import finished_record, has_adapter

# the fields compared: the measured numbers of a run (dotted paths into the record)
COMPARED = (
    "test.value", "test.accuracy", "test.loss", "test.n",
    "best_dev.calls", "best_dev.value", "best_dev.accuracy", "best_dev.loss",
    "calls", "generations",
    "zero_shot.value", "zero_shot.loss",
    "data.train_digest", "data.dev_digest", "data.test_digest",
)  # fmt: skip
MISSING = "(absent)"


def _get(record, path: str):
    node = record
    for part in path.split("."):
        if not hasattr(node, "get"):
            return MISSING
        node = node.get(part, MISSING)
        if node is MISSING:
            return MISSING
    return node


def field_differences(old, new) -> list[dict]:
    """The compared fields whose values differ (exactly: a deterministic rerun gives the same bits)."""
    out = []
    for path in COMPARED:
        a, b = _get(old, path), _get(new, path)
        if a != b:
            out.append({"field": path, "record": a, "rerun": b})
    return out


def z_differences(recorded: dict[str, np.ndarray] | None, new_dir: Path) -> list[dict]:
    """The learned vectors of ``adapter.npz`` that differ (shape or values); ``recorded``: the run's, checked."""
    if recorded is None:
        return []
    if not (new_dir / ADAPTER).is_file():
        return [{"field": f"{ADAPTER}", "record": "present", "rerun": MISSING}]
    out = []
    with np.load(new_dir / ADAPTER, allow_pickle=False) as b:
        for key, a in recorded.items():
            if key not in b.files:
                out.append({"field": f"{ADAPTER}:{key}", "record": list(a.shape), "rerun": MISSING})
            elif a.shape != b[key].shape:
                out.append({"field": f"{ADAPTER}:{key}", "record": list(a.shape), "rerun": list(b[key].shape)})
            elif not np.array_equal(a, b[key]):
                diff = float(np.max(np.abs(a.astype(np.float64) - b[key].astype(np.float64))))
                out.append({"field": f"{ADAPTER}:{key}", "record": f"shape {list(a.shape)}",
                            "rerun": f"max |difference| {diff:.3g}"})  # fmt: skip
    return out


def version_differences(record) -> dict:
    """Package versions (and the commit) of the record that are not those of this process."""
    then, now = dict(record.versions or {}), package_versions()
    out = {k: [then.get(k), now.get(k)] for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)}
    old_commit, new_commit = (record.git or {}).get("commit"), git_commit().get("commit")
    if old_commit != new_commit:
        out["commit"] = [old_commit, new_commit]
    return out


@contextlib.contextmanager
def _own_zero_shot_cache(folder: Path):
    """A zero-shot cache of the rerun's own (the reference is scored again), the process's restored after."""
    saved_env, saved_memory = os.environ.get("DFLORA_ZS_CACHE"), dict(experiment._ZS_MEMORY)
    os.environ["DFLORA_ZS_CACHE"] = str(folder)
    experiment._ZS_MEMORY.clear()
    try:
        yield
    finally:
        experiment._ZS_MEMORY.clear()
        experiment._ZS_MEMORY.update(saved_memory)
        if saved_env is None:
            os.environ.pop("DFLORA_ZS_CACHE", None)
        else:
            os.environ["DFLORA_ZS_CACHE"] = saved_env


def _scratch(scratch: str | Path | None) -> tuple[Path, bool]:
    if scratch is None:
        return Path(tempfile.mkdtemp(prefix="dflora-reproduce-")), True
    path = Path(scratch)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DfloraError(f"--scratch {path} is not an empty folder; give a new one (the rerun writes its run there)")
    return path, False


def reproduce(run_dir: str | Path, scratch: str | Path | None = None, loaded=None) -> dict:
    """Rerun a finished run in ``scratch`` (a temporary folder by default) and compare; the report."""
    from ..runner import run

    folder = Path(run_dir)
    old = finished_record(folder)
    # the run's own vectors, checked before the rerun spends its time (a damaged folder fails in one line)
    recorded = read_adapter(folder, old) if (folder / ADAPTER).exists() or has_adapter(old.method) else None
    cfg = config_from_record(old.config).replace(progress=False)
    where, temporary = _scratch(scratch)
    t0 = time.perf_counter()
    try:
        with _own_zero_shot_cache(where / "zeroshot-cache"):
            new = run(cfg, out=where / "run", loaded=loaded)
        diffs = field_differences(old, new) + z_differences(recorded, where / "run")
    finally:
        if temporary:
            shutil.rmtree(where, ignore_errors=True)
    return {
        "run": str(folder),
        "identical": not diffs,
        "differences": diffs,
        "versions_differ": version_differences(old),
        "scratch": None if temporary else str(where / "run"),
        "seconds": time.perf_counter() - t0,
        "test": new.test.get("value") if new.test else None,
    }


def report_lines(res: dict) -> list[str]:
    if res["identical"]:
        lines = [f"identical: {res['run']} reran to the same test, best dev, calls and learned z "
                 f"(test {res['test']:.4f}, {res['seconds']:.0f} s)"]  # fmt: skip
    else:
        lines = [f"differs: {res['run']}: {len(res['differences'])} field(s)"]
        lines += [f"  {d['field']}: record {d['record']} -> rerun {d['rerun']}" for d in res["differences"]]
    for name, (then, now) in res["versions_differ"].items():
        lines.append(f"  version {name}: record {then} -> now {now}")
    if res["scratch"]:
        lines.append(f"rerun kept in {res['scratch']}")
    return lines


def add_arguments(p) -> None:
    p.add_argument("run", help="a finished run folder (record.json)")
    p.add_argument("--scratch", default=None, help="a new folder for the rerun (kept); default a temporary one")
    p.add_argument("--json", action="store_true")
    add_outside_flag(p)  # the run's task file (dflora.cli grants it for the command)
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    res = reproduce(args.run, args.scratch)
    print(json.dumps(res, indent=1, default=str) if args.json else "\n".join(report_lines(res)))
    return 0 if res["identical"] else 1
