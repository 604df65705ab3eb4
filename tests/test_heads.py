"""The verbalizer head against the model's own logits, for every architecture in the patching table,
and the refusal of pickle weights in a local model folder.

Each architecture is a tiny random model built here from its Hugging Face config (no download, a
few hundredths of a second each); the head must give the model's full-vocabulary logits at the
scored position, restricted to the label ids (docs/design.md §2), output scaling included.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from dflora_core.errors import ModelError
from dflora_core.lowrank.arch import ARCHS
from dflora_core.models.registry import MASKED_TYPES, LoadedModel, load_model
from dflora_core.models.scoring import Batch, VerbalizerHead, forward_class_logits
from tolerances import assert_moves, assert_within, forward_bound

VOCAB = 64
LABEL_IDS = [5, 17, 42]
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    head_dim=8,
    initializer_range=0.2,  # logits of order 1, so that a wrong scale is far outside atol
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# settings that make each model's own output scaling, or a head layout, matter in the comparison
OVERRIDES = {
    "granite": dict(logits_scaling=8.0),
    "gemma2": dict(final_logit_softcapping=1.0),
    "gemma3_text": dict(final_logit_softcapping=1.0),
    "electra": dict(embedding_size=16),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=16),
}


def _tiny_from_config(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    try:
        cfg = AutoConfig.for_model(model_type, **SIZES, **OVERRIDES.get(model_type, {}))
        cls = AutoModelForMaskedLM if model_type in MASKED_TYPES else AutoModelForCausalLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls.from_config(cfg)
    except (ValueError, KeyError, ImportError, OSError) as err:
        pytest.skip(f"transformers cannot build {model_type!r} offline: {str(err).splitlines()[0]}")
    return model.eval()


def _right_padded_batch(family: str) -> Batch:
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 6, 4]
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[row, :n] = 1
    # a causal LM is scored at its last real token; a masked LM at its mask, here inside the text
    pos = [n - 1 if family == "causal" else n // 2 for n in lengths]
    return Batch(torch.arange(len(lengths)), ids, mask, torch.tensor(pos))


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_the_verbalizer_head_gives_the_models_own_logits_at_the_scored_position(model_type, one_thread):
    model = _tiny_from_config(model_type)
    family = "masked" if model_type in MASKED_TYPES else "causal"
    loaded = LoadedModel(model_type, model, None, family, {})
    batch = _right_padded_batch(family)
    head = VerbalizerHead(loaded, LABEL_IDS)
    ours = forward_class_logits(loaded, head, batch)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    theirs = full[torch.arange(len(batch.positions)), batch.positions][:, LABEL_IDS]
    # the head's rows at the scored position against the full vocabulary product: other sums, same function
    tol = forward_bound(model.config, theirs, seq_len=batch.input_ids.shape[1])
    assert_moves(theirs, torch.zeros_like(theirs), tol, "random logits")  # large enough to tell a wrong scale
    assert_within(ours, theirs.float(), tol, f"{model_type} verbalizer head")


def test_granite_logits_are_divided_by_its_logits_scaling(one_thread):
    model = _tiny_from_config("granite")
    loaded = LoadedModel("granite", model, None, "causal", {})
    batch = _right_padded_batch("causal")
    scaled = forward_class_logits(loaded, VerbalizerHead(loaded, LABEL_IDS), batch)
    model.config.logits_scaling = 1.0
    unscaled = forward_class_logits(loaded, VerbalizerHead(loaded, LABEL_IDS), batch)
    assert torch.equal(unscaled, 8.0 * scaled)  # dividing by a power of two is exact in floating point


class _Payload:
    """Unpickling this writes a marker file: the proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_model_folder_with_only_pickle_weights_is_refused_in_one_line_without_unpickling(tmp_path, one_thread):
    folder = tmp_path / "model"
    model = _tiny_from_config("llama")
    model.config.save_pretrained(folder)
    marker = tmp_path / "executed"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ModelError, match="only pickle weights") as err:
        load_model(str(folder), "cpu")
    message = str(err.value)
    assert "\n" not in message and "pytorch_model.bin" in message and "safetensors" in message
    assert not marker.exists()
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ModelError, match="has no weights"):
        load_model(str(folder), "cpu")
