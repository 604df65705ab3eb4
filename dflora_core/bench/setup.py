"""What every strategy is measured on: the model, the prompts, the adapter and the candidates.

A real model gets its task's few-shot train set through ``Experiment.prepare``, exactly as a
run sees it; a synthetic shape (``models.tiny.SHAPES``) gets random prompts of a chosen
length. Either way the adapter is the one a layer-wise search builds (``lowrank.build``) and
the candidates are the first generation CMA-ES would draw.

Search options that change what a generation scores (``SCORING_OPTIONS``: calibrated projection
scales, calibrated logits; ``dflora bench ... --set KEY=VALUE``) are measured on the adapter and
head of a real ``LayerwiseSearch`` started with them: its scale calibration applied (the fitness
rule's calls spent in fp32, as in a run) and its label bias fitted, so a fidelity row says how
bf16 ranks the candidates that search would rank. Options that only choose where the calls go
(``search.schedule``) score the same generations and need no row of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..experiment import DEFAULT_MAX_TOKENS
from ..models.registry import LoadedModel
from ..models.scoring import EncodedSet
from ..models.tiny import ROBERTA_MASK_ID, SHAPES, build_shape

SYNTH_LABEL_IDS = (1000, 2000)  # any two tokens: the values are random anyway
# random weights (init std 0.02) barely react to updates of the paper's scale: the candidates'
# fitnesses would differ by ~1e-6 and their ranking would be fp32 noise; a larger stretch makes
# them differ (fidelity on random weights is still only indicative, speed is unaffected)
SYNTH_ALPHA = 20.0
# the settings whose non-default values change the adapter's scales or the fitness of a candidate
SCORING_OPTIONS = ("lowrank.scale_calibration", "search.calibrated_logits")


def default_max_tokens(device: torch.device) -> int:
    """The padded-token budget a run uses on this kind of device."""
    return DEFAULT_MAX_TOKENS.get(device.type, 16384)


def load_shape(name: str, device: torch.device) -> LoadedModel:
    """A synthetic shape as a LoadedModel (no hub, no tokenizer)."""
    model, family = build_shape(name, device)
    identity = {
        "name": name,
        "family": family,
        "model_type": model.config.model_type,
        "source": "random init from config",
    }
    return LoadedModel(name, model, None, family, identity)


def pad_id(loaded: LoadedModel) -> int:
    pad = loaded.model.config.pad_token_id
    return int(pad if pad is not None else 0)


@dataclass
class Setup:
    name: str
    loaded: Any
    head: Any
    data: Any  # EncodedSet
    label_ids: list[int]
    adapter: Any  # LowRankAdapter (all layers patched, all at z = 0)
    layer: int  # adapted-layer index benchmarked
    Z: np.ndarray  # [P, d] the candidates
    max_tokens: int
    task: str | None
    synthetic: bool
    prepare_s: float = 0.0
    options: dict = field(default_factory=dict)  # the SCORING_OPTIONS set, as given
    multipliers: list[float] | None = None  # per adapted layer, the scale calibration's (None: not calibrated)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def describe(self) -> dict:
        lens = self.data.lengths
        return {
            "model": self.name,
            "task": self.task,
            "synthetic_weights": self.synthetic,
            "n_examples": len(self.data),
            "mean_tokens": float(lens.mean()),
            "max_prompt_tokens": int(lens.max()),
            "real_tokens": int(lens.sum()),
            "population": len(self.Z),
            "layer": self.layer,
            "model_layer": int(self.adapter.model_layers[self.layer]),
            "num_layers": len(self.adapter.layers),
            "max_tokens": self.max_tokens,
            "intrinsic_dim": int(self.adapter.dim),
            "targets": list(self.adapter.patch.targets),
            "rank": int(self.adapter.projection.rank),
            "alpha": float(self.adapter.projection.alpha),
        }


def synthetic_set(loaded: LoadedModel, n: int, mean_len: int, spread: float = 0.4, seed: int = 0) -> EncodedSet:
    """N random prompts of mean length ``mean_len`` (+-spread), scored as the model family scores."""
    rng = np.random.default_rng(seed)
    lo, hi = max(4, int(mean_len * (1 - spread))), max(5, int(mean_len * (1 + spread)))
    lengths = rng.integers(lo, hi + 1, size=n)
    vocab = loaded.model.config.vocab_size
    masked = loaded.family == "masked"
    ids, pos = [], []
    for L in lengths:
        seq = rng.integers(5, min(vocab, 50000), size=int(L)).tolist()
        if masked:
            seq[0], seq[-1] = 0, 2  # <s> ... </s>
            p = int(rng.integers(1, L - 1))
            seq[p] = ROBERTA_MASK_ID
        else:
            p = int(L) - 1
        ids.append(seq)
        pos.append(p)
    labels = torch.as_tensor(rng.integers(0, len(SYNTH_LABEL_IDS), size=n), dtype=torch.long)
    return EncodedSet(ids, pos, labels, pad_id(loaded))


def make_setup(
    model: str,
    device: str = "auto",
    task: str = "sst2",
    seed: int = 42,
    population: int = 20,
    layer: int | None = None,
    max_tokens: int | None = None,
    n_examples: int = 32,
    mean_tokens: int = 40,
    loaded=None,
    cfg_overrides: dict | None = None,
    shots: int | None = None,
) -> Setup:
    """The model, the few-shot train set (or random prompts for a shape), the adapter and P candidates."""
    from ..config import RunConfig
    from ..lowrank.build import build_adapter, measure_scales
    from ..models.registry import resolve_device
    from ..models.scoring import VerbalizerHead

    t0 = time.perf_counter()
    options = {k: v for k, v in (cfg_overrides or {}).items() if k in SCORING_OPTIONS}
    if options and model in SHAPES:
        raise ConfigError(", ".join(options), f"search options need a real model and task, not the shape {model}")
    # the test set is not used: a small sample keeps the preparation short; a started search
    # would score the dev set for model selection, which no benchmark needs
    overrides: dict[str, Any] = {"data.max_test": 16, "search.select_start": False}
    if model in SHAPES:
        overrides["lowrank.alpha"] = SYNTH_ALPHA
    if shots:
        overrides["data.shots"] = shots
    overrides.update(cfg_overrides or {})
    cfg = RunConfig().replace(
        **{"model.name": model, "model.device": device, "data.task": task, "seed": seed, "progress": False},
        **overrides,
    )
    if model in SHAPES:
        loaded = loaded or load_shape(model, resolve_device(device))
        data = synthetic_set(loaded, n_examples, mean_tokens, seed=seed)
        label_ids = list(SYNTH_LABEL_IDS)
        head = VerbalizerHead(loaded, label_ids)
        task_name = None
    else:
        from ..experiment import Experiment

        exp = Experiment.prepare(cfg, loaded=loaded)
        loaded, data, head, task_name = exp.loaded, exp.train, exp.head, exp.task.name
        label_ids = list(exp.encoder.label_token_ids)
    mt = max_tokens or default_max_tokens(loaded.device)
    # the adapter LayerwiseSearch builds (hidden-state based projections, all layers patched);
    # "ri" needs no statistics
    lowrank = cfg.lowrank
    multipliers = None
    if options:
        adapter, multipliers = started_search(exp)
    else:
        scales = None if lowrank.projection_init == "ri" else measure_scales(loaded, data, lowrank, mt)[1]
        adapter = build_adapter(loaded, lowrank, seed, cfg.optim.sigma, scales)
    n = adapter.num_layers
    li = n // 2 if layer is None else (layer % n)
    # the first CMA-ES generation: mean 0, step sigma, isotropic
    Z = np.random.default_rng([seed, 7, li]).standard_normal((population, adapter.dim)) * cfg.optim.sigma
    return Setup(model, loaded, head, data, label_ids, adapter, li, Z, mt, task_name, model in SHAPES,
                 time.perf_counter() - t0, options, multipliers)  # fmt: skip


def started_search(exp) -> tuple[Any, list[float] | None]:
    """The adapter (and, in ``exp.head``, the label bias) of a layer-wise search after its start.

    Starting scores z = 0 (one call), runs the scale calibration the config asks for and, under
    calibrated logits, fits the label bias on the train logits; the layers stay at z = 0.
    """
    from ..search.loop import LayerwiseSearch

    search = LayerwiseSearch(exp)
    search.start()
    cal = search.scale_calibration
    return search.adapter, None if cal is None else [float(r["multiplier"]) for r in cal["layers"]]
