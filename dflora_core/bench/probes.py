"""What the machine can do and what a pass costs: matmul ceiling, work counts, load.

Peak memory is measured by ``dflora_core.environment`` (the one helper runs and benchmarks
share); what is here is only the benchmarks' business.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .setup import Setup
    from .strategies import Strategy

SLOW_DTYPE = 0.25  # a dtype whose matmuls run below this fraction of fp32's has no native kernels here


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings and peaks are taken after it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loadavg() -> list[float] | None:
    """The machine's 1/5/15-minute load: other processes share the CPU the timings ran on."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gemm_gflops(device: torch.device, hidden: int, tokens: int = 2048, seconds: float = 0.5) -> dict:
    """Measured matmul throughput of a layer-like product [tokens, h] x [h, 4h] (the ceiling)."""
    out = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        try:
            a = torch.randn(tokens, hidden, device=device, dtype=dt)
            b = torch.randn(hidden, 4 * hidden, device=device, dtype=dt)
            a @ b
            sync(device)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                a @ b
                n += 1
                sync(device)
            out[name] = 2 * tokens * hidden * 4 * hidden * n / (time.perf_counter() - t0) / 1e9
        except RuntimeError:
            out[name] = None
    return out


def slow_dtype(gemm: dict, dtype: str) -> str | None:
    """Why a reduced precision is skipped on this device (e.g. fp16 on a CPU without fp16 units)."""
    f32, this = gemm.get("float32"), gemm.get(dtype)
    if dtype == "float32" or not f32 or this is None:
        return None
    if this < SLOW_DTYPE * f32:
        return (
            f"skipped: {dtype} matmuls run at {this:.1f} GFLOP/s here against {f32:.1f} in float32 (no native kernels)"
        )
    return None


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


def head_flops(s: Setup, st: Strategy, tokens_last: int) -> float:
    """The output projection: verbalizer rows at the scored position, or the full vocabulary everywhere."""
    V, H = s.loaded.model.get_output_embeddings().weight.shape
    if st.flags.scored_head:
        return 2.0 * len(s.Z) * len(s.data) * len(s.label_ids) * H
    return 2.0 * tokens_last * V * H
