"""Paired statistics over seeds, the options table and the accuracy-against-calls figure."""

import math

import pytest

from dflora_core.reports import paired, tables


def rec(label, task, seed, test, dev, method="c-lora", curve=None):
    return {"method": method, "task": task, "seed": seed, "tags": {"label": label},
            "test": {"value": test, "metric": "accuracy"}, "best_dev": {"value": dev},
            "test_curve": curve or []}  # fmt: skip


def test_a_known_paired_difference_gives_its_mean_interval_and_wins():
    s = paired.summarize([0.02, 0.04, 0.00, 0.06, 0.03])
    assert s["n"] == 5 and s["mean"] == pytest.approx(0.03) and s["wins"] == 4
    sd = math.sqrt(sum((d - 0.03) ** 2 for d in [0.02, 0.04, 0.0, 0.06, 0.03]) / 4)
    assert s["se"] == pytest.approx(sd / math.sqrt(5))
    assert s["ci_low"] == pytest.approx(0.03 - 2.776 * s["se"]) and s["ci_high"] == pytest.approx(0.03 + 2.776 * s["se"])
    assert paired.fmt_points(s) == f"+3.0 [{100 * s['ci_low']:+.1f}, {100 * s['ci_high']:+.1f}] 4/5"
    one = paired.summarize([0.1])
    assert one["se"] is None and paired.fmt_points(one) == "+10.0 1/1"
    assert paired.t975(1) == 12.706 and paired.t975(100) == 1.96


def test_pairs_are_matched_by_task_and_seed_only_where_both_arms_ran():
    recs = [rec("default", "sst2", s, 0.6 + 0.01 * s, 0.5) for s in (1, 2, 3)]
    recs += [rec("bandit", "sst2", s, 0.65 + 0.01 * s, 0.55) for s in (1, 2)]  # seed 3 missing
    df = tables.frame(recs)
    out = paired.paired(df, "bandit", "default")
    assert out["sst2"]["n"] == 2 and out["sst2"]["mean"] == pytest.approx(0.05) and out["sst2"]["wins"] == 2
    table = tables.options_table(recs)
    assert list(table.index) == ["default", "bandit"]
    assert list(tables.options_table(recs[::-1]).index) == ["default", "bandit"]  # the reference first, always
    peer = rec("f-lora", "sst2", 1, 0.7, 0.6, method="f-lora")  # a peer method beside the options: not an option
    assert list(tables.options_table([*recs, peer]).index) == ["default", "bandit"]
    assert table.loc["bandit", "sst2 Δtest"].startswith("+5.0 (SE 0.0) [")
    assert table.loc["bandit", "sst2 Δtest"].endswith("2/2") and table.loc["bandit", "sst2 Δdev"].startswith("+5.0")
    assert table.loc["default", "sst2 test"] == "62.0 (1.0)" and table.loc["bandit", "sst2 test"].endswith("[2 seeds]")
    assert table.loc["bandit", "default rule"] == "yes" and table.loc["default", "default rule"] == "reference"


def test_the_default_rule_asks_for_higher_dev_on_every_task_and_test_not_below_minus_its_se():
    def s(diffs):
        return paired.summarize(diffs)

    tasks = ["sst2", "mrpc"]
    good = {"sst2": s([0.03, 0.01, 0.02]), "mrpc": s([0.01, 0.02, 0.0])}
    assert paired.default_rule(good, good, tasks) == "yes"
    # the test may be lower than the reference, but by no more than its standard error (here 0.0047)
    slightly = {"sst2": s([0.03, 0.01, 0.02]), "mrpc": s([-0.01, 0.0, 0.0])}
    assert paired.default_rule(good, slightly, tasks) == "yes"
    worse = {"sst2": s([0.03, 0.01, 0.02]), "mrpc": s([-0.046, -0.012, -0.03])}
    assert paired.default_rule(good, worse, tasks) == "no: mrpc Δtest -2.9 below -SE 1.0"
    flat_dev = {"sst2": s([0.03, 0.01, 0.02]), "mrpc": s([0.0, 0.0, 0.0])}
    assert paired.default_rule(flat_dev, good, tasks) == "no: mrpc Δdev +0.0 not higher"
    assert paired.default_rule({"sst2": good["sst2"]}, {"sst2": good["sst2"]}, tasks) == "open: mrpc not run"
    one = {"sst2": good["sst2"], "mrpc": s([0.1])}
    assert paired.default_rule(one, one, tasks) == "open: mrpc 1 seed"
    one_worse = {"sst2": good["sst2"], "mrpc": s([-0.1])}
    assert paired.default_rule(one_worse, one_worse, tasks) == "no so far: mrpc Δdev -10.0 not higher; open: mrpc 1 seed"


def test_a_labelled_grid_gets_one_row_per_arm_and_an_unlabelled_one_per_method():
    recs = [rec("default", "sst2", 1, 0.6, 0.5), rec("bandit", "sst2", 1, 0.7, 0.5)]
    for r in recs:
        r.update(calls=600, forward_passes=1, params_optimised=1, params_stored=1, wall_s=1.0, peak_mem_bytes=1,
                 zero_shot={"value": 0.5})  # fmt: skip
    grid, _, _ = tables.comparison_table(recs)
    assert set(grid.index) == {"default", "bandit"}
    for r in recs:
        r["tags"] = {}
    grid, _, _ = tables.comparison_table(recs)
    assert list(grid.index) == ["c-lora"]


def test_the_calls_figure_has_one_curve_per_arm():
    import matplotlib

    matplotlib.use("Agg")
    from dflora_core.reports import training_figures

    curve = [{"at": 120, "value": 0.6}, {"at": 600, "value": 0.7}]
    recs = [rec(lab, "sst2", s, 0.7, 0.6, curve=curve) for lab in ("default", "bandit") for s in (1, 2)]
    from dflora_core.config import RunConfig

    for r in recs:
        r["config"] = RunConfig().to_dict()
    fig = training_figures.calls_figure(recs, "test")
    assert len(fig.axes[0].containers) == 2  # two error-bar series
    mrpc = [rec("default", "mrpc", s, 0.7, 0.6, curve=[{"at": 120, "value": 0.8}]) for s in (1, 2)]
    for r in mrpc:
        r["config"] = RunConfig().to_dict()
    fig = training_figures.calls_figure(recs + mrpc, "test")  # one panel per task: an F1 is not averaged with an accuracy
    assert [len(ax.containers) for ax in fig.axes[:2]] == [2, 1]
    assert [ax.get_title().rsplit("(", 1)[-1] for ax in fig.axes[:2]] == ["sst2)", "mrpc)"]


def test_layer_gains_are_pooled_per_arm_and_per_task_when_the_runs_span_tasks(tmp_path):
    import json

    from dflora_core.reports import curves

    def run(label, task, drops):
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        fit, hist = 1.0, []
        for layer, d in enumerate(drops):
            fit -= d
            hist.append({"layer": layer, "n": 20, "config_fitness": fit})
        (folder / "history.json").write_text(json.dumps(hist))
        return {"tags": {"label": label}, "task": task, "start_fitness": 1.0, "_dir": str(folder)}

    one = curves.layer_gains_by_arm([run("default", "sst2", [0.1, 0.2]), run("default", "sst2", [0.3])])
    assert list(one) == ["default"] and sorted(r["decrease"] for r in one["default"]) == pytest.approx([0.1, 0.2, 0.3])
    two = curves.layer_gains_by_arm([run("default", "sst2", [0.1]), run("default", "mrpc", [0.4])])
    assert list(two) == ["default (sst2)", "default (mrpc)"]
    assert [two[k][0]["decrease"] for k in two] == pytest.approx([0.1, 0.4])


def test_the_memory_table_has_methods_by_schemes_with_accuracy_and_peak_memory():
    def zo(label, method, scheme, seed, test, mem):
        r = rec(label, "sst2", seed, test, 0.5, method=method)
        r["tags"]["scheme"], r["peak_mem_bytes"] = scheme, mem
        return r

    recs = [zo("zo-sgd", "zo-sgd", "lora", s, 0.6, 2**30) for s in (1, 2)]
    recs += [zo("zo-sgd prefix", "zo-sgd", "prefix", s, 0.7, 2**31) for s in (1, 2)]
    recs += [zo("zo-sgd block", "zo-sgd", "lora", s, 0.8, 2**30) for s in (1, 2)]
    recs += [zo("es-full", "es-full", "all", 1, 0.5, 2**32)]
    table = tables.memory_table(recs)
    assert list(table.index) == ["zo-sgd", "zo-sgd block", "es-full"]
    assert table.loc["zo-sgd", "lora"] == "60.0 (0.0) / 1 GiB"
    assert table.loc["zo-sgd", "prefix"] == "70.0 (0.0) / 2 GiB"
    assert table.loc["zo-sgd block", "lora"].startswith("80.0") and table.loc["zo-sgd block", "prefix"] == ""
    assert table.loc["es-full", "all"].endswith("[1 seed]")
    assert tables.memory_table([rec("default", "sst2", 1, 0.6, 0.5)]).empty  # no schemes: no table


def grid_records():
    """bbt and c-lora on two tasks x five seeds with known paired differences; zeroshot on three seeds."""
    seeds = (13, 21, 42, 87, 100)
    base = {"sst2": [0.60, 0.62, 0.58, 0.61, 0.59], "rte": [0.55, 0.50, 0.52, 0.54, 0.53]}
    diff = {"sst2": [0.02, 0.04, 0.00, 0.06, 0.03], "rte": [-0.05, -0.04, -0.06, -0.05, -0.05]}
    recs = []
    for task in base:
        for i, seed in enumerate(seeds):
            recs.append(rec("", task, seed, base[task][i], 0.5, method="bbt"))
            recs.append(rec("", task, seed, base[task][i] + diff[task][i], 0.5, method="c-lora"))
            if i < 3:
                recs.append(rec("", task, seed, 0.5, 0.5, method="zeroshot"))
    for r in recs:
        r["tags"] = {}
        r.update(calls=24, forward_passes=1, params_optimised=1, params_stored=1, wall_s=1.0, peak_mem_bytes=1,
                 zero_shot={"value": 0.5})  # fmt: skip
    return recs


def test_the_paired_columns_of_a_grid_with_known_differences(tmp_path):
    """sst2: mean +3.0, sd 2.24, se 1.0, t(4) = 2.776 -> [+0.2, +5.8], 4 of 5 seeds won; rte: -5.0 [-5.9, -4.1] 0/5."""
    import pandas as pd

    from dflora_core.grids.compare import TABLE_CSV, TABLE_MD, render

    recs = grid_records()
    grid, _, _ = tables.comparison_table(recs, ["zeroshot", "bbt", "c-lora"], ["sst2", "rte"], vs="bbt")
    assert grid.loc["c-lora", "Δsst2 vs bbt"] == "+3.0 [+0.2, +5.8] 4/5"
    assert grid.loc["c-lora", "Δrte vs bbt"] == "-5.0 [-5.9, -4.1] 0/5"
    assert grid.loc["bbt", "Δsst2 vs bbt"] == "reference"
    assert grid.loc["zeroshot", "Δsst2 vs bbt"].endswith(" 0/3")  # only the seeds both ran are paired
    assert grid.loc["zeroshot", "sst2"].endswith(" [3 seeds]") and grid.loc["bbt", "sst2"] == "60.0 (1.6)"
    cols = list(grid.columns)
    assert cols.index("Avg") < cols.index("Δsst2 vs bbt") < cols.index("#Params")
    assert "Δsst2 vs bbt" not in tables.comparison_table(recs)[0].columns  # only with vs

    out = render(recs, tmp_path, ["zeroshot", "bbt", "c-lora"], ["sst2", "rte"], {"paired vs": "bbt"}, vs="bbt")
    table = pd.read_csv(tmp_path / TABLE_CSV, index_col=0)
    assert table.loc["c-lora", "Δrte vs bbt"] == "-5.0 [-5.9, -4.1] 0/5"
    md = (tmp_path / TABLE_MD).read_text()
    assert "| c-lora |" in md and "+3.0 [+0.2, +5.8] 4/5" in md and "95% confidence interval" in md
    assert md == out["markdown"]

    main, _ = tables.main_table(recs, ["sst2", "rte"], vs="bbt")
    assert main.loc["c-lora", "Δsst2 vs bbt"] == "+3.0 [+0.2, +5.8] 4/5"
    assert list(tables.main_table(recs, ["sst2"], vs="bbtv2")[0].columns) == ["sst2"]  # no runs of it: no columns
