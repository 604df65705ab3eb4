"""Low-rank updates inside attention projections, without touching the frozen weights.

    y = base(x) + (x A) B            A: [in, r], B: [r, out_t]   (docs/design.md §1: no alpha/r, no dropout)

A wrapper replaces a projection module in its parent and adds the update to the output
features of each target it carries (all of them for a separate q_proj; the q and k slices
of GPT-2's fused c_attn). Removing the patch puts the original module objects back, so the
model is bit-identical afterwards.

Population mode: factors of shape [P, in, r] / [P, r, out] apply candidate p to rows
p*N .. (p+1)*N-1 of the batch (candidate-major), with batched matmuls, so P candidates are
scored in one forward pass of a batch repeated P times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import ModelError
from .arch import arch_spec, check_targets, get_module, transformer_layers

# dispatch table: frozen module kind -> its (in_features, out_features)
FEATURES = {
    nn.Linear: lambda m: (m.in_features, m.out_features),
    Conv1D: lambda m: (m.nx, m.nf),
}


def lowrank_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(x A) B for one update (A 2-D) or for a population (A 3-D, candidate-major rows of x)."""
    if A.dim() == 2:
        return (x @ A.to(x.dtype)) @ B.to(x.dtype)
    P = A.shape[0]
    xs = x.reshape(P, -1, x.shape[-1])
    d = torch.bmm(torch.bmm(xs, A.to(x.dtype)), B.to(x.dtype))
    return d.reshape(*x.shape[:-1], B.shape[-1])


class LowRankWrapper(nn.Module):
    """A frozen projection plus zero or more low-rank updates on parts of its output."""

    def __init__(self, base: nn.Module):
        super().__init__()
        kind = next((k for k in FEATURES if type(base) is k), None)
        if kind is None:
            raise ModelError(f"cannot patch a {type(base).__name__}: known kinds {[k.__name__ for k in FEATURES]}")
        self.base = base
        self.in_features, self.out_features = FEATURES[kind](base)
        self.selects: dict[str, torch.Tensor | slice | None] = {}
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add_target(self, name: str, select) -> int:
        """Register a target; returns its number of output features."""
        if isinstance(select, torch.Tensor):  # an index tensor lives where the outputs are: no copy per forward
            select = select.to(self.base.weight.device)
        self.selects[name] = select
        if select is None:
            return self.out_features
        if isinstance(select, slice):
            return len(range(*select.indices(self.out_features)))
        return int(select.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.factors:
            return y
        in_place = not torch.is_grad_enabled()
        for name, (A, B) in self.factors.items():
            d = lowrank_delta(x, A, B)
            sel = self.selects[name]
            if sel is None:
                y = y.add_(d) if in_place else y + d
            elif isinstance(sel, slice):
                if not in_place:
                    y = y.clone()
                y[..., sel] += d
            else:
                y = y.index_add_(-1, sel, d) if in_place else y.index_add(-1, sel, d)
        return y


def resolve_layers(layers: tuple[int, ...] | None, total: int) -> tuple[int, ...]:
    """Model layer indices to adapt, bottom to top; negative indices count from the top; None = all."""
    if layers is None:
        return tuple(range(total))
    out = sorted({i % total if -total <= i < total else _bad_layer(i, total) for i in layers})
    return tuple(out)


def _bad_layer(i: int, total: int) -> int:
    from ..errors import ConfigError

    raise ConfigError("lowrank.layers", f"layer {i} does not exist: the model has {total} layers")


@dataclass(frozen=True)
class Site:
    """One target of one layer: the wrapper that carries it and its factor shapes."""

    wrapper: LowRankWrapper
    in_features: int
    out_features: int  # of this target (a slice of a fused module)


class LowRankPatch:
    """Wraps the target projections of every layer (or of ``layers``); ``remove()`` undoes it exactly.

    Patched layer i (``sites[i]``, ``set_layer(i, ...)``) is model layer ``model_layers[i]``.
    """

    def __init__(self, model: nn.Module, targets: tuple[str, ...] = ("q", "k"), layers: tuple[int, ...] | None = None):
        check_targets(model, targets)
        spec = arch_spec(model)
        self.model = model
        self.targets = tuple(targets)
        self.layers = transformer_layers(model)
        self.model_layers = resolve_layers(layers, len(self.layers))
        self._originals: list[tuple[nn.Module, str, nn.Module]] = []
        self.sites: list[dict[str, Site]] = []
        for index in self.model_layers:
            layer = self.layers[index]
            sites: dict[str, Site] = {}
            for t in targets:
                tspec = spec.targets[t]
                parent_path, _, attr = tspec.path.rpartition(".")
                parent = get_module(layer, parent_path) if parent_path else layer
                module = getattr(parent, attr)
                if not isinstance(module, LowRankWrapper):
                    wrapper = LowRankWrapper(module)
                    setattr(parent, attr, wrapper)
                    self._originals.append((parent, attr, module))
                    module = wrapper
                select = tspec.select(model.config, module.out_features) if tspec.select else None
                out = module.add_target(t, select)
                sites[t] = Site(module, module.in_features, out)
            self.sites.append(sites)

    @property
    def num_layers(self) -> int:
        return len(self.sites)

    def set_layer(self, layer: int, factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Set (or clear with None) the update of every target of one layer."""
        for t, site in self.sites[layer].items():
            if factors is None or t not in factors:
                site.wrapper.factors.pop(t, None)
            else:
                site.wrapper.factors[t] = factors[t]

    def get_layer(self, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {t: s.wrapper.factors[t] for t, s in self.sites[layer].items() if t in s.wrapper.factors}

    def clear(self) -> None:
        for layer in range(self.num_layers):
            self.set_layer(layer, None)

    def remove(self) -> None:
        """Put the original modules back (the frozen weights were never modified)."""
        for parent, attr, module in reversed(self._originals):
            setattr(parent, attr, module)
        self._originals.clear()

    def __enter__(self) -> LowRankPatch:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
