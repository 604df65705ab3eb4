"""A finished run folder as a classifier again: model, prompt, verbalizer and adapter (docs/export.md).

    with load_tuned("runs/sst2-c-lora-42") as tuned:
        logits = tuned.logits(tuned.encode(examples))     # [N, classes], the run's template

What a run's folder lets dflora rebuild, by method:

- the layer-wise low-rank runs (C-LoRA, F-LoRA, their control arms): ``search.method.load_adapted``
  (record + ``adapter.npz``), with the label bias of a calibrated search;
- BBT / BBTv2: the prompt adapter of ``baselines.prompt_tuning`` with the stored z and scales;
- zeroshot: the unadapted model with the manual prompt.

The other methods store no adapter dflora can rebuild (gradient LoRA and fine-tuning keep no
weights, ICL and the calibrated zero-shot keep no model state): :func:`load_tuned` refuses them
in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..baselines.prompt_tuning import insert_prompt, prompt_experiment
from ..errors import DfloraError
from ..experiment import Experiment
from ..identity import config_from_record
from ..methods import is_layerwise_lora, names
from ..models.registry import LoadedModel
from ..models.scoring import EncodedSet
from ..results.record import RunRecord, load_record
from ..search.adapter_file import ADAPTER, read_adapter
from ..search.method import load_adapted

PROMPT_METHODS = ("bbt", "bbtv2")
WHICH = ("z_best_dev", "z_final")


def supported_methods() -> list[str]:
    return [*names("dfo-lora"), *PROMPT_METHODS, "zeroshot"]


@dataclass
class Tuned:
    """A run's selected model: ``exp`` scores with the run's template, verbalizer and label bias."""

    folder: Path
    record: RunRecord
    exp: Experiment
    adapter: Any = None  # LowRankAdapter, DeepPromptAdapter or None (zeroshot)
    prompt: tuple[int, list[int]] | None = None  # (insert_at, placeholder token ids) of a prompt method
    which: str = "z_best_dev"

    @property
    def method(self) -> str:
        return self.record.method

    def encode(self, examples) -> EncodedSet:
        data = self.exp.encoder.encode(examples)
        return insert_prompt(data, *self.prompt) if self.prompt else data

    def logits(self, data: EncodedSet) -> torch.Tensor:
        return self.exp.logits(data)

    def close(self) -> None:
        if self.adapter is not None:
            self.adapter.remove()
            self.adapter = None

    def __enter__(self) -> Tuned:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def has_adapter(method: str) -> bool:
    """Whether a finished run of ``method`` keeps learned vectors in ``adapter.npz``."""
    return is_layerwise_lora(method) or method in PROMPT_METHODS


def finished_record(run_dir: str | Path) -> RunRecord:
    rec = load_record(run_dir)
    if not rec.done:
        raise DfloraError(f"{run_dir}: the run is not finished (status {rec.status}); finish it with --resume first")
    return rec


def check_supported(rec: RunRecord, what: str) -> None:
    if rec.method not in supported_methods():
        raise DfloraError(f"{rec.folder}: {what} cannot rebuild a {rec.method} run (it stores no adapter dflora "
                          f"rebuilds); supported: {', '.join(supported_methods())}")  # fmt: skip


def load_tuned(run_dir: str | Path, which: str = "z_best_dev", loaded: LoadedModel | None = None,
               what: str = "dflora") -> Tuned:  # fmt: skip
    """Rebuild the model a finished run selected (``which`` z: best dev, as its test was scored, or final)."""
    if which not in WHICH:
        raise DfloraError(f"--which {which!r}: choose from {', '.join(WHICH)}")
    folder = Path(run_dir)
    rec = finished_record(folder)
    check_supported(rec, what)
    if is_layerwise_lora(rec.method):
        exp, adapter = load_adapted(folder, which, loaded)
        return Tuned(folder, rec, exp, adapter, which=which)
    z = None if rec.method == "zeroshot" else read_adapter(folder, rec)[which]  # checked before any model loads
    exp = Experiment.prepare(config_from_record(rec.config), loaded)
    if z is None:
        return Tuned(folder, rec, exp)
    exp_p, adapter = prompt_experiment(exp)
    try:
        adapter.set_scales(rec["projection"]["layer_std"])  # as stored (prompt_experiment measured the same)
        if z.shape != (adapter.num_layers, adapter.dim):
            raise DfloraError(f"{folder}/record.json: its config builds {adapter.num_layers} x {adapter.dim} prompt "
                              f"vectors, its projection and {ADAPTER} say {list(z.shape)}; the record was edited")  # fmt: skip
        for layer in range(adapter.num_layers):
            adapter.set_z(layer, z[layer])
        bias = rec.get("label_bias") if which == "z_best_dev" else None
        if bias is not None:  # a calibrated search: the label bias belongs to the tuned model
            exp_p.head.label_bias = torch.tensor(bias, dtype=torch.float32)
    except BaseException:
        adapter.remove()
        raise
    return Tuned(folder, rec, exp_p, adapter, (adapter.start, list(adapter.token_ids)), which)


def classifier_card(tuned: Tuned) -> dict:
    """What turns the model's output into the run's classes: the file ``dflora_classifier.json`` (docs/export.md)."""
    exp, rec = tuned.exp, tuned.record
    bias = exp.head.label_bias
    return {
        "format": "dflora-classifier/1",
        "run": str(tuned.folder),
        "method": rec.method,
        "task": rec.task,
        "model": rec.model,
        "family": exp.loaded.family,
        "classes": list(exp.task.classes),
        "template": exp.encoder.template.pattern,
        "verbalizer": list(exp.encoder.template.words),
        "label_token_ids": [int(i) for i in exp.encoder.label_token_ids],
        "scored_position": "the mask token"
        if exp.loaded.family == "masked"
        else "the last prompt token (next-token logits)",
        "max_length": exp.cfg.data.max_length,
        "lm_head_bias_dropped": bool(exp.cfg.model.zero_lm_bias and exp.loaded.family == "masked"),
        "label_bias": None if bias is None else [float(b) for b in bias],
        "z": tuned.which,
        "record_test": rec.test,
    }
