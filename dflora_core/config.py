"""The one configuration of a run: typed dataclasses shared by the CLI, notebooks and tests.

Every field has a default and a one-line reason. ``validate`` checks every value before a
model is loaded and raises a ConfigError naming the field. Profiles (configs/*.yaml) and
notebook parameters are nested dicts of these same fields (``from_dict``), so there is one
source of truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .lowrank.arch import TARGET_LETTERS
from .lowrank.hidden_stats import SOURCES
from .lowrank.projection import INITS
from .metrics import LOSSES
from .seeds import SCHEMES

# choices of the fields whose implementation lives above this module (the lower layers export their own)
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
SPLIT_SOURCES = ("auto", "pool", "fixed")
ACCEPTANCES = ("elitist", "released")
BUDGET_MATCHES = ("forward", "compute")
ZO_PARAMS = ("lora", "all", "prefix", "prompt")
PROMPT_INITS = ("vocab", "zeros")
CALIBRATIONS = ("auto", "none", "cc", "bias", "threshold")
SCALE_CALIBRATIONS = ("none", "output", "fitness")
SCHEDULES = ("round-robin", "bandit")
DEV_RULES = ("periodic+final", "periodic")
Target = Literal[TARGET_LETTERS]


@dataclass
class DataConfig:
    task: str = "sst2"  # one of `dflora tasks`
    shots: int = 16  # examples per class in train, and again in dev (paper: 16; a task file's shots: when not given)
    split_source: Literal[SPLIT_SOURCES] = "auto"  # "pool" (seeded sample), "fixed" (shipped 16-shot split), auto = task default
    max_test: int | None = None  # stratified test subsample for quick runs; None = the whole test set
    max_length: int = 512  # longer prompts get their text shortened (the paper drops inputs > 512 tokens)
    allow_task_files_outside: bool = False  # a task file may name data outside its folder (trust it); not identity


@dataclass
class ModelConfig:
    name: str = "smollm2"  # registry name (`dflora models`) or a local folder / .gguf path
    device: str = "auto"  # cuda when available, else cpu
    dtype: Literal[DTYPE_NAMES] = "auto"  # float32 | bfloat16 | float16 | auto = fp32 (bf16 fails the fidelity bench on SmolLM2)
    max_tokens: int = 0  # padded tokens per forward pass; 0 = a default per device (memory vs speed)
    zero_lm_bias: bool = False  # masked LM: drop the LM-head bias (the released code does; removes the prior)
    verbalizer: tuple[str, ...] | None = None  # label words overriding the template table, one per class


@dataclass
class LowRankConfig:
    targets: tuple[Target, ...] = ("q", "k")  # the paper's code adapts W_q and W_k (Appendix D)
    layers: tuple[int, ...] | None = None  # adapted layers, comma-separated (negative = from the top: --layers=-2,-1); None = all (paper)
    rank: int = 4  # paper: 2 or 4
    intrinsic_dim: int = 500  # d per layer; paper: 500 to 1,600
    projection_init: Literal[INITS] = "ril"  # hidden-state based init (paper default); "ri" or "released" for ablations
    # alpha: the released alpha = 1 wrecks SmolLM2 (docs/design.md §6: every candidate breaks the model);
    # 0.05 was measured to work there (train CE 0.75 -> 0.08); see docs/method.md for our sweep
    alpha: float = 0.05
    # stat_source: "residual" as released; "proj_input" is what a pre-norm model's q/k actually see
    stat_source: Literal[SOURCES] = "residual"
    ri_std: float = 0.002  # the "ri" init's fixed std (set near the ril scale of SmolLM2's layers)
    clip_rounds: int = 5  # 3-sigma clipping rounds of the hidden-state statistic
    clip_sigma: float = 3.0  # clip at mean +- 3 std (docs/design.md §1)
    # per-layer projection scales from the model (docs/method.md, "Calibrated scales"): "none" = RIL as is;
    # "output" = each layer's first random step moves its q/k outputs by a share within calibration_range;
    # "fitness" = calibration_factors x RIL tried per layer on an antithetic pair, the best improvement kept
    scale_calibration: Literal[SCALE_CALIBRATIONS] = "none"
    calibration_range: tuple[float, ...] = (0.03, 0.3)  # output: relative output change kept within [low, high]
    calibration_factors: tuple[float, ...] = (0.1, 1.0, 10.0)  # fitness: multipliers of the RIL scale tried (2 calls each)


@dataclass
class OptimConfig:
    popsize: int = 20  # candidates per generation (paper: 20 for CMA-ES); LoTFWA: evaluations per generation
    sigma: float = 1.0  # initial step size; redundant with alpha under "ril" (docs/design.md §6), kept separate
    bounds: float | None = None  # optional box [-b, b] on z (LoTFWA re-samples out-of-bound sparks)
    fireworks: int | None = None  # LoTFWA fireworks; None = the optimizer's documented default
    sparks: int | None = None  # LoTFWA sparks per firework; None = derived from popsize
    name: str = ""  # per-layer optimizer of a layer-wise search: "" = the method's own; cmaes, cmaes-diag, lotfwa, fwa, random, or ng:NAME (a nevergrad optimizer, e.g. ng:NGOpt, ng:DiagonalCMA)


@dataclass
class SearchConfig:
    budget: int = 6000  # fitness evaluations ("API calls"); paper text: 6,000 (released code: 8,000)
    acceptance: Literal[ACCEPTANCES] = "elitist"  # "elitist": monotone (docs/design.md §6); "released": each layer's best-ever z
    loss: Literal[LOSSES] = "ce"  # ce (paper) | hinge | neg_metric
    eval_every: int = 100  # dev evaluation period in calls (released code: 100); not charged to the budget
    select_start: bool = True  # the unadapted model (z = 0) is a model-selection candidate too
    patience: int | None = None  # stop after this many calls without dev improvement (paper's timing table: 1500)
    checkpoint_every: int = 5  # generations between checkpoints (a checkpoint costs ~ms)
    prefix_reuse: bool = True  # compute layers below the optimised one once per generation
    schedule: Literal[SCHEDULES] = "round-robin"  # which layer gets the next generation (search/schedule.py)
    generations_per_visit: int = 1  # round-robin: generations a layer gets per visit (1 = as released)
    bandit_exploration: float = 0.5  # bandit: weight of the exploration bonus against the recent gain per call
    calibrated_logits: bool = False  # search on logits + a label bias refitted on train after each accepted update
    test_at: tuple[int, ...] = ()  # also score the dev-selected snapshot on test at these calls (not charged)
    # when dev is scored for selection: every eval_every calls plus the final state and each test_at call;
    # "periodic" (runs before 2026-12-07): every eval_every calls only, so the end of a run was never selectable
    dev_rule: Literal[DEV_RULES] = "periodic+final"


@dataclass
class BaselineConfig:
    """Settings of the peer methods (BBT, gradient LoRA, zeroth order, ICL); unused by the DFO-LoRA methods."""

    lr: float | None = None  # None = the method's own default (docs/baselines.md)
    steps: int | None = None  # optimisation steps for gradient / zeroth-order methods; None = from search.budget
    batch_size: int | None = None  # None = the whole few-shot train set per step (a step then costs one "call")
    budget_match: Literal[BUDGET_MATCHES] = "forward"  # budget -> steps: "forward" (equal forward passes) or "compute" (bwd, jvp = 2 fwd)
    weight_decay: float = 0.0  # AdamW weight decay (none: few-shot runs are short and dev-selected)
    lora_rank: int = 8  # gradient LoRA: rank 8, alpha 16 on q,v (LoRA paper defaults)
    lora_alpha: float = 16.0  # LoRA paper default (scaling alpha / r = 2)
    lora_targets: tuple[Target, ...] = ("q", "v")  # LoRA paper default (the DFO methods adapt q,k instead)
    zo_params: Literal[ZO_PARAMS] = "lora"  # zeroth-order / forward-gradient methods tune "lora" (as the lora method), "all", "prefix" (deep prompts) or "prompt" (input prompt)
    zo_eps: float | None = None  # perturbation scale; None = MeZO's: 1e-2 on LoRA, 1e-3 on all parameters
    zo_momentum: float = 0.9  # zo-sgd-mmt: heavy-ball momentum on the ZO estimate (the usual SGD momentum)
    zo_block: bool = False  # block-wise ZO (ZO-Bench): perturb one layer's tensors per step, bottom to top (a lower-variance estimate)
    zo_hybrid_layers: int = 0  # hybrid ZO/FO (ZO-Bench): the top K layers' tensors by backprop (cheap, shallow), the rest by ZO; 0 = off
    zo_sparsity: float = 0.0  # sparsity-induced ZO (ZO-Bench): this fraction of each tensor, smallest magnitude first, is never perturbed
    es_population: int = 30  # es-full: perturbed members per step (Qiu et al. 2025: 30)
    es_sigma: float = 1e-3  # es-full: std of each member's Gaussian weight perturbation (Qiu et al. 2025: ~1e-3)
    zo_pool: int = 8  # mezo-gv, mezo-greedy, fzoo: perturbed models scored per step, one call each (docs/baselines.md)
    zo_guide_fraction: float = 0.5  # mezo-gv: the low- and high-loss groups, each this share of the pool (halves)
    lozo_rank: int = 2  # lozo, lozo-m: rank r of each weight matrix's perturbation U V^T (LOZO paper: 2)
    lozo_interval: int = 50  # lozo, lozo-m: steps one V is kept before it is redrawn (LOZO paper: nu = 50)
    prompt_tokens: int = 50  # BBT/BBTv2: 50 prompt vectors (Sun et al. 2022)
    prompt_dim: int = 500  # BBT/BBTv2 intrinsic dimension d per layer (Sun et al. 2022)
    prompt_alpha: float = 1.0  # prompt projection std = alpha std_hat / (sqrt(d) sigma); 1 as in BBT/BBTv2 code
    prompt_init: Literal[PROMPT_INITS] = "vocab"  # p_0: embeddings of random vocabulary tokens (BBT) or "zeros"
    prompt_layers: tuple[int, ...] | None = None  # BBTv2 layers with a deep prompt (0 = input); None = all (BBTv2)
    calibration: Literal[CALIBRATIONS] = "auto"  # zeroshot-calibrated: auto (best on dev) | cc (contextual) | bias (CE) | threshold
    icl_shots: int | None = None  # ICL demonstrations per class; None = the whole train split, as many as fit
    icl_context: int = 1024  # ICL prompt cap in tokens (also the model's positions): CPU cost grows with it
    init_draws: int = 2  # no-opt: random draws of z from the start distribution, averaged (paper's Table 4)


@dataclass
class RunConfig:
    method: str = "c-lora"  # see `dflora methods` (dflora_core/methods.py)
    seed: int = 42  # few-shot split, projections and optimizer (paper seeds: 13, 21, 42, 87, 100)
    seed_scheme: Literal[SCHEMES] = 1  # how the random streams derive from seed: 1 = the committed results, 2 = collision-free
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    progress: bool = True  # tqdm progress bar
    threads: int = 0  # torch CPU threads of the run; 0 = all cores (torch's default)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def replace(self, **changes) -> RunConfig:
        """A copy with dotted-path changes, e.g. replace(**{"search.budget": 200}). Shots that were the old
        task's default follow a new ``data.task`` to its default (``task_shots``) unless changed too."""
        base = self.to_dict()
        if "data.task" in changes and "data.shots" not in changes and self.data.shots == task_shots(self.data.task):
            del base["data"]["shots"]
        return from_dict(_merge(base, _nest(changes)))


# -- dict <-> dataclass ----------------------------------------------------------------
def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(name: str, tp, value):
    origin = get_origin(tp)
    args = get_args(tp)
    if value is None:
        if type(None) in args or tp is type(None):
            return None
        raise ConfigError(name, "must not be empty")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(name, inner, value)
    if origin is Literal:
        for choice in args:  # YAML and the command line give strings for numbers too
            if value == choice and type(value) is type(choice) or str(value) == str(choice):
                return choice
        raise ConfigError(name, f"choose from {', '.join(map(str, args))}; got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"expected a list, got {value!r}")
        return tuple(_coerce(name, args[0], v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(name, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    return value


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown setting; known here: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{prefix}{f.name}", tp, data[f.name])
    return cls(**kwargs)


def from_dict(data: dict[str, Any] | None) -> RunConfig:
    """A RunConfig from a nested dict (unknown keys are errors); missing keys keep their defaults, but for
    ``data.shots``, which a task file may state (``task_shots``): the run then records the shots it used."""
    cfg = _build(RunConfig, data or {})
    if "shots" not in (data or {}).get("data", {}):
        cfg.data.shots = task_shots(cfg.data.task)
    return cfg


def task_shots(task: str) -> int:
    """A run's examples per class unless told: a task file's ``shots:`` (docs/tasks.md), else the default 16."""
    from .data.tasks import get_task, is_task_file

    return (get_task(task).shots or DataConfig.shots) if is_task_file(task) else DataConfig.shots


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a one-line ConfigError naming the file for anything else."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"no such file: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError("config", f"{p} is not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f":{where.line + 1}" if where is not None else ""
        raise ConfigError("config", f"{p}{at} is not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def load_run_settings(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """A run's settings from a YAML file (its ``section`` where the file has one), checked against
    RunConfig's keys and types so that an error names the file, not the merged configuration."""
    data = load_yaml(path)
    if section is not None:
        data = data.get(section, data)
    with settings_from(path):
        from_dict(data)
    return data


@contextlib.contextmanager
def settings_from(path: str | Path):
    """Name ``path`` in a ConfigError raised inside: an unknown or invalid key is found in the file it came from."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(err.field, f"{err.message} (in {path})") from None


def parse_assignments(items, what: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` items -> {dotted key: value}; values are YAML (``[-2,-1]``, ``none``, ``1e-3``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(what, f"{item!r}: expected key=value, e.g. search.budget=200")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value.strip()
        if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
            parsed = None
        out[key.strip()] = parsed
    return out


def field_docs(cls=RunConfig) -> dict[str, str]:
    """field path -> the rationale written next to it in this file (trailing comment or the comment above)."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls) -> dict[str, str]:  # parses this file's source: once per process
    import inspect
    import re

    out: dict[str, str] = {}
    for c in (cls, DataConfig, ModelConfig, LowRankConfig, OptimConfig, SearchConfig, BaselineConfig):
        lines = inspect.getsource(c).splitlines()
        above: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^    (\w+): ", line)
            if line.strip().startswith("#"):
                above.append(line.strip().lstrip("#").strip())
            elif m:
                stmt = [line]
                while stmt[-1].count("(") + sum(x.count("(") for x in stmt[:-1]) > sum(x.count(")") for x in stmt):
                    i += 1
                    stmt.append(lines[i])
                trailing = [x.split("# ", 1)[1].strip() for x in stmt if "# " in x]
                text = " ".join(trailing or above)
                if text:
                    out[f"{c.__name__}.{m.group(1)}"] = text
                above = []
            else:
                above = []
            i += 1
    return out


def _field_type(path: str):
    cls, parts = RunConfig, path.split(".")
    for part in parts[:-1]:
        cls = get_type_hints(cls)[part]
    return get_type_hints(cls)[parts[-1]], cls


def field_help(path: str) -> str:
    """The help of one field for the command line: its rationale, its choices, its default."""
    tp, cls = _field_type(path)
    doc = field_docs().get(f"{cls.__name__}.{path.rsplit('.', 1)[-1]}", "")
    inner = [a for a in get_args(tp) if a is not type(None)] or [tp]
    choices = get_args(inner[0]) if get_origin(inner[0]) is Literal else ()
    if get_origin(inner[0]) is tuple and get_origin(get_args(inner[0])[0]) is Literal:
        choices = get_args(get_args(inner[0])[0])
        doc += " (comma-separated)"
    default = flatten(RunConfig().to_dict())[path]
    text = f"{doc} [{path}"
    if choices:
        text += f": {', '.join(map(str, choices))}"
    return f"{text}; default {default}]"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted paths: {"search": {"budget": 6}} -> {"search.budget": 6}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
