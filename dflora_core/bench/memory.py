"""Peak memory of C-LoRA against gradient LoRA (``dflora bench memory``).

C-LoRA (no gradients, one candidate, and the population evaluator as the search runs it) against
gradient LoRA (PEFT + AdamW, one training step) on the same model, batch and sequence. The peak is
``environment.PeakMemory``'s: process peak RSS on a CPU, the CUDA allocator's high-water mark on a
GPU. On a CPU every configuration runs in a fresh subprocess (peak RSS is a per-process high-water
mark that cannot be reset, and freed heap is not always returned); on a GPU all of them run in this
process, the model loaded once, the allocator's peak reset and its cache emptied between them (a
fresh process costs a CUDA start and a model load each, about 15 s on the GPU machine).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from ..environment import PeakMemory, current_rss
from ..errors import DfloraError
from ..models.scoring import EncodedSet, VerbalizerHead, autocast, body_forward, forward_class_logits
from ..models.tiny import ROBERTA_MASK_ID, SHAPES
from .probes import sync
from .setup import SYNTH_LABEL_IDS, default_max_tokens, load_shape, pad_id

MEMORY_CONFIGS = ("clora-one", "clora-population", "lora-adamw")


def _random_batch(loaded, B: int, T: int) -> EncodedSet:
    """B random prompts of exactly T tokens, scored in the middle (masked) or at the end (causal)."""
    rng = np.random.default_rng(0)
    vocab = loaded.model.config.vocab_size
    ids = rng.integers(5, min(vocab, 50000), size=(B, T))
    masked = loaded.family == "masked"
    if masked:
        ids[:, T // 2] = loaded.tokenizer.mask_token_id if loaded.tokenizer is not None else ROBERTA_MASK_ID
    pos = [T // 2 if masked else T - 1] * B
    return EncodedSet(ids.tolist(), pos, torch.as_tensor(rng.integers(0, 2, B)), pad_id(loaded))


def _clora(args, loaded, head, data, dtype, mt: int) -> None:
    """C-LoRA with an update on every layer, as in a search: one forward, or one population."""
    from ..config import LowRankConfig
    from ..lowrank.build import build_adapter
    from ..lowrank.population import PopulationEvaluator

    dev = loaded.device
    # "ri": random maps need no hidden-state statistics (the values do not matter here)
    adapter = build_adapter(loaded, replace(LowRankConfig(), projection_init="ri"), 0, 1.0, None)
    zs = np.random.default_rng(1).standard_normal((adapter.num_layers, adapter.dim))
    try:
        for layer in range(adapter.num_layers):
            adapter.set_z(layer, zs[layer])
        if args.config == "clora-one":
            B, T = args.batch, args.seq
            forward_class_logits(loaded, head, data.batches(B * T, dev)[0], dtype=dtype)
        else:
            ev = PopulationEvaluator(loaded, head, adapter, data, dtype, mt, True)
            Z = np.random.default_rng(2).standard_normal((args.population, adapter.dim))
            ev.logits(adapter.num_layers // 2, Z)
    finally:
        adapter.remove()  # the model as it was (the GPU path measures the next configuration on it)


def _peft_modules(model, targets) -> list[str]:
    from ..lowrank.arch import arch_spec

    spec = arch_spec(model)
    return sorted({spec.targets[t].path.rsplit(".", 1)[-1] for t in targets})


def _lora_adamw(args, loaded, head, data, dtype) -> None:
    """Gradient LoRA (PEFT, the baseline's settings) for ``args.steps`` AdamW steps."""
    from peft import LoraConfig, get_peft_model

    from ..config import BaselineConfig

    dev = loaded.device
    B, T = args.batch, args.seq
    bc = BaselineConfig()
    mods = _peft_modules(loaded.model, bc.lora_targets)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=bc.lora_rank, lora_alpha=bc.lora_alpha, target_modules=mods))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = data.batches(B * T, dev)[0]
    labels = data.labels.to(dev)
    try:
        for _ in range(args.steps):
            with autocast(dev, dtype):
                hidden = body_forward(loaded.model, batch.input_ids, batch.attention_mask).last_hidden_state
                logits = head(hidden[torch.arange(B, device=dev), batch.positions]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[batch.index.to(dev)])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        peft_model.unload()  # the base model as it was: the GPU path measures the next configuration on it


def load_for_memory(args):
    """(device, the loaded model) of a memory measurement."""
    from ..models.registry import load_model, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    return dev, load_shape(args.model, dev) if args.model in SHAPES else load_model(args.model, args.device)


def memory_worker(args, loaded=None) -> dict:
    """One configuration (in a fresh process on a CPU; ``loaded``: the model already on the GPU)."""
    from ..experiment import resolve_dtype

    dev, loaded = (loaded.device, loaded) if loaded is not None else load_for_memory(args)
    B, T = args.batch, args.seq
    data = _random_batch(loaded, B, T)
    head = VerbalizerHead(loaded, list(SYNTH_LABEL_IDS))
    dtype = resolve_dtype(args.dtype, dev)
    mt = args.max_tokens or default_max_tokens(dev)
    sync(dev)
    base_mem = int(torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else current_rss()
    t0 = time.perf_counter()
    with PeakMemory(dev) as mem:
        if args.config.startswith("clora"):
            _clora(args, loaded, head, data, dtype, mt)
        elif args.config == "lora-adamw":
            _lora_adamw(args, loaded, head, data, dtype)
        else:
            raise DfloraError(f"unknown memory config {args.config}")
        sync(dev)
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
        "max_tokens": mt if args.config == "clora-population" else None,
    }


def run_memory(args, log=print, on_row=None) -> list[dict]:
    """Every configuration of ``args.configs``: in its own ``dflora bench memory-worker`` process on a CPU,
    in this process on a GPU (module docstring). ``on_row(rows)`` after each (incremental output)."""
    from ..models.registry import resolve_device

    if resolve_device(args.device).type == "cuda":
        return _run_memory_here(args, log, on_row)
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
        _ratios_vs_lora(rows)
        if on_row is not None:
            on_row(rows)
    return rows


def _run_memory_here(args, log, on_row) -> list[dict]:
    """The GPU path: one process, one model load, the allocator's peak reset before each configuration."""
    import gc
    from argparse import Namespace

    _dev, loaded = load_for_memory(args)
    rows = []
    for config in args.configs.split(","):
        gc.collect()
        torch.cuda.empty_cache()  # what an earlier configuration cached is not this one's peak
        try:
            row = memory_worker(Namespace(**{**vars(args), "config": config}), loaded=loaded)
        except (RuntimeError, DfloraError) as exc:  # e.g. out of memory: the row says so, the others still run
            row = {"config": config, "model": args.model, "error": [f"{type(exc).__name__}: {exc}"[:300]]}
            log(f"  {config}: failed: {row['error'][0]}")
        else:
            log(f"  {config}: peak {row['peak_mem_bytes'] / 2**20:.0f} MiB ({row['seconds']:.1f} s, in this process)")
        rows.append(row)
        _ratios_vs_lora(rows)
        if on_row is not None:
            on_row(rows)
    return rows


def _ratios_vs_lora(rows: list[dict]) -> None:
    """Each row's peak against gradient LoRA's: in all, and above the memory the loaded model takes."""
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
