"""The tuned zeroth-order table (reports/zo_tables.py): the learning-rate rule's choice, its table, and the
reported runs at 300 and 600 forward passes beside the untuned all-weight runs, from synthetic records."""

from __future__ import annotations

from dflora_core.reports import zo_tables


def tune(method, lr, dev, loss, calls=300):
    return {"method": method, "seed": 21, "lr": lr, "calls": calls, "tags": {"label": method, "part": "tune"},
            "best_dev": {"value": dev, "loss": loss}}  # fmt: skip


def test_the_rule_takes_the_best_dev_then_the_lower_loss_then_the_smaller_lr():
    assert zo_tables.rule_choice([tune("fzoo", 1e-5, 0.60, 0.6), tune("fzoo", 1e-4, 0.70, 0.7),
                                  tune("fzoo", 1e-3, 0.65, 0.5)]) == 1e-4  # fmt: skip
    assert zo_tables.rule_choice([tune("fzoo", 1e-5, 0.7, 0.62), tune("fzoo", 1e-4, 0.7, 0.61)]) == 1e-4
    assert zo_tables.rule_choice([tune("fzoo", 1e-4, 0.7, 0.6), tune("fzoo", 1e-5, 0.7, 0.6)]) == 1e-5
    assert zo_tables.rule_choice([]) is None


def test_the_tuning_table_marks_an_arm_whose_runs_are_not_all_in():
    recs = [tune("zo-sgd", lr, 0.625, loss) for lr, loss in ((1e-4 * 0.1, 0.63), (1e-4, 0.627), (1e-3, 0.7))]
    recs += [tune("fzoo", 1e-5, 0.6, 0.6)]
    t = zo_tables.tuning_table(recs)
    assert t.loc["zo-sgd", "lr 0.0001"] == "62.5 (0.6270)" and t.loc["zo-sgd", "chosen lr"] == "0.0001"
    assert t.loc["zo-sgd", "passes"] == 900 and t.loc["zo-sgd", "seed"] == "21"
    assert t.loc["fzoo", "chosen lr"] == "open (1 of 3)" and t.loc["fzoo", "lr 0.001"] == "-"


def report(method, seed, at300, at600, part="report", scheme="lora", steps=60, calls=600):
    return {"method": method, "seed": seed, "lr": 1e-4, "calls": calls, "steps": steps, "wall_s": 100.0 * seed,
            "peak_mem_bytes": 2**30 + seed, "tags": {"label": method, "part": part, "scheme": scheme},
            "test": {"value": at600}, "test_curve": [{"at": 300, "value": at300}]}  # fmt: skip  # as recorded: 600 is the final test


def test_the_report_table_gives_both_points_of_one_run_and_marks_the_untuned_rows():
    recs = [report("fzoo", s, a, b) for s, a, b in ((13, 0.60, 0.70), (42, 0.62, 0.72), (100, 0.64, 0.74))]
    full_run = report("fzoo", 13, 0.55, 0.55, part="all", scheme="all", steps=33, calls=297)
    recs.append({**full_run, "test_curve": [], "config": {"search": {"budget": 300}}})  # 33 steps of 9 passes
    recs.append(tune("fzoo", 1e-5, 0.6, 0.6))  # the rule's runs are not reported
    t = zo_tables.report_table(recs)
    lora, full = t.iloc[0], t.iloc[1]
    assert (lora["scheme"], lora["tuned"], lora["test @300"], lora["test @600"]) == (
        "lora",
        "rule",
        "62.0 (2.0)",
        "72.0 (2.0)",
    )
    assert lora["passes / step"] == "10" and lora["peak memory (MiB)"] == 1024 and lora["seeds"] == "13, 42, 100"
    assert (full["scheme"], full["tuned"], full["test @300"], full["test @600"]) == (
        "all",
        "no (untuned)",
        "55.0 (-)",
        "-",
    )
    assert full["passes / step"] == "9" and full["seeds"] == "13"


def test_a_runs_test_points_end_with_its_final_test_at_its_budget_and_never_twice():
    """``curves.test_points``: the test_at points, plus the final test at the budget where the curve stops
    below it (a zeroth-order run's 600-pass test is in ``test`` only); a target the budget could not reach is
    already the final test (taken at 5,981 of 6,000), and a run of 9-pass steps ends at 594 of 600."""
    from dflora_core.reports.curves import test_points

    zo = {"calls": 600.0, "test": {"value": 0.7}, "test_curve": [{"at": 300, "calls": 300.0, "value": 0.6}]}
    assert test_points(zo) == {300.0: 0.6, 600.0: 0.7}
    paper = {"calls": 5981, "config": {"search": {"budget": 6000}}, "test": {"value": 0.72},
             "test_curve": [{"at": 600, "calls": 601, "value": 0.7}, {"at": 6000, "calls": 5981, "value": 0.72}]}  # fmt: skip
    assert test_points(paper) == {600.0: 0.7, 6000.0: 0.72}
    nine = {"calls": 594.0, "config": {"search": {"budget": 600}}, "test": {"value": 0.65}, "test_curve": []}
    assert test_points(nine) == {600.0: 0.65}
    assert test_points({"calls": 600.0, "test_curve": []}) == {}  # no test recorded: no point
