"""Tiny randomly initialised models built from configs, for tests and CI.

Three families cover the three code paths of the workbench: ``tiny-roberta`` (masked LM,
separate q/k/v ``nn.Linear``), ``tiny-gpt2`` (causal LM, fused ``Conv1D`` ``c_attn``) and
``tiny-llama`` (the default model's family: rotary, grouped-query attention, pre-norm).
They share a word-level tokenizer built here from the task templates and a fixed list of
common words, so no tokenizer is downloaded.
"""

from __future__ import annotations

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
    init = 0.1
    if name == "tiny-roberta":
        cfg = RobertaConfig(
            vocab_size=vocab,
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"] + 2,
            type_vocab_size=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            initializer_range=init,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        cls = RobertaForMaskedLM
    elif name == "tiny-gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_positions=s["positions"],
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            initializer_range=init,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        cls = GPT2LMHeadModel
    elif name == "tiny-llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"],
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=True,
            initializer_range=init,
        )
        cls = LlamaForCausalLM
    else:
        raise KeyError(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
    model.eval()
    return model, tok
