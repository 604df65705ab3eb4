"""Everything a run needs before its method starts: validated config, data, model, prompts.

``Experiment.prepare(cfg)`` validates the configuration first (no model is loaded for a bad
value), then samples the few-shot split, loads the test set and the model, and encodes the
three sets with the task's template. Every method (C-LoRA, F-LoRA and the baselines)
starts from one of these, so all of them see the same split, prompts and metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import get_task, load_test, sample_fewshot
from .data.types import FewShotSplit, TaskSpec, TestSet
from .data.user_task import files_outside_allowed
from .errors import DfloraWarning
from .fileio import atomic_write_json, read_json
from .methods import validate
from .metrics import losses, metric_value
from .models.packaged import cache_root
from .models.registry import LoadedModel, load_model, peek_model, resolve_device
from .models.scoring import EncodedSet, PromptEncoder, VerbalizerHead, class_logits
from .models.sizing import plan_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # config.DTYPE_NAMES
# padded tokens per forward pass: CPU caches favour small chunks, GPUs want big ones
DEFAULT_MAX_TOKENS = {"cpu": 1024, "cuda": 131072}  # cpu: measured, SmolLM2 SST-2 on 2 cores, 512-16384; cuda: the cap (models/sizing.py sizes it)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32 (no autocast).

    "auto" is fp32 everywhere: bf16 autocast failed the fidelity rule (Spearman >= 0.99 against
    fp32 and the same best candidate) on SmolLM2 at the lower and middle layers, where the
    candidates' fitnesses differ by less than bf16's rounding (benchmarks/results/cpu-fidelity.json).
    bf16 stays an explicit opt-in (``model.dtype=bfloat16``) for top-layer-only runs.
    """
    if name == "auto":
        return None
    return None if name == "float32" else DTYPES[name]


@dataclass
class EvalResult:
    metric: str
    value: float  # accuracy, or F1 for MRPC
    accuracy: float
    loss: float  # mean cross-entropy over the verbalizer logits
    n: int
    predictions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=int))

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
        }


def _examples_digest(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(("\x1f".join(ex.texts) + f"\x1e{ex.label}\x1d").encode())
    return h.hexdigest()[:16]


@dataclass
class Experiment:
    cfg: RunConfig
    task: TaskSpec
    split: FewShotSplit
    test: TestSet
    loaded: LoadedModel
    encoder: PromptEncoder
    head: VerbalizerHead
    train: EncodedSet
    dev: EncodedSet
    test_set: EncodedSet
    dtype: torch.dtype | None
    max_tokens: int
    prepare_s: float = 0.0
    gpu_sizing: dict | None = None  # how the token budget was chosen on a GPU (models/sizing.py); recorded

    @staticmethod
    def check(cfg: RunConfig) -> RunConfig:
        """Validate ``cfg`` against the model's layer count and type, read without loading weights."""
        model_type, n_layers = peek_model(cfg.model.name)
        return validate(cfg, num_layers=n_layers or None, model_type=model_type or None)

    @classmethod
    def prepare(cls, cfg: RunConfig, loaded: LoadedModel | None = None) -> Experiment:
        with files_outside_allowed(cfg.data.allow_task_files_outside):  # the user's permission, in its config
            return cls._prepare(cfg, loaded)

    @classmethod
    def _prepare(cls, cfg: RunConfig, loaded: LoadedModel | None) -> Experiment:
        t0 = time.perf_counter()
        cls.check(cfg)
        task = get_task(cfg.data.task)
        split = sample_fewshot(cfg.data.task, cfg.seed, cfg.data.shots, cfg.data.split_source)
        test = load_test(cfg.data.task, cfg.data.max_test)
        if cfg.data.max_test is not None and cfg.data.max_test >= test.full_size:
            warnings.warn(DfloraWarning(f"data.max_test {cfg.data.max_test} is not below the {test.full_size} "
                                        "test examples: the whole test set is scored"), stacklevel=2)  # fmt: skip
        if loaded is None or loaded.name != cfg.model.name:
            loaded = load_model(cfg.model.name, cfg.model.device)
        else:
            loaded.model.to(resolve_device(cfg.model.device))
        validate(cfg, num_layers=loaded.model.config.num_hidden_layers, model_type=loaded.model_type)
        encoder = PromptEncoder(loaded, task.name, cfg.data.max_length, cfg.model.verbalizer)
        head = VerbalizerHead(loaded, encoder.label_token_ids, cfg.model.zero_lm_bias)
        device = loaded.device
        sizing = None
        if cfg.model.max_tokens:
            max_tokens = cfg.model.max_tokens
        elif device.type == "cuda":  # from the card and the run's share of it, not a fixed number
            sizing = plan_tokens(cfg.model.name, loaded.model, device)
            max_tokens = sizing["max_tokens"]
        else:
            max_tokens = DEFAULT_MAX_TOKENS.get(device.type, 16384)
        return cls(
            cfg,
            task,
            split,
            test,
            loaded,
            encoder,
            head,
            encoder.encode(split.train),
            encoder.encode(split.dev),
            encoder.encode(test.examples),
            resolve_dtype(cfg.model.dtype, device),
            max_tokens,
            time.perf_counter() - t0,
            sizing,
        )

    def logits(self, data: EncodedSet) -> torch.Tensor:
        return class_logits(self.loaded, self.head, data, self.max_tokens, self.dtype)

    def score(self, logits: torch.Tensor, data: EncodedSet) -> EvalResult:
        pred = logits.argmax(1).numpy()
        labels = data.labels.numpy()
        loss = float(losses(logits.unsqueeze(0), data.labels, "ce")[0])
        return EvalResult(
            self.task.metric,
            metric_value(self.task.metric, pred, labels),
            metric_value("accuracy", pred, labels),
            loss,
            len(labels),
            pred,
        )

    def evaluate(self, data: EncodedSet) -> EvalResult:
        """Metric of the model as it is now (patched or not) on an encoded set."""
        return self.score(self.logits(data), data)

    def data_identity(self) -> dict:
        return {
            "task": self.task.name,
            "task_title": self.task.title,
            "split_source": self.split.source,
            "split_seed": self.split.seed,
            "shots": self.split.k,
            "split_origin": self.split.origin,
            "train_size": len(self.split.train),
            "dev_size": len(self.split.dev),
            "train_digest": _examples_digest(self.split.train),
            "dev_digest": _examples_digest(self.split.dev),
            "test_name": self.test.name,
            "test_official": self.test.official,
            "test_verification": self.test.verification,  # manifest | row counts | unverified (docs/architecture.md)
            "split_verification": self.split.verification,
            "test_size": len(self.test.examples),
            "test_full_size": self.test.full_size,
            "test_max": self.test.max_test,
            "test_origin": self.test.origin,
            "test_digest": _examples_digest(self.test.examples),
            "truncated_prompts": {
                "train": self.train.truncated,
                "dev": self.dev.truncated,
                "test": self.test_set.truncated,
            },
            "template": self.encoder.template.pattern,
            "verbalizer": list(self.encoder.template.words),
            "notes": self.task.notes,
        }


# -- the zero-shot reference (cached: every method of a task/model/test set reports it) ----------------
_ZS_MEMORY: dict[str, dict] = {}


def zero_shot_key(exp: Experiment) -> str:
    ident = {
        "model": exp.loaded.identity,
        "test": exp.data_identity()["test_digest"],
        "template": exp.encoder.template.pattern,
        "words": list(exp.encoder.template.words),
        "dtype": str(exp.dtype),
        "device": exp.loaded.device.type,  # a GPU's kernels round otherwise: its score is its own
        "max_length": exp.cfg.data.max_length,
        "zero_lm_bias": exp.cfg.model.zero_lm_bias,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def zero_shot_cache() -> Path:
    """Where zero-shot scores are cached (``DFLORA_ZS_CACHE`` overrides; tests use their own)."""
    env = os.environ.get("DFLORA_ZS_CACHE")
    return Path(env) if env else cache_root() / "zeroshot"


def zero_shot(exp: Experiment, use_cache: bool = True) -> dict:
    """Test metric of the unadapted model with the manual prompt (the paper's "manual prompt" row)."""
    key = zero_shot_key(exp)
    path = zero_shot_cache() / f"{key}.json"
    if use_cache and key in _ZS_MEMORY:
        return _ZS_MEMORY[key]
    if use_cache and path.is_file():
        _ZS_MEMORY[key] = read_json(path)
        return _ZS_MEMORY[key]
    t0 = time.perf_counter()
    res = exp.evaluate(exp.test_set).as_dict()
    res["seconds"] = time.perf_counter() - t0
    _ZS_MEMORY[key] = res
    if use_cache:
        atomic_write_json(path, res)
    return res
