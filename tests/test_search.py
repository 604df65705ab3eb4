"""The layer-wise search: budget, acceptance, model selection, records, checkpoints and resume."""

import json

import numpy as np
import pytest

import dflora_core.search.loop as loop_mod
from dflora_core.config import from_dict
from dflora_core.experiment import Experiment
from dflora_core.runner import run
from dflora_core.search.loop import LayerwiseSearch
from dflora_core.search.method import load_adapted
from tolerances import forward_bound, loss_bound

BASE = {
    "model": {"name": "tiny-llama", "device": "cpu"},
    "data": {"task": "sst2", "max_test": 60},
    "search": {"budget": 130, "eval_every": 30, "checkpoint_every": 2},
    "optim": {"popsize": 6},
    "lowrank": {"intrinsic_dim": 24, "alpha": 1.0},
    "progress": False,
}


def cfg(**changes):
    return from_dict(BASE).replace(**changes)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return tiny_models["tiny-llama"]


@pytest.mark.parametrize("method", ["c-lora", "f-lora", "fwa-lora", "rs-lora"])
def test_budget_accounting_and_record(tmp_path, loaded, method):
    rec = run(cfg(method=method), out=tmp_path, loaded=loaded)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert rec["calls"] <= 130
    assert rec["calls"] == 1 + sum(h["n"] for h in hist)  # the start point is one evaluation too
    assert [h["layer"] for h in hist[:4]] == [0, 1, 2, 0]  # rounds bottom to top
    for key in (
        "config",
        "calls",
        "test",
        "best_dev",
        "zero_shot",
        "wall_s",
        "peak_mem_bytes",
        "evals_per_s",
        "versions",
        "git",
        "model_identity",
        "data",
        "projection",
    ):
        assert key in rec, key
    assert rec["test"]["metric"] == "accuracy" and 0 <= rec["test"]["value"] <= 1
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["status"] == "done" and on_disk["calls"] == rec["calls"]
    assert set(np.load(tmp_path / "adapter.npz")) == {"z_best_dev", "z_final", "layer_std"}


def test_elitist_descends_monotonically(loaded):
    exp = Experiment.prepare(cfg(**{"search.budget": 200}), loaded)
    search = LayerwiseSearch(exp)
    try:
        search.run()
        fit = [h.config_fitness for h in search.history]
        assert all(b <= a for a, b in zip(fit, fit[1:], strict=False))
        assert fit[-1] < fit[0] or not any(h.accepted for h in search.history)
        # the recorded fitness is exact: re-scoring the current configuration gives it back
        f = search.fitness(0, search.z[:1])  # a population of 1 against the one that found it: other batches
        logits = exp.logits(exp.train)
        tol = forward_bound(loaded.model.config, logits, max(map(len, exp.train.ids)), adapted=True)
        assert f[0] == pytest.approx(search.current_fitness, rel=0, abs=loss_bound(tol, f[0], len(exp.train)))
    finally:
        search.close()


def test_released_acceptance_uses_each_layers_best_ever(loaded):
    exp = Experiment.prepare(cfg(**{"search.acceptance": "released"}), loaded)
    search = LayerwiseSearch(exp)
    try:
        search.run()
        for layer, opt in enumerate(search.optimizers):
            np.testing.assert_array_equal(search.z[layer], opt.best_x)
    finally:
        search.close()


def test_nonfinite_fitness_is_worst_not_a_crash(loaded, monkeypatch):
    real = loop_mod.losses

    def sometimes_nan(logits, labels, kind, metric="accuracy"):
        out = real(logits, labels, kind, metric)
        if len(out) > 1:
            out[1] = float("nan")
            out[2] = float("inf")
        return out

    monkeypatch.setattr(loop_mod, "losses", sometimes_nan)
    exp = Experiment.prepare(cfg(), loaded)
    search = LayerwiseSearch(exp)
    try:
        search.run()
        assert search.nonfinite == 2 * len(search.history)
        assert all(h.n_nonfinite == 2 and np.isfinite(h.best) for h in search.history)
    finally:
        search.close()


def test_callbacks_patience_and_selection(loaded):
    seen, evals = [], []
    exp = Experiment.prepare(cfg(**{"search.patience": 30, "search.budget": 400}), loaded)
    search = LayerwiseSearch(exp, on_generation=lambda s, g: seen.append(g), on_eval=lambda s, r: evals.append(r))
    try:
        search.run()
    finally:
        search.close()
    assert len(seen) == len(search.history) and evals[0]["calls"] == 1  # the start point is a candidate
    assert search.stopped == "patience" and search.calls < 400
    best = max(evals, key=lambda r: (r["value"], -r["loss"]))
    assert search.best_dev["calls"] == best["calls"]


def _final(rec, out):
    hist = [{k: v for k, v in h.items() if k != "seconds"} for h in json.loads((out / "history.json").read_text())]
    ad = np.load(out / "adapter.npz")
    return rec["test"], rec["calls"], hist, ad["z_final"], ad["z_best_dev"]


@pytest.mark.parametrize("method", ["c-lora", "f-lora"])
def test_resume_after_interrupt_gives_the_same_result(tmp_path, loaded, method):
    c = cfg(method=method)
    ref = _final(run(c, out=tmp_path / "ref", loaded=loaded), tmp_path / "ref")
    n_gen = len(ref[2])
    rng = np.random.default_rng(7)
    for case, stop_at in enumerate(sorted(rng.choice(np.arange(1, n_gen - 1), size=2, replace=False))):
        out = tmp_path / f"cut{case}"

        # between generations (a callback raises: the state is consistent and saved)
        def interrupt(search, gen, stop_at=stop_at):
            if gen.generation == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run(c, out=out, loaded=loaded, on_generation=interrupt)
        got = _final(run(c, out=out, loaded=loaded, resume=True), out)
        assert got[0] == ref[0] and got[1] == ref[1] and got[2] == ref[2]
        np.testing.assert_array_equal(got[3], ref[3])
        np.testing.assert_array_equal(got[4], ref[4])


def test_a_resumed_search_counts_the_wall_time_of_its_earlier_session(tmp_path, loaded):
    """The context's checkpoint field, and the search's own field of checkpoints written before it."""
    from dflora_core.statefile import load_state, save_state

    c = cfg()

    def interrupt(search, gen):
        if gen.generation == 2:
            raise KeyboardInterrupt

    for case, legacy in enumerate((False, True)):
        out = tmp_path / f"cut{case}"
        with pytest.raises(KeyboardInterrupt):
            run(c, out=out, loaded=loaded, on_generation=interrupt)
        saved = load_state(out / "checkpoint.npz")
        saved["wall_s"] += 1000.0  # an earlier session of 1,000 s more
        if legacy:  # the layer-wise search kept it in its own state before the context did
            saved["state"]["wall_s"] = saved.pop("wall_s")
        save_state(out / "checkpoint.npz", saved)
        assert run(c, out=out, loaded=loaded, resume=True)["wall_s"] > 1000.0


def test_resume_after_a_crash_inside_a_generation(tmp_path, loaded, monkeypatch):
    """A crash mid-generation loses at most the generations since the last periodic checkpoint."""
    c = cfg(**{"search.checkpoint_every": 3})
    ref = _final(run(c, out=tmp_path / "ref", loaded=loaded), tmp_path / "ref")
    real = LayerwiseSearch._scored  # every fitness evaluation of the search goes through it
    calls = {"n": 0}

    def crash(self, layer, X):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("power cut")
        return real(self, layer, X)

    monkeypatch.setattr(LayerwiseSearch, "_scored", crash)
    with pytest.raises(RuntimeError):
        run(c, out=tmp_path / "cut", loaded=loaded)
    monkeypatch.setattr(LayerwiseSearch, "_scored", real)
    got = _final(run(c, out=tmp_path / "cut", loaded=loaded, resume=True), tmp_path / "cut")
    assert got[:3] == ref[:3]
    np.testing.assert_array_equal(got[3], ref[3])


def test_finished_run_is_not_recomputed_and_conflicts_are_refused(tmp_path, loaded):
    from dflora_core.errors import DfloraError

    rec = run(cfg(), out=tmp_path, loaded=loaded)
    again = run(cfg(), out=tmp_path, loaded=loaded, resume=True)
    assert again["finished"] == rec["finished"]
    with pytest.raises(DfloraError, match="different config"):
        run(cfg(seed=13), out=tmp_path, loaded=loaded)


def test_adapted_model_rebuilds_from_the_folder(tmp_path, loaded):
    rec = run(cfg(**{"lowrank.layers": [1, 2]}), out=tmp_path, loaded=loaded)
    exp, adapter = load_adapted(tmp_path, loaded=loaded)
    try:
        res = exp.evaluate(exp.test_set)
        assert res.value == pytest.approx(rec["test"]["value"]) and res.loss == pytest.approx(rec["test"]["loss"])
    finally:
        adapter.remove()
    assert rec["projection"]["model_layers"] == [1, 2]


def test_layers_the_budget_never_reached_are_recorded_and_said(tmp_path, loaded):
    """One round of 3 x 6 calls passes the config check, but with the start's call the top layer's turn
    (calls 14-19) passes the budget of 18: the 600-call all-layer runs' layer 29 in small."""
    from dflora_core.errors import DfloraWarning

    with pytest.warns(DfloraWarning, match=r"left 1 of 3 adapted layers without a generation \(model layers \[2\]\)"):
        rec = run(cfg(method="c-lora", **{"search.budget": 18}), out=tmp_path / "short", loaded=loaded)
    assert rec["unsearched_layers"] == [2] and rec["calls"] == 13
    assert run(cfg(method="c-lora"), out=tmp_path / "full", loaded=loaded)["unsearched_layers"] == []


def test_the_round_check_agrees_with_what_the_run_does(tmp_path, loaded):
    """One round (popsize x layers) does not reach the top layer: the start's score is a call too. The check
    says so before the run (a one-line warning naming the budget that reaches every layer), the run leaves
    exactly that layer unsearched, one more call reaches it, and less than one round is refused."""
    import warnings

    from dflora_core.errors import ConfigError, DfloraWarning
    from dflora_core.methods import validate

    one_round = 6 * 3  # popsize 6, tiny-llama's 3 layers
    with pytest.warns(
        DfloraWarning,
        match=rf"{one_round} calls give 2 of the 3 adapted layers .*"
        rf"1 call for the start.*{one_round + 1} calls reach every layer",
    ):
        short = run(cfg(**{"search.budget": one_round}), out=tmp_path / "short", loaded=loaded)
    assert short["unsearched_layers"] == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DfloraWarning)
        full = run(cfg(**{"search.budget": one_round + 1}), out=tmp_path / "full", loaded=loaded)
    assert full["unsearched_layers"] == [] and full["calls"] == one_round + 1
    with pytest.raises(ConfigError, match=rf"search.budget: {one_round - 1} calls give 2 of the 3"):
        validate(cfg(**{"search.budget": one_round - 1}), num_layers=3)
    released = cfg(**{"search.budget": one_round, "search.acceptance": "released"})  # no start call
    with warnings.catch_warnings():
        warnings.simplefilter("error", DfloraWarning)
        validate(released, num_layers=3)
