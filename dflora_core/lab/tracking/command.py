"""The command line of tracking: ``--log-to``/``--log-dir``/``--log-group`` on ``dflora run`` and
``dflora compare`` (a profile's ``tracking:`` section as their defaults), and ``dflora log``, which
replays finished records into a sink after the fact (docs/tracking.md)."""

from __future__ import annotations

import json
from pathlib import Path

from ...config import _build, load_yaml, settings_from
from ...errors import DfloraError
from ...results.record import load_records
from .hub import DEFAULT_DIR, FLAGS, Tracker, TrackingSpec
from .sinks import SINKS


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def add_flags(p) -> None:
    """The tracking flags of a command that runs (``dflora run``, ``dflora compare``)."""
    p.add_argument("--log-to", default=None, metavar="SINKS",
                   help=f"log live to {', '.join(SINKS)} (comma-separated; the tracking extra)")  # fmt: skip
    p.add_argument("--log-dir", default=None, metavar="DIR", help=f"the trackers' files (default {DEFAULT_DIR})")
    p.add_argument("--log-group", default=None, metavar="NAME",
                   help="MLflow experiment / W&B group / TensorBoard folder (default: the grid root's name)")  # fmt: skip


def profile_spec(path: str | Path | None) -> TrackingSpec:
    """A profile's ``tracking:`` section (the defaults when none); any other file holds none."""
    if not path:
        return TrackingSpec()
    section = load_yaml(path).get("tracking")
    if section is None:
        return TrackingSpec()
    with settings_from(path):
        return _build(TrackingSpec, section, "tracking.")


def tracker_of(args, profile: str | Path | None = None) -> Tracker:
    """The tracker the flags (over a profile's ``tracking:``) ask for; without sinks it logs nothing."""
    spec = profile_spec(profile)
    if args.log_to is not None:
        spec.to = _names(args.log_to)
    if args.log_dir is not None:
        spec.dir = args.log_dir
    if args.log_group is not None:
        spec.group = args.log_group
    return Tracker(spec, names=FLAGS)


# -- dflora log ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a finished run folder")
    which.add_argument("--root", help="every finished run below this folder (a grid's root, e.g. results/...)")
    p.add_argument("--to", required=True, metavar="SINKS", help=f"{', '.join(SINKS)} (comma-separated)")
    p.add_argument("--out", default=DEFAULT_DIR, help=f"the trackers' files (default {DEFAULT_DIR})")
    p.add_argument("--group", default="", help="MLflow experiment / W&B group (default: the grid root's name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd)


def _folders(args) -> list[Path]:
    if args.run:
        return [Path(args.run)]
    root = Path(args.root)
    if not root.is_dir():
        raise DfloraError(f"--root {root}: no such folder")
    folders = [rec.folder for rec in load_records(root)]
    if not folders:
        raise DfloraError(f"--root {root}: no finished run below it")
    return folders


def where(out: Path, name: str) -> str:
    """How to look at what a sink wrote."""
    return {
        "tensorboard": f"tensorboard --logdir {out / 'tensorboard'}",
        "mlflow": f"mlflow ui --backend-store-uri sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}",
        "wandb": f"wandb sync {out / 'wandb' / 'wandb'}/offline-run-*  (uploads: your choice)",
    }[name]


def _cmd(args) -> int:
    to = _names(args.to)
    if not to:
        raise DfloraError("--to: name a sink: " + ", ".join(SINKS))
    folders = _folders(args)
    spec = TrackingSpec(to=to, dir=args.out, group=args.group)
    scalars = 0
    with Tracker(spec, strict=True, names={"to": "--to", "dir": "--out"}) as tracker:
        for folder in folders:
            scalars += tracker.replay(folder)
        logged = [name for name in to if name in tracker.sinks]
    out = Path(args.out)
    if args.json:
        print(json.dumps({"runs": [str(f) for f in folders], "scalars": scalars, "sinks": logged, "out": str(out)}))
        return 0
    print(f"logged {len(folders)} run(s), {scalars} scalars, to {', '.join(logged) or 'nothing'} under {out}")
    for name in logged:
        print(f"  {name}: {where(out, name)}")
    if len(logged) < len(to):
        raise DfloraError(f"{', '.join(n for n in to if n not in logged)} failed (said above)")
    return 0
