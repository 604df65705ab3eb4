"""The dev rule (``search.dev_rule``): selection sees the end of a run and every test_at point, and the
runs made under the old rule stay readable, reproducible and found, never reused by a new-rule run."""

import json

import pytest

from dflora_core.config import RunConfig, from_dict
from dflora_core.grids.grid import find_run, run_dir
from dflora_core.identity import config_from_record, identity, identity_aliases, identity_fields
from dflora_core.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 layers x popsize 4 + the start: a generation ends at calls 5, 9, 13, ...; dev every 10 calls is scored at
# calls 13 and 21 and never at the last call of a 25-call budget, so the two rules differ
BASE = {
    "model": {"name": "tiny-llama", "device": "cpu"},
    "data": {"task": "sst2", "max_test": 40},
    "search": {"budget": 25, "eval_every": 10, "select_start": False},
    "optim": {"popsize": 4},
    "lowrank": {"intrinsic_dim": 12, "alpha": 1.0},
    "baseline": {"lora_rank": 2},
    "progress": False,
}


def cfg(**changes) -> RunConfig:
    return from_dict(BASE).replace(**changes)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return tiny_models["tiny-llama"]


def dev_calls(out) -> list[float]:
    return [row["calls"] for row in json.loads((out / "dev_curve.json").read_text())]


@pytest.mark.parametrize("method", ["c-lora", "f-lora", "zo-sgd"])
def test_the_dev_curve_ends_at_the_last_call(tmp_path, loaded, method):
    if method == "zo-sgd":
        pytest.importorskip("peft")
    rec = run(cfg(method=method), out=tmp_path, loaded=loaded)
    assert dev_calls(tmp_path)[-1] == rec["calls"]
    assert rec["best_dev"]["calls"] in dev_calls(tmp_path)


def test_the_old_rule_never_scores_the_end(tmp_path, loaded):
    rec = run(cfg(**{"search.dev_rule": "periodic"}), out=tmp_path, loaded=loaded)
    assert rec["calls"] == 25 and dev_calls(tmp_path) == [13, 21]  # the generations ending at 25 never seen


@pytest.mark.parametrize("method, stop", [("c-lora", 17), ("zo-sgd", 6)])
def test_a_test_at_point_is_the_selection_of_a_run_stopped_there(tmp_path, loaded, method, stop):
    """test_at = T in a longer run gives the test score and selected call of the same run stopped at T."""
    if method == "zo-sgd":
        pytest.importorskip("peft")
    long = run(cfg(method=method, **{"search.test_at": [stop]}), out=tmp_path / "long", loaded=loaded)
    short = run(cfg(method=method, **{"search.budget": stop}), out=tmp_path / "short", loaded=loaded)
    (point,) = long["test_curve"]
    assert point["calls"] == short["calls"] == stop
    assert point["selected_at"] == short["best_dev"]["calls"]
    assert point["value"] == short["test"]["value"] and point["loss"] == pytest.approx(short["test"]["loss"])


# -- identity: old-rule records ---------------------------------------------------------------------------
def _old_record(folder, cfg: RunConfig) -> None:
    """A record as the code before the dev rule wrote it: no search.dev_rule key, a version-1 folder name."""
    config = cfg.to_dict()
    del config["search"]["dev_rule"]
    folder.mkdir(parents=True)
    rec = {"format": "dflora-run/1", "status": "done", "method": cfg.method, "task": cfg.data.task,
           "model": cfg.model.name, "seed": cfg.seed, "config": config, "test": {"value": 0.5}}  # fmt: skip
    (folder / "record.json").write_text(json.dumps(rec))


def test_an_old_record_reads_as_the_old_rule_and_a_new_run_never_reuses_its_folder(tmp_path):
    new = RunConfig().replace(**{"model.name": "tiny-llama", "search.budget": 24})
    old = new.replace(**{"search.dev_rule": "periodic"})
    _v2, alias = identity_aliases(old)  # newest first: version 2's hash, then version 1's
    folder = run_dir(tmp_path, new).with_name(f"seed{new.seed}-{alias}")
    _old_record(folder, old)
    stored = json.loads((folder / "record.json").read_text())["config"]
    assert config_from_record(stored).search.dev_rule == "periodic"
    assert identity_fields(config_from_record(stored)) == identity_fields(old) != identity_fields(new)
    assert find_run(tmp_path, old) == folder  # found by the hash its folder was named with
    assert find_run(tmp_path, new) == run_dir(tmp_path, new) != folder  # the new rule runs anew
    assert len(identity_aliases(new)) == 1 and alias not in identity_aliases(new)  # no version-1 run of the new rule
    assert identity(old) != identity(new) != alias


def test_the_alias_is_the_hash_the_committed_folders_were_named_with():
    """identity version 1 on the committed grids of that version (search options, zero-order family); the
    older grids' folders were named by the full-config hash before it and are found by their records."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results"
    folders = sorted(root.glob("search-options*/sst2/c-lora/smollm2/seed13-*"))
    assert folders, "no committed c-lora seed-13 run to check against"
    for folder in folders:
        stored = json.loads((folder / "record.json").read_text())["config"]
        if "dev_rule" in stored["search"]:
            continue  # a run of the new rule
        cfg = config_from_record(stored)
        assert folder.name == f"seed13-{identity_aliases(cfg)[-1]}", folder  # the oldest: version 1


def test_a_checkpoint_of_the_old_rule_resumes_only_under_the_old_rule(tmp_path, loaded):
    from dflora_core.errors import DfloraError
    from dflora_core.methods import RunContext

    old = cfg(**{"search.dev_rule": "periodic"})
    ctx = RunContext.for_run(old, tmp_path)
    ctx.save_checkpoint({"x": 1})
    ckpt = tmp_path / "checkpoint.npz"
    from dflora_core.statefile import load_state, save_state

    saved = load_state(ckpt)  # as the earlier version wrote it: identity without the legacy field, no version
    saved["identity"] = {k: v for k, v in saved["identity"].items() if k != "search.dev_rule"}
    del saved["identity_version"]
    save_state(ckpt, saved)
    assert RunContext.for_run(old, tmp_path, resume=True).load_checkpoint() == {"x": 1}
    with pytest.raises(DfloraError, match="another configuration"):
        RunContext.for_run(cfg(), tmp_path, resume=True).load_checkpoint()
