"""`dflora export --format lm-eval`: a finished run's test score in lm-evaluation-harness's results format,
from the record alone, written whole or not at all (tuned/lm_eval.py, docs/export.md)."""

from __future__ import annotations

import json
import math

import pytest

from dflora_core.cli import main
from dflora_core.results.record import load_record
from dflora_core.tuned.lm_eval import accuracy_stderr


def exported(run, out) -> dict:
    assert main(["export", "--run", str(run), "--format", "lm-eval", "--out", str(out)]) == 0
    (path,) = out.glob("results_*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", ["c-lora", "zeroshot"])  # any method's run: its record is enough
def test_the_test_score_in_lm_eval_shape(tiny_run, tmp_path, method):
    run = tiny_run(method=method)
    rec = load_record(run)
    doc = exported(run, tmp_path / "out")
    task, n, p = rec.task, rec["test"]["n"], rec["test"]["accuracy"]
    assert doc["results"][task]["acc,none"] == pytest.approx(p)
    assert doc["results"][task]["acc_stderr,none"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert doc["n-samples"][task]["effective"] == n and doc["higher_is_better"][task] == {"acc": True}
    assert doc["configs"][task]["metric_list"][0]["metric"] == "acc"
    assert doc["versions"][task] == rec.versions["dflora"]
    assert doc["config"]["dflora"]["method"] == method and doc["config"]["dflora"]["run_config"] == rec.config
    assert doc["git_hash"] == rec.git["commit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_lm_eval_stderr_is_lm_evals_mean_stderr():
    items = [1] * 7 + [0] * 3  # lm-eval: sample standard deviation of the 0/1 items / sqrt(n)
    mean = sum(items) / len(items)
    sample_sd = math.sqrt(sum((x - mean) ** 2 for x in items) / (len(items) - 1))
    assert accuracy_stderr(mean, len(items)) == pytest.approx(sample_sd / math.sqrt(len(items)))
    assert accuracy_stderr(1.0, 1) == "N/A"


def test_a_taken_out_is_refused_and_force_replaces_it(tiny_run, tmp_path, capsys):
    run, out = tiny_run(method="zeroshot"), tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", "--run", str(run), "--format", "lm-eval", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "mine.txt").is_file()
    assert main(["export", "--run", str(run), "--format", "lm-eval", "--out", str(out), "--force"]) == 0
    assert [p.name.startswith("results_") for p in out.iterdir()] == [True]
