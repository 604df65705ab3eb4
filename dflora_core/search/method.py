"""The runners of the layer-wise methods (C-LoRA, F-LoRA, their control arms), of the zero-shot
reference and of the no-optimisation arm, and rebuilding an adapted model from a run folder.

A layer-wise run stores its learned z vectors (``adapter.npz``) and everything that defines
the fixed random projections (seed, seed scheme, init, per-layer scales, rank, d, targets,
layers) in its record, so the adapted model is a deterministic function of the folder
(``load_adapted``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DfloraError, DfloraWarning
from ..experiment import Experiment
from ..fileio import read_json
from ..identity import config_from_record
from ..lowrank.adapter import LowRankAdapter
from ..lowrank.build import build_adapter, measure_scales
from ..methods import RunContext, is_layerwise_lora
from ..models.registry import LoadedModel
from ..seeds import generator
from .adapter_file import ADAPTER, Z_ARRAYS, read_adapter
from .loop import LayerwiseSearch


def unsearched_layers(search: LayerwiseSearch) -> list[int]:
    """The model layers the budget never reached (no generation ran there), e.g. the top layer of an
    all-layer run at 600 calls: 1 call scores the start and 29 x 20 the layers below."""
    visited = {g.layer for g in search.history}
    return [int(search.adapter.model_layers[i]) for i in range(search.num_layers) if i not in visited]


def warn_unsearched(search: LayerwiseSearch) -> list[int]:
    """Say in one line (a DfloraWarning) which adapted layers the budget left unsearched; returns them."""
    missing = unsearched_layers(search)
    if missing and search.stopped == "budget":
        warnings.warn(DfloraWarning(
            f"search.budget {search.budget} left {len(missing)} of {search.num_layers} adapted layers without a "
            f"generation (model layers {missing}): the budget ran out before their turn; "
            f"the record lists them (unsearched_layers)"), stacklevel=2)  # fmt: skip
    return missing


def search_summary(search: LayerwiseSearch, test: dict | None, train_at_best: dict) -> dict:
    """The record fields every layer-wise search writes (C-LoRA and its kin, BBTv2)."""
    return {
        "unsearched_layers": warn_unsearched(search),
        "test": test,  # None: the selected snapshot is the unadapted model (test = zero-shot)
        "train_at_best": train_at_best,
        "calls": search.calls,
        "generations": search.generation,
        "rounds_completed": search.round,
        "stopped": search.stopped or "budget",
        "best_dev": search.best_dev,
        "selected_start": bool(not search.z_best_dev.any()),
        "start_fitness": search.start_fitness,
        "final_train_fitness": search.current_fitness,
        "nonfinite_fitness": search.nonfinite,
        "evals_per_s": search.calls / search.fitness_seconds if search.fitness_seconds else None,
        "fitness_seconds": search.fitness_seconds,
        "forward_passes": search.evaluator.forward_rows,
        "backward_passes": 0,
        "prefix_reuse": search.evaluator.reuse_prefix,
        "optimizer": search.optimizer_name,
        "schedule": search.cfg.search.schedule,
        "scale_calibration": search.scale_calibration,
        "label_bias": None if search.bias_best_dev is None else search.bias_best_dev.tolist(),
        "test_curve": search.tests.rows,
    }


def run_search(exp: Experiment, search: LayerwiseSearch, ctx: RunContext, test_exp: Experiment | None = None):
    """Resume (if asked), run to the end of the budget, install the best-dev snapshot; (test, train_at_best).

    ``test`` is None when the selected snapshot is the unadapted start (its score is the zero-shot's),
    unless ``test_exp`` is given: its prompts differ from the manual prompt even at z = 0 (BBT).
    """
    state = ctx.load_checkpoint()
    if state is not None:
        with ctx.restoring():
            search.load_state_dict(state)
    start = ctx.callback("on_start")
    if start is not None:
        start(search)
    search.run()
    search.finish()
    for target in search.tests.rest():  # targets beyond the calls the budget could pay: the final state
        search.test_snapshot(target)
    search.save_checkpoint()
    search.use_best_dev()
    scored = test_exp or exp
    changed = test_exp is not None or search.z_best_dev.any() or search.bias_best_dev is not None
    test = scored.evaluate(scored.test_set).as_dict() if changed else None
    return test, scored.evaluate(scored.train).as_dict()


def run_layerwise(exp: Experiment, ctx: RunContext) -> dict:
    search = LayerwiseSearch(exp, ctx, ctx.callback("on_generation"), ctx.callback("on_eval"))
    try:
        test, train_at_best = run_search(exp, search, ctx)
        extra = {} if search.bias_best_dev is None else {"label_bias": search.bias_best_dev.numpy(),
                                                         "label_bias_final": search.label_bias.numpy()}  # fmt: skip
        ctx.save_arrays(ADAPTER, z_best_dev=search.z_best_dev, z_final=search.z, layer_std=np.asarray(search.layer_std),
                        **extra)  # fmt: skip
        n = exp.cfg.lowrank.intrinsic_dim * search.num_layers
        return {
            **search_summary(search, test, train_at_best),
            "projection": search.adapter.describe(),
            "layer_stats": [s.as_dict() for s in search.layer_stats],
            "params_optimised": n,
            "params_stored": n,
        }
    finally:
        search.close()


def run_zeroshot(exp: Experiment, ctx: RunContext) -> dict:
    """Nothing to tune: the record's test is the zero-shot score."""
    return {"test": None, "calls": 0, "params_optimised": 0, "params_stored": 0}


def run_noopt(exp: Experiment, ctx: RunContext) -> dict:
    """Test score of random intrinsic vectors from the search's start distribution, no search.

    z ~ N(0, sigma^2 I) for every adapted layer (what CMA-ES asks first): what the
    initialisation alone does to the model; ``baseline.init_draws`` draws, averaged.
    """
    cfg = exp.cfg
    _stats, scales = measure_scales(exp.loaded, exp.train, cfg.lowrank, exp.max_tokens)
    adapter = build_adapter(exp.loaded, cfg.lowrank, cfg.seed, cfg.optim.sigma, scales, cfg.seed_scheme)
    draws = []
    try:
        rng = generator(cfg.seed, "noopt_draws", scheme=cfg.seed_scheme)
        for _ in range(cfg.baseline.init_draws):
            z = rng.standard_normal((adapter.num_layers, adapter.dim)) * cfg.optim.sigma
            for layer in range(adapter.num_layers):
                adapter.set_z(layer, z[layer])
            draws.append(exp.evaluate(exp.test_set).as_dict())
    finally:
        adapter.remove()
    values = [d["value"] for d in draws]
    test = {**draws[0], "value": float(np.mean(values)), "std_over_draws": float(np.std(values))}
    for key in ("accuracy", "loss"):
        test[key] = float(np.mean([d[key] for d in draws]))
    return {"test": test, "draws": draws, "calls": 0, "params_optimised": 0, "params_stored": 0}


def load_adapted(
    run_dir: str | Path, which: str = "z_best_dev", loaded: LoadedModel | None = None
) -> tuple[Experiment, LowRankAdapter]:
    """(Experiment, LowRankAdapter) with the run's ``which`` z ("z_best_dev" or "z_final") installed.

    Call ``adapter.remove()`` to get the original model back.
    """
    run_dir = Path(run_dir)
    if which not in Z_ARRAYS:
        raise DfloraError(f"which {which!r}: choose from {', '.join(Z_ARRAYS)}")
    record = read_json(run_dir / "record.json")
    if not is_layerwise_lora(record.get("method", "")):
        raise DfloraError(f"{run_dir}: method {record.get('method')} has no low-rank adapter to rebuild")
    arrays = read_adapter(run_dir, record)  # checked: numbers, finite, the record's shapes
    z = arrays[which]
    bias = arrays.get("label_bias" if which == "z_best_dev" else "label_bias_final")
    cfg = config_from_record(record["config"])
    exp = Experiment.prepare(cfg, loaded)
    info = record["projection"]
    scales = dict(zip(info["model_layers"], info["layer_std"], strict=True)) if info["layer_std"] else None
    adapter = build_adapter(exp.loaded, cfg.lowrank, info["seed"], info["sigma"], scales, info.get("seed_scheme", 1))
    if z.shape != (adapter.num_layers, adapter.dim):  # the record's projection disagrees with its own config
        adapter.remove()
        raise DfloraError(f"{run_dir}/record.json: its config builds {adapter.num_layers} x {adapter.dim} z vectors, "
                          f"its projection and {ADAPTER} say {list(z.shape)}; the record was edited")  # fmt: skip
    for layer in range(adapter.num_layers):
        adapter.set_z(layer, z[layer])
    if bias is not None:  # a calibrated search: its label bias belongs to the tuned model
        exp.head.label_bias = torch.from_numpy(bias)
    return exp, adapter
