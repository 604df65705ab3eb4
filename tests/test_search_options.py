"""The layer-wise search's options (issue 14): calibrated projection scales, layer schedules,
calibrated logits and the test metric against calls."""

import json

import numpy as np
import pytest

from dflora_core.config import from_dict
from dflora_core.errors import ConfigError
from dflora_core.experiment import Experiment
from dflora_core.lowrank.probe import ProjectionProbe
from dflora_core.methods import validate
from dflora_core.metrics import fit_label_bias, losses
from dflora_core.runner import run
from dflora_core.search.loop import LayerwiseSearch
from dflora_core.search.schedule import Bandit, RoundRobin
from tolerances import assert_within, forward_bound, loss_bound

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "model": {"name": "tiny-llama", "device": "cpu"},
    "data": {"task": "sst2", "max_test": 40},
    "search": {"budget": 120, "eval_every": 30, "checkpoint_every": 1},
    "optim": {"popsize": 6},
    "lowrank": {"intrinsic_dim": 24, "alpha": 1.0},
    "progress": False,
}


def cfg(**changes):
    return from_dict(BASE).replace(**changes)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return tiny_models["tiny-llama"]


def history(out):
    return [{k: v for k, v in g.items() if k != "seconds"} for g in json.loads((out / "history.json").read_text())]


# -- calibrated projection scales -------------------------------------------------------------------
def test_the_fitness_calibration_is_charged_to_the_budget_and_recorded(tmp_path, loaded):
    factors = (0.1, 1.0, 10.0)
    rec = run(cfg(**{"lowrank.scale_calibration": "fitness", "lowrank.calibration_factors": list(factors)}),
              out=tmp_path, loaded=loaded)  # fmt: skip
    cal = rec["scale_calibration"]
    layers = len(rec["projection"]["model_layers"])
    assert cal["rule"] == "fitness" and cal["calls"] == 2 * len(factors) * layers
    hist = history(tmp_path)
    assert hist[0]["calls"] == 1 + cal["calls"] + hist[0]["n"]  # z = 0, the calibration, the first generation
    assert rec["calls"] == 1 + cal["calls"] + sum(g["n"] for g in hist) <= 120
    for row in cal["layers"]:
        best = max(row["tried"], key=lambda r: r["improvement"])["improvement"]
        chosen = [r for r in row["tried"] if r["factor"] == row["multiplier"]][0]
        assert chosen["improvement"] == best  # the best improvement per call is kept
    # the record's scales are the calibrated ones: rebuilding from the folder gives the run's model
    assert rec["projection"]["layer_std"] != [rec["layer_stats"][m]["std"] for m in rec["projection"]["model_layers"]]


def test_the_output_calibration_puts_every_layer_into_its_range_without_calls(tmp_path, loaded):
    low, high = 0.02, 0.05
    c = cfg(**{"lowrank.scale_calibration": "output", "lowrank.calibration_range": [low, high]})
    exp = Experiment.prepare(c, loaded)
    search = LayerwiseSearch(exp)
    try:
        cal = search.scale_calibration
        assert cal["calls"] == 0 and search.calls == 0
        probe = ProjectionProbe(loaded, search.train, c.lowrank.targets, search.adapter.model_layers)
        rng = np.random.default_rng(5)
        for layer, row in enumerate(cal["layers"]):
            assert low * 0.999 <= row["output_change"] <= high * 1.001
            Z = rng.standard_normal((64, search.adapter.dim))
            measured = np.mean([probe.ratios(layer, t, A, B)[1] for t, (A, B) in
                                search.adapter.projection.factors(layer, Z).items()])  # fmt: skip
            assert low / 3 < measured < high * 3  # an independent draw lands near the range too
    finally:
        search.close()


def test_calibration_options_are_validated():
    with pytest.raises(ConfigError, match="lowrank.calibration_range"):
        validate(cfg(**{"lowrank.calibration_range": [0.3, 0.03]}))
    with pytest.raises(ConfigError, match="lowrank.scale_calibration"):
        validate(cfg(**{"lowrank.scale_calibration": "output", "lowrank.projection_init": "ri"}))
    with pytest.raises(ConfigError, match="search.budget"):
        validate(cfg(**{"lowrank.scale_calibration": "fitness", "search.budget": 30}), num_layers=3)  # 18 + 18 > 30
    with pytest.raises(ConfigError, match="search.schedule"):
        validate(cfg(**{"search.schedule": "bandit", "search.acceptance": "released"}))


# -- layer schedules ----------------------------------------------------------------------------------
def test_round_robin_gives_each_layer_its_visits_in_order():
    s = RoundRobin(3, per_visit=2)
    order = []
    for _ in range(9):
        order.append(s.next_layer())
        s.update(order[-1], 0.0, 6)
    assert order == [0, 0, 1, 1, 2, 2, 0, 0, 1] and s.round == 1


def test_the_bandit_visits_every_layer_then_follows_the_gain():
    s = Bandit(3, exploration=0.0)
    for layer, gain in ((0, 0.0), (1, 3.0), (2, 0.5)):
        assert s.next_layer() == layer
        s.update(layer, gain, 1)
    assert s.next_layer() == 1  # the layer that pays
    for _ in range(3):
        s.update(1, 0.0, 1)  # it stops paying: its average halves each time, below layer 2's 0.5
    assert s.next_layer() == 2


def test_the_bandit_search_stays_elitist_exact_and_resumes_bit_identically(tmp_path, loaded):
    c = cfg(**{"search.schedule": "bandit", "search.budget": 150})
    ref = run(c, out=tmp_path / "ref", loaded=loaded)
    hist = history(tmp_path / "ref")
    fits = [g["config_fitness"] for g in hist]
    assert all(b <= a for a, b in zip(fits, fits[1:], strict=False))  # monotone
    assert ref["calls"] == 1 + sum(g["n"] for g in hist)
    assert len({g["layer"] for g in hist}) == 3  # every layer visited

    def interrupt(search, gen):
        if gen.generation == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(c, out=tmp_path / "cut", loaded=loaded, on_generation=interrupt)
    got = run(c, out=tmp_path / "cut", loaded=loaded, resume=True)
    assert history(tmp_path / "cut") == hist and got["test"] == ref["test"]
    np.testing.assert_array_equal(np.load(tmp_path / "cut" / "adapter.npz")["z_final"],
                                  np.load(tmp_path / "ref" / "adapter.npz")["z_final"])  # fmt: skip


def test_several_generations_per_visit(tmp_path, loaded):
    run(cfg(**{"search.generations_per_visit": 2}), out=tmp_path, loaded=loaded)
    assert [g["layer"] for g in history(tmp_path)[:6]] == [0, 0, 1, 1, 2, 2]


# -- calibrated logits ----------------------------------------------------------------------------------
def test_the_calibrated_fitness_is_the_loss_of_the_logits_plus_the_refitted_bias(loaded):
    c = cfg(**{"search.calibrated_logits": True})
    exp = Experiment.prepare(c, loaded)
    search = LayerwiseSearch(exp)
    try:
        raw = exp.logits(exp.train)  # z = 0, no bias yet
        search.start()
        bias = fit_label_bias(raw, exp.train.labels)
        expected = float(losses((raw + bias).unsqueeze(0), exp.train.labels, "ce")[0])
        # the start scored as a population of one: another batch than exp.logits, so within the fp32 bound
        tol = forward_bound(loaded.model.config, raw, max(map(len, exp.train.ids)), adapted=True)
        assert search.current_fitness == pytest.approx(expected, rel=0, abs=loss_bound(tol, expected, len(exp.train)))
        assert search.current_fitness <= float(losses(raw.unsqueeze(0), exp.train.labels, "ce")[0])
        # the bias is fitted on those logits: it moves by at most the logits' bound (each class's shift)
        assert_within(exp.head.label_bias, bias, 2 * tol, "label bias")
        for _ in range(4):
            gen = search.step()
            if gen.accepted:  # the bias is refitted on the accepted configuration's train logits
                now = exp.logits(exp.train)
                assert search.current_fitness == pytest.approx(float(losses(now.unsqueeze(0), exp.train.labels,
                                                                            "ce")[0]), rel=1e-4)  # fmt: skip
                assert fit_label_bias(now, exp.train.labels).abs().max() < 1e-3  # already optimal
    finally:
        search.close()
    assert exp.head.label_bias is None


def test_a_calibrated_run_records_and_rebuilds_its_bias(tmp_path, loaded):
    from dflora_core.search.method import load_adapted

    rec = run(cfg(**{"search.calibrated_logits": True}), out=tmp_path, loaded=loaded)
    assert rec["label_bias"] is not None and rec["test"] != rec["zero_shot"]
    exp, adapter = load_adapted(tmp_path, loaded=loaded)
    try:
        assert exp.evaluate(exp.test_set).value == pytest.approx(rec["test"]["value"])
    finally:
        adapter.remove()
        exp.head.label_bias = None


# -- the test metric against calls ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["c-lora", "zo-sgd"])
def test_the_test_metric_of_the_selected_state_is_taken_at_the_given_calls(tmp_path, loaded, method):
    if method == "zo-sgd":
        pytest.importorskip("peft")
    rec = run(cfg(method=method, **{"search.test_at": [30, 60, 1000]}), out=tmp_path, loaded=loaded)
    rows = rec["test_curve"]
    assert [r["at"] for r in rows] == [30, 60, 1000]
    assert rows[0]["calls"] >= 30 and rows[1]["calls"] >= 60
    assert rows[-1]["calls"] == rec["calls"] and rows[-1]["value"] == pytest.approx(rec["test"]["value"])
