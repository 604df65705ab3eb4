"""The paper-budget figure and paired table (reports/budget.py) from records: points at test_at calls, peers as
bands, paired differences over the seeds both sides ran."""

import pytest

from dflora_core.reports import budget


def rec(method, seed, curve=None, test=None, label=None, wall=100.0, speed=2.0):
    return {"method": method, "seed": seed, "task": "sst2", "config": {"model": {"name": "smollm2"}, "method": method,
            "search": {"dev_rule": "periodic+final", "budget": 6000},
            "lowrank": {"layers": None}, "optim": {"popsize": 20}}, "tags": {"label": label or method},
            "test_curve": [{"at": c, "value": v} for c, v in (curve or {}).items()],
            "test": {"value": test, "name": "GLUE validation (872) (subsample 300 of 872, seed 0)"},
            "wall_s": wall, "evals_per_s": speed}  # fmt: skip


def test_the_paired_table_and_the_figure_from_records():
    arms = [
        rec("c-lora", s, {600: 0.70 + d, 1200: 0.75 + d, 6000: 0.82 + d})
        for s, d in ((13, 0.0), (42, 0.02), (100, 0.01))
    ]
    peers = [rec("lora", s, test=0.80) for s in (13, 42, 100)] + [rec("zeroshot-calibrated", 13, test=0.72)]
    table = budget.budget_table(arms, peers, ["lora", "zeroshot-calibrated"])
    row = table.loc[("c-lora", 6000)]
    assert row["seeds"] == 3 and row["test"].startswith("83.0")
    assert row["vs lora"].startswith("+3.0 [") and row["vs lora"].endswith("3/3")
    assert row["vs zeroshot-calibrated"] == "+10.0 1/1"  # one paired seed: no interval
    assert table.loc[("c-lora", 600)]["vs lora"].endswith("0/3") and row["evaluations/s"] == "2.00"
    fig = budget.budget_figure(arms, peers, "quick")
    assert fig.axes[0].get_xscale() == "log"
    assert "c-lora (3 seeds)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    from dflora_core.reports.tables import to_markdown

    lines = to_markdown(table).splitlines()  # the arm and the calls each their own column
    assert lines[0].startswith("| arm | calls | seeds | test |") and lines[2].startswith("| c-lora | 600 | 3 |")


def test_an_arm_without_curves_gives_an_empty_table():
    assert budget.budget_table([rec("c-lora", 13)], [], ["lora"]).empty
    assert budget.budget_figure([], [], "quick") is not None
    with pytest.raises(KeyError):
        budget.arm_of({})


def test_the_last_row_gives_the_final_snapshots_on_the_whole_test_set(tmp_path):
    """``paper_budget.py --full-test`` writes ``evaluations/sst2-872.json``; the 6,000-call row shows it, a
    sample-sized evaluation of the same run is not the whole set, and seeds not yet scored are counted."""
    import json

    arms = []
    for seed, full in ((13, 0.75), (42, 0.77), (100, None)):
        r = {**rec("c-lora", seed, {600: 0.7, 6000: 0.8}), "_dir": str(tmp_path / str(seed))}
        ev = tmp_path / str(seed) / "evaluations"
        ev.mkdir(parents=True)
        (ev / "sst2-300.json").write_text(
            json.dumps({"task": "sst2", "test_full_size": 872, "test": {"n": 300, "value": 0.1}})
        )
        if full is not None:
            (ev / "sst2-872.json").write_text(
                json.dumps({"task": "sst2", "test_full_size": 872, "test": {"n": 872, "value": full}})
            )
        arms.append(r)
    table = budget.budget_table(arms, [], [])
    assert table.loc[("c-lora", 6000)]["final, whole test set"] == "76.0 (1.4) [2 seeds]"
    assert table.loc[("c-lora", 600)]["final, whole test set"] == "-"
