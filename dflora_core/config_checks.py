"""The field checks of a run's configuration: every value on its own (ranges, choices, layers against the
model's layer count), each failure a one-line ``ConfigError`` naming the field. Rules that tie fields to a
method live with the methods table (``methods.validate``)."""

from __future__ import annotations

import math

from .config import RunConfig
from .errors import ConfigError
from .lowrank.arch import TARGET_LETTERS


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(name, message)


def _check_layers(name: str, layers: tuple[int, ...] | None, num_layers: int | None) -> None:
    if layers is None:
        return
    _check(len(layers) >= 1, name, "name at least one layer or leave empty (= all)")
    if num_layers is not None:
        bad = [i for i in layers if not -num_layers <= i < num_layers]
        _check(not bad, name, f"{bad} out of range for a model with {num_layers} layers")
        _check(len({i % num_layers for i in layers}) == len(layers), name, "repeated layer")


def check_fields(cfg: RunConfig, num_layers: int | None = None) -> RunConfig:
    """Every value on its own (ranges, divisibility, layers against ``num_layers`` when known).

    Choice fields were checked when the config was built (their Literal types). Rules that
    depend on the method (budget against one round, the architecture table) are the methods
    table's (``methods.validate``), which calls this first.
    """
    from .data.tasks import TASKS, get_task, is_task_file
    from .data.user_task import files_outside_allowed

    _check(cfg.data.task in TASKS or is_task_file(cfg.data.task), "data.task",
           f"unknown task {cfg.data.task!r}; choose from {sorted(TASKS)} or give a task file (docs/tasks.md)")  # fmt: skip
    if is_task_file(cfg.data.task):
        with files_outside_allowed(cfg.data.allow_task_files_outside):
            get_task(cfg.data.task)  # a bad declaration fails here, before any model is loaded
    _check(cfg.data.shots >= 1, "data.shots", f"must be >= 1, got {cfg.data.shots}")
    _check(cfg.data.max_test is None or cfg.data.max_test >= 1, "data.max_test", "must be >= 1 or empty")
    _check(cfg.data.max_length >= 16, "data.max_length", f"must be >= 16, got {cfg.data.max_length}")
    _check(cfg.model.max_tokens >= 0, "model.max_tokens", "must be >= 0 (0 = default)")
    _check(cfg.threads >= 0, "threads", f"must be >= 0 (0 = all cores), got {cfg.threads}")
    lr = cfg.lowrank
    _check(lr.rank >= 1, "lowrank.rank", f"must be >= 1, got {lr.rank}")
    _check(lr.intrinsic_dim >= 1, "lowrank.intrinsic_dim", f"must be >= 1, got {lr.intrinsic_dim}")
    _check(len(lr.targets) >= 1, "lowrank.targets", f"name at least one of {', '.join(TARGET_LETTERS)}")
    _check(len(set(lr.targets)) == len(lr.targets), "lowrank.targets", f"repeated target in {lr.targets}")
    n_factors = 2 * len(lr.targets)
    _check(
        lr.intrinsic_dim % n_factors == 0,
        "lowrank.intrinsic_dim",
        f"{lr.intrinsic_dim} is not divisible by the {n_factors} factors of targets {','.join(lr.targets)}",
    )
    _check(lr.alpha > 0 and math.isfinite(lr.alpha), "lowrank.alpha", f"must be > 0, got {lr.alpha}")
    _check(lr.ri_std > 0, "lowrank.ri_std", f"must be > 0, got {lr.ri_std}")
    _check(lr.clip_rounds >= 0, "lowrank.clip_rounds", "must be >= 0")
    _check(lr.clip_sigma > 0, "lowrank.clip_sigma", "must be > 0")
    _check_layers("lowrank.layers", lr.layers, num_layers)
    lo_hi = lr.calibration_range
    _check(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], "lowrank.calibration_range", f"need 0 < low <= high, got {lo_hi}")
    _check(len(lr.calibration_factors) >= 1 and all(f > 0 and math.isfinite(f) for f in lr.calibration_factors),
           "lowrank.calibration_factors", f"need positive multipliers, got {lr.calibration_factors}")  # fmt: skip
    _check(lr.scale_calibration == "none" or lr.projection_init != "ri", "lowrank.scale_calibration",
           "calibrates the hidden-state based inits (ril, released), not ri's fixed std")  # fmt: skip
    op = cfg.optim
    _check(op.popsize >= 2, "optim.popsize", f"must be >= 2, got {op.popsize}")
    _check(op.sigma > 0 and math.isfinite(op.sigma), "optim.sigma", f"must be > 0, got {op.sigma}")
    _check(op.bounds is None or op.bounds > 0, "optim.bounds", "must be > 0 or empty")
    _check(op.fireworks is None or op.fireworks >= 1, "optim.fireworks", "must be >= 1")
    _check(op.sparks is None or op.sparks >= 2, "optim.sparks", "must be >= 2")
    if op.name:
        from .optim import resolve_name

        resolve_name(op.name, field="optim.name")  # imports nevergrad only for an ng: name
    s = cfg.search
    _check(s.budget >= 1, "search.budget", f"must be >= 1, got {s.budget}")
    _check(s.eval_every >= 1, "search.eval_every", f"must be >= 1, got {s.eval_every}")
    _check(s.patience is None or s.patience >= 1, "search.patience", "must be >= 1 or empty")
    _check(s.checkpoint_every >= 1, "search.checkpoint_every", "must be >= 1")
    _check(s.generations_per_visit >= 1, "search.generations_per_visit", "must be >= 1")
    _check(s.bandit_exploration >= 0, "search.bandit_exploration", "must be >= 0")
    _check(all(c >= 1 for c in s.test_at), "search.test_at", f"calls must be >= 1, got {s.test_at}")
    b = cfg.baseline
    _check(b.lr is None or (b.lr > 0 and math.isfinite(b.lr)), "baseline.lr", f"must be > 0 or empty, got {b.lr}")
    _check(b.steps is None or b.steps >= 1, "baseline.steps", f"must be >= 1 or empty, got {b.steps}")
    _check(b.batch_size is None or b.batch_size >= 1, "baseline.batch_size", "must be >= 1 or empty")
    _check(b.weight_decay >= 0, "baseline.weight_decay", f"must be >= 0, got {b.weight_decay}")
    _check(b.lora_rank >= 1, "baseline.lora_rank", f"must be >= 1, got {b.lora_rank}")
    _check(b.lora_alpha > 0, "baseline.lora_alpha", f"must be > 0, got {b.lora_alpha}")
    _check(len(b.lora_targets) >= 1, "baseline.lora_targets", f"name at least one of {', '.join(TARGET_LETTERS)}")
    _check(len(set(b.lora_targets)) == len(b.lora_targets), "baseline.lora_targets", "repeated target")
    _check(b.zo_eps is None or b.zo_eps > 0, "baseline.zo_eps", f"must be > 0 or empty, got {b.zo_eps}")
    _check(0 <= b.zo_momentum < 1, "baseline.zo_momentum", f"must be in [0, 1), got {b.zo_momentum}")
    _check(b.zo_hybrid_layers >= 0, "baseline.zo_hybrid_layers", f"must be >= 0 (0 = off), got {b.zo_hybrid_layers}")
    if num_layers is not None:
        _check(b.zo_hybrid_layers < num_layers, "baseline.zo_hybrid_layers",
               f"{b.zo_hybrid_layers} layers by gradient leave none of the model's {num_layers} to zeroth order")  # fmt: skip
    _check(0 <= b.zo_sparsity < 1, "baseline.zo_sparsity", f"must be in [0, 1) (0 = dense), got {b.zo_sparsity}")
    _check(b.es_population >= 2, "baseline.es_population", f"must be >= 2, got {b.es_population}")
    _check(b.es_sigma > 0 and math.isfinite(b.es_sigma), "baseline.es_sigma", f"must be > 0, got {b.es_sigma}")
    _check(b.zo_pool >= 2, "baseline.zo_pool", f"must be >= 2, got {b.zo_pool}")
    _check(0 < b.zo_guide_fraction <= 0.5, "baseline.zo_guide_fraction", f"must be in (0, 0.5], got {b.zo_guide_fraction}")
    _check(b.lozo_rank >= 1 and b.lozo_interval >= 1, "baseline.lozo_rank", "lozo_rank and lozo_interval must be >= 1")
    _check(b.prompt_tokens >= 1, "baseline.prompt_tokens", f"must be >= 1, got {b.prompt_tokens}")
    _check(b.prompt_dim >= 1, "baseline.prompt_dim", f"must be >= 1, got {b.prompt_dim}")
    _check(b.prompt_alpha > 0 and math.isfinite(b.prompt_alpha), "baseline.prompt_alpha", "must be > 0")
    _check(b.icl_shots is None or b.icl_shots >= 1, "baseline.icl_shots", "must be >= 1 or empty (= all)")
    _check(b.init_draws >= 1, "baseline.init_draws", f"must be >= 1, got {b.init_draws}")
    _check(b.icl_context >= 16, "baseline.icl_context", f"must be >= 16 tokens, got {b.icl_context}")
    _check_layers("baseline.prompt_layers", b.prompt_layers, num_layers)
    return cfg


