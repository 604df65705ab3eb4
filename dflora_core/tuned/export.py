"""``dflora export``: a tuned run in the ecosystem's formats (docs/export.md).

- ``peft``: a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
  that ``PeftModel.from_pretrained(base_model, PATH)`` loads. The update ``(x A) B`` of a target
  (no scaling, docs/design.md §1) is PEFT's ``lora_B(lora_A(x)) * lora_alpha / r`` with
  ``lora_A.weight = A^T``, ``lora_B.weight = B^T`` and ``lora_alpha = r``. The targets that share
  a fused projection (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) become one LoRA of rank
  ``r x targets`` whose ``lora_B`` rows of the outputs that were not adapted stay zero; modules
  of a lower rank are padded with zero columns, so one ``r`` holds for all.
- ``merged``: the base model with every update folded into its weights, saved by transformers
  (safetensors, config, tokenizer); a GGUF-loaded base is first rebuilt without its
  quantization config (``models.packaged.plain_model``).
- ``prompts``: the prompts of BBT / BBTv2 as one safetensors file (``prompts.safetensors``).
- ``lm-eval``: the test score in lm-evaluation-harness's results format (``tuned/lm_eval.py``), from
  the record alone (any method's run; no model is loaded).

Every export but ``lm-eval`` writes ``dflora_classifier.json`` beside it (``tuned.classifier.classifier_card``):
template, verbalizer, label token ids and, for a calibrated search, the label bias that PEFT and
transformers cannot express (add it to the verbalizer logits). The files are written into a hidden
sibling folder that is renamed to ``--out`` when complete: a full disk leaves no partial export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from ..data.user_task import add_outside_flag
from ..errors import DfloraError
from ..fileio import atomic_write_json
from ..lowrank.patching import LowRankWrapper
from ..methods import is_layerwise_lora
from ..models.packaged import plain_model
from . import lm_eval
from .classifier import PROMPT_METHODS, Tuned, classifier_card, finished_record, load_tuned

FORMATS = ("peft", "merged", "prompts", "lm-eval")
CARD = "dflora_classifier.json"
PROMPTS = "prompts.safetensors"
START_TEXT = {"peft": "the adapter is zero (PEFT adds nothing to the base model)",
              "merged": "the merged model is the base model unchanged"}  # fmt: skip


def adapted_modules(model: torch.nn.Module) -> list[tuple[str, LowRankWrapper]]:
    """(full module name, wrapper) of every patched projection that carries an update."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankWrapper) and m.factors]


def selected_start(tuned: Tuned) -> bool:
    """Whether a layer-wise run's installed z is the start (z = 0 everywhere): nothing carries an update."""
    return is_layerwise_lora(tuned.method) and not adapted_modules(tuned.exp.loaded.model)


def zero_factors(wrapper: LowRankWrapper, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero (A [in, R], B [R, out]) of a searched module, R = rank x its targets: the start as an adapter."""
    width = rank * len(wrapper.selects)
    return torch.zeros(wrapper.in_features, width), torch.zeros(width, wrapper.out_features)


def module_factors(wrapper: LowRankWrapper) -> tuple[torch.Tensor, torch.Tensor]:
    """One (A [in, R], B [R, out]) for all targets of a module: B's columns of other targets are zero."""
    As, Bs = [], []
    for target, (A, B) in wrapper.factors.items():
        select = wrapper.selects[target]
        full = torch.zeros(B.shape[0], wrapper.out_features, dtype=B.dtype, device=B.device)
        full[:, slice(None) if select is None else select] = B
        As.append(A)
        Bs.append(full)
    return torch.cat(As, 1).float().cpu(), torch.cat(Bs, 0).float().cpu()


def _pad(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = rank - A.shape[1]
    return torch.nn.functional.pad(A, (0, extra)), torch.nn.functional.pad(B, (0, 0, 0, extra))


def base_model_name(tuned: Tuned) -> str:
    """What the run's model was: the folder its weights were loaded from, else its registry name."""
    ident = tuned.record.model_identity or {}
    if ident.get("cache_folder"):  # a packaged model: its de-quantised safetensors (models/packaged.py)
        return str(ident["cache_folder"])
    path = Path(tuned.record.model).expanduser()
    return str(path.resolve()) if path.exists() else tuned.record.model


def peft_files(tuned: Tuned) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of the PEFT adapter of a layer-wise run."""
    modules = adapted_modules(tuned.exp.loaded.model)
    factors = {name: module_factors(w) for name, w in modules}
    if not modules:  # the run selected its start (z = 0): a zero adapter on the projections it searched
        modules = [(n, m) for n, m in tuned.exp.loaded.model.named_modules() if isinstance(m, LowRankWrapper)]
        factors = {name: zero_factors(w, tuned.exp.cfg.lowrank.rank) for name, w in modules}
    rank = max(A.shape[1] for A, _ in factors.values())
    tensors = {}
    for name, (A, B) in factors.items():
        A, B = _pad(A, B, rank)
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.T.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.T.contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None if tuned.exp.loaded.family == "masked" else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name(tuned),
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,  # scaling lora_alpha / r = 1: the update is x A B as dflora applies it
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [name for name, _ in modules],  # full names: only the adapted layers
        "fan_in_fan_out": any(isinstance(w.base, Conv1D) for _, w in modules),  # GPT-2's Conv1D is [in, out]
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return config, tensors


def merged_state(tuned: Tuned) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(a savable model, its state dict with W + delta at every adapted projection); the model is not changed."""
    modules = [(name, w, module_factors(w)) for name, w in adapted_modules(tuned.exp.loaded.model)]
    tuned.close()  # the original modules are back in place: their names are the plain names again
    model = plain_model(tuned.exp.loaded.model)
    state = dict(model.state_dict())
    for name, wrapper, (A, B) in modules:
        key = f"{name}.weight"
        weight = state[key]
        delta = A @ B if isinstance(wrapper.base, Conv1D) else (A @ B).T  # Conv1D weight [in, out], Linear [out, in]
        state[key] = (weight.float().cpu() + delta).to(weight.dtype)
    return model, state


def prompt_tensors(tuned: Tuned) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The prompts of a BBT / BBTv2 run: what to put at which positions, and the recipe as metadata."""
    adapter = tuned.adapter
    input_embeds = adapter.p0.clone()
    tensors = {"prompt_token_ids": torch.tensor(adapter.token_ids, dtype=torch.long)}
    for i, m in enumerate(adapter.model_layers):
        state = adapter.get(i)
        if state is None:
            continue
        if m == 0:
            input_embeds = input_embeds + state
        else:
            tensors[f"layer.{m}.hidden_delta"] = state.float().cpu().contiguous()
    tensors["input_embeds"] = input_embeds.float().cpu().contiguous()
    meta = {
        "format": "dflora-prompts/1",
        "method": tuned.method,
        "insert_at": str(adapter.start),
        "prompt_tokens": str(adapter.n_tokens),
        "hidden_size": str(adapter.hidden),
        "layers_with_delta": json.dumps(sorted(int(k.split(".")[1]) for k in tensors if k.startswith("layer."))),
        "recipe": (
            "insert prompt_token_ids into the tokenized prompt at position insert_at; replace the input embeddings "
            "at positions insert_at .. insert_at + prompt_tokens - 1 by input_embeds; for every layer.<m>.hidden_delta, "
            "add it to the hidden states entering transformer layer m at those positions (docs/export.md)"
        ),
    }
    return tensors, meta


def _check_out(out: Path, force: bool) -> None:
    """Refuse a taken ``--out`` before anything is loaded (nothing is replaced until the export is complete)."""
    taken = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if taken and not force:
        raise DfloraError(f"--out {out} exists and is not empty; choose another folder or pass --force")


def _staging(out: Path) -> Path:
    """A new hidden folder beside ``out`` to write the export into (renamed to ``out`` when complete)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise DfloraError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700 folders; an export is meant to be shared
    return staging


def _into_place(staging: Path, out: Path) -> None:
    """``staging`` renamed to ``out``; what ``out`` held (--force) is set aside first and removed after."""
    old = None
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)  # onto a missing or empty folder: atomic
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _write(tuned: Tuned, fmt: str, folder: Path) -> None:
    from safetensors.torch import save_file

    if fmt == "peft":
        config, tensors = peft_files(tuned)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(folder / "adapter_config.json", config)
    elif fmt == "merged":
        model, state = merged_state(tuned)
        model.save_pretrained(folder, state_dict=state)
        tuned.exp.loaded.tokenizer.save_pretrained(folder)
    else:
        tensors, meta = prompt_tensors(tuned)
        save_file(tensors, str(folder / PROMPTS), metadata=meta)


def _check_format(rec, fmt: str) -> None:
    if fmt not in FORMATS:
        raise DfloraError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "lm-eval":  # every finished run has a test score
        return
    if rec.method in PROMPT_METHODS and fmt != "prompts":
        raise DfloraError(f"{rec.folder}: {rec.method} tunes prompts, not weights: export it with --format prompts")
    if is_layerwise_lora(rec.method) and fmt == "prompts":
        raise DfloraError(f"{rec.folder}: {rec.method} tunes low-rank weights: export it with --format peft or merged")
    if not is_layerwise_lora(rec.method) and rec.method not in PROMPT_METHODS:
        raise DfloraError(f"{rec.folder}: a {rec.method} run stores nothing to export (export supports the "
                          "layer-wise low-rank methods and bbt, bbtv2)")  # fmt: skip


def _staged(out: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a hidden sibling folder that becomes ``out`` only when complete: a failure
    (a full disk) removes it, and ``out`` is as it was (so the same command can be retried)."""
    from safetensors import SafetensorError

    staging = None
    try:
        staging = _staging(out)
        write(staging)
        _into_place(staging, out)
    except (OSError, SafetensorError) as err:  # the disk, not the run: said in one line
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise DfloraError(f"--out {out}: the export failed ({why}); the partial export was removed, "
                          f"{'nothing was written' if not out.exists() else f'{out} is as it was'}") from None  # fmt: skip
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def export(run_dir: str | Path, fmt: str, out: str | Path, which: str = "z_best_dev", force: bool = False,
           loaded=None) -> dict:  # fmt: skip
    """Write the export of a finished run to ``out`` (a folder, whole or not at all); returns what was written."""
    rec = finished_record(run_dir)
    _check_format(rec, fmt)
    out = Path(out)
    _check_out(out, force)
    card, start = None, False
    if fmt == "lm-eval":  # the record alone
        _staged(out, lambda folder: atomic_write_json(folder / lm_eval.file_name(rec), lm_eval.lm_eval_results(rec)))
    else:
        tuned = load_tuned(run_dir, which, loaded, what="export")
        try:
            start = selected_start(tuned)
            card = classifier_card(tuned)

            def write(folder: Path) -> None:
                _write(tuned, fmt, folder)
                tuned.close()
                atomic_write_json(folder / CARD, card)

            _staged(out, write)
        finally:
            tuned.close()
    files = sorted(p.name for p in out.iterdir())
    bias = card is not None and card["label_bias"] is not None
    note = (f"the label bias of the calibrated search is not part of the {fmt} format: it is in {CARD}, "
            "add it to the verbalizer logits") if bias else ""  # fmt: skip
    return {"run": str(run_dir), "format": fmt, "out": str(out), "files": files, "label_bias": bias, "note": note,
            "selected_start": start}  # fmt: skip


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a finished run folder (record.json + adapter.npz)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="peft adapter, merged model, BBT prompts, or the test score as lm-eval results")  # fmt: skip
    p.add_argument("--out", required=True, help="the folder to write (must be new or empty, unless --force)")
    p.add_argument("--which", default="z_best_dev", help="z_best_dev (what the record's test scored) or z_final")
    p.add_argument("--force", action="store_true", help="replace what --out holds")
    p.add_argument("--json", action="store_true")
    add_outside_flag(p)  # the run's task file (dflora.cli grants it for the command)
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    res = export(args.run, args.format, args.out, args.which, args.force)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"exported {res['run']} as {res['format']} to {res['out']}: {', '.join(res['files'])}")
    if res["selected_start"]:  # same exit status whatever the run found: `run && export` scripts go on
        print(f"the run selected its start (z = 0): {START_TEXT[res['format']]}")
    if res["note"]:
        print(f"note: {res['note']}")
    return 0
