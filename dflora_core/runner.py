"""Run one configured method end to end and write its record: the entry point of CLI and notebooks.

    record = run(cfg, out="runs/sst2-c-lora-42")            # or resume=True after an interruption

The method's runner (from the methods table) tunes and returns its own fields; ``run`` wraps
it with preparation, the zero-shot reference, identity, timing and memory, so every
method's record has the same shape (``results.record.RunRecord``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import RunConfig, from_dict
from .data.user_task import files_outside_allowed
from .environment import peak_memory, reset_peak_memory
from .errors import DfloraError
from .experiment import Experiment, zero_shot
from .identity import config_from_record, identity_fields
from .methods import RunContext, load_runner
from .models.registry import LoadedModel
from .results.record import RunFolder, RunRecord, now


def same_run(record: RunRecord, cfg: RunConfig) -> bool:
    """Whether a record is of this configuration (compared by identity: new defaulted fields do not matter)."""
    try:
        return identity_fields(config_from_record(record.config)) == identity_fields(cfg)
    except DfloraError:
        return False  # a config this version cannot read is another run


def _check_out(folder: RunFolder, cfg: RunConfig, resume: bool, overwrite: bool) -> RunRecord | None:
    """What ``out`` already holds: a finished record to return (resume), or None to run.

    A finished run is never redone or demoted silently: without --resume or --overwrite it is
    an error, and --overwrite sets its record aside (``record.replaced.json``) before it runs again.
    """
    old = folder.read()
    if old is None:
        return None
    if not same_run(old, cfg):
        raise DfloraError(f"{folder.path} holds a run with a different config; choose another --out")
    if overwrite:
        folder.set_aside()
        return None
    if old.done:
        if resume:
            return old
        raise DfloraError(f"{folder.path} holds a finished run; pass --resume to read it back, --overwrite to redo it")
    if not resume:
        raise DfloraError(f"{folder.path} holds an unfinished run; pass --resume to continue it (or --overwrite)")
    return None


def run(
    cfg: RunConfig | dict,
    out: str | Path | None = None,
    resume: bool = False,
    loaded: LoadedModel | None = None,
    tags: dict | None = None,
    overwrite: bool = False,
    **callbacks,
) -> RunRecord:
    """Prepare, run the method, evaluate and write ``out/record.json``; returns the record.

    ``resume=True`` continues an interrupted run from its checkpoint (or returns a finished
    record unchanged); ``overwrite=True`` runs again from scratch, keeping a finished record
    aside. The folder is locked while the run writes it. Callbacks: on_start(search),
    on_generation(search, gen), on_step(method, row) (the step-based peers), on_eval(search, row),
    on_finish(record) (the finished record, once written; not called for a record read back).
    """
    cfg = from_dict(cfg) if isinstance(cfg, dict) else cfg
    with files_outside_allowed(cfg.data.allow_task_files_outside):  # the user's permission travels in the config
        return _run_at(cfg, out, resume, loaded, tags, overwrite, callbacks)


def _run_at(cfg: RunConfig, out, resume: bool, loaded, tags, overwrite: bool, callbacks) -> RunRecord:
    Experiment.check(cfg)  # before any folder is made or any weight loaded
    if out is None:
        return _run(cfg, None, False, loaded, tags, callbacks)
    folder = RunFolder(out)
    made = not folder.path.exists()
    with folder.lock():
        try:
            done = _check_out(folder, cfg, resume, overwrite)
            if done is not None:
                return done
            return _run(cfg, folder, resume and not overwrite, loaded, tags, callbacks)
        except DfloraError:
            if made:  # still holding the lock: a folder this call made, for a run refused before its first checkpoint
                folder.remove_unstarted()
            raise


def _run(cfg: RunConfig, folder: RunFolder | None, resume: bool, loaded, tags, callbacks) -> RunRecord:
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the run's own thread count (config.threads), for its duration
    try:
        return _run_method(cfg, folder, resume, loaded, tags, callbacks)
    finally:
        torch.set_num_threads(threads)


def _run_method(cfg: RunConfig, folder: RunFolder | None, resume: bool, loaded, tags, callbacks) -> RunRecord:
    method = load_runner(cfg.method)
    t0 = time.perf_counter()
    exp = Experiment.prepare(cfg, loaded)
    device = exp.loaded.device
    # the run's own peak, from here (the model is resident): a grid runs many runs in one process,
    # and without the reset a run would report the largest peak of the runs before it
    own_peak = reset_peak_memory(device)
    record = RunRecord.new(cfg.to_dict(), model_identity=exp.loaded.identity, data=exp.data_identity(),
                           metric=exp.task.metric, tags=dict(tags or {}))  # fmt: skip
    ctx = RunContext.for_run(cfg, folder.path if folder is not None else None, resume, callbacks, started=t0)
    if folder is not None:
        folder.write_config(cfg.to_dict())
        if not resume or folder.read() is None:
            folder.write(record)
    zs = zero_shot(exp)
    result = method(exp, ctx)
    test = result.pop("test", None)
    test = dict(zs) if test is None else test
    test["name"] = exp.test.name
    test["official"] = exp.test.official
    mem, kind = peak_memory(device)
    record.status, record.finished = "done", now()
    record.zero_shot, record.test, record.result = zs, test, result
    record.wall_s = ctx.wall_s
    if ctx.earlier_sessions:  # a resumed run: where its earlier sessions ran (this one is the record's own)
        result["earlier_sessions"] = ctx.earlier_sessions
    record.prepare_s = exp.prepare_s
    record.peak_mem_bytes, record.peak_mem_kind = int(mem), kind if own_peak else f"{kind}_since_process_start"
    record.device = str(device)
    record.dtype = str(exp.dtype or torch.float32).replace("torch.", "")
    if device.type == "cuda":  # what a GPU run chose and used, outside its identity (docs/scale-out.md)
        result["gpu_sizing"] = exp.gpu_sizing or {"max_tokens": exp.max_tokens, "footprint": "model.max_tokens"}
        result["max_memory_reserved"] = int(torch.cuda.max_memory_reserved(device))
        # gradient baselines backpropagate through non-deterministic CUDA kernels unless this is on
        result["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    if folder is not None:
        folder.write(record)
    finish = callbacks.get("on_finish")
    if finish is not None:
        finish(record)
    return record


def summary_line(record: RunRecord) -> str:
    t, z = record.test, record.zero_shot
    return (
        f"{record.method} {record.task} seed {record.seed}: test {t['metric']} {t['value']:.4f} "
        f"(zero-shot {z['value']:.4f}) on {t['name']}; {record.get('calls', 0)} calls, "
        f"{record.wall_s:.0f} s"
    )
