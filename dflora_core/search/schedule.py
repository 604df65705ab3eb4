"""Which adapted layer gets the next generation of the layer-wise search (docs/method.md, "Layer schedules").

- ``RoundRobin`` (the paper's Algorithm 1): bottom to top, ``per_visit`` generations per layer
  per visit (1 = one generation per layer per round, as released).
- ``Bandit``: budget where it pays. A first round visits every layer once; from then on the
  next layer is the one with the highest upper confidence bound on its recent decrease of the
  configuration's train loss per call,

      score_l = ema_l / max_k ema_k + c * sqrt(ln t / n_l),

  ema_l the exponentially weighted (decay 0.5) decrease per call of layer l's generations,
  n_l its generations, t all generations, c = ``exploration``. Deterministic (ties: the lower
  layer), so a run stays exact and resumes bit for bit. A layer that stops paying stops costing.

A schedule only chooses layers; every layer's optimizer is told its fair share of the budget
(``budget // layers``) whatever the schedule gives it (LoTFWA's tournament uses it).
"""

from __future__ import annotations

import math
from typing import Any

EMA_DECAY = 0.5  # recent generations count most: a layer's improvement fades as it converges


class LayerSchedule:
    """Layer choice by generation; ``update`` after each generation with the decrease it bought."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.generations = 0

    def next_layer(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, layer: int, decrease: float, calls: int) -> None:
        self.generations += 1

    @property
    def round(self) -> int:
        """Completed rounds of ``num_layers`` generations (the history's ``round``)."""
        return self.generations // self.num_layers

    def state_dict(self) -> dict[str, Any]:
        return {"generations": self.generations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generations = int(state["generations"])


class RoundRobin(LayerSchedule):
    def __init__(self, num_layers: int, per_visit: int = 1):
        if num_layers < 1 or per_visit < 1:
            raise ValueError(f"a round needs >= 1 layer and >= 1 generation per visit, got {num_layers}, {per_visit}")
        super().__init__(num_layers)
        self.per_visit = per_visit

    def next_layer(self) -> int:
        return self.layer_at(self.generations)

    def layer_at(self, generation: int) -> int:
        """The layer of a given generation (stateless: block-wise zeroth order steps by it too)."""
        return (generation // self.per_visit) % self.num_layers

    @property
    def round(self) -> int:
        return self.generations // (self.per_visit * self.num_layers)


class Bandit(LayerSchedule):
    def __init__(self, num_layers: int, exploration: float = 0.5):
        super().__init__(num_layers)
        self.exploration = exploration
        self.ema = [0.0] * num_layers
        self.visits = [0] * num_layers

    def next_layer(self) -> int:
        unvisited = [i for i, n in enumerate(self.visits) if n == 0]
        if unvisited:
            return unvisited[0]
        top = max(self.ema) or 1.0
        t = max(1, self.generations)
        scores = [self.ema[i] / top + self.exploration * math.sqrt(math.log(t) / self.visits[i])
                  for i in range(self.num_layers)]  # fmt: skip
        return max(range(self.num_layers), key=lambda i: (scores[i], -i))

    def update(self, layer: int, decrease: float, calls: int) -> None:
        gain = max(0.0, decrease) / max(1, calls) if math.isfinite(decrease) else 0.0
        self.ema[layer] = gain if self.visits[layer] == 0 else EMA_DECAY * self.ema[layer] + (1 - EMA_DECAY) * gain
        self.visits[layer] += 1
        super().update(layer, decrease, calls)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": list(self.ema), "visits": list(self.visits)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema = [float(x) for x in state["ema"]]
        self.visits = [int(x) for x in state["visits"]]


def make_schedule(name: str, num_layers: int, per_visit: int = 1, exploration: float = 0.5) -> LayerSchedule:
    if name == "bandit":
        return Bandit(num_layers, exploration)
    return RoundRobin(num_layers, per_visit)
