"""A finished run's test score in the shape lm-evaluation-harness writes (``results_<date>.json``), so
tools that read that format take dflora runs as they are (docs/export.md).

    results.<task>."acc,none"          the test accuracy over the record's n test examples
    results.<task>."acc_stderr,none"   sqrt(p (1 - p) / (n - 1)): lm-eval's standard error of a mean of
                                       0/1 items (binomial, with its n - 1)
    results.<task>."f1,none"           a task scored by F1 (MRPC); its stderr "N/A", as lm-eval writes
                                       without bootstrap (dflora keeps no per-example predictions)
    configs, versions, n-shot, higher_is_better, n-samples   per task, as lm-eval's
    config                             the model and the run (method, seed, the full RunConfig)

Read from the record alone: nothing is loaded or scored again.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..results.record import RunRecord

METRIC_NAMES = {"accuracy": "acc", "f1": "f1"}  # dflora's metric -> lm-eval's


def accuracy_stderr(p: float, n: int) -> float | str:
    """lm-eval's ``mean_stderr`` of n items in {0, 1} with mean p (its sample standard deviation / sqrt(n))."""
    if n < 2:
        return "N/A"
    return math.sqrt(p * (1.0 - p) / (n - 1))


def file_name(rec: RunRecord) -> str:
    """``results_<when the run finished>.json``, lm-eval's name (colons as dashes)."""
    stamp = (rec.finished or "unfinished").split("+")[0].replace(":", "-")
    return f"results_{stamp}.json"


def _epoch(stamp: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S%z"))
    except ValueError:
        return None


def lm_eval_results(rec: RunRecord) -> dict[str, Any]:
    """The lm-eval results document of a finished run."""
    test, data, cfg = rec.test or {}, rec.data or {}, rec.config
    task, n = rec.task, int(test.get("n") or data.get("test_size") or 0)
    accuracy = float(test.get("accuracy", test.get("value")))
    metrics = {"acc,none": accuracy, "acc_stderr,none": accuracy_stderr(accuracy, n)}
    names = ["acc"]
    if test.get("metric") not in (None, "accuracy"):
        name = METRIC_NAMES.get(test["metric"], test["metric"])
        metrics = {f"{name},none": float(test["value"]), f"{name}_stderr,none": "N/A", **metrics}
        names.insert(0, name)
    dflora_version = (rec.versions or {}).get("dflora")
    return {
        "results": {task: {"alias": task, **metrics}},
        "group_subtasks": {task: []},
        "configs": {
            task: {
                "task": task,
                "output_type": "multiple_choice",
                "test_split": test.get("name") or data.get("test_name"),
                "doc_to_text": data.get("template"),
                "doc_to_choice": data.get("verbalizer"),
                "num_fewshot": 0,  # the prompt holds no demonstrations (ICL's are its method's, in config)
                "metric_list": [
                    {"metric": m, "aggregation": "mean" if m == "acc" else m, "higher_is_better": True} for m in names
                ],  # fmt: skip
                "metadata": {"version": dflora_version, "official_test_set": test.get("official")},
            }
        },
        "versions": {task: dflora_version},
        "n-shot": {task: 0},
        "higher_is_better": {task: dict.fromkeys(names, True)},
        "n-samples": {task: {"original": int(data.get("test_full_size") or n), "effective": n}},
        "config": {
            "model": "dflora",
            "model_args": f"pretrained={rec.model},method={rec.method},seed={rec.seed}",
            "model_name": rec.model,
            "device": rec.device,
            "dtype": rec.dtype,
            "dflora": {"method": rec.method, "seed": rec.seed, "run": str(rec.folder), "run_config": cfg},
        },
        "git_hash": (rec.git or {}).get("commit"),
        "date": _epoch(rec.finished),
        "transformers_version": (rec.versions or {}).get("transformers"),
        "model_source": "dflora",
        "model_name": rec.model,
        "model_name_sanitized": rec.model.replace("/", "__"),
        "total_evaluation_time_seconds": str(rec.wall_s),
    }
