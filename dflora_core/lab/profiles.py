"""Profiles: what the notebook sequence computes, at which size (configs/<name>.yaml).

A profile is the run settings shared by every run (``run:``, RunConfig overrides) plus
what each notebook sweeps: tasks and models for the hidden-state statistics (01), the
projection study (02), the live training runs (03), the main comparison grid and the
ablations (04), and where runs, figures and tables go. Three ship with the project:

- ``smoke``: tiny random models, every notebook in seconds (the notebook tests);
- ``quick``: the real SmolLM2-135M on the real data, a subset of tasks, seeds and budget
  (the default main job, ``make figures``, about 25 minutes on a 2-core CPU);
- ``paper``: the paper's protocol (all tasks, five seeds, 6,000 calls) for a GPU.

Every key is typed and validated; an unknown key is an error naming it. Every planned run
configuration is validated (against the model's layer count too) when the profile loads,
before any model is.

    from dflora_core.lab.profiles import load_profile
    p = load_profile("quick")            # or a path to a YAML file
    p.base                               # the RunConfig every run starts from
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .. import methods
from ..config import RunConfig, _build, _merge, from_dict, load_yaml, settings_from
from ..data.tasks import TASKS
from ..errors import ConfigError
from ..grids.backend_base import BackendSpec, check_backend
from ..grids.plans import all_planned
from ..lowrank.arch import TARGET_LETTERS
from ..lowrank.hidden_stats import SOURCES
from ..lowrank.projection import INITS
from ..models.registry import check_model_name, peek_model
from .tracking.hub import Tracker, TrackingSpec, check_spec

PREFER = ("committed", "local")
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class StatsSpec:
    """Notebook 01: per-layer hidden-state statistics on each task's few-shot train batch."""

    tasks: tuple[str, ...] = ("sst2",)  # tasks whose few-shot batch is measured
    models: tuple[str, ...] = ("smollm2",)  # models compared (tiny models are random: architecture only)
    sources: tuple[str, ...] = ("residual", "proj_input")  # where the statistic is measured (docs/design.md §6)
    seed: int = 42  # few-shot split seed


@dataclass
class ProjectionSpec:
    """Notebook 02: update magnitudes implied by each projection initialisation."""

    task: str = "sst2"  # the few-shot batch that gives the hidden-state statistics
    inits: tuple[str, ...] = ("ri", "ril", "released")  # initialisations compared
    draws: int = 4  # random intrinsic vectors z ~ N(0, sigma^2 I) per layer and init
    max_rows: int = 256  # projection-input rows per layer used for the output-change ratio


@dataclass
class TrainingSpec:
    """Notebook 03: live runs (the main grid's settings, so the runs are reused by 04 and 05)."""

    task: str = "sst2"
    seed: int = 42
    methods: tuple[str, ...] = ("c-lora", "f-lora")
    more_generations: int = 5  # default N of the interactive "run N more generations" control


@dataclass
class MainSpec:
    """The main comparison grid (run in 04, tabulated in 05): methods x tasks x seeds."""

    tasks: tuple[str, ...] = ("sst2",)
    seeds: tuple[int, ...] = (13, 42)
    methods: tuple[str, ...] = ("zeroshot", "c-lora", "f-lora")
    peers: tuple[str, ...] = ()  # peer baselines run when registered (dflora_core.baselines), else skipped
    vs: str = "bbt"  # the main table's paired differences are to this method, where it has records ("": none)


@dataclass
class AblationSpec:
    """Notebook 04: one-factor-at-a-time ablations around ``run`` (the paper's Tables 4, 6, Figures 3, 4)."""

    task: str = "sst2"
    seeds: tuple[int, ...] = (42,)
    run: dict = field(default_factory=dict)  # RunConfig overrides on top of the profile's ``run``
    rank: tuple[int, ...] = (1, 2, 4, 8, 16)  # Figure 4
    intrinsic_dim: tuple[int, ...] = (20, 100, 500, 1000)  # Figure 3 (paper: 10 to 1,600)
    init: tuple[str, ...] = ("ri", "ril")  # Table 4
    init_draws: int = 2  # "without optimisation": random z from the start distribution, test-scored; 0 = skip
    targets: tuple[str, ...] = ("q,k", "q,v", "k,v", "q,k,v")  # Table 6 (d is rounded to the factor count)
    optimizer: tuple[str, ...] = ("c-lora", "f-lora", "rs-lora")  # CMA-ES, LoTFWA, random search


@dataclass
class FigureSpec:
    formats: tuple[str, ...] = ("pdf", "png")
    dpi: int = 200  # PNG resolution


@dataclass
class Profile:
    name: str = ""  # the file's stem unless given
    description: str = ""  # one line, printed by the runner and on the first notebook
    runs_root: str = "runs/default"  # run records (relative paths are relative to the repository)
    figures_dir: str = "figures"  # figures and tables
    # comparison grids (`dflora compare` roots, e.g. the committed results/ folders): each gets its own
    # table and convergence figure; its peers join the main table at the main runs' test set and budget
    extra_roots: tuple[str, ...] = ()
    # where runs_root and an extra root hold the same run (one identity): "committed" shows the extra root's record
    # (the committed results/: the committed figures stay the same on every machine), "local" this machine's
    # runs_root record; footers say which, notebook 05's PROVENANCE.md names every run folder shown
    prefer: Literal[PREFER] = "committed"
    threads: int = 0  # torch CPU threads in the notebook kernels; 0 = torch's default
    run: dict = field(default_factory=dict)  # RunConfig overrides shared by every run of the profile
    stats: StatsSpec = field(default_factory=StatsSpec)
    projection: ProjectionSpec = field(default_factory=ProjectionSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    main: MainSpec = field(default_factory=MainSpec)
    ablations: AblationSpec = field(default_factory=AblationSpec)
    figures: FigureSpec = field(default_factory=FigureSpec)
    # where notebook 04's grid runs (grids/backends.py): in the kernel by default; `name: local, jobs: N`
    # or `name: ray` (cpus_per_run, gpus_per_run, address ...) for a many-core machine, a GPU, a cluster
    backend: BackendSpec = field(default_factory=BackendSpec)
    # where notebooks 03/04 log their runs live: `to: [tensorboard, mlflow, wandb]`, `dir`, `group` (docs/tracking.md)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    source: str = ""  # the YAML file it came from (set by load_profile)

    # -- derived ----------------------------------------------------------------------------
    @property
    def base(self) -> RunConfig:
        """The configuration every run of this profile starts from."""
        return from_dict(self.run)

    @property
    def ablation_base(self) -> RunConfig:
        return from_dict(_merge(self.run, self.ablations.run))

    def path(self, which: str) -> Path:
        """Absolute runs_root / figures_dir (relative ones are relative to the repository)."""
        return _absolute(getattr(self, which))

    def extra_paths(self) -> list[Path]:
        return [_absolute(p) for p in self.extra_roots]

    def with_paths(self, runs_root: str | Path | None = None, figures_dir: str | Path | None = None) -> Profile:
        """A copy with other output folders (empty values keep the profile's)."""
        import copy

        out = copy.deepcopy(self)
        if runs_root:
            out.runs_root = str(runs_root)
        if figures_dir:
            out.figures_dir = str(figures_dir)
        return out

    def tracker(self) -> Tracker:
        """The trackers of the ``tracking`` section (a relative folder is relative to the repository; the
        group is the profile's name unless given); without sinks it logs nothing and imports nothing."""
        return Tracker(dataclasses.replace(self.tracking, dir=str(_absolute(self.tracking.dir)),
                                           group=self.tracking.group or self.name))  # fmt: skip

    @property
    def label(self) -> str:
        """Short text identifying the profile on figures."""
        return f"{self.name} profile"

    def to_dict(self) -> dict[str, Any]:
        import json
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(self)))


def _absolute(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


# -- loading and validation ---------------------------------------------------------------------
def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def profile_path(name_or_path: str | Path) -> Path:
    """configs/<name>.yaml for a bare name, else the path itself."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in s:
        return p
    candidate = CONFIG_DIR / f"{s}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            "profile", f"unknown profile {s!r}; known: {', '.join(available_profiles())} (or a YAML path)"
        )
    return candidate


def profile_from_dict(data: dict[str, Any], name: str = "") -> Profile:
    """A validated Profile from a nested dict (unknown keys are errors naming the key)."""
    if not isinstance(data, dict):
        raise ConfigError("profile", f"expected a mapping, got {type(data).__name__}")
    prof: Profile = _build(Profile, data)
    if not prof.name:
        prof.name = name
    return validate_profile(prof)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate configs/<name>.yaml (or a YAML path)."""
    path = profile_path(name_or_path)
    data = load_yaml(path)
    with settings_from(path):
        prof = profile_from_dict(data, name=path.stem)
    prof.source = str(path)
    return prof


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(name, message)


def validate_profile(p: Profile) -> Profile:
    """Check every section, then build and validate every planned run configuration."""
    layerwise = methods.names("dfo-lora")
    _check(bool(p.name), "name", "a profile needs a name")
    _check(p.threads >= 0, "threads", "must be >= 0 (0 = torch's default)")
    check_backend(p.backend)
    check_spec(p.tracking)
    for section, spec in (("run", p.run), ("ablations.run", p.ablations.run)):
        _check(isinstance(spec, dict), section, "expected a mapping of RunConfig overrides")
    try:
        methods.validate(p.base)
        methods.validate(p.ablation_base)
    except ConfigError as err:
        raise ConfigError(f"run.{err.field}", str(err).split(": ", 2)[-1]) from None

    def tasks(name, values):
        _check(len(values) >= 1, name, "name at least one task")
        bad = [t for t in values if t not in TASKS]
        _check(not bad, name, f"unknown task(s) {bad}; choose from {sorted(TASKS)}")

    def nonempty_unique(name, values):
        _check(len(values) >= 1, name, "must not be empty")
        _check(len(set(values)) == len(values), name, f"repeated value in {list(values)}")

    s = p.stats
    tasks("stats.tasks", s.tasks)
    nonempty_unique("stats.models", s.models)
    for m in s.models:
        try:
            check_model_name(m)
        except Exception as err:  # noqa: BLE001 - re-raised as a config error naming the key
            raise ConfigError("stats.models", str(err)) from None
    bad = [x for x in s.sources if x not in SOURCES]
    _check(not bad and len(s.sources) >= 1, "stats.sources", f"choose from {SOURCES}")
    pr = p.projection
    tasks("projection.task", (pr.task,))
    bad = [x for x in pr.inits if x not in INITS]
    _check(not bad and len(pr.inits) >= 1, "projection.inits", f"choose from {INITS}")
    _check(pr.draws >= 1, "projection.draws", "must be >= 1")
    _check(pr.max_rows >= 8, "projection.max_rows", "must be >= 8")
    t = p.training
    tasks("training.task", (t.task,))
    bad = [m for m in t.methods if m not in layerwise]
    _check(not bad, "training.methods", f"{bad}: live training runs are layer-wise DFO methods {sorted(layerwise)}")
    _check(t.more_generations >= 1, "training.more_generations", "must be >= 1")
    m = p.main
    tasks("main.tasks", m.tasks)
    nonempty_unique("main.seeds", m.seeds)
    nonempty_unique("main.methods", m.methods)
    bad = [x for x in m.methods if x not in methods.METHODS]
    _check(not bad, "main.methods",
           f"unknown method(s) {bad}; choose from {sorted(methods.METHODS)} (peers go in main.peers)")  # fmt: skip
    _check(not m.vs or m.vs in methods.METHODS, "main.vs", f"unknown method {m.vs!r}; see `dflora methods`")
    a = p.ablations
    tasks("ablations.task", (a.task,))
    nonempty_unique("ablations.seeds", a.seeds)
    for key in ("rank", "intrinsic_dim", "init", "targets", "optimizer"):
        values = getattr(a, key)
        _check(len(set(values)) == len(values), f"ablations.{key}", f"repeated value in {list(values)}")
    _check(all(r >= 1 for r in a.rank), "ablations.rank", "ranks must be >= 1")
    _check(all(d >= 1 for d in a.intrinsic_dim), "ablations.intrinsic_dim", "dimensions must be >= 1")
    bad = [x for x in a.init if x not in INITS]
    _check(not bad, "ablations.init", f"choose from {INITS}")
    _check(a.init_draws >= 0, "ablations.init_draws", "must be >= 0")
    for tg in a.targets:
        parts = [x.strip() for x in tg.split(",")]
        _check(
            all(x in TARGET_LETTERS for x in parts) and len(set(parts)) == len(parts),
            "ablations.targets",
            f"{tg!r}: a comma-separated subset of {','.join(TARGET_LETTERS)}",
        )
    bad = [x for x in a.optimizer if x not in layerwise]
    _check(not bad, "ablations.optimizer", f"{bad}: choose from {sorted(layerwise)}")
    f = p.figures
    bad = [x for x in f.formats if x not in ("pdf", "png", "svg")]
    _check(not bad and len(f.formats) >= 1, "figures.formats", "choose from pdf, png, svg")
    _check(50 <= f.dpi <= 600, "figures.dpi", "must be between 50 and 600")
    # every planned run, against the model's layer count (no weights are loaded)
    for planned in all_planned(p):
        try:
            _validate_with_model(planned.cfg)
        except ConfigError as err:
            raise ConfigError(
                f"{planned.study} run ({planned.describe()}): {err.field}", str(err).split(": ", 2)[-1]
            ) from None
    return p


def _validate_with_model(cfg: RunConfig) -> None:
    model_type, n_layers = peek_model(cfg.model.name)
    methods.validate(cfg, num_layers=n_layers or None, model_type=model_type or None)


def field_names(cls=Profile) -> list[str]:
    return [f.name for f in fields(cls)]
