"""``dflora predict`` and ``dflora evaluate``: a tuned run on new text and on other test sets (docs/export.md).

    dflora predict --run DIR "a gripping film" "dull"       # label and class probabilities per text
    dflora predict --run DIR --file inputs.txt --json        # one example a line, pairs tab-separated
    dflora evaluate --run DIR --task yelp --max-test 500     # SST-2 -> Yelp transfer

Both score with what the run tuned: its template, verbalizer, adapter (``tuned.classifier``) and, for
a calibrated search, its label bias. ``evaluate`` on another task keeps the run's template and
needs the same label names in the same order and the same number of text fields; it writes
``DIR/evaluations/<task>-<n>.json`` beside the run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import torch

from ..data import Example, get_task, load_test
from ..data.user_task import add_outside_flag
from ..environment import git_commit, package_versions
from ..errors import DfloraError
from ..experiment import _examples_digest
from ..fileio import atomic_write_json
from ..results.record import now
from .classifier import Tuned, load_tuned

EVALUATIONS = "evaluations"


def read_inputs(texts: list[str] | None, file: str | None) -> list[tuple[str, ...]]:
    """Examples from the command line or from a file (one a line; the fields of a pair tab-separated)."""
    if bool(texts) == bool(file):
        raise DfloraError("give the texts to classify as arguments or --file F (one example a line), not both")
    if texts:
        return [tuple(t.split("\t")) for t in texts]
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DfloraError(f"--file {file}: cannot read it ({err})") from None
    rows = [tuple(line.split("\t")) for line in lines if line.strip()]
    if not rows:
        raise DfloraError(f"--file {file}: no examples (one a line, the fields of a pair tab-separated)")
    return rows


def _examples(tuned: Tuned, rows: list[tuple[str, ...]]) -> list[Example]:
    n = tuned.exp.task.n_fields
    for i, fields in enumerate(rows, 1):
        if len(fields) != n or not all(f.strip() for f in fields):
            what = "one text" if n == 1 else f"{n} texts separated by a tab"
            raise DfloraError(f"example {i}: the run's task {tuned.exp.task.name} takes {what}, got {fields!r}")
    return [Example(tuple(f.strip() for f in fields), 0, f"input:{i}") for i, fields in enumerate(rows, 1)]


def predict(tuned: Tuned, rows: list[tuple[str, ...]]) -> list[dict]:
    """Label and class probabilities of each example (softmax over the verbalizer logits)."""
    logits = tuned.logits(tuned.encode(_examples(tuned, rows)))
    probs = torch.softmax(logits, 1)
    classes = tuned.exp.task.classes
    return [
        {
            "text": list(fields) if len(fields) > 1 else fields[0],
            "label": classes[int(p.argmax())],
            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
            "logits": [float(v) for v in lg],
        }
        for fields, p, lg in zip(rows, probs, logits, strict=True)
    ]


def _same_labels(own, target) -> None:
    if [c.lower() for c in own.classes] != [c.lower() for c in target.classes]:
        raise DfloraError(f"cannot score a {own.name} run on {target.name}: the label sets differ "
                          f"({', '.join(own.classes)} vs {', '.join(target.classes)})")  # fmt: skip
    if own.n_fields != target.n_fields:
        raise DfloraError(
            f"cannot score a {own.name} run on {target.name}: {own.n_fields} vs {target.n_fields} text fields"
        )


def slug(name: str) -> str:
    """A file-name form of a task name (a task file's path included)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("._") or "task"


def evaluate(tuned: Tuned, task: str | None = None, max_test: int | None = None, write: bool = True) -> dict:
    """Score the run's tuned model on a test set; the evaluation record (also written beside the run)."""
    exp, rec = tuned.exp, tuned.record
    target = get_task(task) if task else exp.task
    _same_labels(exp.task, target)
    max_test = exp.cfg.data.max_test if max_test is None and target.name == exp.task.name else max_test
    t0 = time.perf_counter()
    test = load_test(target.name, max_test)
    data = tuned.encode(test.examples)
    result = dataclasses.replace(exp, task=target).score(tuned.logits(data), data).as_dict()
    digest = _examples_digest(test.examples)
    same = digest == (rec.data or {}).get("test_digest") and target.name == rec.task
    out = {
        "format": "dflora-evaluation/1",
        "run": str(tuned.folder),
        "method": rec.method,
        "run_task": rec.task,
        "task": target.name,
        "task_title": target.title,
        "test_name": test.name,
        "test_official": test.official,
        "test_verification": test.verification,
        "test_full_size": test.full_size,
        "test_max": test.max_test,
        "test_digest": digest,
        "test": result,
        "template": exp.encoder.template.pattern,  # the run's: a transfer keeps the prompt it was tuned with
        "verbalizer": list(exp.encoder.template.words),
        "z": tuned.which,
        "label_bias": exp.head.label_bias is not None,
        "record_test": rec.test if same else None,  # the run's own test set: the number it recorded
        "matches_record": None if not same else result["value"] == rec.test["value"],
        "seconds": time.perf_counter() - t0,
        "finished": now(),
        "versions": package_versions(),
        "git": git_commit(),
    }
    if write:
        path = tuned.folder / EVALUATIONS / f"{slug(target.name)}-{result['n']}.json"
        atomic_write_json(path, out)
        out["written"] = str(path)
    return out


def _predict_cmd(args) -> int:
    rows = read_inputs(args.texts, args.file)
    with load_tuned(args.run, args.which, what="predict") as tuned:
        preds = predict(tuned, rows)
    if args.json:
        print(json.dumps(preds, indent=1))
        return 0
    for p in preds:
        probs = ", ".join(f"{c} {v:.4f}" for c, v in p["probabilities"].items())
        text = p["text"] if isinstance(p["text"], str) else " | ".join(p["text"])
        print(f"{p['label']}\t({probs})\t{text}")
    return 0


def _evaluate_cmd(args) -> int:
    with load_tuned(args.run, args.which, what="evaluate") as tuned:
        res = evaluate(tuned, args.task, args.max_test)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
        return 0
    t = res["test"]
    line = (f"{res['method']} run on {res['run_task']}, scored on {res['task']} ({res['test_name']}, n={t['n']}): "
            f"{t['metric']} {t['value']:.4f}" + ("" if t["metric"] == "accuracy" else f", accuracy {t['accuracy']:.4f}"))  # fmt: skip
    if res["record_test"] is not None:
        line += f"; the record says {res['record_test']['value']:.4f}" + ("" if res["matches_record"] else " (differs)")
    print(line)
    print(f"evaluation: {res['written']}")
    return 0


def _common(p) -> None:
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--which", default="z_best_dev", help="z_best_dev (what the record's test scored) or z_final")
    p.add_argument("--json", action="store_true")
    add_outside_flag(p)  # the run's task file, or --task's (dflora.cli grants it for the command)


def add_predict(p) -> None:
    p.add_argument("texts", nargs="*", help="texts to classify (a pair: the two fields separated by a tab)")
    p.add_argument("--file", help="one example a line, the fields of a pair tab-separated")
    _common(p)
    p.set_defaults(fn=_predict_cmd)


def add_evaluate(p) -> None:
    p.add_argument("--task", default=None, help="another task with the same labels (default: the run's own)")
    p.add_argument("--max-test", type=int, default=None, help="stratified test subsample (default: the run's)")
    _common(p)
    p.set_defaults(fn=_evaluate_cmd)
