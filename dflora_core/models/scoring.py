"""Prompting and scoring: examples -> token ids -> verbalizer logits (docs/design.md §2).

The scorer never computes full-vocabulary logits for every position: it takes the final
hidden state at the scored position only (the mask for a masked LM, the last real token
for a causal LM) and multiplies it with the verbalizer rows of the output embedding.
Sequences are padded on the right and the scored position is gathered, so no pad
position is ever read (the released GPT-2 code read the last column: a pad position).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.types import Example
from ..errors import ConfigError
from .registry import LoadedModel
from .templates import Template, get_template


@dataclass
class Batch:
    """Right-padded token ids for some examples of an EncodedSet."""

    index: torch.Tensor  # [n] positions of these examples in the set
    input_ids: torch.Tensor  # [n, T]
    attention_mask: torch.Tensor  # [n, T]
    positions: torch.Tensor  # [n] index of the scored token

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class EncodedSet:
    """Examples of one split as prompts, with their labels; batches are length-sorted."""

    ids: list[list[int]]
    positions: list[int]
    labels: torch.Tensor  # [N] long
    pad_id: int
    truncated: int = 0  # how many prompts had a text field shortened to fit max_length

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids])

    def batches(self, max_tokens: int, device: torch.device | str = "cpu", copies: int = 1) -> list[Batch]:
        """Length-sorted chunks whose padded size times ``copies`` stays under ``max_tokens``.

        Sorting by length trims padding (work on pad tokens is waste); ``copies`` is the
        number of candidates that will share each chunk in a population forward.
        """
        order = np.argsort(-self.lengths, kind="stable")
        out, start = [], 0
        while start < len(order):
            longest = len(self.ids[order[start]])
            n = max(1, max_tokens // max(1, longest * copies))
            chunk = order[start : start + n]
            out.append(self.pad(chunk, device))
            start += n
        return out

    def pad(self, chunk: np.ndarray, device, length: int | None = None) -> Batch:
        """The examples ``chunk`` as one batch padded to ``length`` (default: their longest prompt)."""
        T = length or max(len(self.ids[i]) for i in chunk)
        ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = self.ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        pos = torch.tensor([self.positions[i] for i in chunk])
        return Batch(torch.as_tensor(chunk), ids.to(device), mask.to(device), pos.to(device))


def _token_count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


class PromptEncoder:
    """Fills a task's template with an example's text fields and tokenizes it."""

    def __init__(self, loaded: LoadedModel, task: str, max_length: int = 512, words: Sequence[str] | None = None):
        self.tok = loaded.tokenizer
        self.family = loaded.family
        self.task = task
        override = tuple(words) if words else loaded.verbalizers.get(task)
        if override and self.family == "causal":
            # the label word follows the template's last word: BPE vocabularies attach the space
            override = tuple(" " + w.strip() for w in override)
        self.template: Template = get_template(task, loaded.family, override)
        self.max_length = max_length
        if self.family == "masked" and self.tok.mask_token is None:
            raise ConfigError("model", f"{loaded.name} is a masked LM without a mask token")
        self.label_token_ids = self._verbalizer_ids()

    def _verbalizer_ids(self) -> list[int]:
        ids = []
        field = self.template.origin or "verbalizer"  # a task file's key (docs/tasks.md), else the config's
        for word in self.template.words:
            # masked LMs with BPE: the label word follows a space unless the mask starts the prompt
            if self.family == "masked":
                tries = [word, " " + word] if self.template.pattern.startswith("{mask}") else [" " + word, word]
            else:
                tries = [word]
            for w in tries:
                toks = self.tok(w, add_special_tokens=False).input_ids
                if len(toks) == 1 and toks[0] == self.tok.unk_token_id:
                    raise ConfigError(field, f"label word {w!r} of task {self.task} is unknown to the tokenizer")
                if len(toks) == 1:
                    ids.append(toks[0])
                    break
            else:
                pieces = self.tok.convert_ids_to_tokens(self.tok(tries[0], add_special_tokens=False).input_ids)
                raise ConfigError(
                    field,
                    f"label word {tries[0]!r} of task {self.task} is not one token for this tokenizer "
                    f"(it splits into {pieces}); choose single-token words (verbalizer override)",
                )
        if len(set(ids)) != len(ids):
            raise ConfigError(field, f"two label words of task {self.task} map to the same token")
        return ids

    def _prompt(self, texts: Sequence[str]) -> str:
        kw = {"mask": self.tok.mask_token} if self.family == "masked" else {}
        return self.template.pattern.format(*[t.strip() for t in texts], **kw)

    def encode_one(self, texts: Sequence[str]) -> tuple[list[int], int, bool]:
        texts = list(texts)
        ids = self.tok(self._prompt(texts)).input_ids
        truncated = False
        while len(ids) > self.max_length:
            # shorten the longest text field (never the template), keeping its beginning
            j = max(range(len(texts)), key=lambda i: _token_count(self.tok, texts[i]))
            field_ids = self.tok(texts[j], add_special_tokens=False).input_ids
            keep = max(1, len(field_ids) - (len(ids) - self.max_length) - 1)
            if keep >= len(field_ids):
                raise ConfigError("max_length", f"{self.max_length} is shorter than the template of {self.task}")
            texts[j] = self.tok.decode(field_ids[:keep])
            ids = self.tok(self._prompt(texts)).input_ids
            truncated = True
        if self.family == "masked":
            hits = [i for i, t in enumerate(ids) if t == self.tok.mask_token_id]
            if len(hits) != 1:
                raise ConfigError("template", f"{self.task}: expected one mask token, found {len(hits)}")
            pos = hits[0]
        else:
            pos = len(ids) - 1
        return ids, pos, truncated

    def encode(self, examples: Sequence[Example]) -> EncodedSet:
        ids, pos, n_trunc = [], [], 0
        for ex in examples:
            i, p, t = self.encode_one(ex.texts)
            ids.append(i)
            pos.append(p)
            n_trunc += t
        labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        return EncodedSet(ids, pos, labels, self.tok.pad_token_id, n_trunc)


class VerbalizerHead:
    """Class logits from final hidden states at the scored positions, verbalizer rows only."""

    def __init__(self, loaded: LoadedModel, label_token_ids: Sequence[int], zero_lm_bias: bool = False):
        model = loaded.model
        self.family = loaded.family
        ids = torch.tensor(list(label_token_ids), device=loaded.device)
        out = model.get_output_embeddings()
        self.weight = out.weight[ids]  # [C, H] (a gathered copy: small)
        bias = getattr(out, "bias", None)
        if self.family == "masked":
            head = getattr(model, "lm_head", None)
            if head is not None and getattr(head, "bias", None) is not None and bias is None:
                bias = head.bias
        self.bias = None if (bias is None or zero_lm_bias) else bias[ids]
        # the model's own output scaling, applied as its forward applies it: Granite divides the
        # logits by ``logits_scaling``, Gemma 2/3 soft-cap them (tests/test_heads.py checks every ARCHS type)
        self.logits_scaling = getattr(model.config, "logits_scaling", None)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.transform = self._masked_transform(model) if self.family == "masked" else None
        self._label_bias: torch.Tensor | None = None  # added to the final class logits (calibrated search)

    @property
    def label_bias(self) -> torch.Tensor | None:
        return self._label_bias

    @label_bias.setter
    def label_bias(self, bias: torch.Tensor | None) -> None:
        """Moved to the head's device once here, not copied to it on every forward."""
        self._label_bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float32).to(self.weight.device)

    @staticmethod
    def _masked_transform(model):
        """The part of a masked-LM head before its vocabulary projection, by head layout."""
        if hasattr(model, "lm_head") and hasattr(model.lm_head, "dense"):  # RoBERTa-style
            h = model.lm_head
            return lambda x: h.layer_norm(F.gelu(h.dense(x)))
        if hasattr(model, "cls") and hasattr(model.cls, "predictions"):  # BERT-style
            return model.cls.predictions.transform
        if hasattr(model, "generator_predictions"):  # ELECTRA generator: dense, gelu, LayerNorm
            return model.generator_predictions
        raise ConfigError("model", f"unsupported masked-LM head {type(model).__name__}")

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            hidden = self.transform(hidden)
        logits = F.linear(
            hidden, self.weight.to(hidden.dtype), None if self.bias is None else self.bias.to(hidden.dtype)
        )
        if self.logits_scaling:
            logits = logits / self.logits_scaling
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if self.label_bias is not None:
            logits = logits + self._label_bias.to(logits.dtype)
        return logits


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on the model's device, or nothing for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def body_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The transformer body (no LM head) on a batch. Never builds a key/value cache: no forward here is
    continued by generation, and a causal model's cache holds K and V of every layer until the forward
    returns (SmolLM2: about 45 KiB per token), which inflated every peak-memory figure."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def forward_class_logits(
    loaded: LoadedModel, head: VerbalizerHead, batch: Batch, copies: int = 1, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Class logits [copies * n, C] for a batch repeated ``copies`` times (candidate-major rows)."""
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.positions
    if copies > 1:
        ids, mask, pos = ids.repeat(copies, 1), mask.repeat(copies, 1), pos.repeat(copies)
    with torch.no_grad(), autocast(ids.device, dtype):
        hidden = body_forward(loaded.model, ids, mask).last_hidden_state
        picked = hidden[torch.arange(len(pos), device=pos.device), pos]
        return head(picked).float()


def class_logits(
    loaded: LoadedModel, head: VerbalizerHead, data: EncodedSet, max_tokens: int = 16384, dtype=None
) -> torch.Tensor:
    """Class logits [N, C] for a whole encoded set (in its original order), current model state."""
    out = torch.empty(len(data), len(head.weight))
    for batch in data.batches(max_tokens, loaded.device):
        out[batch.index] = forward_class_logits(loaded, head, batch, dtype=dtype).cpu()
    return out
