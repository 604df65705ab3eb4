"""Where the attention projections live, per architecture (a table, not forked model files).

An ``ArchSpec`` names the list of transformer layers (relative to ``model.base_model``) and,
for each target letter (q, k, v, o), the module inside a layer and which of its output
features belong to that target: all of them for a separate projection, a contiguous
slice of GPT-2's fused ``c_attn``, or per-head interleaved rows of GPT-NeoX's fused
``query_key_value`` (its output is viewed as [heads, 3 * head_dim]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelError

TARGET_LETTERS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class TargetSpec:
    path: str  # module path inside one layer
    # output features of the module that belong to this target; None = all of them
    select: Callable[[object, int], torch.Tensor | slice] | None = None


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # path of the layer list relative to model.base_model
    targets: dict[str, TargetSpec] = field(default_factory=dict)


def _fused_contiguous(i: int):
    """The i-th third of a fused [q | k | v] output (GPT-2 c_attn)."""

    def select(config, out_features: int):
        n = out_features // 3
        return slice(i * n, (i + 1) * n)

    return select


def _fused_per_head(i: int):
    """Rows of target i in a per-head interleaved [heads, (q, k, v), head_dim] output (GPT-NeoX)."""

    def select(config, out_features: int):
        heads = config.num_attention_heads
        hd = out_features // (3 * heads)
        base = torch.arange(heads) * 3 * hd + i * hd
        return (base[:, None] + torch.arange(hd)[None, :]).reshape(-1)

    return select


def _separate(prefix: str, q: str, k: str, v: str, o: str) -> dict[str, TargetSpec]:
    return {t: TargetSpec(f"{prefix}.{name}") for t, name in zip(TARGET_LETTERS, (q, k, v, o), strict=True)}


_LLAMA_LIKE = ArchSpec("layers", _separate("self_attn", "q_proj", "k_proj", "v_proj", "o_proj"))
_BERT_LIKE = ArchSpec(
    "encoder.layer",
    {
        "q": TargetSpec("attention.self.query"),
        "k": TargetSpec("attention.self.key"),
        "v": TargetSpec("attention.self.value"),
        "o": TargetSpec("attention.output.dense"),
    },
)

ARCHS: dict[str, ArchSpec] = {
    # separate nn.Linear q/k/v/o (rotary, pre-norm; Qwen2/OLMo carry biases, which the wrapper keeps)
    **{
        t: _LLAMA_LIKE
        for t in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "stablelm",
            "starcoder2",
        )
    },
    # BERT-style encoders (masked LM)
    **{t: _BERT_LIKE for t in ("roberta", "bert", "xlm-roberta", "camembert", "electra")},
    "opt": ArchSpec("decoder.layers", _separate("self_attn", "q_proj", "k_proj", "v_proj", "out_proj")),
    "gpt2": ArchSpec(
        "h",
        {
            "q": TargetSpec("attn.c_attn", _fused_contiguous(0)),
            "k": TargetSpec("attn.c_attn", _fused_contiguous(1)),
            "v": TargetSpec("attn.c_attn", _fused_contiguous(2)),
            "o": TargetSpec("attn.c_proj"),
        },
    ),
    "gpt_neox": ArchSpec(
        "layers",
        {
            "q": TargetSpec("attention.query_key_value", _fused_per_head(0)),
            "k": TargetSpec("attention.query_key_value", _fused_per_head(1)),
            "v": TargetSpec("attention.query_key_value", _fused_per_head(2)),
            "o": TargetSpec("attention.dense"),
        },
    ),
}


def _attention_modules(model: nn.Module, limit: int = 8) -> list[str]:
    names = [n for n, m in model.named_modules() if n and ("attn" in n.lower() or "attention" in n.lower())]
    leaves = [n for n in names if not any(o.startswith(n + ".") for o in names)]
    return leaves[:limit]


def arch_spec(model: nn.Module) -> ArchSpec:
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in ARCHS:
        found = _attention_modules(model)
        raise ModelError(
            f"architecture {model_type!r} is not in the low-rank patching table "
            f"(dflora_core/lowrank/arch.py ARCHS); attention modules found: {found or 'none'}. "
            "Add an ArchSpec naming its layer list and q/k/v/o modules."
        )
    return ARCHS[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model.base_model, arch_spec(model).layers)


def check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    """Every requested target letter must exist for this architecture (validated before patching)."""
    spec = arch_spec(model)
    bad = [t for t in targets if t not in spec.targets]
    if bad or not targets:
        raise ConfigError(
            "targets",
            f"{bad or 'none'} not available for {model.config.model_type}; choose from {sorted(spec.targets)}",
        )
    if len(set(targets)) != len(targets):
        raise ConfigError("targets", f"repeated target in {targets}")
