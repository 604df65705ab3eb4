"""The ways of scoring a population that ``dflora bench`` compares, and the forward pass of each.

Strategies are cumulative, each adds one optimisation to the previous:

    reference     one candidate per forward, fp32, plain HF forward with full-vocabulary
                  logits, the whole set padded to its longest prompt (the released code's way)
    population    all candidates of the generation in one forward (batch repeated P times)
    trim          length-sorted batches (no work on pad tokens beyond a chunk's longest)
    scored-head   verbalizer rows at the scored position only (no full-vocabulary logits)
    prefix-reuse  layers below the optimised one computed once per generation and replayed
    bf16 / fp16   autocast on top of prefix-reuse
    compile...    torch.compile of the layers that run (CUDA graphs: mode reduce-overhead)

From ``scored-head`` on, a ``Runner`` scores through the production ``PopulationEvaluator``,
the code the search runs; the earlier strategies are written out here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import DfloraError
from ..lowrank.population import PopulationEvaluator
from ..models.scoring import autocast, forward_class_logits
from .setup import Setup


@dataclass(frozen=True)
class Flags:
    population: bool = False
    trim: bool = False
    scored_head: bool = False
    reuse: bool = False
    dtype: str = "float32"  # autocast dtype
    compile: str | None = None  # None | torch.compile mode ("default", "reduce-overhead" = CUDA graphs)


@dataclass(frozen=True)
class Strategy:
    name: str
    flags: Flags
    adds: str  # what it adds to ``base``
    base: str | None
    max_tokens: int | None = None  # None = the run's budget


def _chain() -> dict[str, Strategy]:
    f0 = Flags()
    pop = replace(f0, population=True)
    trim = replace(pop, trim=True)
    head = replace(trim, scored_head=True)
    reuse = replace(head, reuse=True)
    bf16 = replace(reuse, dtype="bfloat16")
    out = [
        Strategy("reference", f0, "one candidate per forward, fp32, full-vocabulary logits", None),
        Strategy("reference-bf16", replace(f0, dtype="bfloat16"), "bf16 autocast, still one per forward", "reference"),
        Strategy("population", pop, "all candidates in one forward", "reference"),
        Strategy("trim", trim, "length-sorted batches (padding trimmed)", "population"),
        Strategy("scored-head", head, "verbalizer rows at the scored position only", "trim"),
        Strategy("prefix-reuse", reuse, "lower layers once per generation", "scored-head"),
        Strategy("bf16", bf16, "bf16 autocast", "prefix-reuse"),
        Strategy("fp16", replace(reuse, dtype="float16"), "fp16 autocast (instead of bf16)", "prefix-reuse"),
        Strategy("compile", replace(reuse, compile="default"), "torch.compile of the layers that run", "prefix-reuse"),
        Strategy("compile-bf16", replace(bf16, compile="default"), "torch.compile of the layers that run", "bf16"),
        Strategy(
            "cudagraphs-bf16", replace(bf16, compile="reduce-overhead"), "CUDA graphs (compile reduce-overhead)", "bf16"
        ),
    ]
    return {s.name: s for s in out}


STRATEGIES = _chain()
DEFAULT_STRATEGIES = {
    # a CPU default that takes minutes: population (one forward for all candidates: 1.00x the reference here,
    # as slow) and compile (every layer compiled first, minutes beside other jobs, for 1.02x prefix-reuse;
    # benchmarks/results/cpu-speed.json) are left to --strategies
    "cpu": ("reference", "trim", "scored-head", "prefix-reuse", "bf16", "fp16"),
    "cuda": (
        "reference",
        "reference-bf16",
        "population",
        "trim",
        "scored-head",
        "prefix-reuse",
        "bf16",
        "fp16",
        # compile-bf16 and cudagraphs-bf16 stay opt-in (--strategies) until they have run on a GPU: the GPU
        # script measures them in a step of their own (benchmarks/gpu/run.sh)
    ),
}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def strategy_names(spec: str | None, device: torch.device) -> list[str]:
    """A comma list of strategy names, checked; empty: the device's defaults."""
    if not spec:
        return list(DEFAULT_STRATEGIES["cuda" if device.type == "cuda" else "cpu"])
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in STRATEGIES]
    if bad:
        raise DfloraError(f"unknown strategies {bad}; choose from {list(STRATEGIES)}")
    return names


# -- the strategies' forward passes --------------------------------------------------------------------------
def untrimmed_batches(data, max_tokens: int, device, copies: int = 1):
    """Examples in their original order, every chunk padded to the longest prompt of the set."""
    T = int(data.lengths.max())
    n = max(1, max_tokens // max(1, T * copies))
    return [data.pad(np.arange(s, min(len(data), s + n)), device, T) for s in range(0, len(data), n)]


def full_logits(s: Setup, batch, copies: int, dtype) -> torch.Tensor:
    """Class logits via the plain HF forward with full-vocabulary logits at every position."""
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.positions
    if copies > 1:
        ids, mask, pos = ids.repeat(copies, 1), mask.repeat(copies, 1), pos.repeat(copies)
    with torch.no_grad(), autocast(ids.device, dtype):
        logits = s.loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [B, T, V]
        picked = logits[torch.arange(len(pos), device=pos.device), pos]
        return picked[:, s.label_ids].float()


class Runner:
    """Class logits [P, N, C] of the setup's candidates under one strategy."""

    def __init__(self, s: Setup, st: Strategy):
        self.s, self.st, self.f = s, st, st.flags
        self.dtype = DTYPES[self.f.dtype]
        self.max_tokens = st.max_tokens or s.max_tokens
        self.evaluator = None
        self.reuse_exact: bool | None = None
        if self.f.population and self.f.trim and self.f.scored_head:  # the production evaluator
            self.evaluator = PopulationEvaluator(
                s.loaded, s.head, s.adapter, s.data, self.dtype, self.max_tokens, self.f.reuse
            )
            if self.f.reuse:
                atol = 1e-4 if self.dtype is None else 5e-2
                self.reuse_exact = self.evaluator.verify_prefix_reuse(s.layer, s.Z[:2], atol=atol)
        self._batches: dict[int, list] = {}
        self._compiled: list = []
        self.candidate_seconds: list[float] = []  # one-by-one strategies: per candidate

    def batches(self, copies: int):
        if copies not in self._batches:
            if self.f.trim:
                self._batches[copies] = self.s.data.batches(self.max_tokens, self.s.device, copies)
            else:
                self._batches[copies] = untrimmed_batches(self.s.data, self.max_tokens, self.s.device, copies)
        return self._batches[copies]

    def __call__(self, Z: np.ndarray) -> torch.Tensor:
        s, layer = self.s, self.s.layer
        if self.evaluator is not None:
            return self.evaluator.logits(layer, Z)
        P, N, C = len(Z), len(s.data), len(s.label_ids)
        out = torch.empty(P, N, C)
        saved = s.adapter.get(layer)
        try:
            if not self.f.population:
                self.candidate_seconds = []
                for p, z in enumerate(Z):
                    t0 = time.perf_counter()
                    s.adapter.set_z(layer, z)
                    for batch in self.batches(1):
                        lg = self._forward(batch, 1)
                        out[p, batch.index] = lg.cpu()
                    self.candidate_seconds.append(time.perf_counter() - t0)  # .cpu() synchronised
                return out
            state = s.adapter.population(layer, Z)
            pc = max(1, min(P, self.max_tokens // max(1, int(s.data.lengths.max()))))
            for c0 in range(0, P, pc):
                c1 = min(P, c0 + pc)
                s.adapter.set(layer, s.adapter.take(state, c0, c1))
                for batch in self.batches(c1 - c0):
                    if self.f.scored_head:
                        lg = forward_class_logits(s.loaded, s.head, batch, copies=c1 - c0, dtype=self.dtype)
                    else:
                        lg = self._forward(batch, c1 - c0)
                    out[c0:c1, batch.index] = lg.view(c1 - c0, len(batch.index), C).cpu()
        finally:
            s.adapter.set(layer, saved)
        return out

    def _forward(self, batch, copies):
        return full_logits(self.s, batch, copies, self.dtype)

    # -- torch.compile of the layers that run (those at and above the optimised one) ---------------
    def compile_layers(self) -> None:
        if not self.f.compile:
            return
        import torch._dynamo

        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))
        first = self.s.adapter.model_layers[self.s.layer]
        # the layers below are replayed (their forward is overridden): compiling them would
        # re-trace every generation, so only the layers that run are compiled
        for mod in self.s.adapter.layers[first:]:
            mod.compile(dynamic=True, mode=None if self.f.compile == "default" else self.f.compile)
            self._compiled.append(mod)

    def uncompile(self) -> None:
        for mod in self._compiled:
            mod._compiled_call_impl = None
        self._compiled.clear()
