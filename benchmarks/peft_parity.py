"""PEFT parity on the real model: a committed run exported to PEFT scores the same in a fresh process.

    .venv/bin/python benchmarks/peft_parity.py                       # results/clora-sst2-all-layers, 872 sentences
    .venv/bin/python benchmarks/peft_parity.py --max-test 200        # a stratified subsample, both ways

1. ``dflora export --format peft`` of the run into a temporary folder (``--out`` keeps it).
2. dflora's own rebuild of the run (``load_adapted``) scores the test set: accuracy and the class
   logits, saved to the export folder.
3. A fresh Python process that imports neither dflora nor its rebuild: transformers loads the base
   SmolLM2 from dflora's cached safetensors (``base_model_name_or_path`` of the adapter config),
   ``PeftModel.from_pretrained`` loads the adapter, the prompts are built from the exported
   ``dflora_classifier.json`` (template, label token ids) and the raw test file, and the
   next-token logits of the label words at the last prompt token are the class logits.
4. Both accuracies, the record's, and the largest logit difference go to ``--result`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run in the fresh process: only transformers, peft, torch, numpy and the exported files
FRESH = r"""
import csv, json, sys, numpy as np, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[4]))
out, test_file, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
card = json.load(open(f"{out}/dflora_classifier.json"))
base_path = json.load(open(f"{out}/adapter_config.json"))["base_model_name_or_path"]
tok = AutoTokenizer.from_pretrained(base_path)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), out).eval()
with open(test_file, encoding="utf-8") as f:
    table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
table = [table[i] for i in rows] if rows else table
prompts = [tok(card["template"].format(t[0].strip())).input_ids for t in table]
labels = np.array([int(t[1]) for t in table])
ids = card["label_token_ids"]
logits = np.zeros((len(prompts), len(ids)), dtype=np.float32)
order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
for s in range(0, len(order), 16):
    chunk = order[s : s + 16]
    T = max(len(prompts[i]) for i in chunk)
    x = torch.full((len(chunk), T), tok.pad_token_id or 0)
    mask = torch.zeros((len(chunk), T), dtype=torch.long)
    for r, i in enumerate(chunk):
        x[r, : len(prompts[i])] = torch.tensor(prompts[i])
        mask[r, : len(prompts[i])] = 1
    with torch.no_grad():
        lg = model(input_ids=x, attention_mask=mask).logits
    last = mask.sum(1) - 1
    logits[chunk] = lg[torch.arange(len(chunk)), last][:, ids].numpy()
if card["label_bias"] is not None:
    logits = logits + np.array(card["label_bias"], dtype=np.float32)
np.save(f"{out}/peft_logits.npy", logits)
print(json.dumps({"accuracy": float((logits.argmax(1) == labels).mean()), "n": len(labels)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "results" / "clora-sst2-all-layers"))
    ap.add_argument("--max-test", type=int, default=None, help="a stratified subsample (the same rows both ways)")
    ap.add_argument("--out", default=None, help="keep the export here (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result", default=None, help="write the result JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from dflora_core.data.fewshot import TEST_FILES, data_root, load_test, stratified_indices
    from dflora_core.data.loaders import read_glue_sst2_tsv
    from dflora_core.environment import package_versions
    from dflora_core.results.record import load_record
    from dflora_core.tuned.classifier import load_tuned
    from dflora_core.tuned.export import export

    torch.set_num_threads(args.threads)
    rec = load_record(args.run)
    if rec.task != "sst2":
        raise SystemExit("this script reads the SST-2 test file in the fresh process: give an SST-2 run")
    out = Path(args.out or tempfile.mkdtemp(prefix="dflora-peft-parity-"))
    t0 = time.perf_counter()
    export(args.run, "peft", out, force=True)
    t_export = time.perf_counter() - t0
    with load_tuned(args.run) as tuned:
        test = load_test("sst2", args.max_test)
        dflora_logits = tuned.logits(tuned.encode(test.examples)).numpy()
    labels = np.array([e.label for e in test.examples])
    t_dflora = time.perf_counter() - t0 - t_export
    raw = read_glue_sst2_tsv(data_root(), TEST_FILES["sst2"][0])
    rows = stratified_indices([e.label for e in raw], args.max_test, 0) if args.max_test else []
    test_file = str(data_root() / TEST_FILES["sst2"][0])
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out), test_file, json.dumps(rows), str(args.threads)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the fresh PEFT process failed:\n{proc.stderr[-3000:]}")
    peft = json.loads(proc.stdout.strip().splitlines()[-1])
    peft_logits = np.load(out / "peft_logits.npy")
    result = {
        "run": args.run,
        "export": str(out),
        "n": peft["n"],
        "max_test": args.max_test,
        "record_test_accuracy": rec.test["accuracy"],
        "dflora_accuracy": float((dflora_logits.argmax(1) == labels).mean()),
        "peft_accuracy_fresh_process": peft["accuracy"],
        "max_abs_logit_difference": float(np.abs(peft_logits - dflora_logits).max()),
        "same_predictions": bool((peft_logits.argmax(1) == dflora_logits.argmax(1)).all()),
        "seconds": {
            "export": t_export,
            "dflora": t_dflora,
            "peft_fresh_process": time.perf_counter() - t0 - t_export - t_dflora,
        },
        "versions": package_versions(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.result:
        Path(args.result).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
