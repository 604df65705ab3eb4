"""Low-rank patching, population-batched scoring, projections and hidden-state statistics."""

import numpy as np
import pytest
import torch
from torch import nn

from dflora_core.data.types import Example
from dflora_core.errors import ConfigError, ModelError
from dflora_core.lowrank.adapter import LowRankAdapter
from dflora_core.lowrank.arch import ARCHS, transformer_layers
from dflora_core.lowrank.hidden_stats import clipped_mean_std, hidden_state_stats, projection_scales
from dflora_core.lowrank.patching import LowRankPatch, LowRankWrapper
from dflora_core.lowrank.population import PopulationEvaluator
from dflora_core.lowrank.projection import IntrinsicProjection
from dflora_core.models.registry import LoadedModel
from dflora_core.models.scoring import PromptEncoder, VerbalizerHead, class_logits
from tolerances import assert_moves, assert_within, forward_bound, gamma, within

EXAMPLES = [
    Example(("a great movie with lots of fun",), 1),
    Example(("terrible boring film",), 0),
    Example(("it is fine , I guess , not bad at all really",), 1),
    Example(("the worst story ever",), 0),
    Example(("beautiful",), 1),
]


def _setup(loaded, targets=("q", "k"), d=48, init="ri", ri_std=0.5, max_tokens=64):
    enc = PromptEncoder(loaded, "sst2")
    data = enc.encode(EXAMPLES)
    head = VerbalizerHead(loaded, enc.label_token_ids)
    patch = LowRankPatch(loaded.model, targets)
    dims = [{t: (s.in_features, s.out_features) for t, s in layer.items()} for layer in patch.sites]
    proj = IntrinsicProjection(dims, 4, d, init, seed=1, layer_std=[1.0] * len(dims), ri_std=ri_std)
    return data, head, patch, proj


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("reuse", [True, False])
def test_population_equals_separate_forwards(tiny_models, name, reuse):
    loaded = tiny_models[name]
    data, head, patch, proj = _setup(loaded)
    try:
        base = class_logits(loaded, head, data)
        # the population is chunked over candidates and examples (max_tokens small on purpose)
        ev = PopulationEvaluator(loaded, head, LowRankAdapter(patch, proj), data, max_tokens=48, reuse_prefix=reuse)
        gen = torch.Generator().manual_seed(0)
        # a fixed update in another layer must be respected (held, and replayed below)
        patch.set_layer(0, proj.factors(0, torch.randn(48, generator=gen)))
        for layer in range(patch.num_layers):
            z = torch.randn(5, 48, generator=gen)
            pop = ev.logits(layer, z)
            saved = patch.get_layer(layer)
            sep = []
            for p in range(5):
                patch.set_layer(layer, proj.factors(layer, z[p]))
                sep.append(class_logits(loaded, head, data))
            patch.set_layer(layer, saved or None)
            sep = torch.stack(sep)
            # batched and one-candidate matmuls sum in different orders (CPU-kind dependent): the fp32 bound
            tol = forward_bound(loaded.model.config, sep, seq_len=max(map(len, data.ids)), adapted=True)
            assert_within(pop, sep, tol, "population against separate forwards")
            assert_moves(sep, base.expand_as(sep), tol, "the updates")
    finally:
        patch.remove()


@pytest.mark.parametrize("defect", ["missing scale", "transposed factor", "wrong layer"])
def test_the_population_check_fails_on_a_planted_defect(tiny_models, defect):
    """The bound above is loose enough for any CPU, tight enough for what a population defect would change."""
    loaded = tiny_models["tiny-roberta"]  # square q/k: a transposed update has the same shape
    data, head, patch, proj = _setup(loaded)
    try:
        ev = PopulationEvaluator(loaded, head, LowRankAdapter(patch, proj), data, max_tokens=48, reuse_prefix=True)
        z = torch.randn(3, 48, generator=torch.Generator().manual_seed(0))
        pop = ev.logits(1, z)
        bad = []
        for p in range(3):
            f = proj.factors(1, z[p])
            if defect == "missing scale":
                patch.set_layer(1, {t: (A, 0.5 * B) for t, (A, B) in f.items()})
            elif defect == "transposed factor":  # x (A B)^T instead of x A B
                patch.set_layer(1, {t: (B.T.contiguous(), A.T.contiguous()) for t, (A, B) in f.items()})
            else:
                patch.set_layer(0, f)
            bad.append(class_logits(loaded, head, data))
            patch.set_layer(0, None)
            patch.set_layer(1, None)
        tol = forward_bound(loaded.model.config, pop, seq_len=max(map(len, data.ids)), adapted=True)
        assert not within(pop, torch.stack(bad), tol), f"a {defect} passed the population check"
    finally:
        patch.remove()


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_zero_update_and_removal_are_exact(tiny_models, name):
    loaded = tiny_models[name]
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    enc = PromptEncoder(loaded, "sst2")
    data = enc.encode(EXAMPLES)
    head = VerbalizerHead(loaded, enc.label_token_ids)
    base = class_logits(loaded, head, data)
    data2, head, patch, proj = _setup(loaded, targets=("q", "k", "v", "o"))
    for layer in range(patch.num_layers):
        patch.set_layer(layer, proj.factors(layer, torch.zeros(48)))
    assert torch.equal(class_logits(loaded, head, data), base)  # z = 0: exactly the unpatched logits
    ev = PopulationEvaluator(loaded, head, LowRankAdapter(patch, proj), data, max_tokens=10_000, reuse_prefix=False)
    pop0 = ev.logits(1, torch.zeros(3, 48))  # a batch of 3 sums in another order than one forward
    tol = forward_bound(loaded.model.config, base, seq_len=max(map(len, data.ids)), adapted=True)
    assert_within(pop0, base.expand(3, -1, -1), tol, "z = 0 population")
    patch.set_layer(1, proj.factors(1, torch.ones(48)))
    assert not torch.equal(class_logits(loaded, head, data), base)
    patch.remove()
    assert not any(isinstance(m, LowRankWrapper) for m in loaded.model.modules())
    assert torch.equal(class_logits(loaded, head, data), base)
    after = loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_gpt2_updates_only_the_q_and_k_slices(tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    with LowRankPatch(loaded.model, ("q", "k")) as patch:
        wrapper = patch.sites[0]["q"].wrapper
        assert patch.sites[0]["k"].wrapper is wrapper  # one fused module carries both
        h = wrapper.in_features
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, h, generator=gen)
        y0 = wrapper(x)
        A = torch.randn(h, 2, generator=gen)
        wrapper.factors["k"] = (A, torch.randn(2, h, generator=gen))
        y1 = wrapper(x)
        diff = (y1 - y0).abs().amax(dim=(0, 1))
        assert diff[:h].max() == 0 and diff[2 * h :].max() == 0 and diff[h : 2 * h].min() > 0


def _tiny_model(kind):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    if kind == "bert":
        return BertForMaskedLM(BertConfig(intermediate_size=64, **common))
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **common))
    if kind == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=64, **common))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common))
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["bert", "opt", "gpt_neox", "qwen2"])
def test_other_architectures_patch_and_batch(kind):
    model = _tiny_model(kind).eval()
    assert model.config.model_type in ARCHS
    ids = torch.randint(5, 300, (3, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    with LowRankPatch(model, ("q", "k", "v", "o")) as patch:
        gen = torch.Generator().manual_seed(1)
        factors = {}
        for t, s in patch.sites[1].items():
            factors[t] = (
                torch.randn(2, s.in_features, 4, generator=gen) * 0.1,
                torch.randn(2, 4, s.out_features, generator=gen) * 0.1,
            )
        patch.set_layer(1, factors)
        with torch.no_grad():
            pop = model.base_model(input_ids=ids.repeat(2, 1), attention_mask=mask.repeat(2, 1)).last_hidden_state
        for p in range(2):
            patch.set_layer(1, {t: (A[p], B[p]) for t, (A, B) in factors.items()})
            with torch.no_grad():
                one = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            tol = forward_bound(model.config, one, seq_len=ids.shape[1], adapted=True)
            assert_within(pop[p * 3 : (p + 1) * 3], one, tol, f"{kind} population member {p}")
            assert_moves(one, base, tol)
    with torch.no_grad():
        assert torch.equal(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, base)


def test_gpt_neox_q_rows_are_per_head_interleaved():
    model = _tiny_model("gpt_neox").eval()
    with LowRankPatch(model, ("q",)) as patch:
        site = patch.sites[0]["q"]
        sel = site.wrapper.selects["q"]
        heads, hd = 4, 8
        expected = torch.cat([torch.arange(h * 3 * hd, h * 3 * hd + hd) for h in range(heads)])
        assert torch.equal(sel, expected) and site.out_features == 32


def test_unknown_architecture_names_attention_modules():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird"})()
            self.block_attention = Attn()

    with pytest.raises(ModelError, match="weird.*block_attention"):
        LowRankPatch(Weird(), ("q",))


def test_bad_targets_are_config_errors(tiny_models):
    with pytest.raises(ConfigError, match="targets"):
        LowRankPatch(tiny_models["tiny-llama"].model, ("x",))


def test_projection_shapes_scales_and_seeds():
    dims = [{"q": (16, 16), "k": (16, 8)}] * 3
    proj = IntrinsicProjection(dims, 2, 40, "ril", seed=3, layer_std=[1.0, 2.0, 4.0], alpha=0.5, sigma=0.25)
    f = proj.factors(1, torch.ones(40))
    assert f["q"][0].shape == (16, 2) and f["q"][1].shape == (2, 16) and f["k"][1].shape == (2, 8)
    pop = proj.factors(1, torch.ones(3, 40))
    assert pop["k"][0].shape == (3, 16, 2)
    # one row of a batched z @ M^T against the single product: length-chunk sums, |z| = 1
    tol = 2 * gamma(proj.chunk) * max(float(m.abs().sum(1).max()) for m in proj.matrices(1))
    assert_within(pop["k"][0][2], f["k"][0], tol, "batched factors")
    for layer, std in enumerate([1.0, 2.0, 4.0]):
        m = torch.cat([x.flatten() for x in proj.matrices(layer)])
        expected = 0.5 * std / (np.sqrt(40) * 0.25)
        assert abs(m.std().item() / expected - 1) < 0.05
    again = IntrinsicProjection(dims, 2, 40, "ril", seed=3, layer_std=[1.0, 2.0, 4.0], alpha=0.5, sigma=0.25)
    assert all(torch.equal(a, b) for a, b in zip(proj.matrices(2), again.matrices(2), strict=True))
    other = IntrinsicProjection(dims, 2, 40, "ril", seed=4, layer_std=[1.0, 2.0, 4.0], alpha=0.5, sigma=0.25)
    assert not torch.equal(proj.matrices(2)[0], other.matrices(2)[0])
    released = IntrinsicProjection(dims, 2, 40, "released", seed=3, layer_std=[1.0, 2.0, 4.0], alpha=0.5, sigma=0.25)
    a0, b0 = released.matrices(0)[:2]
    assert a0.abs().max() <= 1 / np.sqrt(10) and b0.abs().max() <= 1 / np.sqrt(10)  # default Linear init
    a1 = released.matrices(1)[0]
    torch.testing.assert_close(a1, proj.matrices(1)[0])  # A-maps of layers >= 1 are hidden-state based
    with pytest.raises(ConfigError, match="intrinsic_dim"):
        IntrinsicProjection(dims, 2, 42, "ri", seed=0)


def test_clipping_removes_outliers():
    gen = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(10_000, generator=gen), torch.full((50,), 1000.0)])
    m, s, kept = clipped_mean_std(v)
    assert abs(m) < 0.05 and abs(s - 1) < 0.1 and kept < 1
    assert v.std() > 50


@pytest.mark.parametrize("source", ["residual", "proj_input"])
def test_hidden_stats_use_real_tokens_only(tiny_models, source):
    loaded: LoadedModel = tiny_models["tiny-llama"]
    enc = PromptEncoder(loaded, "sst2")
    data = enc.encode(EXAMPLES)
    stats = hidden_state_stats(loaded, data, source)
    assert len(stats) == len(transformer_layers(loaded.model))
    n_real = int(sum(len(x) for x in data.ids)) * loaded.model.config.hidden_size
    assert all(s.n_values == n_real for s in stats)  # padding excluded, whatever the batching
    again = hidden_state_stats(loaded, data, source, max_tokens=20)
    # other batches: the hidden states within a forward's bound, then sums over n_values of them (mean, square)
    rel = forward_bound(loaded.model.config, torch.ones(1), max(map(len, data.ids))) + 2 * gamma(stats[0].n_values)
    assert [s.std for s in stats] == pytest.approx([s.std for s in again], rel=rel)
    scales = projection_scales(loaded, stats)
    if source == "residual":
        assert scales[0] == pytest.approx(float(loaded.model.get_input_embeddings().weight.std()))
    else:
        assert scales[0] == stats[0].std
