"""The methods table: every method a run can name, in one place.

    spec = methods.get("c-lora")            # MethodSpec(name, family, runner, ...)
    fn = methods.load_runner("c-lora")      # imports dflora_core.search.method, returns run_layerwise
    methods.validate(cfg, num_layers=30, model_type="llama")

A ``MethodSpec`` names its runner as ``"module:function"`` under ``dflora_core``; the module
is imported only when a run of that method starts (``load_runner``), so the table sits low
in the package (above the config, below everything that runs) and nothing registers itself
as a side effect of an import. A new method is one row here plus its runner (docs/architecture.md).

A runner is ``fn(exp: Experiment, ctx: RunContext) -> dict``: it tunes, scores the selected
state on the test set (or returns ``test: None`` when the selected state is the unadapted
model) and returns the method-specific fields of the record.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .config_checks import check_fields
from .environment import git_commit, machine_info
from .errors import ConfigError, DfloraError, DfloraWarning
from .fileio import atomic_save_npz, atomic_write_json
from .identity import IDENTITY_VERSION, IGNORED_FIELDS, identity_fields, upgrade_fields
from .statefile import load_state, save_state

FAMILIES = {
    "reference": "the unadapted model",
    "dfo-lora": "layer-wise derivative-free low-rank adaptation (the paper's method and its control arms)",
    "control": "ablation arms that tune nothing",
    "calibrated": "the manual prompt with a fitted label bias",
    "icl": "in-context learning",
    "prompt": "black-box prompt tuning (BBT, BBTv2)",
    "gradient": "gradient-based tuning",
    "zeroth-order": "zeroth-order (forward-only) tuning",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # a key of FAMILIES
    runner: str  # "module:function" under dflora_core, imported by load_runner
    description: str  # one line, shown by `dflora methods`
    order: int = 100  # position in tables and figures (lower first, ties by name)
    optimizer: str | None = None  # the per-layer optimizer of a layer-wise search (optim.OPTIMIZERS)
    validate: Callable[[RunConfig, int | None, str | None], None] | None = None  # rules beyond the fields
    searches: bool = True  # spends search.budget; False: nothing is tuned or only fitted in closed form
    differentiable: bool = False  # needs a differentiable loss (ce or hinge)

    @property
    def ignores(self) -> tuple[str, ...]:
        """The config fields this method never reads, left out of its run identity (``identity.IGNORED_FIELDS``)."""
        return IGNORED_FIELDS.get(self.name, ())


# -- method-specific rules (fields alone are checked by config_checks.check_fields) --------------------------
def calls_before_search(cfg: RunConfig) -> tuple[int, int]:
    """(calls, calls per adapted layer) a layer-wise search spends before its first generation: the start's
    score (z = 0, the elitist reference: search/loop.py ``start``) and the fitness calibration of the scales."""
    calibration = 2 * len(cfg.lowrank.calibration_factors) if cfg.lowrank.scale_calibration == "fitness" else 0
    return int(cfg.search.acceptance == "elitist"), calibration


def _one_round(cfg: RunConfig, adapted: int, what: str) -> None:
    """Every adapted layer gets a generation: below one round of generations it is an error; a budget that
    pays one round but not the calls before it (the start, a calibration) leaves the top layer(s) unsearched,
    and the check says so in one line before any model is loaded, as the run says at its end."""
    start, per_layer = calls_before_search(cfg)
    before = start + per_layer * adapted
    popsize, budget = cfg.optim.popsize, cfg.search.budget
    visits = cfg.search.generations_per_visit if cfg.search.schedule == "round-robin" else 1  # bandit: once each first
    generations = max(0, budget - before) // popsize  # the first round: bottom to top, ``visits`` per layer
    reached = min(adapted, -(-generations // visits))
    need = before + popsize * (visits * (adapted - 1) + 1)  # the first generation of the top layer
    if reached == adapted:
        return
    spent = (f"{start} call for the start" if start else "") + (" and " if start and per_layer else "") + (
        f"{per_layer * adapted} for the fitness calibration" if per_layer else "")  # fmt: skip
    text = (f"{budget} calls give {reached} of the {adapted} adapted layers of {what} a generation "
            f"({spent + ', then ' if spent else ''}popsize {popsize} per generation); "
            f"{need} calls reach every layer")  # fmt: skip
    if budget < popsize * adapted + per_layer * adapted:  # less than one round (and its calibration)
        raise ConfigError("search.budget", text)
    warnings.warn(DfloraWarning(f"search.budget: {text}"), stacklevel=1)  # here: once per process, however checked


def _patchable(cfg: RunConfig, model_type: str | None) -> None:
    from .lowrank.arch import ARCHS

    if model_type is not None and model_type not in ARCHS:
        raise ConfigError(
            "model.name", f"architecture {model_type!r} is not in the low-rank patching table ({sorted(set(ARCHS))})"
        )


def _check_search_options(cfg: RunConfig) -> None:
    s = cfg.search
    for name, on in (("search.schedule", s.schedule == "bandit"), ("search.calibrated_logits", s.calibrated_logits)):
        if on and s.acceptance != "elitist":
            raise ConfigError(name, "needs search.acceptance=elitist (it uses the exact fitness of the configuration)")


def _check_layerwise(cfg: RunConfig, num_layers: int | None, model_type: str | None) -> None:
    _patchable(cfg, model_type)
    _check_search_options(cfg)
    if num_layers is not None:
        layers = cfg.lowrank.layers
        adapted = num_layers if layers is None else len(layers)
        _one_round(cfg, adapted, cfg.method)


def _check_prompt_search(cfg: RunConfig, num_layers: int | None, model_type: str | None) -> None:
    _check_search_options(cfg)
    if cfg.lowrank.scale_calibration != "none":
        raise ConfigError("lowrank.scale_calibration", f"calibrates low-rank projections; {cfg.method} tunes prompts")


def _check_bbtv2(cfg: RunConfig, num_layers: int | None, model_type: str | None) -> None:
    _patchable(cfg, model_type)
    _check_prompt_search(cfg, num_layers, model_type)
    if num_layers is not None:
        layers = cfg.baseline.prompt_layers
        _one_round(cfg, num_layers if layers is None else len(layers), "bbtv2")


def _check_patchable(cfg: RunConfig, num_layers: int | None, model_type: str | None) -> None:
    _patchable(cfg, model_type)


def _check_zo(cfg: RunConfig, num_layers: int | None, model_type: str | None) -> None:
    """The ZO family's options together (each field alone: config_checks.check_fields)."""
    b = cfg.baseline
    if b.zo_params in ("prefix", "prompt") or b.zo_block or b.zo_hybrid_layers:
        _patchable(cfg, model_type)  # the layer list of the architecture table
    if cfg.method == "es-full":
        for name, off in (
            ("zo_params", b.zo_params in ("lora", "all")),
            ("zo_block", not b.zo_block),
            ("zo_hybrid_layers", not b.zo_hybrid_layers),
            ("zo_sparsity", not b.zo_sparsity),
        ):
            if not off:
                raise ConfigError(f"baseline.{name}", "es-full perturbs every weight at once (Qiu et al. 2025); "
                                  "its options are baseline.es_population, es_sigma and lr")  # fmt: skip
        return
    if cfg.method in NEW_ZO and b.zo_hybrid_layers:
        raise ConfigError("baseline.zo_hybrid_layers", f"{cfg.method} scores a pool of perturbed models per step; "
                          "hybrid ZO/FO applies to the two-point methods (zo-sgd ...)")  # fmt: skip
    if not b.zo_hybrid_layers:
        return
    if cfg.method == "forward-grad":
        raise ConfigError("baseline.zo_hybrid_layers", "forward-grad has an exact directional derivative already; "
                          "hybrid ZO/FO applies to the two-point methods (zo-sgd ...)")  # fmt: skip
    if cfg.search.loss == "neg_metric":
        raise ConfigError("search.loss", "hybrid ZO/FO backpropagates through the top layers: ce or hinge")
    layers = 1 if b.zo_params == "prompt" else (num_layers if b.zo_params != "prefix" or b.prompt_layers is None
                                                  else len(b.prompt_layers))  # fmt: skip
    if layers is not None and b.zo_hybrid_layers >= layers:
        raise ConfigError("baseline.zo_hybrid_layers", f"{b.zo_hybrid_layers} layers by gradient leave none of the "
                          f"{layers} layer(s) of zo_params {b.zo_params} to zeroth order")  # fmt: skip


def _check_optimizer(cfg: RunConfig, spec: MethodSpec) -> None:
    if cfg.optim.name and spec.optimizer is None:
        raise ConfigError("optim.name", f"{cfg.method} has no per-layer optimizer (the layer-wise methods have one)")


def _dfo(name: str, optimizer: str, description: str, order: int = 100) -> MethodSpec:
    return MethodSpec(name, "dfo-lora", "search.method:run_layerwise", description, order, optimizer, _check_layerwise)


def _zo(name: str, runner: str, description: str, differentiable: bool = False, module: str = "zeroth_order"):
    return MethodSpec(name, "zeroth-order", f"baselines.{module}:{runner}", description, validate=_check_zo,
                      differentiable=differentiable)  # fmt: skip


_SPECS = (
    MethodSpec("zeroshot", "reference", "search.method:run_zeroshot",
               "the manual prompt, no tuning (the paper's 'manual prompt' row)", 0, searches=False),
    MethodSpec("zeroshot-calibrated", "calibrated", "baselines.calibrated:run_calibrated",
               "the manual prompt with its label bias corrected on the train set "
               "(contextual calibration / fitted bias / threshold, chosen on dev)", 1, searches=False),
    MethodSpec("icl", "icl", "baselines.icl:run_icl",
               "in-context learning: train demonstrations before the manual prompt, as many as fit", 2,
               searches=False),
    MethodSpec("bbt", "prompt", "baselines.prompt_tuning:run_prompt_tuning",
               "black-box tuning: 50 input prompt vectors from d = 500 via a random projection, CMA-ES", 3,
               optimizer="cmaes", validate=_check_prompt_search),
    MethodSpec("bbtv2", "prompt", "baselines.prompt_tuning:run_prompt_tuning",
               "BBTv2: deep prompts at every layer, layer-wise CMA-ES with the hidden-state projection init", 4,
               optimizer="cmaes", validate=_check_bbtv2),
    MethodSpec("lora", "gradient", "baselines.gradient:run_lora",
               "gradient LoRA through PEFT with AdamW (rank 8, alpha 16 on q,v), dev-selected", 5,
               differentiable=True),
    MethodSpec("ft", "gradient", "baselines.gradient:run_ft",
               "full fine-tuning with AdamW (the 'model tuning' row), dev-selected", 6, differentiable=True),
    _dfo("c-lora", "cmaes", "layer-wise derivative-free LoRA with cmaes (the paper's C-LoRA)", 7),
    _dfo("f-lora", "lotfwa", "layer-wise derivative-free LoRA with lotfwa (the paper's F-LoRA)", 8),
    _dfo("rs-lora", "random", "layer-wise derivative-free LoRA with random search (control arm)", 9),
    _dfo("fwa-lora", "fwa", "layer-wise derivative-free LoRA with a single firework, no tournament (control arm)"),
    _dfo("c-lora-diag", "cmaes-diag", "layer-wise derivative-free LoRA with separable (diagonal) CMA-ES: "
         "adapts within a layer's ~10 generations at d = 500"),
    _dfo("ng-lora", "ng:NGOpt", "layer-wise derivative-free LoRA with nevergrad's NGOpt wizard "
         "(any nevergrad optimizer: --optimizer ng:NAME)"),
    MethodSpec("no-opt", "control", "search.method:run_noopt",
               "the initialisation alone: random z from the optimizer's start distribution at every layer, "
               "no search (the paper's Table 4 'w/o optimisation')", searches=False, validate=_check_patchable),
    _zo("zo-sgd", "run_zo_sgd", "MeZO zeroth-order SGD (2 forwards per step, in-place seeded perturbations)"),
    _zo("zo-sgd-sign", "run_zo_sgd_sign", "zeroth-order sign SGD (2 forwards per step)"),
    _zo("zo-adam", "run_zo_adam", "zeroth-order Adam on the SPSA estimate (2 forwards per step)"),
    _zo("forward-grad", "run_forward_grad", "forward gradient: one Jacobian-vector product per step (torch.func.jvp)",
        differentiable=True),
    _zo("zo-sgd-mmt", "run_zo_sgd_mmt", "zeroth-order SGD with heavy-ball momentum (ZO-Bench; 2 forwards per step)"),
    _zo("zo-sgd-cons", "run_zo_sgd_cons", "conservative zeroth-order SGD: keeps the best of theta and theta -+ lr g z "
        "(ZO-Bench; 5 forwards per step)"),
    _zo("es-full", "run_es_full", "evolution strategies on every weight: 30 seeded Gaussian members per step, "
        "rank-weighted sum (Qiu et al. 2025)", module="es"),
    _zo("mezo-gv", "run_mezo_gv", "MeZO with a guiding vector: a pool of 8 perturbations, a two-point step along "
        "mean(low-loss half) - mean(high-loss half) (arXiv 2601.04710; 10 forwards per step)", module="zo_pool"),
    _zo("mezo-greedy", "run_mezo_greedy", "MeZO-Greedy: a two-point step along the best of a pool of 8 perturbations "
        "(arXiv 2601.04710; 9 forwards per step)", module="zo_pool"),
    _zo("fzoo", "run_fzoo", "FZOO: 8 Rademacher perturbations, one-sided differences, the step divided by the std of "
        "the losses (arXiv 2506.09034; 9 forwards per step)", module="zo_pool"),
    _zo("lozo", "run_lozo", "LOZO: two-point steps along low-rank perturbations U V^T of each weight matrix, V kept "
        "50 steps (arXiv 2410.07698; 2 forwards per step)", module="zo_pool"),
    _zo("lozo-m", "run_lozo_m", "LOZO-M: LOZO with momentum kept in factor form (arXiv 2410.07698)", module="zo_pool"),
)  # fmt: skip
NEW_ZO = ("mezo-gv", "mezo-greedy", "fzoo", "lozo", "lozo-m")  # several perturbed models per step (baselines/zo_pool.py)
METHODS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}


def get(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError("method", f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def names(family: str | None = None) -> list[str]:
    return [m for m, s in METHODS.items() if family is None or s.family == family]


def is_layerwise_lora(name: str) -> bool:
    """A layer-wise low-rank search (C-LoRA, F-LoRA and their control arms)."""
    return name in METHODS and METHODS[name].family == "dfo-lora"


def ordered(method_names) -> list[str]:
    """Unique names in table order (the table's ``order``, then by name; unknown names with the unordered)."""
    unique = list(dict.fromkeys(method_names))
    return sorted(unique, key=lambda m: (METHODS[m].order if m in METHODS else 100, m))


def load_runner(name: str) -> Callable[..., dict]:
    """Import the runner of a method (the explicit loader: nothing is imported for side effects)."""
    module, _, fn = get(name).runner.partition(":")
    return getattr(importlib.import_module(f"dflora_core.{module}"), fn)


def validate(cfg: RunConfig, num_layers: int | None = None, model_type: str | None = None) -> RunConfig:
    """Every field, then the method's own rules; ``num_layers``/``model_type`` enable the model checks."""
    spec = get(cfg.method)
    check_fields(cfg, num_layers)
    _check_optimizer(cfg, spec)
    if spec.differentiable and cfg.search.loss == "neg_metric":
        raise ConfigError("search.loss", f"{cfg.method} needs a differentiable loss: ce or hinge")
    if spec.validate is not None:
        spec.validate(cfg, num_layers, model_type)
    return cfg


# -- what a runner gets besides the experiment ---------------------------------------------------------
CHECKPOINT = "checkpoint.npz"  # statefile: JSON + arrays, cannot execute code when read
LEGACY_CHECKPOINT = "checkpoint.pkl"  # dflora 0.1 wrote pickles: never loaded


@dataclass
class RunContext:
    """The run folder (None: nothing is written), whether to resume, and the callbacks (live views, trackers).

    Callbacks: ``on_start(search_or_method)``, ``on_generation(search, gen)`` (a layer-wise search),
    ``on_step(method, row)`` (the step-based peers), ``on_eval(search_or_method, row)``; ``runner.run``
    also calls ``on_finish(record)``. ``chain_callbacks`` joins several sets.
    ``identity`` (the run's ``config.identity_fields``) is stored with every checkpoint and
    checked on resume, so a checkpoint is never continued under another configuration.
    """

    path: Path | None = None
    resume: bool = False
    callbacks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    elapsed_before: float = 0.0  # wall time of a resumed run's earlier sessions (read from its checkpoint)
    started: float = field(default_factory=time.perf_counter)  # this session's start (perf_counter)
    # the machines and commits a resumed run ran on before this session (read from its checkpoint): exact
    # repeatability holds on one CPU kind and one commit, so a run carried between them says so in its record
    earlier_sessions: list[dict[str, Any]] = field(default_factory=list)
    _session: dict[str, Any] | None = field(default=None, repr=False)

    def session(self) -> dict[str, Any]:
        """This session: when it started, on which machine, from which commit, with how much wall time before."""
        if self._session is None:
            self._session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
                             "git": git_commit().get("commit"), "wall_s_before": self.elapsed_before}  # fmt: skip
        return self._session

    @classmethod
    def for_run(cls, cfg: RunConfig, path: Path | None, resume: bool = False, callbacks=None,
                started: float | None = None) -> RunContext:  # fmt: skip
        ctx = cls(path, resume, dict(callbacks or {}), identity_fields(cfg))
        if started is not None:
            ctx.started = started
        return ctx

    def callback(self, name: str) -> Callable[..., Any] | None:
        return self.callbacks.get(name)

    def write_json(self, name: str, obj: Any) -> None:
        if self.path is not None:
            atomic_write_json(self.path / name, obj)

    def save_arrays(self, name: str, **arrays) -> None:
        if self.path is not None:
            atomic_save_npz(self.path / name, **arrays)

    @property
    def wall_s(self) -> float:
        """The run's wall time so far, every session's."""
        return self.elapsed_before + time.perf_counter() - self.started

    def save_checkpoint(self, state: dict) -> None:
        """``state`` with the run's identity and its wall time so far, whatever the method."""
        if self.path is not None:
            save_state(self.path / CHECKPOINT, {"identity": self.identity, "identity_version": IDENTITY_VERSION,
                                                "state": state, "wall_s": self.wall_s,
                                                "sessions": [*self.earlier_sessions, self.session()]})  # fmt: skip

    def load_checkpoint(self) -> dict | None:
        """The saved state when resuming (None for a fresh run or when nothing was saved)."""
        if not self.resume or self.path is None:
            return None
        path = self.path / CHECKPOINT
        if not path.is_file():
            legacy = self.path / LEGACY_CHECKPOINT
            if legacy.is_file():
                raise DfloraError(
                    f"{legacy} is a checkpoint of dflora 0.1 (a Python pickle, which can run code when read): "
                    "it is not loaded; restart the run with --overwrite (runs are deterministic: same result)"
                )
            return None
        saved = load_state(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            raise DfloraError(f"{path}: not a run checkpoint")
        written = saved.get("identity")
        if isinstance(written, dict):  # a checkpoint of an earlier identity version, in this version's terms
            written = upgrade_fields(written, saved.get("identity_version"))
        if self.identity is not None and written != self.identity:
            raise DfloraError(f"{path} was written by another configuration ({_diff(written, self.identity)}); "
                              "use another --out, or --overwrite to restart this one")  # fmt: skip
        wall_s = saved.get("wall_s", 0.0)  # absent in checkpoints written before it was stored: 0
        if isinstance(wall_s, bool) or not isinstance(wall_s, int | float) or not math.isfinite(wall_s) or wall_s < 0:
            raise DfloraError(f"{path}: malformed run checkpoint (wall_s {wall_s!r})")
        self.elapsed_before = float(wall_s)
        sessions = saved.get("sessions", [])  # absent in checkpoints written before they were stored
        if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
            raise DfloraError(f"{path}: malformed run checkpoint (sessions {sessions!r})")
        self.earlier_sessions, self._session = sessions, None
        self._warn_if_moved(path)
        return saved["state"]

    def _warn_if_moved(self, path: Path) -> None:
        """A resume on another CPU kind or commit is a valid run, not a bit-identical continuation: say so."""
        if not self.earlier_sessions:
            return
        last, now_ = self.earlier_sessions[-1], self.session()
        before_cpu = (last.get("machine") or {}).get("cpu")
        moved = []
        if before_cpu is not None and before_cpu != now_["machine"].get("cpu"):
            moved.append(f"CPU {before_cpu} -> {now_['machine'].get('cpu')}")
        if last.get("git") and now_["git"] and last["git"] != now_["git"]:
            moved.append(f"commit {last['git'][:10]} -> {now_['git'][:10]}")
        if moved:
            warnings.warn(f"{path}: resumed after a change ({'; '.join(moved)}): the run goes on, but it is not "
                          "a bit-identical continuation; its record lists every session", DfloraWarning, stacklevel=3)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Around a method's restore from ``load_checkpoint()``: a state of the right configuration but not
        the method's structure (an entry missing, a wrong type) is a one-line error naming the file."""
        try:
            yield
        except DfloraError as err:  # the method's own checks (a version, the model's statistics): name the file
            if str(self.path / CHECKPOINT) in str(err):
                raise
            raise DfloraError(f"{self.path / CHECKPOINT}: {err}") from err
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise DfloraError(
                f"{self.path / CHECKPOINT}: malformed run checkpoint ({type(err).__name__}: {err}); "
                "restart the run with --overwrite (runs are deterministic: same result)"
            ) from err


def chain_callbacks(*sets: dict[str, Callable[..., Any]] | None) -> dict[str, Callable[..., Any]]:
    """One set of callbacks calling those of every set in order (a live view and a tracker on one run)."""
    by_name: dict[str, list[Callable[..., Any]]] = {}
    for callbacks in sets:
        for name, fn in (callbacks or {}).items():
            by_name.setdefault(name, []).append(fn)

    def joined(fns: list[Callable[..., Any]]) -> Callable[..., Any]:
        if len(fns) == 1:
            return fns[0]

        def call(*args: Any) -> None:
            for fn in fns:
                fn(*args)

        return call

    return {name: joined(fns) for name, fns in by_name.items()}


def _diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no configuration stored"
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k, 'default')} -> {new.get(k, 'default')}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")
