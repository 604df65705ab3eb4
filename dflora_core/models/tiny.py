"""Randomly initialised models built from configs: tiny ones for tests, real-sized shapes for benchmarks.

Three tiny families cover the three code paths of the workbench: ``tiny-roberta`` (masked LM,
separate q/k/v ``nn.Linear``), ``tiny-gpt2`` (causal LM, fused ``Conv1D`` ``c_attn``) and
``tiny-llama`` (the default model's family: rotary, grouped-query attention, pre-norm).
They share a word-level tokenizer built here from the task templates and a fixed list of
common words, so no tokenizer is downloaded.

The synthetic shapes (``SHAPES``: RoBERTa-large, GPT2-XL, GPT-2 ... with random weights, no
tokenizer) are what ``dflora bench`` times: their speed is a real architecture's speed, their
outputs mean nothing. ``build_shape`` builds one.
"""

from __future__ import annotations

import contextlib
import functools
import re

import torch

from .templates import CAUSAL_LM, MASKED_LM

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
_WORD = re.compile(r"\w+|[^\w\s]")


def _template_words() -> set[str]:
    words: set[str] = set()
    for table in (MASKED_LM, CAUSAL_LM):
        for tpl in table.values():
            words.update(_WORD.findall(tpl.pattern.replace("{mask}", " ").format("", "")))
            for w in tpl.words:
                words.update(_WORD.findall(w))
    return words


# common English words so that tiny-model inputs are not all <unk>; fixed, so the tiny
# models do not change when the data does
COMMON_WORDS = """
the a an and or but not no yes of to in on at for with from by as is are was were be been it its this that
these those he she they we you i his her their our your my me him them who what which when where why how
all any some many much more most few one two three four five first new old good bad great best worst very
really too so just only also even still again never ever always often well better movie film story show
book music game team season year years day days time people man men woman women world news market company
government president city country state war police school university players play played win won lost
price prices stock shares oil tech technology computer software internet phone service food place restaurant
staff order ordered room hotel fun funny boring dull love loved like liked hate awful terrible wonderful
beautiful nice excellent amazing poor perfect worth money back never because after before while during
about over under between into out up down off than then there here have has had do does did can could will
would should may might must said says say make made get got go went see saw know think thought want
""".split()


@functools.lru_cache(maxsize=1)
def word_vocab() -> tuple[str, ...]:
    """Specials, the template and verbalizer words, then a fixed list of common words."""
    first = list(SPECIALS) + sorted(_template_words())
    seen = set(first)
    rest = [w for w in dict.fromkeys(COMMON_WORDS) if w not in seen]
    return tuple(first + rest)


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(masked: bool):
    """A word-level fast tokenizer; masked=True adds RoBERTa-style <s> ... </s> around inputs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(word_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits()]
    )
    if masked:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
        )
    kwargs = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if masked:
        kwargs["mask_token"] = "<mask>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


TINY_SIZES = dict(hidden=32, layers=3, heads=4, kv_heads=2, intermediate=64, positions=512)


def build_tiny(name: str, seed: int = 0):
    """Build a tiny model by name; returns (model, tokenizer). Same seed, same weights."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    s = TINY_SIZES
    masked = name == "tiny-roberta"
    tok = tiny_tokenizer(masked)
    vocab = len(tok)
    # a larger init range than the default 0.02 so that random logits and updates are not all ~0
    shared = dict(
        vocab_size=vocab,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=0.1,
    )
    if name == "tiny-roberta":
        cfg = RobertaConfig(
            **shared,
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"] + 2,
            type_vocab_size=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        cls = RobertaForMaskedLM
    elif name == "tiny-gpt2":
        cfg = GPT2Config(
            **shared,
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_positions=s["positions"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        cls = GPT2LMHeadModel
    elif name == "tiny-llama":
        cfg = LlamaConfig(
            **shared,
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"],
            tie_word_embeddings=True,
        )
        cls = LlamaForCausalLM
    else:
        raise KeyError(name)
    return _random_init(cls, cfg, seed), tok


def _random_init(cls, cfg, seed: int, device=None):
    """``cls(cfg)`` in eval mode, its weights drawn from ``seed`` without touching torch's global stream."""
    on_device = contextlib.nullcontext() if device is None else torch.device(device)
    # manual_seed seeds every device's generator: fork (save and restore) the CUDA ones too
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), on_device:
        torch.manual_seed(seed)
        model = cls(cfg)
    return model.eval()


# -- synthetic shapes: real architectures, random weights (speed does not depend on the values) ----------
ROBERTA_MASK_ID = 50264  # <mask> in RoBERTa's vocabulary: the shapes have no tokenizer to ask


_ROBERTA_VOCAB = dict(vocab_size=50265, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _roberta_shape(hidden: int, layers: int, heads: int, intermediate: int, positions: int = 514):
    return "roberta", dict(
        _ROBERTA_VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
    )


def _gpt2_shape(embd: int, layers: int, heads: int, positions: int = 1024):
    return "gpt2", dict(vocab_size=50257, n_embd=embd, n_layer=layers, n_head=heads, n_positions=positions)


SHAPES: dict[str, tuple[str, dict]] = {
    "roberta-large-shape": _roberta_shape(1024, 24, 16, 4096),
    "roberta-base-shape": _roberta_shape(768, 12, 12, 3072),
    "gpt2-xl-shape": _gpt2_shape(1600, 48, 25),
    "gpt2-large-shape": _gpt2_shape(1280, 36, 20),
    "gpt2-medium-shape": _gpt2_shape(1024, 24, 16),
    "gpt2-shape": _gpt2_shape(768, 12, 12),
    # for tests: the synthetic code paths on a model that builds in a second
    "gpt2-tiny-shape": _gpt2_shape(64, 3, 4, positions=256),
    "roberta-tiny-shape": _roberta_shape(64, 3, 4, 128, positions=258),
}


def build_shape(name: str, device="cpu"):
    """A synthetic shape by name on ``device``, frozen; returns (model, family). Always the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

    kind, kw = SHAPES[name]
    if kind == "roberta":
        cfg, cls, family = RobertaConfig(**kw), RobertaForMaskedLM, "masked"
    else:
        cfg = GPT2Config(**kw, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
        cls, family = GPT2LMHeadModel, "causal"
    model = _random_init(cls, cfg, 0, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, family
