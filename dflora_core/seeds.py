"""Every random stream of a run, derived from the run's seed by name (docs/design.md, "Seeds").

    derive(seed, "optimizer", layer)             -> int  (seeds a numpy Generator or torch)
    generator(seed, "icl_order")                 -> numpy Generator
    derive(seed, "projection", layer, factor, scheme=2)

Two schemes, recorded in every run (``RunConfig.seed_scheme``):

- **1** (the committed results): the derivations the code used before this module existed,
  reproduced bit for bit. ``SeedSequence`` pads its entropy with zeros, so several of them
  coincide: ``[seed, 1, j]`` (layer j's optimizer) is projection map j of model layer 1,
  ``[seed, 3]`` (BBT's prompt tokens) is map 0 of layer 3, ``[seed, 7]`` seeds both the
  baselines' batch order and the no-optimisation draws. They feed different generators, so
  no result is known to be wrong, but they are not independent streams.
- **2** (collision-free): ``SeedSequence(seed, spawn_key=(stream code, number of indices,
  *indices))``; every (stream, indices) pair gets its own entropy, and 64 bits of it.

Streams added after scheme 1 was fixed have no historical derivation: they use scheme 2's in
both schemes. The few-shot split and the test subsample use the seed itself in both schemes:
they are the data of the protocol (the paper's seeds 13, 21, 42, 87, 100), not derived streams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SCHEMES = (1, 2)
DEFAULT_SCHEME = 1  # the committed results; 2 becomes the default when they are next re-recorded

# stream -> a code of its own (scheme 2); codes are never reused or renumbered
STREAMS: dict[str, int] = {
    "projection": 1,  # (model layer, factor index): a low-rank projection map
    "optimizer": 2,  # (adapted layer,): the layer's derivative-free optimizer
    "prompt_tokens": 3,  # (): BBT's random vocabulary tokens p_0
    "prompt_projection": 4,  # (model layer,): BBT/BBTv2's prompt projection map
    "icl_order": 5,  # (): the order of the in-context demonstrations
    "step_order": 6,  # (): the baselines' minibatch order
    "zo_directions": 7,  # (step,): the zeroth-order perturbation of one step
    "noopt_draws": 8,  # (): the random intrinsic vectors of the no-optimisation arm
    "lora_init": 9,  # (): PEFT's LoRA initialisation (gradient and zeroth-order baselines)
    "projection_study": 10,  # (): notebook 02's random steps
    "es_members": 11,  # (step, member): es-full's Gaussian perturbation of one population member
    "zo_mask": 12,  # (): the tie-breaking order of the sparse zeroth-order mask (equal magnitudes)
    "zo_pool": 13,  # (step, member): one perturbation of a pool (mezo-gv, mezo-greedy, fzoo)
    "lozo_u": 14,  # (step,): LOZO's per-step left factors U
    "lozo_v": 15,  # (interval,): LOZO's right factors V, kept for lozo_interval steps
    "scale_calibration": 20,  # (adapted layer,): the trial steps of the projection-scale calibration
}


def _ss_int(entropy: list[int], dtype=np.uint32, mod: int | None = None) -> int:
    v = int(np.random.SeedSequence(entropy).generate_state(1, dtype=dtype)[0])
    return v % mod if mod else v


def _zo_base(seed: int) -> int:
    return _ss_int([seed, 5])


# scheme 1: the historical derivations, exactly (int streams and Generator streams)
_SCHEME1_INT: dict[str, Callable[..., int]] = {
    "projection": lambda s, layer, j: _ss_int([s, layer, j], np.uint64, 2**63),
    "optimizer": lambda s, layer: _ss_int([s, 1, layer]),
    "prompt_projection": lambda s, layer: _ss_int([s, layer, 1000], np.uint64, 2**63),
    "zo_directions": lambda s, step: _ss_int([_zo_base(s), 11, step], np.uint64, 2**63),
    "lora_init": lambda s: int(s),
}
_SCHEME1_RNG: dict[str, Callable[..., np.random.Generator]] = {
    "prompt_tokens": lambda s: np.random.default_rng(np.random.SeedSequence([s, 3])),
    "icl_order": lambda s: np.random.default_rng(np.random.SeedSequence([s, 9])),
    "step_order": lambda s: np.random.default_rng(np.random.SeedSequence([s, 7])),
    "noopt_draws": lambda s: np.random.default_rng([s, 7]),
    "projection_study": lambda s: np.random.default_rng([s, 2]),
}


def _check(stream: str, scheme: int) -> None:
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown seed scheme {scheme!r}; choose from {SCHEMES}")


def _sequence(seed: int, stream: str, indices: tuple[int, ...]) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(STREAMS[stream], len(indices), *map(int, indices)))


def derive(seed: int, stream: str, *indices: int, scheme: int = DEFAULT_SCHEME) -> int:
    """An integer seed for ``stream`` (and its indices), e.g. ``derive(42, "optimizer", 3)``."""
    _check(stream, scheme)
    if scheme == 1 and stream in _SCHEME1_RNG:
        raise KeyError(f"stream {stream!r} is a generator stream in scheme 1: use generator()")
    if scheme == 1 and stream in _SCHEME1_INT:
        return _SCHEME1_INT[stream](int(seed), *indices)
    return int(_sequence(seed, stream, indices).generate_state(1, dtype=np.uint64)[0] % 2**63)


def generator(seed: int, stream: str, *indices: int, scheme: int = DEFAULT_SCHEME) -> np.random.Generator:
    """A numpy Generator for ``stream``, independent of every other stream in scheme 2."""
    _check(stream, scheme)
    if scheme == 1 and stream in _SCHEME1_RNG:
        return _SCHEME1_RNG[stream](int(seed), *indices)
    if scheme == 1 and stream in _SCHEME1_INT:
        return np.random.default_rng(_SCHEME1_INT[stream](int(seed), *indices))
    return np.random.default_rng(_sequence(seed, stream, indices))  # and streams newer than scheme 1
