"""``dflora predict`` and ``dflora evaluate`` (docs/export.md): a tuned run on new text and other test sets."""

import json
import shutil

import pytest

from dflora_core.cli import main
from dflora_core.errors import DfloraError
from dflora_core.tuned.classifier import load_tuned
from dflora_core.tuned.predict import evaluate, read_inputs
from tolerances import U, gamma


def test_predict_prints_the_label_and_class_probabilities(tiny_run, capsys):
    run = tiny_run("tiny-llama")
    assert main(["predict", "--run", str(run), "a great film", "a boring movie"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("negative", "positive") and "(negative 0." in lines[0]
    assert main(["predict", "--run", str(run), "--json", "a great film"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    n = len(row["probabilities"])  # a softmax: n exps, their sum and n divisions, each rounded in fp32
    assert row["text"] == "a great film" and abs(sum(row["probabilities"].values()) - 1) <= (3 * n * U + gamma(n))
    assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def test_predict_reads_a_file_of_pairs_for_a_pair_task(tmp_path, capsys):
    from dflora_core.runner import run as run_one

    out = tmp_path / "rte"
    run_one({"method": "zeroshot", "data": {"task": "rte", "max_test": 8}, "model": {"name": "tiny-llama", "device": "cpu"}},
            out=out)  # fmt: skip
    (tmp_path / "in.txt").write_text("the film was good\tit was good\n\nthe cat sat\ta dog ran\n")
    assert main(["predict", "--run", str(out), "--file", str(tmp_path / "in.txt"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == [["the film was good", "it was good"], ["the cat sat", "a dog ran"]]
    assert set(rows[0]["probabilities"]) == {"entailment", "not_entailment"}
    (tmp_path / "one.txt").write_text("no tab here\n")
    assert main(["predict", "--run", str(out), "--file", str(tmp_path / "one.txt")]) == 2
    assert "takes 2 texts separated by a tab" in capsys.readouterr().err
    with pytest.raises(DfloraError, match="not both"):
        read_inputs(["x"], str(tmp_path / "in.txt"))


def test_evaluate_rescoring_the_own_test_set_matches_the_record(tiny_run, tiny_models, capsys):
    run = tiny_run("tiny-llama")
    with load_tuned(run, loaded=tiny_models["tiny-llama"]) as tuned:
        res = evaluate(tuned)
    record = json.loads((run / "record.json").read_text())
    assert res["matches_record"] and res["test"]["value"] == record["test"]["value"] and res["test"]["n"] == 24
    saved = json.loads((run / "evaluations" / f"{res['written'].rsplit('/', 1)[1]}").read_text())
    assert saved["test"] == res["test"] and saved["template"] == "{0} . It was" and saved["versions"]["torch"]


def test_evaluate_transfers_to_a_task_with_the_same_labels_and_refuses_others(tiny_run, capsys):
    run = tiny_run("tiny-llama")
    assert main(["evaluate", "--run", str(run), "--task", "sst2", "--max-test", "30"]) == 0
    out = capsys.readouterr().out
    assert "scored on sst2" in out and "n=30" in out
    saved = json.loads((run / "evaluations" / "sst2-30.json").read_text())
    assert saved["task"] == "sst2" and saved["record_test"] is None and saved["test"]["n"] == 30
    assert main(["evaluate", "--run", str(run), "--task", "agnews"]) == 2
    err = capsys.readouterr().err
    assert "label sets differ" in err and len(err.strip().splitlines()) == 1


def test_methods_without_a_stored_adapter_are_refused_in_one_line(tiny_run, tmp_path, capsys):
    fake = tmp_path / "lora-run"
    shutil.copytree(tiny_run("tiny-llama"), fake)
    record = json.loads((fake / "record.json").read_text())
    record["method"] = record["config"]["method"] = "lora"
    (fake / "record.json").write_text(json.dumps(record))
    for command in (["predict", "--run", str(fake), "x"], ["evaluate", "--run", str(fake)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot rebuild a lora run" in err and "\n" not in err
