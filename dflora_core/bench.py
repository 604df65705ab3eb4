"""Fitness evaluations per second, fidelity and memory, measured side by side (``dflora bench``).

    dflora bench speed    --model smollm2 --out benchmarks/results/cpu-speed.json
    dflora bench fidelity --model smollm2 --tasks sst2,rte,agnews --layers 0,10,20,29
    dflora bench sweep    --model smollm2 --max-tokens 512,1024,2048,4096
    dflora bench memory   --model gpt2-shape --batch 16 --seq 512
    dflora bench table    benchmarks/results/cpu-speed.json

``speed`` scores the SAME population of candidates (one generation of one layer, z drawn
as CMA-ES's first generation draws it) with every strategy, in one process, on the same
batch: an untimed pass per strategy first (fitnesses, work counts, compilation), then
``--reps`` timed passes interleaved across strategies (the order rotates every repetition)
and the median. Strategies are cumulative, each adds one optimisation to the previous:

    reference     one candidate per forward, fp32, plain HF forward with full-vocabulary
                  logits, the whole set padded to its longest prompt (the released code's way)
    population    all candidates of the generation in one forward (batch repeated P times)
    trim          length-sorted batches (no work on pad tokens beyond a chunk's longest)
    scored-head   verbalizer rows at the scored position only (no full-vocabulary logits)
    prefix-reuse  layers below the optimised one computed once per generation and replayed
    bf16 / fp16   autocast on top of prefix-reuse
    compile...    torch.compile of the layers that run (CUDA graphs: mode reduce-overhead)

Fidelity: the fitness (mean cross-entropy over the verbalizer logits) of the candidates under
each strategy against the fp32 reference: Spearman correlation, same best candidate, largest
absolute difference. Synthetic shapes (``*-shape``) are random weights built from configs on
random token ids: their speed is real, their fidelity numbers say little.

``memory`` runs every configuration in a fresh subprocess (peak memory is a per-process
high-water mark): C-LoRA (no gradients, one candidate, and the population evaluator as the
search runs it) against gradient LoRA (PEFT + AdamW, one training step) on the same model,
batch and sequence. CPU: process peak RSS; CUDA: ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DfloraError

# -- synthetic shapes: real architectures, random weights (speed does not depend on the values) ----------
SHAPES: dict[str, tuple[str, dict]] = {
    "roberta-large-shape": (
        "roberta",
        dict(
            vocab_size=50265,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    ),
    "roberta-base-shape": (
        "roberta",
        dict(
            vocab_size=50265,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    ),
    "gpt2-xl-shape": ("gpt2", dict(vocab_size=50257, n_embd=1600, n_layer=48, n_head=25, n_positions=1024)),
    "gpt2-large-shape": ("gpt2", dict(vocab_size=50257, n_embd=1280, n_layer=36, n_head=20, n_positions=1024)),
    "gpt2-medium-shape": ("gpt2", dict(vocab_size=50257, n_embd=1024, n_layer=24, n_head=16, n_positions=1024)),
    "gpt2-shape": ("gpt2", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    # for tests: the synthetic code paths on a model that builds in a second
    "gpt2-tiny-shape": ("gpt2", dict(vocab_size=50257, n_embd=64, n_layer=3, n_head=4, n_positions=256)),
    "roberta-tiny-shape": (
        "roberta",
        dict(
            vocab_size=50265,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=258,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    ),
}
SYNTH_LABEL_IDS = (1000, 2000)  # any two tokens: the values are random anyway
# random weights (init std 0.02) barely react to updates of the paper's scale: the candidates'
# fitnesses would differ by ~1e-6 and their ranking would be fp32 noise; a larger stretch makes
# them differ (fidelity on random weights is still only indicative, speed is unaffected)
SYNTH_ALPHA = 20.0
ROBERTA_MASK_ID = 50264


def build_shape(name: str, device: torch.device):
    """A LoadedModel with random weights from a known config (no hub, no tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

    from .models.registry import LoadedModel

    kind, kw = SHAPES[name]
    if kind == "roberta":
        cfg, cls, family = RobertaConfig(**kw), RobertaForMaskedLM, "masked"
    else:
        cfg = GPT2Config(**kw, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
        cls, family = GPT2LMHeadModel, "causal"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = cls(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    identity = {"name": name, "family": family, "model_type": cfg.model_type, "source": "random init from config"}
    return LoadedModel(name, model, None, family, identity)


def synthetic_set(loaded, n: int, mean_len: int, spread: float = 0.4, seed: int = 0):
    """N random prompts of mean length ``mean_len`` (+-spread), scored as the model family scores."""
    from .models.scoring import EncodedSet

    rng = np.random.default_rng(seed)
    lo, hi = max(4, int(mean_len * (1 - spread))), max(5, int(mean_len * (1 + spread)))
    lengths = rng.integers(lo, hi + 1, size=n)
    vocab = loaded.model.config.vocab_size
    masked = loaded.family == "masked"
    ids, pos = [], []
    for L in lengths:
        seq = rng.integers(5, min(vocab, 50000), size=int(L)).tolist()
        if masked:
            seq[0], seq[-1] = 0, 2  # <s> ... </s>
            p = int(rng.integers(1, L - 1))
            seq[p] = ROBERTA_MASK_ID
        else:
            p = int(L) - 1
        ids.append(seq)
        pos.append(p)
    labels = torch.as_tensor(rng.integers(0, len(SYNTH_LABEL_IDS), size=n), dtype=torch.long)
    pad = loaded.model.config.pad_token_id
    return EncodedSet(ids, pos, labels, int(pad if pad is not None else 0))


# -- what is benchmarked ------------------------------------------------------------------------------------
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
    "cpu": ("reference", "population", "trim", "scored-head", "prefix-reuse", "bf16", "fp16", "compile"),
    "cuda": (
        "reference",
        "reference-bf16",
        "population",
        "trim",
        "scored-head",
        "prefix-reuse",
        "bf16",
        "fp16",
        "compile-bf16",
        "cudagraphs-bf16",
    ),
}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAITHFUL_SPEARMAN = 0.99  # a faster path must rank the candidates like fp32 (issue 7)


# -- the set-up shared by all strategies ---------------------------------------------------------------------
@dataclass
class Setup:
    name: str
    loaded: Any
    head: Any
    data: Any  # EncodedSet
    label_ids: list[int]
    adapter: Any  # LowRankAdapter (all layers patched, all at z = 0)
    layer: int  # adapted-layer index benchmarked
    Z: np.ndarray  # [P, d] the candidates
    max_tokens: int
    task: str | None
    synthetic: bool
    prepare_s: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def describe(self) -> dict:
        lens = self.data.lengths
        return {
            "model": self.name,
            "task": self.task,
            "synthetic_weights": self.synthetic,
            "n_examples": len(self.data),
            "mean_tokens": float(lens.mean()),
            "max_prompt_tokens": int(lens.max()),
            "real_tokens": int(lens.sum()),
            "population": len(self.Z),
            "layer": self.layer,
            "model_layer": int(self.adapter.model_layers[self.layer]),
            "num_layers": len(self.adapter.layers),
            "max_tokens": self.max_tokens,
            "intrinsic_dim": int(self.adapter.dim),
            "targets": list(self.adapter.patch.targets),
            "rank": int(self.adapter.projection.rank),
            "alpha": float(self.adapter.projection.alpha),
        }


def build_adapter(loaded, data, lowrank, seed: int, sigma: float, max_tokens: int):
    """The adapter LayerwiseSearch builds (hidden-state based projections, all layers patched)."""
    from .lowrank.build import build_adapter as build
    from .lowrank.build import measure_scales

    # "ri" needs no statistics (the memory benchmark: values do not matter)
    scales = None if lowrank.projection_init == "ri" else measure_scales(loaded, data, lowrank, max_tokens)[1]
    return build(loaded, lowrank, seed, sigma, scales)


def make_setup(
    model: str,
    device: str = "auto",
    task: str = "sst2",
    seed: int = 42,
    population: int = 20,
    layer: int | None = None,
    max_tokens: int | None = None,
    n_examples: int = 32,
    mean_tokens: int = 40,
    loaded=None,
    cfg_overrides: dict | None = None,
    shots: int | None = None,
) -> Setup:
    """The model, the few-shot train set (or random prompts for a shape), the adapter and P candidates."""
    from .config import RunConfig
    from .experiment import DEFAULT_MAX_TOKENS
    from .models.registry import resolve_device
    from .models.scoring import VerbalizerHead

    t0 = time.perf_counter()
    # the test set is not used: a small sample keeps the preparation short
    overrides: dict[str, Any] = {"data.max_test": 16}
    if model in SHAPES:
        overrides["lowrank.alpha"] = SYNTH_ALPHA
    if shots:
        overrides["data.shots"] = shots
    overrides.update(cfg_overrides or {})
    cfg = RunConfig().replace(
        **{"model.name": model, "model.device": device, "data.task": task, "seed": seed, "progress": False},
        **overrides,
    )
    if model in SHAPES:
        loaded = loaded or build_shape(model, resolve_device(device))
        data = synthetic_set(loaded, n_examples, mean_tokens, seed=seed)
        label_ids = list(SYNTH_LABEL_IDS)
        head = VerbalizerHead(loaded, label_ids)
        task_name = None
    else:
        from .experiment import Experiment

        exp = Experiment.prepare(cfg, loaded=loaded)
        loaded, data, head, task_name = exp.loaded, exp.train, exp.head, exp.task.name
        label_ids = list(exp.encoder.label_token_ids)
    mt = max_tokens or DEFAULT_MAX_TOKENS.get(loaded.device.type, 16384)
    adapter = build_adapter(loaded, data, cfg.lowrank, seed, cfg.optim.sigma, mt)
    n = adapter.num_layers
    li = n // 2 if layer is None else (layer % n)
    # the first CMA-ES generation: mean 0, step sigma, isotropic
    Z = np.random.default_rng([seed, 7, li]).standard_normal((population, adapter.dim)) * cfg.optim.sigma
    return Setup(model, loaded, head, data, label_ids, adapter, li, Z, mt, task_name, model in SHAPES,
                 time.perf_counter() - t0)  # fmt: skip


# -- the strategies' forward passes --------------------------------------------------------------------------
def untrimmed_batches(data, max_tokens: int, device, copies: int = 1):
    """Examples in their original order, every chunk padded to the longest prompt of the set."""
    T = int(data.lengths.max())
    n = max(1, max_tokens // max(1, T * copies))
    return [data.pad(np.arange(s, min(len(data), s + n)), device, T) for s in range(0, len(data), n)]


def full_logits(s: Setup, batch, copies: int, dtype) -> torch.Tensor:
    """Class logits via the plain HF forward with full-vocabulary logits at every position."""
    from .models.scoring import autocast

    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.positions
    if copies > 1:
        ids, mask, pos = ids.repeat(copies, 1), mask.repeat(copies, 1), pos.repeat(copies)
    with torch.no_grad(), autocast(ids.device, dtype):
        logits = s.loaded.model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        picked = logits[torch.arange(len(pos), device=pos.device), pos]
        return picked[:, s.label_ids].float()


class Runner:
    """Class logits [P, N, C] of the setup's candidates under one strategy."""

    def __init__(self, s: Setup, st: Strategy):
        from .lowrank.population import PopulationEvaluator

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
        from .models.scoring import forward_class_logits

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


# -- measurement helpers -------------------------------------------------------------------------------------
def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average the ranks of ties
            tie = x == v
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity(f, ref) -> dict:
    f, ref = np.asarray(f, dtype=float), np.asarray(ref, dtype=float)
    return {
        "spearman_vs_fp32": spearman(f, ref),
        "same_best": bool(np.argmin(f) == np.argmin(ref)),
        "max_abs_fitness_diff": float(np.max(np.abs(f - ref))),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: CUDA allocator high-water mark, or the process peak RSS (reset first)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"
        self.value: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.value = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.value = peak_rss()


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    from .environment import peak_rss as env_peak_rss

    return env_peak_rss()


def current_rss() -> int | None:
    return _proc_status("VmRSS")


def gemm_gflops(device: torch.device, hidden: int, tokens: int = 2048, seconds: float = 0.5) -> dict:
    """Measured matmul throughput of a layer-like product [tokens, h] x [h, 4h] (the ceiling)."""
    out = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        try:
            a = torch.randn(tokens, hidden, device=device, dtype=dt)
            b = torch.randn(hidden, 4 * hidden, device=device, dtype=dt)
            a @ b
            _sync(device)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                a @ b
                n += 1
                _sync(device)
            out[name] = 2 * tokens * hidden * 4 * hidden * n / (time.perf_counter() - t0) / 1e9
        except RuntimeError:
            out[name] = None
    return out


class WorkCounter:
    """Padded tokens through each transformer layer during a pass (replayed layers do no work)."""

    def __init__(self, s: Setup):
        self.s = s
        self.handles = []
        self.params_per_layer = [sum(p.numel() for p in mod.parameters()) for mod in s.adapter.layers]

    def __enter__(self):
        self.tokens = [0] * len(self.params_per_layer)
        self.flops = 0.0
        for i, mod in enumerate(self.s.adapter.layers):
            self.handles.append(mod.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def _hook(self, i):
        def hook(mod, args, kwargs):
            if "forward" in mod.__dict__:  # replayed by prefix reuse: no computation
                return
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, torch.Tensor) and h.dim() == 3:
                tok = h.shape[0] * h.shape[1]
                self.tokens[i] += tok
                # 2 flops per weight per token, plus attention scores and mixing (4 T h per token)
                self.flops += 2.0 * self.params_per_layer[i] * tok + 4.0 * tok * h.shape[1] * h.shape[2]

        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _head_flops(s: Setup, st: Strategy, tokens_last: int) -> float:
    """The output projection: verbalizer rows at the scored position, or the full vocabulary everywhere."""
    V, H = s.loaded.model.get_output_embeddings().weight.shape
    if st.flags.scored_head:
        return 2.0 * len(s.Z) * len(s.data) * len(s.label_ids) * H
    return 2.0 * tokens_last * V * H


# -- the speed benchmark ---------------------------------------------------------------------------------------
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
    from .metrics import losses

    strategies = [STRATEGIES[n] if isinstance(n, str) else n for n in names]
    if with_reference and strategies[0].name != "reference":
        strategies = [STRATEGIES["reference"], *[x for x in strategies if x.name != "reference"]]
    ref_name = strategies[0].name  # fidelity and ratios are against the first row (the reference)
    dev = s.device
    labels = s.data.labels
    hidden = max(256, int(s.head.weight.shape[1]))  # tiny widths measure call overhead, not the units
    ceil = gemm_gflops(dev, hidden, seconds=gemm_seconds)
    log(f"  gemm GFLOP/s at hidden {hidden}: " + ", ".join(f"{k} {_fmt(v, '.1f')}" for k, v in ceil.items()))
    rows: dict[str, Row] = {}
    runners: dict[str, Runner] = {}
    fits: dict[str, np.ndarray] = {}
    P = len(s.Z)

    def row_for(st: Strategy) -> Row:
        return Row(s.name, st.name, str(dev), st.flags.dtype, None, None, None, None, None,
                   PeakMemory(dev).kind, adds=st.adds, base=st.base, flags=asdict(st.flags),
                   max_tokens=st.max_tokens or s.max_tokens, setup=s.describe())  # fmt: skip

    # untimed pass: fitnesses, work, compilation, peak memory
    for st in strategies:
        row = rows[st.name] = row_for(st)
        slow = _slow_dtype(ceil, st.flags.dtype)
        if slow:
            row.error = slow
            log(f"  {st.name}: {slow}")
            continue
        try:
            if st.flags.compile and dev.type == "cpu" and st.flags.compile != "default":
                raise DfloraError(f"compile mode {st.flags.compile} needs CUDA")
            r = Runner(s, st)
            row.prefix_reuse_exact = r.reuse_exact
            counter = WorkCounter(s) if not st.flags.compile else contextlib.nullcontext()
            r.compile_layers()
            _sync(dev)
            t0 = time.perf_counter()
            with PeakMemory(dev) as mem, counter:
                lg = r(s.Z)
            _sync(dev)
            row.warmup_s = time.perf_counter() - t0
            row.peak_mem_bytes = mem.value
            r.uncompile()
            if isinstance(counter, WorkCounter):
                row.layer_tokens_per_eval = sum(counter.tokens) / P
                flops = counter.flops + _head_flops(s, st, counter.tokens[-1])
                row.gflop_per_eval = flops / P / 1e9
            fits[st.name] = losses(lg, labels, "ce").double().numpy()
            row.candidate_seconds = list(r.candidate_seconds[1:])
            runners[st.name] = r
            log(f"  warm {st.name:16s} {row.warmup_s:8.2f} s")
        except Exception as err:  # noqa: BLE001 - a failing strategy is reported, the others still run
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            log(f"  {st.name}: {row.error}")
    # compiled rows reuse the work count of their base
    for st in strategies:
        row = rows[st.name]
        if st.flags.compile and st.base in rows and row.error is None:
            row.layer_tokens_per_eval = rows[st.base].layer_tokens_per_eval
            row.gflop_per_eval = rows[st.base].gflop_per_eval
    # timed passes, interleaved, the order rotating every repetition
    live = [st for st in strategies if st.name in runners]
    for rep in range(reps):
        k = rep % max(1, len(live))
        for st in live[k:] + live[:k]:
            r = runners[st.name]
            try:
                r.compile_layers()
                _sync(dev)
                one_by_one = not st.flags.population
                Z = s.Z[: one_by_one_candidates or P] if one_by_one else s.Z
                t0 = time.perf_counter()
                r(Z)
                _sync(dev)
                rows[st.name].seconds.append(time.perf_counter() - t0)
                if one_by_one:
                    rows[st.name].candidate_seconds += r.candidate_seconds
            except Exception as err:  # noqa: BLE001
                rows[st.name].error = f"{type(err).__name__}: {err}"[:300]
            finally:
                r.uncompile()
        log(
            f"  rep {rep + 1}/{reps}: "
            + ", ".join(f"{n}={rows[n].seconds[-1]:.2f}s" for n in runners if rows[n].seconds)
        )
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
    return list(rows.values()), {"gemm_gflops": ceil, "loadavg_end": _loadavg(), "reference_strategy": ref_name}


SLOW_DTYPE = 0.25  # a dtype whose matmuls run below this fraction of fp32's has no native kernels here


def _slow_dtype(gemm: dict, dtype: str) -> str | None:
    """Why a reduced precision is skipped on this device (e.g. fp16 on a CPU without fp16 units)."""
    f32, this = gemm.get("float32"), gemm.get(dtype)
    if dtype == "float32" or not f32 or this is None:
        return None
    if this < SLOW_DTYPE * f32:
        return (
            f"skipped: {dtype} matmuls run at {this:.1f} GFLOP/s here against {f32:.1f} in float32 (no native kernels)"
        )
    return None


def mark_fastest(rows) -> None:
    rows = list(rows)
    ok = [
        r
        for r in rows
        if r.evals_per_s
        and r.error is None
        and r.same_best
        and r.spearman_vs_fp32 is not None
        and r.spearman_vs_fp32 >= FAITHFUL_SPEARMAN
    ]
    for r in rows:
        r.fastest_faithful = False
    if ok:
        max(ok, key=lambda r: r.evals_per_s).fastest_faithful = True


# -- fidelity of reduced precision across tasks and layers ---------------------------------------------------------
def run_fidelity(s: Setup, layers, dtypes=("bfloat16", "float16"), log=print) -> list[dict]:
    """fp32 vs autocast fitnesses of the same candidates, on the production path (prefix reuse)."""
    from .lowrank.population import PopulationEvaluator
    from .metrics import losses

    out = []
    P = len(s.Z)
    n = s.adapter.num_layers
    for layer in layers:
        li = layer % n
        Z = np.random.default_rng([42, 7, li]).standard_normal((P, s.adapter.dim)) * float(np.std(s.Z))
        fits = {}
        for name in ("float32", *dtypes):
            ev = PopulationEvaluator(s.loaded, s.head, s.adapter, s.data, DTYPES[name], s.max_tokens, True)
            try:
                fits[name] = losses(ev.logits(li, Z), s.data.labels, "ce").double().numpy()
            except RuntimeError as err:
                fits[name] = err
        ref = fits["float32"]
        for name in dtypes:
            row = {
                "model": s.name,
                "task": s.task,
                "layer": li,
                "model_layer": int(s.adapter.model_layers[li]),
                "dtype": name,
                "device": str(s.device),
                "population": P,
                "fp32_fitness_spread": float(np.std(ref)),
                "fp32_fitness_range": [float(ref.min()), float(ref.max())],
            }
            if isinstance(fits[name], Exception):
                row["error"] = str(fits[name])[:300]
            else:
                row.update(fidelity(fits[name], ref))
                row["faithful"] = bool(row["same_best"] and row["spearman_vs_fp32"] >= FAITHFUL_SPEARMAN)
            out.append(row)
            log(
                f"  {s.name} {s.task} layer {li:2d} {name}: spearman {row.get('spearman_vs_fp32', float('nan')):.4f}"
                f" same_best {row.get('same_best')} max|df| {row.get('max_abs_fitness_diff', float('nan')):.2e}"
                f" (fp32 spread {row['fp32_fitness_spread']:.2e})"
            )
    return out


# -- memory: C-LoRA against gradient LoRA, one fresh process per configuration --------------------------------------
MEMORY_CONFIGS = ("clora-one", "clora-population", "lora-adamw")


def _peft_modules(model, targets) -> list[str]:
    from .lowrank.arch import arch_spec

    spec = arch_spec(model)
    return sorted({spec.targets[t].path.rsplit(".", 1)[-1] for t in targets})


def memory_worker(args) -> dict:
    """One configuration in this (fresh) process; returns its peak memory."""
    from .experiment import DEFAULT_MAX_TOKENS, resolve_dtype
    from .models.registry import load_model, resolve_device
    from .models.scoring import EncodedSet, VerbalizerHead, forward_class_logits

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    loaded = build_shape(args.model, dev) if args.model in SHAPES else load_model(args.model, args.device)
    rng = np.random.default_rng(0)
    vocab = loaded.model.config.vocab_size
    B, T = args.batch, args.seq
    ids = rng.integers(5, min(vocab, 50000), size=(B, T))
    masked = loaded.family == "masked"
    if masked:
        ids[:, T // 2] = loaded.tokenizer.mask_token_id if loaded.tokenizer is not None else ROBERTA_MASK_ID
    pos = [T // 2 if masked else T - 1] * B
    pad = loaded.model.config.pad_token_id
    data = EncodedSet(ids.tolist(), pos, torch.as_tensor(rng.integers(0, 2, B)), int(pad if pad is not None else 0))
    label_ids = list(SYNTH_LABEL_IDS)
    head = VerbalizerHead(loaded, label_ids)
    dtype = resolve_dtype(args.dtype, dev)
    _sync(dev)
    base_mem = int(torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else current_rss()
    t0 = time.perf_counter()
    with PeakMemory(dev) as mem:
        if args.config.startswith("clora"):
            from .config import LowRankConfig
            from .lowrank.population import PopulationEvaluator

            lr = LowRankConfig()
            mt = args.max_tokens or DEFAULT_MAX_TOKENS.get(dev.type, 16384)
            adapter = build_adapter(loaded, data, replace(lr, projection_init="ri"), 0, 1.0, max(mt, B * T))
            zs = np.random.default_rng(1).standard_normal((adapter.num_layers, adapter.dim))
            for layer in range(adapter.num_layers):  # every layer carries an update, as in a search
                adapter.set_z(layer, zs[layer])
            if args.config == "clora-one":
                batch = data.batches(B * T, dev)[0]
                forward_class_logits(loaded, head, batch, dtype=dtype)
            else:
                ev = PopulationEvaluator(loaded, head, adapter, data, dtype, mt, True)
                Z = np.random.default_rng(2).standard_normal((args.population, adapter.dim))
                ev.logits(adapter.num_layers // 2, Z)
        elif args.config == "lora-adamw":
            from peft import LoraConfig, get_peft_model

            from .config import BaselineConfig
            from .models.scoring import autocast

            bc = BaselineConfig()
            mods = _peft_modules(loaded.model, bc.lora_targets)
            peft_model = get_peft_model(
                loaded.model, LoraConfig(r=bc.lora_rank, lora_alpha=bc.lora_alpha, target_modules=mods)
            )
            params = [p for p in peft_model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)
            batch = data.batches(B * T, dev)[0]
            labels = data.labels.to(dev)
            for _ in range(args.steps):
                with autocast(dev, dtype):
                    hidden = loaded.model.base_model(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask
                    ).last_hidden_state
                    logits = head(hidden[torch.arange(B, device=dev), batch.positions]).float()
                loss = torch.nn.functional.cross_entropy(logits, labels[batch.index.to(dev)])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            raise DfloraError(f"unknown memory config {args.config}")
        _sync(dev)
    return {
        "config": args.config,
        "model": args.model,
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        "batch": B,
        "seq": T,
        "peak_mem_bytes": mem.value,
        "peak_mem_kind": mem.kind,
        "mem_after_load_bytes": base_mem,
        "seconds": time.perf_counter() - t0,
        "population": args.population if args.config == "clora-population" else 1,
        "max_tokens": (args.max_tokens or DEFAULT_MAX_TOKENS.get(dev.type, 16384))
        if args.config == "clora-population"
        else None,
    }


def run_memory(args, log=print) -> list[dict]:
    rows = []
    for config in args.configs.split(","):
        cmd = [sys.executable, "-m", "dflora_core", "bench", "memory-worker", "--config", config,
               "--model", args.model, "--device", args.device, "--batch", str(args.batch), "--seq", str(args.seq),
               "--dtype", args.dtype, "--population", str(args.population), "--steps", str(args.steps)]  # fmt: skip
        if args.max_tokens:
            cmd += ["--max-tokens", str(args.max_tokens)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log("  " + shlex.join(cmd[1:]))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            rows.append({"config": config, "model": args.model, "error": proc.stderr.strip().splitlines()[-1:]})
            log(f"  {config}: failed: {proc.stderr.strip()[-300:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        log(f"  {config}: peak {row['peak_mem_bytes'] / 2**20:.0f} MiB ({row['seconds']:.1f} s)")
    lora = next((r for r in rows if r.get("config") == "lora-adamw" and "error" not in r), None)
    for r in rows:
        if lora and "error" not in r:
            r["ratio_vs_lora"] = r["peak_mem_bytes"] / lora["peak_mem_bytes"]
            base = r.get("mem_after_load_bytes")
            lbase = lora.get("mem_after_load_bytes")
            if base is not None and lbase is not None:
                r["above_load_bytes"] = r["peak_mem_bytes"] - base
                denom = lora["peak_mem_bytes"] - lbase
                r["ratio_vs_lora_above_load"] = (r["peak_mem_bytes"] - base) / denom if denom > 0 else None
    return rows


# -- output -------------------------------------------------------------------------------------------------------------
def header(argv: list[str] | None) -> dict:
    from .environment import git_commit, machine_info, package_versions

    return {
        "command": "dflora " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "versions": package_versions(),
        "git": git_commit(),
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": _loadavg(),  # other processes on the machine (timings are shared-CPU numbers)
    }


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def speed_table(rows) -> str:
    lines = [
        "| model | strategy | dtype | evals/s | x reference | Spearman | same best | peak mem (MiB) | GFLOP/eval | ceiling evals/s |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        r = r if isinstance(r, dict) else asdict(r)
        name = r["strategy"] + (" **(fastest faithful)**" if r.get("fastest_faithful") else "")
        if r.get("error"):
            name += f" (failed: {r['error'][:60]})"
        lines.append(
            f"| {r['model']} | {name} | {r['dtype']} | {_fmt(r['evals_per_s'], '.2f')} | "
            f"{_fmt(r['ratio_vs_reference'], '.2f')} | {_fmt(r['spearman_vs_fp32'], '.4f')} | "
            f"{_fmt(r['same_best'], '')} | {_fmt(r['peak_mem_bytes'] and r['peak_mem_bytes'] / 2**20, '.0f')} | "
            f"{_fmt(r.get('gflop_per_eval'), '.2f')} | {_fmt(r.get('ceiling_evals_per_s'), '.1f')} |"
        )
    return "\n".join(lines)


def fidelity_table(rows) -> str:
    lines = [
        "| model | task | layer | dtype | Spearman | same best | max abs diff | fp32 spread |",
        "|---|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['model_layer']} | {r['dtype']} | "
            f"{_fmt(r.get('spearman_vs_fp32'), '.4f')} | {r.get('same_best', '-')} | "
            f"{_fmt(r.get('max_abs_fitness_diff'), '.1e')} | {_fmt(r['fp32_fitness_spread'], '.1e')} |"
        )
    return "\n".join(lines)


def memory_table(rows) -> str:
    lines = [
        "| model | config | batch x seq | dtype | peak (MiB) | above load (MiB) | ratio vs LoRA | ratio above load |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['config']} | {r['batch']} x {r['seq']} | {r['dtype']} | "
            f"{r['peak_mem_bytes'] / 2**20:.0f} | {_fmt(r.get('above_load_bytes') and r['above_load_bytes'] / 2**20, '.0f')} | "
            f"{_fmt(r.get('ratio_vs_lora'), '.3f')} | {_fmt(r.get('ratio_vs_lora_above_load'), '.3f')} |"
        )
    return "\n".join(lines)


def _write(path: str | None, doc: dict) -> None:
    if path:
        from .fileio import atomic_write_json

        atomic_write_json(path, doc)
        print(f"wrote {path}")


def _models(spec: str) -> list[str]:
    return [m.strip() for m in spec.split(",") if m.strip()]


def _strategies(spec: str | None, device: torch.device) -> list[str]:
    if not spec:
        return list(DEFAULT_STRATEGIES["cuda" if device.type == "cuda" else "cpu"])
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in STRATEGIES]
    if bad:
        raise DfloraError(f"unknown strategies {bad}; choose from {list(STRATEGIES)}")
    return names


# -- CLI -------------------------------------------------------------------------------------------------------------------
def _common(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--quiet", action="store_true")


def _setup_args(p) -> None:
    p.add_argument("--model", default="smollm2", help=f"comma list: registry names, paths or {sorted(SHAPES)}")
    p.add_argument("--task", default="sst2", help="task of the few-shot train set (real models)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--shots", type=int, default=None, help="examples per class (default: the config's, 16)")
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--layer", type=int, default=None, help="adapted layer benchmarked (default: the middle one)")
    p.add_argument("--examples", type=int, default=32, help="synthetic shapes: prompts")
    p.add_argument("--mean-tokens", type=int, default=40, help="synthetic shapes: mean prompt length")


def _log(args):
    return (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))


def cmd_speed(args) -> int:
    from .models.registry import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    log = _log(args)
    doc = {**header(args.argv), "mode": "speed", "reps": args.reps, "models": {}, "rows": []}
    dev = resolve_device(args.device)
    names = _strategies(args.strategies, dev)
    for model in _models(args.model):
        log(f"{model}: preparing")
        s = make_setup(model, args.device, args.task, args.seed, args.popsize, args.layer, args.max_tokens,
                       args.examples, args.mean_tokens, shots=args.shots)  # fmt: skip
        log(f"{model}: {s.describe()}")
        rows, extra = run_speed(s, names, args.reps, log, args.one_by_one_candidates)
        s.adapter.remove()
        meta = {**s.describe(), **extra, "prepare_s": s.prepare_s}
        doc["models"][model] = meta
        for r in rows:
            d = asdict(r)
            d.update(command=doc["command"], versions=doc["versions"], machine=doc["machine"])
            doc["rows"].append(d)
        log(speed_table(rows))
        del s
    _write(args.out, doc)
    return 0


def cmd_sweep(args) -> int:
    from .models.registry import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    log = _log(args)
    dev = resolve_device(args.device)
    budgets = [int(x) for x in args.max_tokens.split(",")]
    base = [STRATEGIES[n] for n in args.strategies.split(",")]
    doc = {**header(args.argv), "mode": "sweep", "reps": args.reps, "rows": []}
    for model in _models(args.model):
        s = make_setup(model, str(dev), args.task, args.seed, args.popsize, args.layer, budgets[0],
                       args.examples, args.mean_tokens, shots=args.shots)  # fmt: skip
        variants = [STRATEGIES["reference"]] if args.with_reference else []
        variants += [replace(st, name=f"{st.name}@{mt}", max_tokens=mt, base=st.name) for st in base for mt in budgets]
        rows, extra = run_speed(
            s, variants, args.reps, log, args.one_by_one_candidates, with_reference=args.with_reference
        )
        s.adapter.remove()
        for r in rows:
            d = asdict(r)
            d.update(command=doc["command"], **extra)
            doc["rows"].append(d)
        log(speed_table(rows))
    _write(args.out, doc)
    return 0


def cmd_fidelity(args) -> int:
    from .models.registry import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    log = _log(args)
    dev = resolve_device(args.device)
    layers = [int(x) for x in args.layers.split(",")]
    doc = {**header(args.argv), "mode": "fidelity", "rows": []}
    for model in _models(args.model):
        loaded = None
        for task in args.tasks.split(","):
            s = make_setup(model, str(dev), task, args.seed, args.popsize, None, args.max_tokens, loaded=loaded,
                           shots=args.shots)  # fmt: skip
            loaded = s.loaded
            doc["rows"] += run_fidelity(s, layers, tuple(args.dtypes.split(",")), log)
            s.adapter.remove()
    log(fidelity_table(doc["rows"]))
    _write(args.out, doc)
    return 0


def cmd_memory(args) -> int:
    log = _log(args)
    doc = {**header(args.argv), "mode": "memory", "rows": run_memory(args, log)}
    log(memory_table(doc["rows"]))
    _write(args.out, doc)
    return 0


def cmd_memory_worker(args) -> int:
    print(json.dumps(memory_worker(args)))
    return 0


def cmd_table(args) -> int:
    doc = json.loads(Path(args.path).read_text())
    mode = doc.get("mode")
    table = {"speed": speed_table, "sweep": speed_table, "fidelity": fidelity_table, "memory": memory_table}[mode]
    print(table(doc["rows"]))
    print(f"\n`{doc['command']}`")
    return 0


def add_parser(parser) -> None:
    sub = parser.add_subparsers(dest="bench_mode", required=True)
    p = sub.add_parser("speed", help="evaluations per second of every strategy, side by side")
    _common(p)
    _setup_args(p)
    p.add_argument("--strategies", default=None, help=f"comma list from {list(STRATEGIES)}; default per device")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    p.add_argument(
        "--one-by-one-candidates",
        type=int,
        default=None,
        help="candidates timed per repetition by the one-per-forward strategies (default: all)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="padded-token budget (default: the device's)")
    p.set_defaults(fn=cmd_speed)
    p = sub.add_parser("sweep", help="the fast path at several padded-token budgets (max_tokens)")
    _common(p)
    _setup_args(p)
    p.add_argument("--max-tokens", default="512,1024,2048,4096")
    p.add_argument("--strategies", default="prefix-reuse,bf16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--one-by-one-candidates", type=int, default=2, help="reference candidates timed per repetition")
    p.add_argument(
        "--with-reference",
        action="store_true",
        help="include the one-by-one fp32 reference (slow); otherwise ratios and fidelity are against the first row",
    )
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("fidelity", help="reduced precision against fp32 over tasks and layers")
    _common(p)
    _setup_args(p)
    p.add_argument("--tasks", default="sst2,rte,agnews")
    p.add_argument("--layers", default="0,10,20,29", help="adapted layers (negative = from the top)")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--max-tokens", type=int, default=None)
    p.set_defaults(fn=cmd_fidelity)
    for name, helptext in (
        ("memory", "peak memory of C-LoRA against gradient LoRA (fresh process each)"),
        ("memory-worker", "one memory configuration (internal)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--model", default="gpt2-shape")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--seq", type=int, default=512)
        p.add_argument("--dtype", default="auto", help="autocast dtype of both methods")
        p.add_argument("--population", type=int, default=20)
        p.add_argument("--max-tokens", type=int, default=None)
        p.add_argument("--steps", type=int, default=2, help="gradient LoRA: training steps (AdamW state after 1)")
        if name == "memory":
            p.add_argument("--configs", default=",".join(MEMORY_CONFIGS))
            p.add_argument("--timeout", type=int, default=3600)
            p.set_defaults(fn=cmd_memory)
        else:
            p.add_argument("--config", required=True, choices=MEMORY_CONFIGS)
            p.set_defaults(fn=cmd_memory_worker)
    p = sub.add_parser("table", help="print a results JSON as a markdown table")
    p.add_argument("path")
    p.set_defaults(fn=cmd_table)
    parser.set_defaults(argv=None)

