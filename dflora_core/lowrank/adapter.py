"""The parametrization protocol of the layer-wise search, and its low-rank (LoRA) instance.

The search loop and the population evaluator only need, per layer: turn a population of
intrinsic vectors into a model state, apply a slice of it, read and restore a layer's state,
and fix a layer at one vector. ``LowRankAdapter`` does that for LoRA factors (C-LoRA, F-LoRA);
deep prompts (BBTv2) implement the same protocol, so they reuse the loop and the evaluator.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .patching import LowRankPatch
from .projection import IntrinsicProjection


class LayerAdapter(Protocol):
    """What the layer-wise search and the population evaluator need from a parametrization."""

    layers: nn.ModuleList  # all the model's transformer layers (for prefix reuse)
    model_layers: tuple[int, ...]  # adapted layer i is model layer model_layers[i]
    num_layers: int  # adapted layers
    dim: int  # intrinsic dimension of one layer's vector

    def population(self, layer: int, Z) -> Any:
        """State of ``layer`` for candidates Z [P, dim] (candidate-major rows)."""

    def take(self, state: Any, start: int, stop: int) -> Any:
        """The candidates start..stop-1 of a population state."""

    def get(self, layer: int) -> Any:
        """The layer's current state (None = no change to the model)."""

    def set(self, layer: int, state: Any) -> None:
        """Install a state (single or population) for the layer; None removes it."""

    def set_z(self, layer: int, z: np.ndarray) -> None:
        """Fix the layer at one intrinsic vector (z = 0 means unchanged)."""

    def describe(self) -> dict: ...

    def remove(self) -> None:
        """Undo every change to the model."""


class LowRankAdapter:
    """z_l -> low-rank factors of layer l's target projections (docs/design.md §1)."""

    def __init__(self, patch: LowRankPatch, projection: IntrinsicProjection):
        self.patch, self.projection = patch, projection
        self.layers = patch.layers
        self.model_layers = patch.model_layers
        self.num_layers = patch.num_layers
        self.dim = projection.d

    def population(self, layer: int, Z) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.projection.factors(layer, Z)

    def take(self, state, start: int, stop: int):
        return {t: (A[start:stop], B[start:stop]) for t, (A, B) in state.items()}

    def get(self, layer: int):
        return self.patch.get_layer(layer) or None

    def set(self, layer: int, state) -> None:
        self.patch.set_layer(layer, state)

    def set_z(self, layer: int, z: np.ndarray) -> None:
        z = np.asarray(z)
        self.patch.set_layer(layer, self.projection.factors(layer, z) if z.any() else None)

    def describe(self) -> dict:
        return {
            "kind": "lowrank",
            "targets": list(self.patch.targets),
            "model_layers": list(self.model_layers),
            **self.projection.describe(),
        }

    def remove(self) -> None:
        self.patch.remove()
