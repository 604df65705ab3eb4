"""``dflora export`` (docs/export.md): the exported model scores like dflora's rebuild of the run.

PEFT parity on the three tiny architectures (separate projections with grouped-query attention,
GPT-2's fused Conv1D ``c_attn``, a masked LM), through ``PeftModel.from_pretrained`` on a fresh
base model and through plain transformers for the merged model: the verbalizer logits, taken
from the full LM output as any user would, equal dflora's within the fp32 bound of one forward pass
(tests/tolerances.py: scaled to the logits' magnitude and to the rounding accumulated over the
layers), with the same prediction on every example; the update moves them by far more than that.
"""

import json

import pytest
import torch
from safetensors import safe_open

from dflora_core.cli import main
from dflora_core.errors import DfloraError
from dflora_core.models import tiny
from dflora_core.tuned.classifier import load_tuned
from dflora_core.tuned.export import adapted_modules, export
from tolerances import assert_moves, assert_within, forward_bound

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


def bound(model, data, ref) -> float:
    """Two fp32 evaluations of the adapted forward pass (PEFT or merged weights against dflora's hooks)."""
    return forward_bound(model.config, ref, seq_len=max(len(x) for x in data.ids), adapted=True)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_peft_and_merged_exports_score_like_the_tuned_run(name, tiny_run, tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    targets = TARGETS[name]
    run = tiny_run(name, **{"lowrank.targets": targets, "lowrank.intrinsic_dim": 12 * len(targets)})
    data, ref, ids, _, modules = reference(run, tiny_models[name])
    base = tiny.build_tiny(name, seed=0)[0]
    tol = bound(base, data, ref)
    assert_moves(lm_class_logits(base, data, ids), ref, tol)  # the update matters at this tolerance

    export(run, "peft", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] and config["peft_type"] == "LORA"
    assert config["task_type"] == (None if name == "tiny-roberta" else "CAUSAL_LM")
    assert config["fan_in_fan_out"] == (name == "tiny-gpt2")
    assert config["target_modules"] == modules  # full names of the adapted projections only
    through_peft = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert_within(lm_class_logits(through_peft, data, ids), ref, tol, "PEFT export")

    export(run, "merged", tmp_path / "merged")
    cls = AutoModelForMaskedLM if name == "tiny-roberta" else AutoModelForCausalLM
    merged = cls.from_pretrained(tmp_path / "merged").eval()
    assert_within(lm_class_logits(merged, data, ids), ref, tol, "merged export")
    card = json.loads((tmp_path / "merged" / "dflora_classifier.json").read_text())
    assert card["label_token_ids"] == ids and card["label_bias"] is None


def _planted(tensors: dict, config: dict, defect: str) -> tuple[dict, dict]:
    """The PEFT export with one defect an exporter could have."""
    tensors, config = dict(tensors), dict(config)
    if defect == "missing scale":  # the update at half its size, as if a factor 2 (alpha / r) were dropped
        config["lora_alpha"] = config["r"] / 2
    elif defect == "transposed factor":  # delta^T instead of delta (square q/k/v/o of tiny-roberta)
        for key in [k for k in tensors if k.endswith("lora_A.weight")]:
            other = key.replace("lora_A", "lora_B")
            tensors[key], tensors[other] = tensors[other].T.contiguous(), tensors[key].T.contiguous()
    elif defect == "wrong layer":  # layer 0's update written to layer 1 and the other way round
        swapped = {}
        for key, value in tensors.items():
            k = key.replace(".layer.0.", ".layer.@.").replace(".layer.1.", ".layer.0.").replace(".layer.@.", ".layer.1.")
            swapped[k] = value
        tensors = swapped
    return tensors, config


@pytest.mark.parametrize("defect", ["missing scale", "transposed factor", "wrong layer"])
def test_the_parity_check_fails_on_a_planted_defect(defect, tiny_run, tiny_models, tmp_path):
    """The tolerance of the export parity check is loose enough for any CPU, tight enough for real defects."""
    from safetensors.torch import load_file, save_file

    targets = TARGETS["tiny-roberta"]
    run = tiny_run("tiny-roberta", **{"lowrank.targets": targets, "lowrank.intrinsic_dim": 12 * len(targets)})
    data, ref, ids, _, _ = reference(run, tiny_models["tiny-roberta"])
    export(run, "peft", tmp_path / "peft")
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    tensors, config = _planted(tensors, config, defect)
    (tmp_path / "bad").mkdir()
    save_file(tensors, str(tmp_path / "bad" / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps(config))
    base = tiny.build_tiny("tiny-roberta", seed=0)[0]
    tol = bound(base, data, ref)
    bad = lm_class_logits(peft.PeftModel.from_pretrained(base, str(tmp_path / "bad")).eval(), data, ids)
    with pytest.raises(AssertionError, match="exceeds the fp32 bound"):
        assert_within(bad, ref, tol, f"export with a {defect}")


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
    base = tiny.build_tiny("tiny-llama", seed=0)[0]
    tol = bound(base, data, ref)
    through_peft = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    logits = lm_class_logits(through_peft.eval(), data, ids)
    assert_moves(logits, ref, tol, "the label bias")  # without it the scores differ
    assert_within(logits + torch.tensor(card["label_bias"]), ref, tol, "PEFT export + label bias")


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
    assert_within(out, ref, forward_bound(model.config, ref, seq_len=max(len(x) for x in data.ids)), "prompts recipe")


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


def test_a_run_that_selected_its_start_exports_the_start_in_both_formats(tiny_run, tiny_models, tmp_path, capsys):
    """z = 0 selected on dev: `--format peft` writes a zero adapter, `--format merged` the base model, both
    exit 0 with one line saying so (a `run && export` script behaves the same whatever the run found)."""
    import shutil

    import numpy as np
    from transformers import AutoModelForCausalLM

    run = tmp_path / "start"
    shutil.copytree(tiny_run("tiny-llama"), run)
    with np.load(run / "adapter.npz") as arrays:
        saved = dict(arrays)
    np.savez(run / "adapter.npz", **{**saved, "z_best_dev": np.zeros_like(saved["z_best_dev"])})
    data, ref, ids, _, modules = reference(run, tiny_models["tiny-llama"])
    assert modules == []  # nothing carries an update
    base = tiny.build_tiny("tiny-llama", seed=0)[0]
    plain = lm_class_logits(base, data, ids)
    assert_within(plain, ref, bound(base, data, ref), "the start is the base model")

    assert main(["export", "--run", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the run selected its start (z = 0): the adapter is zero (PEFT adds nothing to the base model)"
    )
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] and all(".self_attn." in m for m in config["target_modules"])
    through_peft = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert torch.equal(lm_class_logits(through_peft, data, ids), plain)  # B = 0 adds exact zeros

    assert main(["export", "--run", str(run), "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the run selected its start (z = 0): the merged model is the base model unchanged"
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.equal(lm_class_logits(merged, data, ids), plain)
    assert export(run, "peft", tmp_path / "again")["selected_start"] is True
    assert export(tiny_run("tiny-llama"), "peft", tmp_path / "adapted")["selected_start"] is False
