"""Carrying a grid's runs between results roots (grids.carry): a run stopped in one clone continues in
another from the carried checkpoint, to the result of an uninterrupted run."""

import json
import shutil

import numpy as np
import pytest

from dflora_core.config import from_dict
from dflora_core.grids.carry import carry, commit_advice
from dflora_core.grids.grid import run_dir
from dflora_core.runner import run

BASE = {
    "model": {"name": "tiny-llama", "device": "cpu"},
    "data": {"task": "sst2", "max_test": 40},
    "search": {"budget": 100, "eval_every": 30, "checkpoint_every": 1},
    "optim": {"popsize": 6},
    "lowrank": {"intrinsic_dim": 16, "alpha": 1.0},
    "progress": False,
}


def _outcomes(carried):
    return {c.path: c.outcome for c in carried}


def test_a_carried_run_resumes_to_the_uninterrupted_result_and_comes_back_finished(tmp_path, tiny_models):
    loaded = tiny_models["tiny-llama"]
    cfg = from_dict(BASE)
    ref = run(cfg, out=tmp_path / "ref", loaded=loaded)

    def interrupt(search, gen):
        if gen.generation == 3:
            raise KeyboardInterrupt

    clone, repo = tmp_path / "clone", tmp_path / "repo"
    first = run_dir(clone, cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=first, loaded=loaded, on_generation=interrupt)
    (first / "x.tmp").write_text("half written")
    unstarted = run_dir(clone, cfg.replace(seed=7))  # a run that has written its record, not yet a checkpoint
    unstarted.mkdir(parents=True)
    shutil.copy(first / "record.json", unstarted / "record.json")
    rel = str(first.relative_to(clone))

    carried = carry(clone, repo)
    assert _outcomes(carried) == {rel: "in flight", str(unstarted.relative_to(clone)): "skipped: no checkpoint yet"}
    advice = commit_advice(repo, carried)  # the line the script prints: what to commit, and what it weighs
    size = (repo / rel / "checkpoint.npz").stat().st_size
    assert f"1 runs in flight, {size / 1e6:.1f} MB" in advice and advice.endswith(f"git add -f {repo / rel}/checkpoint.npz")
    there = repo / rel
    assert (there / "checkpoint.npz").is_file() and (first / ".lock").exists()
    assert not (there / ".lock").exists() and not (there / "x.tmp").exists()
    assert _outcomes(carry(clone, repo))[rel] == "unchanged"
    assert commit_advice(repo, carry(clone, repo)) is None  # nothing changed: nothing to add

    got = run(cfg, out=there, loaded=loaded, resume=True)  # the next session, in the repository's root
    assert got["test"] == ref["test"] and got["calls"] == ref["calls"] and got["best_dev"] == ref["best_dev"]
    np.testing.assert_array_equal(np.load(there / "adapter.npz")["z_final"], np.load(tmp_path / "ref" / "adapter.npz")["z_final"])

    # the stale unfinished copy never replaces the finished run; the finished one replaces it whole
    assert _outcomes(carry(clone, repo))[rel] == "kept: finished there"
    assert _outcomes(carry(repo, clone))[rel] == "finished"
    assert not (first / "checkpoint.npz").exists() and not (first / "x.tmp").exists()  # a record, no state
    assert json.loads((first / "record.json").read_text())["status"] == "done"


def test_carry_refuses_a_missing_root_and_the_same_folder(tmp_path):
    from dflora_core.errors import DfloraError

    with pytest.raises(DfloraError, match="no such results root"):
        carry(tmp_path / "none", tmp_path / "b")
    with pytest.raises(DfloraError, match="same folder"):
        carry(tmp_path, tmp_path)


def test_a_run_resumed_elsewhere_warns_and_lists_its_earlier_sessions(tmp_path, tiny_models):
    """Exact repeatability holds on one CPU kind and commit: a run continued on another says so."""
    from dflora_core.errors import DfloraWarning
    from dflora_core.statefile import load_state, save_state

    loaded = tiny_models["tiny-llama"]
    cfg = from_dict(BASE)

    def interrupt(search, gen):
        if gen.generation == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=out, loaded=loaded, on_generation=interrupt)
    saved = load_state(out / "checkpoint.npz")
    (first,) = saved["sessions"]
    assert first["machine"]["cpu"]["model"] is not None and first["wall_s_before"] == 0.0
    first["machine"]["cpu"] = {"model": "Another CPU", "features": ["avx2"]}  # as if carried from elsewhere
    save_state(out / "checkpoint.npz", saved)
    with pytest.warns(DfloraWarning, match="Another CPU"):
        rec = run(cfg, out=out, loaded=loaded, resume=True)
    assert rec["earlier_sessions"] == [first]
    assert json.loads((out / "record.json").read_text())["earlier_sessions"][0]["machine"]["cpu"]["model"] == "Another CPU"
    uninterrupted = run(cfg, out=tmp_path / "whole", loaded=loaded)
    assert "earlier_sessions" not in uninterrupted and rec["test"] == uninterrupted["test"]
