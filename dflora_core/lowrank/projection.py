"""Fixed random maps from each layer's intrinsic vector z to its low-rank factors (docs/design.md §1).

z_l (dimension d) is split into equal chunks, one per factor (q,k -> z_qA, z_qB, z_kA, z_kB),
and each chunk is mapped by a fixed random matrix M (no bias) and reshaped:

    A_q = reshape(M_qA^l z_qA, [in, r]),   B_q = reshape(M_qB^l z_qB, [r, out])

so z = 0 is the unadapted model. Initialisations of M:
- "ril" (default): N(0, s_l^2) with s_l = alpha * std_hat_l / (sqrt(d) * sigma)      (BBTv2 / paper eq.)
- "ri":  N(0, ri_std^2) for every map (the paper's random-init ablation)
- "released": A-maps of layers >= 1 as "ril", every other map PyTorch's default Linear init
  U(-1/sqrt(d_c), 1/sqrt(d_c)), as the authors' released code does.
Each map is generated from its own seed (run seed, layer, factor), so it can be rebuilt
anywhere from the seed alone; matrices are cached while memory allows.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..seeds import derive

INITS = ("ril", "ri", "released")


@dataclass(frozen=True)
class FactorSpec:
    target: str  # q, k, v, o
    factor: str  # "A" or "B"
    rows: int
    cols: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def factor_specs(site_dims: dict[str, tuple[int, int]], rank: int) -> list[FactorSpec]:
    """Factor shapes of one layer in chunk order: for each target, A [in, r] then B [r, out]."""
    out = []
    for t, (fin, fout) in site_dims.items():
        out.append(FactorSpec(t, "A", fin, rank))
        out.append(FactorSpec(t, "B", rank, fout))
    return out


class IntrinsicProjection:
    """z (per layer, dimension d) -> {target: (A, B)} for single vectors or populations."""

    def __init__(
        self,
        site_dims: Sequence[dict[str, tuple[int, int]]],  # per layer: target -> (in, out)
        rank: int,
        intrinsic_dim: int,
        init: str = "ril",
        seed: int = 0,
        layer_std: Sequence[float] | None = None,  # std_hat per layer (ril/released)
        alpha: float = 1.0,
        sigma: float = 1.0,
        ri_std: float = 0.02,
        device: torch.device | str = "cpu",
        cache_bytes: int = 512 * 2**20,
        model_layers: Sequence[int] | None = None,  # model index of each layer (seeds, "released" rule)
        seed_scheme: int = 1,  # how map seeds derive from ``seed`` (dflora_core.seeds)
    ):
        if init not in INITS:
            raise ConfigError("projection_init", f"{init!r}; choose from {INITS}")
        self.layers = [factor_specs(dims, rank) for dims in site_dims]
        n_factors = len(self.layers[0])
        if intrinsic_dim % n_factors:
            raise ConfigError(
                "intrinsic_dim", f"{intrinsic_dim} is not divisible by the {n_factors} factors of the targets"
            )
        if init != "ri" and (layer_std is None or len(layer_std) != len(self.layers)):
            raise ConfigError("projection_init", f"{init} needs one hidden-state std per layer")
        self.rank, self.d, self.init, self.seed = rank, intrinsic_dim, init, seed
        self.seed_scheme = seed_scheme
        self.model_layers = list(model_layers) if model_layers is not None else list(range(len(self.layers)))
        self.chunk = intrinsic_dim // n_factors
        self.layer_std = list(layer_std) if layer_std is not None else None
        self.alpha, self.sigma, self.ri_std = alpha, sigma, ri_std
        self.device = torch.device(device)
        self._cache: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        per_layer = sum(f.numel for f in self.layers[0]) * self.chunk * 4
        self._cache_layers = max(1, cache_bytes // max(1, per_layer))
        self._check_scales()

    # an update is x A B: entries of A and B above ~1e15 overflow float32 (3.4e38) in their product
    MAX_FACTOR_SCALE = 1e15

    def _check_scales(self) -> None:
        """Refuse up front a projection whose factors would not be finite (e.g. ``alpha=1e300``)."""
        for layer, specs in enumerate(self.layers):
            for spec in specs:
                _kind, scale = self.map_init(layer, spec)
                if not (math.isfinite(scale) and scale * math.sqrt(self.chunk) <= self.MAX_FACTOR_SCALE):
                    field = "lowrank.ri_std" if self.init == "ri" else "lowrank.alpha"
                    raise ConfigError(
                        field,
                        f"the projection std {scale:.3g} at model layer {self.model_layers[layer]} would make "
                        f"non-finite updates; lower it",
                    )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def rescale(self, layer: int, factor: float) -> None:
        """Multiply a layer's std_hat (hence its hidden-state based maps) by ``factor`` (scale calibration)."""
        self.layer_std[layer] *= factor
        self._cache.pop(layer, None)
        self._check_scales()

    def ril_std(self, layer: int) -> float:
        return self.alpha * self.layer_std[layer] / (math.sqrt(self.d) * self.sigma)

    def map_init(self, layer: int, spec: FactorSpec) -> tuple[str, float]:
        """("normal", std) or ("uniform", bound) of one map."""
        if self.init == "ri":
            return "normal", self.ri_std
        if self.init == "released" and not (spec.factor == "A" and self.model_layers[layer] >= 1):
            return "uniform", 1.0 / math.sqrt(self.chunk)
        return "normal", self.ril_std(layer)

    def matrices(self, layer: int) -> list[torch.Tensor]:
        """The maps of one layer, [numel, chunk] each, in chunk order."""
        if layer in self._cache:
            self._cache.move_to_end(layer)
            return self._cache[layer]
        mats = []
        for j, spec in enumerate(self.layers[layer]):
            seed = derive(self.seed, "projection", self.model_layers[layer], j, scheme=self.seed_scheme)
            gen = torch.Generator().manual_seed(seed)
            kind, scale = self.map_init(layer, spec)
            if kind == "normal":
                m = torch.randn(spec.numel, self.chunk, generator=gen) * scale
            else:
                m = (torch.rand(spec.numel, self.chunk, generator=gen) * 2 - 1) * scale
            mats.append(m.to(self.device))
        self._cache[layer] = mats
        while len(self._cache) > self._cache_layers:
            self._cache.popitem(last=False)
        return mats

    def factors(self, layer: int, z) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Factors for z of shape [d] (single) or [P, d] (population: factors [P, ...])."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        single = z.dim() == 1
        zz = z.unsqueeze(0) if single else z
        if zz.shape[1] != self.d:
            raise ValueError(f"z has dimension {zz.shape[1]}, expected {self.d}")
        out: dict[str, list[torch.Tensor]] = {}
        for j, (spec, m) in enumerate(zip(self.layers[layer], self.matrices(layer), strict=True)):
            zc = zz[:, j * self.chunk : (j + 1) * self.chunk]
            f = (zc @ m.T).view(-1, spec.rows, spec.cols)
            out.setdefault(spec.target, []).append(f[0] if single else f)
        return {t: (ab[0], ab[1]) for t, ab in out.items()}

    def describe(self) -> dict:
        return {
            "init": self.init,
            "seed": self.seed,
            "rank": self.rank,
            "intrinsic_dim": self.d,
            "chunk": self.chunk,
            "alpha": self.alpha,
            "sigma": self.sigma,
            "ri_std": self.ri_std,
            "layer_std": self.layer_std,
            "model_layers": self.model_layers,
            "seed_scheme": self.seed_scheme,
            "map_seeds": "dflora_core.seeds.derive(seed, 'projection', model_layer, factor_index) -> torch.Generator",
        }
