"""The one factory of low-rank adapters: settings -> patched model + intrinsic projection.

Every consumer builds its adapter here (the layer-wise search, rebuilding a run from its
folder, the benchmarks, the projection study of notebook 02, the no-optimisation arm), so
they cannot drift apart. ``settings`` is any object with the fields of
``config.LowRankConfig`` (targets, layers, rank, intrinsic_dim, projection_init, alpha,
ri_std, stat_source, clip_rounds, clip_sigma); this layer does not import the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..models.registry import LoadedModel
from ..models.scoring import EncodedSet
from .adapter import LowRankAdapter
from .hidden_stats import LayerStats, hidden_state_stats, projection_scales
from .patching import LowRankPatch
from .projection import IntrinsicProjection


class LowRankSettings(Protocol):
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    rank: int
    intrinsic_dim: int
    projection_init: str
    alpha: float
    ri_std: float
    stat_source: str
    clip_rounds: int
    clip_sigma: float


def measure_scales(
    loaded: LoadedModel, data: EncodedSet, settings: LowRankSettings, max_tokens: int
) -> tuple[list[LayerStats], list[float]]:
    """Hidden-state statistics of every model layer on ``data`` and the std_hat the "ril" maps use."""
    stats = hidden_state_stats(loaded, data, settings.stat_source, settings.clip_rounds, settings.clip_sigma, max_tokens)
    return stats, projection_scales(loaded, stats)


def site_dims(patch: LowRankPatch) -> list[dict[str, tuple[int, int]]]:
    """Per patched layer: target -> (in_features, out_features of the target)."""
    return [{t: (s.in_features, s.out_features) for t, s in layer.items()} for layer in patch.sites]


def build_projection(
    dims: Sequence[dict[str, tuple[int, int]]],
    model_layers: Sequence[int],
    settings: LowRankSettings,
    seed: int,
    sigma: float,
    scales: Mapping[int, float] | Sequence[float] | None,
    device="cpu",
    seed_scheme: int = 1,
    **overrides,
) -> IntrinsicProjection:
    """The projection of ``settings`` over given factor shapes; ``scales[m]`` = std_hat of model layer m.

    ``overrides`` replace single settings (rank, intrinsic_dim, init, alpha, ri_std), for
    studies that vary one knob over the same model.
    """
    opts = {
        "rank": settings.rank,
        "intrinsic_dim": settings.intrinsic_dim,
        "init": settings.projection_init,
        "alpha": settings.alpha,
        "ri_std": settings.ri_std,
        **overrides,
    }
    layer_std = None if scales is None else [float(scales[m]) for m in model_layers]
    return IntrinsicProjection(
        dims, opts["rank"], opts["intrinsic_dim"], opts["init"], seed, layer_std, opts["alpha"], sigma,
        opts["ri_std"], device, model_layers=model_layers, seed_scheme=seed_scheme,
    )  # fmt: skip


def build_adapter(
    loaded: LoadedModel,
    settings: LowRankSettings,
    seed: int,
    sigma: float,
    scales: Mapping[int, float] | Sequence[float] | None,
    seed_scheme: int = 1,
) -> LowRankAdapter:
    """Patch ``loaded.model`` (targets and layers of ``settings``) and attach its projection.

    ``scales``: std_hat per model layer (``measure_scales``), or None for the "ri" init. The
    model is unchanged until a layer gets a non-zero z; ``adapter.remove()`` restores it exactly.
    """
    patch = LowRankPatch(loaded.model, settings.targets, settings.layers)
    try:
        projection = build_projection(
            site_dims(patch), patch.model_layers, settings, seed, sigma, scales, loaded.device, seed_scheme
        )
    except BaseException:
        patch.remove()
        raise
    return LowRankAdapter(patch, projection)
