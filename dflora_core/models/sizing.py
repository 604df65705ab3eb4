"""How much of a GPU a run takes: its padded-token budget and how many runs share one card.

The sizes come from the card (``torch.cuda.mem_get_info``) and a per-run footprint: the model's
weights plus the activations of a population forward, per padded token. The footprint per token was
measured for SmolLM2 (``MEASURED_BYTES_PER_TOKEN``, benchmarks/results/footprint.json: peak memory
above the loaded model of one population forward at two token budgets, no key/value cache); other
models get a conservative estimate from their shape (``estimated_bytes_per_token``). Runs that share a
card say so with ``DFLORA_GPU_SHARE`` (the local backend sets it to its ``jobs``), and each takes its
share of the card's memory. What was chosen goes into the run's record (``gpu_sizing``), never into
its identity: the same run on an H100 and an H200 is the same run.
"""

from __future__ import annotations

import math
import os

import torch

CAP_TOKENS = 131072  # padded tokens per forward: beyond this a population forward is no faster on an H100
MIN_TOKENS = 4096
USABLE = 0.85  # of the card's memory: the CUDA context, the allocator's fragmentation and cached blocks
SAFETY = 1.5  # on every per-token footprint: prompt lengths and allocator rounding vary
SHARE_VARIABLE = "DFLORA_GPU_SHARE"
# measured on the CPU (fp32 activations have the same size on a GPU): bytes above the loaded model per padded
# token of a population forward of SmolLM2 (the slope between two token budgets, benchmarks/results/footprint.json)
MEASURED_BYTES_PER_TOKEN = {"smollm2": 32_814}


def estimated_bytes_per_token(config) -> int:
    """A shape's activations per padded token of a forward without gradients: the widest live tensors of
    one layer (residual, q/k/v, MLP in and out, one row of attention scores per head over 512 tokens), fp32."""
    hidden = int(config.hidden_size)
    inner = next((getattr(config, k) for k in ("intermediate_size", "ffn_dim", "n_inner") if getattr(config, k, None)),
                 4 * hidden)  # fmt: skip
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    return 4 * (6 * hidden + 3 * int(inner) + heads * 512)


def bytes_per_token(name: str, config) -> tuple[int, str]:
    """(bytes per padded token with the safety factor, where the number comes from)."""
    if name in MEASURED_BYTES_PER_TOKEN:
        return int(MEASURED_BYTES_PER_TOKEN[name] * SAFETY), "measured"
    return int(estimated_bytes_per_token(config) * SAFETY), "estimated from the shape"


def weights_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gpu_share() -> float:
    """How many runs share this card (``DFLORA_GPU_SHARE``; 1 when unset or unreadable)."""
    try:
        share = float(os.environ.get(SHARE_VARIABLE, "1"))
    except ValueError:
        return 1.0
    return share if share >= 1 else 1.0


def plan_tokens(name: str, model: torch.nn.Module, device: torch.device) -> dict:
    """The padded-token budget of one run on ``device`` (a CUDA device) and how it was chosen."""
    free, total = torch.cuda.mem_get_info(device)
    share = gpu_share()
    per_token, source = bytes_per_token(name, model.config)
    weights = weights_bytes(model)
    room = total * USABLE / share - weights
    tokens = int(min(CAP_TOKENS, max(MIN_TOKENS, room // per_token)) // 1024 * 1024)
    return {"max_tokens": tokens, "share": share, "bytes_per_token": per_token, "footprint": source,
            "weights_bytes": weights, "total_memory": int(total), "free_memory_at_start": int(free),
            "device_name": torch.cuda.get_device_name(device)}  # fmt: skip


def jobs_per_gpu(name: str, weights: int, config, total: int | None = None) -> int:
    """Runs one card holds at the full token budget (at least 1), from the card's memory."""
    if total is None:
        total = torch.cuda.mem_get_info()[1]
    per_token, _ = bytes_per_token(name, config)
    per_run = weights + CAP_TOKENS * per_token
    return max(1, math.floor(total * USABLE / per_run))


def model_footprint(name: str) -> tuple[int, object]:
    """(weights in bytes, config) of a model without putting it on a GPU: a synthetic shape is built on the
    meta device (no memory), a registered or local model is loaded on the CPU."""
    from .registry import load_model
    from .tiny import SHAPES, build_shape

    if name in SHAPES:
        model, _family = build_shape(name, device="meta")
    else:
        model = load_model(name, "cpu").model
    return weights_bytes(model), model.config


def auto_jobs(name: str, device: str) -> int:
    """``jobs: 0`` (auto) of the local backend: runs per card on a GPU, one per core on a CPU."""
    if device != "cpu" and torch.cuda.is_available():
        weights, config = model_footprint(name)
        return jobs_per_gpu(name, weights, config)
    return os.cpu_count() or 1
