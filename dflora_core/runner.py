"""Run one configured method end to end and write its record: the entry point of CLI and notebooks.

    record = run(cfg, out="runs/sst2-c-lora-42")            # or resume=True after an interruption

Methods register a runner ``fn(exp, folder, resume, callbacks) -> dict`` (the method-specific
part of the record); ``run`` wraps it with preparation, the zero-shot reference, identity,
timing and memory so every method's record has the same shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DFO_LORA_METHODS, RunConfig, from_dict
from .errors import DfloraError
from .experiment import Experiment
from .models.packaged import cache_root
from .models.registry import LoadedModel
from .results.io import atomic_save_npz, peak_rss_bytes, read_json
from .results.record import RECORD, RunFolder, base_record

Runner = Callable[..., dict]
RUNNERS: dict[str, Runner] = {}


def register_runner(method: str, fn: Runner) -> None:
    RUNNERS[method] = fn


# -- zero-shot reference (cached: every method of a task/model/split reports it) -------------
_ZS_MEMORY: dict[str, dict] = {}


def zero_shot_key(exp: Experiment) -> str:
    ident = {
        "model": exp.loaded.identity,
        "test": exp.data_identity()["test_digest"],
        "template": exp.encoder.template.pattern,
        "words": list(exp.encoder.template.words),
        "dtype": str(exp.dtype),
        "max_length": exp.cfg.data.max_length,
        "zero_lm_bias": exp.cfg.model.zero_lm_bias,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def zero_shot(exp: Experiment, use_cache: bool = True) -> dict:
    """Test metric of the unadapted model with the manual prompt (the paper's "manual prompt" row)."""
    key = zero_shot_key(exp)
    folder = Path(os.environ["DFLORA_ZS_CACHE"]) if os.environ.get("DFLORA_ZS_CACHE") else cache_root() / "zeroshot"
    path = folder / f"{key}.json"
    if use_cache and key in _ZS_MEMORY:
        return _ZS_MEMORY[key]
    if use_cache and path.is_file():
        _ZS_MEMORY[key] = read_json(path)
        return _ZS_MEMORY[key]
    t0 = time.perf_counter()
    res = exp.evaluate(exp.test_set).as_dict()
    res["seconds"] = time.perf_counter() - t0
    _ZS_MEMORY[key] = res
    if use_cache:
        from .results.io import atomic_write_json

        atomic_write_json(path, res)
    return res


# -- the DFO-LoRA methods -------------------------------------------------------------------------
def search_summary(search, test: dict | None, train_at_best: dict) -> dict:
    """The record fields every layer-wise search writes (C-LoRA and its kin, BBTv2)."""
    return {
        "test": test,  # None: the selected snapshot is the unadapted model (test = zero-shot)
        "train_at_best": train_at_best,
        "calls": search.calls,
        "generations": search.generation,
        "rounds_completed": search.round,
        "stopped": search.stopped or "budget",
        "best_dev": search.best_dev,
        "selected_start": bool(not search.z_best_dev.any()),
        "final_train_fitness": search.current_fitness,
        "nonfinite_fitness": search.nonfinite,
        "evals_per_s": search.calls / search.fitness_seconds if search.fitness_seconds else None,
        "fitness_seconds": search.fitness_seconds,
        "forward_passes": search.evaluator.forward_rows,
        "backward_passes": 0,
        "prefix_reuse": search.evaluator.reuse_prefix,
        "optimizer": search.optimizer_name,
        "search": search,
    }


def run_layerwise(exp: Experiment, folder: RunFolder, resume: bool, callbacks: dict) -> dict:
    from .search.loop import LayerwiseSearch

    search = LayerwiseSearch(exp, folder.path, callbacks.get("on_generation"), callbacks.get("on_eval"))
    try:
        state = folder.load_checkpoint() if resume else None
        if state is not None:
            search.load_state_dict(state)
        callbacks.get("on_start", lambda s: None)(search)
        search.run()
        search.save_checkpoint()
        search.use_best_dev()
        test = exp.evaluate(exp.test_set).as_dict() if search.z_best_dev.any() else None
        train_at_best = exp.evaluate(exp.train).as_dict()
        folder_path = folder.path
        if folder_path:
            atomic_save_npz(
                folder_path / "adapter.npz",
                z_best_dev=search.z_best_dev,
                z_final=search.z,
                layer_std=np.asarray(search.layer_std),
            )
        return {
            **search_summary(search, test, train_at_best),
            "projection": search.adapter.describe(),
            "layer_stats": [s.as_dict() for s in search.layer_stats],
            "params_optimised": exp.cfg.lowrank.intrinsic_dim * search.num_layers,
            "params_stored": exp.cfg.lowrank.intrinsic_dim * search.num_layers,
            "search": search,
        }
    finally:
        search.close()


for _m in DFO_LORA_METHODS:
    register_runner(_m, run_layerwise)


def run_zeroshot(exp: Experiment, folder: RunFolder, resume: bool, callbacks: dict) -> dict:
    """Nothing to tune: the record's test is the zero-shot score."""
    return {"test": None, "calls": 0, "params_optimised": 0, "params_stored": 0}


register_runner("zeroshot", run_zeroshot)


# -- the common wrapper ---------------------------------------------------------------------------
def _check_out(folder: RunFolder, cfg: RunConfig, resume: bool) -> dict | None:
    """A finished record in ``out`` is returned as is when resuming; a different config is an error."""
    old = folder.read_record()
    if old is None:
        return None
    same = {k: v for k, v in old["config"].items() if k != "progress"} == {
        k: v for k, v in cfg.to_dict().items() if k != "progress"
    }
    if not same:
        raise DfloraError(f"{folder.path} holds a run with a different config; choose another --out")
    if old.get("status") == "done":
        return old if resume else None
    if not resume:
        raise DfloraError(f"{folder.path} holds an unfinished run; pass --resume to continue it")
    return None


def run(
    cfg: RunConfig | dict,
    out: str | Path | None = None,
    resume: bool = False,
    loaded: LoadedModel | None = None,
    keep_search: bool = False,
    tags: dict | None = None,
    **callbacks,
) -> dict:
    """Prepare, run the method, evaluate and write ``out/record.json``; returns the record.

    ``resume=True`` continues an interrupted run from its checkpoint (or returns a finished
    record unchanged). Callbacks: on_start(search), on_generation(search, gen), on_eval(search, row).
    """
    cfg = from_dict(cfg) if isinstance(cfg, dict) else cfg
    folder = RunFolder(out)
    if out is not None:
        done = _check_out(folder, cfg, resume)
        if done is not None:
            return done
    if cfg.method not in RUNNERS:
        from . import baselines  # noqa: F401 - registers the peer methods

    if cfg.method not in RUNNERS:
        raise DfloraError(f"method {cfg.method!r} has no runner; known: {sorted(RUNNERS)}")
    t0 = time.perf_counter()
    exp = Experiment.prepare(cfg, loaded)
    if exp.loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    record = base_record(cfg.to_dict())
    record.update(model_identity=exp.loaded.identity, data=exp.data_identity(), metric=exp.task.metric)
    record["tags"] = dict(tags or {})  # free labels (e.g. the ablation a run belongs to)
    folder.write_json("config.json", cfg.to_dict())
    if not resume or folder.read_record() is None:
        folder.write_json(RECORD, record)
    zs = zero_shot(exp)
    result = RUNNERS[cfg.method](exp, folder, resume, callbacks)
    search = result.pop("search", None)
    if result.get("test") is None:
        result["test"] = dict(zs)
    result["test"]["name"] = exp.test.name
    result["test"]["official"] = exp.test.official
    mem = torch.cuda.max_memory_allocated() if exp.loaded.device.type == "cuda" else peak_rss_bytes()
    record.update(
        status="done",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        zero_shot=zs,
        **result,
        wall_s=time.perf_counter() - t0 + (search.elapsed_before if search is not None else 0.0),
        prepare_s=exp.prepare_s,
        peak_mem_bytes=int(mem),
        peak_mem_kind="cuda_max_allocated" if exp.loaded.device.type == "cuda" else "process_peak_rss",
        device=str(exp.loaded.device),
        dtype=str(exp.dtype or torch.float32).replace("torch.", ""),
    )
    folder.write_json(RECORD, record)
    if keep_search and search is not None:
        record["_search"] = search
    return record


def is_dfo_lora(method: str) -> bool:
    return method in DFO_LORA_METHODS


def summary_line(record: dict[str, Any]) -> str:
    t, z = record["test"], record["zero_shot"]
    return (
        f"{record['method']} {record['task']} seed {record['seed']}: test {t['metric']} {t['value']:.4f} "
        f"(zero-shot {z['value']:.4f}) on {t['name']}; {record.get('calls', 0)} calls, "
        f"{record['wall_s']:.0f} s"
    )
