"""No dflora forward builds a key/value cache (conftest.py counts every cache a model builds from
inside dflora_core and fails the test that built it). This file shows the counter is live."""

import conftest
import pytest
import torch

from dflora_core.models import scoring


def test_the_cache_counter_sees_a_forward_without_use_cache_false(tiny_models, monkeypatch):
    loaded = tiny_models["tiny-llama"]
    enc = scoring.PromptEncoder(loaded, "sst2")
    from dflora_core.data.types import Example

    data = enc.encode([Example(("a fine film",), 1)])
    head = scoring.VerbalizerHead(loaded, enc.label_token_ids)
    scoring.class_logits(loaded, head, data)
    assert conftest.CACHES_BUILT_BY_DFLORA == []  # the real forward builds none
    monkeypatch.setattr(scoring, "body_forward", lambda model, ids, mask: model.base_model(input_ids=ids,
                                                                                          attention_mask=mask))  # fmt: skip
    scoring.class_logits(loaded, head, data)
    assert conftest.CACHES_BUILT_BY_DFLORA and "DynamicCache" in conftest.CACHES_BUILT_BY_DFLORA[0]
    conftest.CACHES_BUILT_BY_DFLORA.clear()  # planted on purpose: not this test's failure


def test_a_test_calling_the_model_itself_is_not_counted(tiny_models):
    model = tiny_models["tiny-llama"].model
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))  # as a user would: builds a cache, outside dflora_core
    assert conftest.CACHES_BUILT_BY_DFLORA == []


@pytest.mark.parametrize("method", ["c-lora", "f-lora", "bbtv2", "lora", "zo-sgd", "forward-grad", "icl",
                                    "zeroshot-calibrated", "es-full"])  # fmt: skip
def test_runs_of_every_family_build_no_cache(method, tiny_run):
    tiny_run("tiny-llama", method)  # the autouse check fails the test on any cache built by dflora
