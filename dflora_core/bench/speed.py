"""Fitness evaluations per second of every strategy, side by side (``dflora bench speed|sweep``).

``run_speed`` scores the SAME population of candidates (one generation of one layer, z drawn
as CMA-ES's first generation draws it) with every strategy, in one process, on the same
batch: an untimed pass per strategy first (fitnesses, work counts, compilation, peak memory),
then ``reps`` timed passes interleaved across strategies (the order rotates every repetition)
and the median. Each row carries its fidelity against the first strategy (the fp32 reference)
and the ceiling the measured matmul throughput allows for the work it does.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..environment import PeakMemory, peak_memory
from ..errors import DfloraError
from ..metrics import losses
from .fidelity import fidelity, is_faithful
from .probes import WorkCounter, gemm_gflops, head_flops, loadavg, slow_dtype, sync
from .report import fmt
from .setup import Setup
from .strategies import STRATEGIES, Runner, Strategy


@dataclass
class Row:
    model: str
    strategy: str
    device: str
    dtype: str
    evals_per_s: float | None
    ratio_vs_reference: float | None
    spearman_vs_fp32: float | None
    same_best: bool | None
    peak_mem_bytes: int | None
    peak_mem_kind: str
    max_abs_fitness_diff: float | None = None
    adds: str = ""
    base: str | None = None
    flags: dict = field(default_factory=dict)
    seconds: list = field(default_factory=list)  # per timed pass over all candidates (population strategies)
    candidate_seconds: list = field(default_factory=list)  # one-by-one strategies: per timed candidate
    median_s: float | None = None  # median seconds of one pass over all candidates
    reps: int = 0
    warmup_s: float | None = None  # the untimed first pass (includes compilation)
    layer_tokens_per_eval: float | None = None  # padded tokens x layers run, per candidate
    gflop_per_eval: float | None = None  # estimate: 2 x weights x tokens + attention + head
    achieved_gflops: float | None = None
    ceiling_evals_per_s: float | None = None  # measured gemm throughput / flops per evaluation
    prefix_reuse_exact: bool | None = None
    max_tokens: int | None = None
    fastest_faithful: bool = False
    error: str | None = None
    fitness: list = field(default_factory=list)
    setup: dict = field(default_factory=dict)


def run_speed(
    s: Setup,
    names,
    reps: int = 3,
    log=print,
    one_by_one_candidates: int | None = None,
    gemm_seconds: float = 0.5,
    with_reference: bool = True,
) -> tuple[list[Row], dict]:
    """Every strategy on the same candidates: untimed pass, then ``reps`` interleaved timed passes.

    One-candidate-per-forward strategies cost the same per candidate, so they are timed per
    candidate: in their first pass (all candidates, the first one left out as warm-up) and on
    ``one_by_one_candidates`` of them per repetition (default all); their speed is the inverse
    of the median seconds per candidate. Fidelity and ratios are against the first strategy:
    the fp32 one-by-one reference unless ``with_reference`` is False.
    """
    strategies = [STRATEGIES[n] if isinstance(n, str) else n for n in names]
    if with_reference and strategies[0].name != "reference":
        strategies = [STRATEGIES["reference"], *[x for x in strategies if x.name != "reference"]]
    ref_name = strategies[0].name  # fidelity and ratios are against the first row (the reference)
    dev = s.device
    hidden = max(256, int(s.head.weight.shape[1]))  # tiny widths measure call overhead, not the units
    ceil = gemm_gflops(dev, hidden, seconds=gemm_seconds)
    log(f"  gemm GFLOP/s at hidden {hidden}: " + ", ".join(f"{k} {fmt(v, '.1f')}" for k, v in ceil.items()))
    kind = peak_memory(dev)[1]  # what this device's peak is (CUDA allocator or process RSS)
    rows: dict[str, Row] = {}
    runners: dict[str, Runner] = {}
    fits: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for k, st in enumerate(strategies):
        row = rows[st.name] = Row(s.name, st.name, str(dev), st.flags.dtype, None, None, None, None, None, kind,
                                  adds=st.adds, base=st.base, flags=asdict(st.flags),
                                  max_tokens=st.max_tokens or s.max_tokens, setup=s.describe())  # fmt: skip
        r = _untimed_pass(s, st, row, ceil, log, f"{k + 1}/{len(strategies)}", started)
        if r is not None:
            runners[st.name], fits[st.name] = r
    live = [st for st in strategies if st.name in runners]
    expected = reps * sum(_pass_seconds(rows[st.name], st, len(s.Z), one_by_one_candidates) for st in live)
    log(f"  timing {reps} repetition{'s' if reps != 1 else ''} of {len(live)} strategies: about {expected:.0f} s")
    # compiled rows reuse the work count of their base
    for st in strategies:
        row = rows[st.name]
        if st.flags.compile and st.base in rows and row.error is None:
            row.layer_tokens_per_eval = rows[st.base].layer_tokens_per_eval
            row.gflop_per_eval = rows[st.base].gflop_per_eval
    _timed_passes(s, live, rows, runners, reps, one_by_one_candidates, log)
    _summarise(s, strategies, rows, fits, ceil, ref_name)
    return list(rows.values()), {"gemm_gflops": ceil, "loadavg_end": loadavg(), "reference_strategy": ref_name}


def _pass_seconds(row: Row, st: Strategy, P: int, one_by_one_candidates: int | None) -> float:
    """What one timed pass of a strategy will take, from its untimed pass (a one-by-one strategy times
    ``one_by_one_candidates`` of the P candidates)."""
    if not row.warmup_s:
        return 0.0
    share = min(P, one_by_one_candidates or P) / P if not st.flags.population else 1.0
    return row.warmup_s * share


def _untimed_pass(s: Setup, st: Strategy, row: Row, ceil: dict, log, which: str = "",
                  started: float | None = None) -> tuple[Runner, np.ndarray] | None:  # fmt: skip
    """Fitnesses, work, compilation and peak memory of one strategy; None (``row.error`` says why) if it cannot run.
    Logs one line when it is done (``which``: its place among the strategies; ``started``: when the first began)."""
    dev, P = s.device, len(s.Z)
    slow = slow_dtype(ceil, st.flags.dtype)
    if slow:
        row.error = slow
        log(f"  warm-up {which} {st.name}: {slow}")
        return None
    try:
        if st.flags.compile and dev.type == "cpu" and st.flags.compile != "default":
            raise DfloraError(f"compile mode {st.flags.compile} needs CUDA")
        r = Runner(s, st)
        row.prefix_reuse_exact = r.reuse_exact
        counter = WorkCounter(s) if not st.flags.compile else contextlib.nullcontext()
        r.compile_layers()
        sync(dev)
        t0 = time.perf_counter()
        with PeakMemory(dev) as mem, counter:
            lg = r(s.Z)
        sync(dev)
        row.warmup_s = time.perf_counter() - t0
        row.peak_mem_bytes = mem.value
        r.uncompile()
        if isinstance(counter, WorkCounter):
            row.layer_tokens_per_eval = sum(counter.tokens) / P
            flops = counter.flops + head_flops(s, st, counter.tokens[-1])
            row.gflop_per_eval = flops / P / 1e9
        fit = losses(lg, s.data.labels, "ce").double().numpy()
        row.candidate_seconds = list(r.candidate_seconds[1:])
        since = f" ({time.perf_counter() - started:.0f} s so far)" if started is not None else ""
        log(f"  warm-up {which} {st.name:16s} {row.warmup_s:8.2f} s{since}")
        return r, fit
    except Exception as err:  # noqa: BLE001 - a failing strategy is reported, the others still run
        row.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        log(f"  warm-up {which} {st.name}: {row.error}")
        return None


def _timed_passes(s: Setup, live: list[Strategy], rows, runners, reps: int, one_by_one_candidates, log) -> None:
    """``reps`` timed passes, interleaved, the order rotating every repetition."""
    dev, P = s.device, len(s.Z)
    for rep in range(reps):
        k = rep % max(1, len(live))
        for st in live[k:] + live[:k]:
            r = runners[st.name]
            try:
                r.compile_layers()
                sync(dev)
                one_by_one = not st.flags.population
                Z = s.Z[: one_by_one_candidates or P] if one_by_one else s.Z
                t0 = time.perf_counter()
                r(Z)
                sync(dev)
                rows[st.name].seconds.append(time.perf_counter() - t0)
                took = f"{rows[st.name].seconds[-1]:8.2f} s"
                if one_by_one:
                    rows[st.name].candidate_seconds += r.candidate_seconds
            except Exception as err:  # noqa: BLE001
                rows[st.name].error = took = f"{type(err).__name__}: {err}"[:300]
            finally:
                r.uncompile()
            log(f"  rep {rep + 1}/{reps} {st.name:16s} {took}")


def _summarise(s: Setup, strategies: list[Strategy], rows, fits, ceil: dict, ref_name: str) -> None:
    """Speeds (medians), fidelity and speed against the reference, the ceiling, the fastest faithful row."""
    P = len(s.Z)
    ref = fits.get(ref_name)
    ref_speed = None
    for st in strategies:
        row = rows[st.name]
        row.reps = len(row.seconds)
        if row.candidate_seconds:
            row.median_s = float(np.median(row.candidate_seconds)) * P
            row.evals_per_s = P / row.median_s
        elif row.seconds:
            row.median_s = float(np.median(row.seconds))
            row.evals_per_s = P / row.median_s
        if st.name == ref_name:
            ref_speed = row.evals_per_s
        if st.name in fits:
            row.fitness = fits[st.name].tolist()
            if ref is not None:
                fid = fidelity(fits[st.name], ref)
                row.spearman_vs_fp32 = fid["spearman_vs_fp32"]
                row.same_best = fid["same_best"]
                row.max_abs_fitness_diff = fid["max_abs_fitness_diff"]
        gf = ceil.get(st.flags.dtype) or ceil.get("float32")
        if row.gflop_per_eval and gf:
            row.ceiling_evals_per_s = gf / row.gflop_per_eval
        if row.gflop_per_eval and row.evals_per_s:
            row.achieved_gflops = row.gflop_per_eval * row.evals_per_s
    for row in rows.values():
        if row.evals_per_s and ref_speed:
            row.ratio_vs_reference = row.evals_per_s / ref_speed
    mark_fastest(rows.values())


def mark_fastest(rows) -> None:
    """Flag the fastest row that ranks the candidates as the reference does."""
    rows = list(rows)
    ok = [r for r in rows if r.evals_per_s and r.error is None and is_faithful(r.same_best, r.spearman_vs_fp32)]
    for r in rows:
        r.fastest_faithful = False
    if ok:
        max(ok, key=lambda r: r.evals_per_s).fastest_faithful = True
