"""``dflora export`` (docs/export.md): the exported model scores like dflora's rebuild of the run.

PEFT parity on the three tiny architectures (separate projections with grouped-query attention,
GPT-2's fused Conv1D ``c_attn``, a masked LM), through ``PeftModel.from_pretrained`` on a fresh
base model and through plain transformers for the merged model: the verbalizer logits, taken
from the full LM output as any user would, equal dflora's to 1e-5.
"""

import json

import pytest
import torch
from safetensors import safe_open

from dflora_core.cli import main
from dflora_core.errors import DfloraError
from dflora_core.models import tiny
from dflora_core.workbench.export import adapted_modules, export
from dflora_core.workbench.tuned import load_tuned

peft = pytest.importorskip("peft")

# targets per model: GQA k/v (llama), non-adjacent slices of the fused c_attn plus c_proj (gpt2), all four (roberta)
TARGETS = {"tiny-llama": ("q", "k"), "tiny-gpt2": ("q", "v", "o"), "tiny-roberta": ("q", "k", "v", "o")}


def lm_class_logits(model, data, label_ids) -> torch.Tensor:
    """Class logits the plain way: the full LM output at the scored position, the label words' columns."""
    out = torch.empty(len(data), len(label_ids))
    for b in data.batches(4096):
        with torch.no_grad():
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        out[b.index] = logits[torch.arange(len(b.positions)), b.positions][:, label_ids]
    return out


def reference(run, loaded):
    """dflora's own rebuild of the run: its test prompts, class logits, label ids and bias, adapted modules."""
    with load_tuned(run, loaded=loaded) as tuned:
        data, exp = tuned.exp.test_set, tuned.exp
        modules = [name for name, _ in adapted_modules(exp.loaded.model)]
        return data, tuned.logits(data), list(exp.encoder.label_token_ids), exp.head.label_bias, modules


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_peft_and_merged_exports_score_like_the_tuned_run(name, tiny_run, tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    targets = TARGETS[name]
    run = tiny_run(name, **{"lowrank.targets": targets, "lowrank.intrinsic_dim": 12 * len(targets)})
    data, ref, ids, _, modules = reference(run, tiny_models[name])
    base = tiny.build_tiny(name, seed=0)[0]
    assert (lm_class_logits(base, data, ids) - ref).abs().max() > 1e-3  # the update matters at this tolerance

    export(run, "peft", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] and config["peft_type"] == "LORA"
    assert config["task_type"] == (None if name == "tiny-roberta" else "CAUSAL_LM")
    assert config["fan_in_fan_out"] == (name == "tiny-gpt2")
    assert config["target_modules"] == modules  # full names of the adapted projections only
    through_peft = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert (lm_class_logits(through_peft, data, ids) - ref).abs().max() < 1e-5

    export(run, "merged", tmp_path / "merged")
    cls = AutoModelForMaskedLM if name == "tiny-roberta" else AutoModelForCausalLM
    merged = cls.from_pretrained(tmp_path / "merged").eval()
    assert (lm_class_logits(merged, data, ids) - ref).abs().max() < 1e-5
    card = json.loads((tmp_path / "merged" / "dflora_classifier.json").read_text())
    assert card["label_token_ids"] == ids and card["label_bias"] is None


def test_the_fused_rows_of_targets_not_adapted_stay_zero(tiny_run, tmp_path):
    run = tiny_run("tiny-gpt2", **{"lowrank.targets": ("q", "v", "o"), "lowrank.intrinsic_dim": 36})
    export(run, "peft", tmp_path / "peft")
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    fused = [v for k, v in tensors.items() if k.endswith("c_attn.lora_B.weight")]  # [3 * hidden, R]
    out_proj = [v for k, v in tensors.items() if k.endswith("c_proj.lora_A.weight")]  # [R, hidden]
    assert fused and out_proj
    for B in fused:
        n = B.shape[0] // 3
        assert B[n : 2 * n].abs().max() == 0 and B[:n].abs().max() > 0 and B[2 * n :].abs().max() > 0  # k rows zero
    for A in out_proj:  # c_proj's rank 4, padded with zero rows to the rank 8 of the fused q + v
        assert A.shape[0] == 8 and A[4:].abs().max() == 0 and A[:4].abs().max() > 0


def test_a_label_bias_is_exported_beside_the_adapter(tiny_run, tiny_models, tmp_path):
    run = tiny_run("tiny-llama", **{"search.calibrated_logits": True})
    data, ref, ids, bias, _ = reference(run, tiny_models["tiny-llama"])
    assert bias is not None
    res = export(run, "peft", tmp_path / "peft")
    assert "label bias" in res["note"]
    card = json.loads((tmp_path / "peft" / "dflora_classifier.json").read_text())
    through_peft = peft.PeftModel.from_pretrained(tiny.build_tiny("tiny-llama", seed=0)[0], str(tmp_path / "peft"))
    logits = lm_class_logits(through_peft.eval(), data, ids) + torch.tensor(card["label_bias"])
    assert (logits - ref).abs().max() < 1e-5


def test_bbt_prompts_export_and_the_documented_recipe_scores_like_the_run(tiny_run, tiny_models, tmp_path):
    run = tiny_run("tiny-llama", "bbt")
    data, ref, ids, _, _ = reference(run, tiny_models["tiny-llama"])
    assert main(["export", "--run", str(run), "--format", "prompts", "--out", str(tmp_path / "p")]) == 0
    with safe_open(str(tmp_path / "p" / "prompts.safetensors"), "pt") as f:
        meta, embeds, token_ids = f.metadata(), f.get_tensor("input_embeds"), f.get_tensor("prompt_token_ids")
    start, n = int(meta["insert_at"]), int(meta["prompt_tokens"])
    assert embeds.shape == (n, 32) and token_ids.shape == (n,) and json.loads(meta["layers_with_delta"]) == []
    model = tiny.build_tiny("tiny-llama", seed=0)[0]
    out = torch.empty_like(ref)
    for b in data.batches(4096):  # data already holds the placeholders: replace their embeddings
        assert (b.input_ids[:, start : start + n] == token_ids).all()
        x = model.get_input_embeddings()(b.input_ids)
        x[:, start : start + n] = embeds
        with torch.no_grad():
            logits = model(inputs_embeds=x, attention_mask=b.attention_mask).logits
        out[b.index] = logits[torch.arange(len(b.positions)), b.positions][:, ids]
    assert (out - ref).abs().max() < 1e-5


def test_export_refuses_in_one_line_what_it_cannot_write(tiny_run, tmp_path, capsys):
    run = tiny_run("tiny-llama")
    assert main(["export", "--run", str(run), "--format", "prompts", "--out", str(tmp_path / "x")]) == 2
    assert "export it with --format peft or merged" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(DfloraError, match="not empty"):
        export(run, "peft", tmp_path / "full")
    bbt = tiny_run("tiny-llama", "bbt")
    with pytest.raises(DfloraError, match="tunes prompts"):
        export(bbt, "merged", tmp_path / "m")
    zs = tiny_run("tiny-llama", "zeroshot")
    with pytest.raises(DfloraError, match="stores nothing to export"):
        export(zs, "peft", tmp_path / "z")
