"""The command line: listings, runs, resume, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dflora_core.cli import main

TINY_ZS = ["--model", "tiny-llama", "--device", "cpu"]  # zeroshot takes the flags a zero-shot score uses
TINY = [*TINY_ZS, "--no-progress"]


def test_tasks_lists_the_seven_tasks_with_official_test_sizes(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"sst2", "yelp", "agnews", "dbpedia", "mrpc", "snli", "rte"}
    sizes = {"sst2": 872, "agnews": 7600, "mrpc": 408, "snli": 9824, "rte": 277}
    assert {t: rows[t]["test_size"] for t in sizes} == sizes
    assert not rows["yelp"]["test_official"] and not rows["dbpedia"]["test_official"]
    assert main(["tasks"]) == 0
    assert "sample, not the official test set" in capsys.readouterr().out


def test_run_writes_a_record_and_resume_reuses_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run",
        "--task",
        "rte",
        "--method",
        "c-lora",
        *TINY,
        "--budget",
        "60",
        "--popsize",
        "4",
        "--intrinsic-dim",
        "20",
        "--max-test",
        "40",
        "--eval-every",
        "20",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "done" and rec["task"] == "rte" and rec["config"]["lowrank"]["intrinsic_dim"] == 20
    assert "test accuracy" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "record.json").read_text())["finished"] == rec["finished"]


def test_zeroshot_json(capsys):
    assert main(["zeroshot", "--task", "mrpc", *TINY_ZS, "--max-test", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "f1" and out["n"] == 30 and not out["test_official"]


def test_zeroshot_help_lists_only_the_flags_a_zero_shot_score_uses(capsys):
    from dflora_core.cli import ZEROSHOT_FLAGS, make_parser

    help_text = make_parser()._subparsers._group_actions[0].choices["zeroshot"].format_help()
    for flag in ("--budget", "--popsize", "--rank", "--seed", "--shots", "--no-progress", "--acceptance"):
        assert flag not in help_text, flag
    assert all(flag in help_text for flag in ZEROSHOT_FLAGS)
    with pytest.raises(SystemExit):  # a run-only flag is refused, not silently ignored
        main(["zeroshot", "--task", "sst2", "--budget", "10"])
    assert "unrecognized arguments: --budget" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--task", "imdb", *TINY], "data.task"),
        (["run", "--task", "sst2", "--model", "no-such-model"], "not a known model"),
        (["run", "--task", "sst2", "--model", "/no/such/folder"], "not a known model"),
        (["run", "--task", "yelp", "--shots", "20", *TINY], "k=20 is larger"),
        (["run", "--task", "rte", "--shots", "2000", *TINY], "k=2000 needs 4000 pool examples"),
        (["run", "--task", "yelp", "--seed", "7", *TINY], "only for seeds 13, 21, 42, 87, 100"),
        (["run", "--task", "sst2", "--budget", "10", *TINY], "search.budget"),
        (["run", "--task", "sst2", "--rank", "0", *TINY], "lowrank.rank"),
        (["run", "--task", "sst2", "--targets", "q,x", *TINY], "lowrank.targets"),
        (["run", "--task", "sst2", "--set", "search.nope=1", *TINY], "search.nope"),
        (["run", "--task", "sst2", "--set", "budget", *TINY], "key=value"),
        (["run", "--task", "sst2", "--config", "/no/such.yaml", *TINY], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dflora: error:") and "\n" not in err and message in err
    assert "Traceback" not in err


def test_unreadable_data_row_names_file_and_line(tmp_path):
    root = Path(__file__).resolve().parents[1] / "data"
    copy = tmp_path / "data"
    shutil.copytree(root / "rte", copy / "rte")
    bad = copy / "rte/glue/RTE/dev.tsv"
    lines = bad.read_text().splitlines()
    lines[5] = "garbage-without-tabs"
    bad.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "DFLORA_DATA": str(copy)}
    proc = subprocess.run(
        [sys.executable, "-m", "dflora_core", "zeroshot", "--task", "rte", *TINY_ZS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "dev.tsv" in err[0] and ":6" in err[0] and "Traceback" not in proc.stderr
