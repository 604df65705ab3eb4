"""Prompts, verbalizers and scoring at the right position."""

import pytest
import torch

from dflora_core.data.types import Example
from dflora_core.errors import ConfigError, DfloraError
from dflora_core.metrics import f1_binary, losses
from dflora_core.models.registry import load_model, peek_model
from dflora_core.models.scoring import PromptEncoder, VerbalizerHead, class_logits
from dflora_core.models.templates import CAUSAL_LM, MASKED_LM
from tolerances import assert_within, forward_bound

TASKS = ["sst2", "yelp", "agnews", "dbpedia", "mrpc", "rte", "snli"]


def _example(task):
    n = 2 if task in ("mrpc", "rte", "snli") else 1
    return Example(tuple(["the movie was great fun"] * n), 0)


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_scores_at_the_right_position(tiny_models, name, task):
    loaded = tiny_models[name]
    enc = PromptEncoder(loaded, task)
    data = enc.encode(
        [_example(task), Example(_example(task).texts[:1] * (2 if task in ("mrpc", "rte", "snli") else 1), 0)]
    )
    assert len(enc.label_token_ids) == len((MASKED_LM if loaded.family == "masked" else CAUSAL_LM)[task].words)
    for ids, pos in zip(data.ids, data.positions, strict=True):
        if loaded.family == "masked":
            assert ids[pos] == loaded.tokenizer.mask_token_id
        else:
            assert pos == len(ids) - 1


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_padding_never_changes_a_score(tiny_models, name):
    """Scores of a batch with padding equal each example scored alone (no pad position is read)."""
    loaded = tiny_models[name]
    enc = PromptEncoder(loaded, "sst2")
    exs = [Example(("short",), 0), Example(("a much longer sentence with many more words in it",), 1)]
    data = enc.encode(exs)
    head = VerbalizerHead(loaded, enc.label_token_ids)
    together = class_logits(loaded, head, data, max_tokens=10_000)
    alone = torch.cat([class_logits(loaded, head, enc.encode([e])) for e in exs])
    tol = forward_bound(loaded.model.config, alone, seq_len=max(map(len, data.ids)))  # another batch, another order
    assert_within(together, alone, tol, "padded batch against each example alone")
    full = loaded.model(input_ids=torch.tensor([data.ids[0]])).logits[0, data.positions[0], enc.label_token_ids]
    assert_within(together[0], full.detach(), tol, "verbalizer head against the full LM output")


def test_masked_lm_bias_option(tiny_models):
    loaded = tiny_models["tiny-roberta"]
    enc = PromptEncoder(loaded, "sst2")
    with torch.no_grad():
        loaded.model.lm_head.bias.copy_(torch.arange(len(loaded.model.lm_head.bias)).float() * 0.01)
    try:
        data = enc.encode([Example(("fine",), 0)])
        with_bias = class_logits(loaded, VerbalizerHead(loaded, enc.label_token_ids), data)
        without = class_logits(loaded, VerbalizerHead(loaded, enc.label_token_ids, zero_lm_bias=True), data)
        ids = torch.tensor(enc.label_token_ids)
        torch.testing.assert_close(with_bias - without, loaded.model.lm_head.bias[ids].unsqueeze(0))
    finally:
        with torch.no_grad():
            loaded.model.lm_head.bias.zero_()


def test_multi_token_verbalizer_is_refused(tiny_models):
    with pytest.raises(ConfigError, match="not one token"):
        PromptEncoder(tiny_models["tiny-llama"], "sst2", words=("bad", "great-fun"))
    with pytest.raises(ConfigError, match="unknown to the tokenizer"):
        PromptEncoder(tiny_models["tiny-llama"], "sst2", words=("bad", "supercalifragilistic"))


def test_long_inputs_are_truncated_not_dropped(tiny_models):
    loaded = tiny_models["tiny-llama"]
    enc = PromptEncoder(loaded, "rte", max_length=20)
    data = enc.encode([Example(("the movie " * 30, "it was good"), 0)])
    assert len(data.ids[0]) <= 20 and data.truncated == 1
    tail = loaded.tokenizer(" it was good Answer:", add_special_tokens=False).input_ids
    assert data.ids[0][-len(tail) :] == tail  # the template and the second field survive


def test_losses():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [2.0, 0.0]]])
    labels = torch.tensor([0, 1])
    ce = losses(logits, labels, "ce")
    assert ce[0] < ce[1]
    assert losses(logits, labels, "neg_metric").tolist() == [-1.0, 0.0]
    hinge = losses(logits, labels, "hinge")
    assert hinge[0] == 0.0 and hinge[1] == pytest.approx(4.0)
    assert f1_binary([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(DfloraError, match="not a known model"):
        load_model("no-such-model")
    with pytest.raises(DfloraError, match="config.json"):
        load_model(str(tmp_path))
    assert peek_model("tiny-llama") == ("llama", 3)


def test_local_folder_loads(tiny_models, tmp_path):
    src = tiny_models["tiny-gpt2"]
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), "cpu")
    assert loaded.family == "causal" and loaded.model_type == "gpt2"
    assert peek_model(str(tmp_path)) == ("gpt2", 3)
