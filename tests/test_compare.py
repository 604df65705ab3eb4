"""`dflora compare`: the grid of methods x tasks x seeds and the main table, on tiny models."""

import pandas as pd
import pytest

from dflora_core.errors import ConfigError, DfloraError

pytestmark = pytest.mark.usefixtures("one_thread")


COMMON = ["model.device=cpu", "search.eval_every=4", "optim.popsize=4", "baseline.prompt_dim=8",
          "baseline.prompt_tokens=3", "lowrank.intrinsic_dim=8"]  # fmt: skip


def test_parse_sets_and_build_configs():
    from dflora_core.grids.compare import build_configs, parse_sets

    common, per = parse_sets(["search.budget=40", "c-lora:lowrank.layers=[-2,-1]", "bbt:baseline.lr=none"])
    assert common == {"search.budget": 40} and per == {
        "c-lora": {"lowrank.layers": [-2, -1]},
        "bbt": {"baseline.lr": None},
    }
    cfgs = build_configs(["sst2", "rte"], ["zeroshot", "c-lora"], [13, 42], model="tiny-llama", budget=41,
                         max_test=16, sets=["c-lora:lowrank.layers=[-2,-1]"])  # fmt: skip
    assert len(cfgs) == 8 and {c.search.budget for c in cfgs} == {41}  # the start + 20 x 2 layers
    assert [c.lowrank.layers for c in cfgs if c.method == "c-lora"][0] == (-2, -1)
    assert [c.lowrank.layers for c in cfgs if c.method == "zeroshot"][0] is None
    with pytest.raises(DfloraError, match="unknown method"):
        build_configs(["sst2"], ["sgd"], [1])
    with pytest.raises(DfloraError, match="unknown method"):
        build_configs(["sst2"], ["zeroshot"], [1], sets=["lorra:baseline.lr=1"])
    assert len(build_configs(["sst2"], ["zeroshot"], [1], sets=["lora:baseline.lr=1"])) == 1  # not in the grid
    with pytest.raises(ConfigError, match="baseline.lr"):
        build_configs(["sst2"], ["lora"], [1], sets=["baseline.lr=-1"])


def test_compare_runs_the_grid_and_renders_the_table(tmp_path, tiny_models):
    from dflora_core.grids.compare import RUNS_CSV, TABLE_CSV, TABLE_MD, compare

    methods = ["zeroshot", "zeroshot-calibrated", "c-lora", "bbt", "lora"]
    if any(m == "lora" for m in methods):
        pytest.importorskip("peft")
    kw = dict(model="tiny-llama", budget=24, max_test=16, sets=COMMON, isolate=False)
    out = compare(["sst2", "rte"], methods, [13, 42], root=tmp_path, **kw)
    assert out["ran"] == 20 and len(out["records"]) == 20
    for name in (RUNS_CSV, TABLE_CSV, TABLE_MD):
        assert (tmp_path / name).is_file()
    runs = pd.read_csv(tmp_path / RUNS_CSV)
    assert len(runs) == 20 and set(runs["method"]) == set(methods)
    table = pd.read_csv(tmp_path / TABLE_CSV, index_col=0)
    assert list(table.index) == methods
    assert {"sst2", "rte", "Avg", "#Params", "calls", "fwd", "bwd", "time (s)", "memory"} <= set(table.columns)
    assert str(table.loc["lora", "bwd"]) != "0" and str(table.loc["c-lora", "bwd"]) == "0"
    assert str(table.loc["bbt", "#Params"]) == "8" and str(table.loc["zeroshot", "#Params"]) == "0"
    cell = table.loc["zeroshot-calibrated", "sst2"]
    mean, std = cell.replace(")", "").split(" (")
    assert 0 <= float(mean) <= 100 and float(std) >= 0
    md = (tmp_path / TABLE_MD).read_text()
    assert "| zeroshot-calibrated |" in md and "Zero-shot" in md and "budget (calls): 24" in md
    # a second call reads every run back
    again = compare(["sst2", "rte"], methods, [13, 42], root=tmp_path, **kw)
    assert again["ran"] == 0
    assert [r["finished"] for r in again["records"]] == [r["finished"] for r in out["records"]]
    # the figures notebook renders such a grid from a profile's extra root (the committed results/)
    from types import SimpleNamespace

    from dflora_core.grids import collect
    from dflora_core.reports import tables, training_figures

    [(name, recs)] = collect.comparison_roots(SimpleNamespace(extra_paths=lambda: [tmp_path, tmp_path / "none"]))
    assert name == tmp_path.name and len(recs) == 20
    grid, _, zero_shot = tables.comparison_table(recs, tables.method_order(r["method"] for r in recs))
    assert set(grid.index) == set(methods) and set(zero_shot.index) == {"sst2", "rte"}
    fig = training_figures.convergence_figure([r for r in recs if r["method"] == "c-lora"], "smoke")
    assert len(fig.axes[0].lines) == 4  # one train-fitness curve per (task, seed)


def test_cli_compare(tmp_path, capsys):
    from dflora_core.cli import main

    args = ["compare", "--tasks", "sst2", "--methods", "zeroshot,icl", "--seeds", "13", "--model", "tiny-roberta",
            "--max-test", "16", "--root", str(tmp_path), "--in-process"]  # fmt: skip
    for s in COMMON:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| icl |" in out and "2 new runs" in out
    assert main(args) == 0 and "0 new runs" in capsys.readouterr().out
    wider = [a.replace("zeroshot,icl", "zeroshot,icl,lora") for a in args] + ["--table-only"]
    assert main(wider) == 0 and "| lora |" not in capsys.readouterr().out  # lora was never run
    assert main([*args, "--table-only", "--vs", "zeroshot"]) == 0  # paired differences to zeroshot
    out = capsys.readouterr().out
    assert "Δsst2 vs zeroshot" in out and "| zeroshot |" in out and "reference" in out and "paired vs: zeroshot" in out
    assert main([*args, "--vs", "lora"]) == 2 and "--vs 'lora'" in capsys.readouterr().err
    assert main(["compare", "--tasks", "sst2", "--methods", "nope", "--seeds", "1", "--root", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_isolated_runs_record_their_own_memory(tmp_path):
    """The default: each pending run in its own process (peak RSS per run), then the table."""
    from dflora_core.grids.compare import compare

    out = compare(["sst2"], ["zeroshot"], [13], root=tmp_path, model="tiny-llama", max_test=16, sets=COMMON)
    assert out["ran"] == 1 and out["records"][0]["status"] == "done"
    assert out["records"][0]["peak_mem_bytes"] > 0


def test_a_grid_below_one_round_fails_once_up_front_in_one_line(tmp_path, capsys):
    """Eight runs, none affordable: one line and exit 2 before any run starts or any folder is made."""
    from dflora_core.cli import main

    args = ["compare", "--tasks", "sst2,rte", "--methods", "zeroshot,c-lora,f-lora,rs-lora", "--seeds", "13,42",
            "--model", "tiny-llama", "--budget", "5", "--root", str(tmp_path), *[a for s in COMMON for a in ("--set", s)]]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dflora: error: config error: c-lora on sst2, seed 13: search.")
    assert "5 calls give 1 of the 3 adapted layers" in err and "13 calls reach every layer" in err
    assert list(tmp_path.iterdir()) == []  # nothing launched, no folder


def test_another_budget_reuses_the_runs_that_ignore_it_and_finds_their_older_folders(tmp_path, tiny_models):
    """The zero-shot arms ignore search.budget (identity.IGNORED_FIELDS): a second grid at another budget
    reruns only the searching method; a zero-shot folder named by identity version 2 (budget in its hash)
    is found by that alias, and the version-2 name of the run it was launched as is kept."""
    from dflora_core.grids.compare import compare
    from dflora_core.grids.grid import find_run, run_dir
    from dflora_core.identity import identity, identity_aliases
    from dflora_core.methods import METHODS

    assert "search.budget" in METHODS["zeroshot"].ignores and METHODS["c-lora"].ignores == ()
    kw = dict(model="tiny-llama", max_test=16, sets=COMMON, isolate=False)
    first = compare(["sst2"], ["zeroshot", "icl", "c-lora"], [13], root=tmp_path, budget=24, **kw)
    assert first["ran"] == 3
    zs = [c for c in first["records"] if c["method"] == "zeroshot"][0]
    again = compare(["sst2"], ["zeroshot", "icl", "c-lora"], [13], root=tmp_path, budget=48, **kw)
    budgets = {r["method"]: r["config"]["search"]["budget"] for r in again["records"]}
    assert again["ran"] == 1 and budgets == {"zeroshot": 24, "icl": 24, "c-lora": 48}  # zero-shot arms: the first's
    # a folder an earlier version named (its hash holds the budget) is found by that hash
    from dflora_core.grids.compare import build_configs

    (cfg,) = build_configs(["sst2"], ["zeroshot"], [13], model="tiny-llama", budget=24, max_test=16, sets=COMMON)
    current = find_run(tmp_path, cfg)
    assert current == run_dir(tmp_path, cfg) and current.name.endswith(identity(cfg))
    v2 = current.with_name(f"seed13-{identity_aliases(cfg)[0]}")
    current.rename(v2)
    (other,) = build_configs(["sst2"], ["zeroshot"], [13], model="tiny-llama", budget=300, max_test=16, sets=COMMON)
    assert identity(other) == identity(cfg) and identity_aliases(other) != identity_aliases(cfg)
    assert find_run(tmp_path, cfg) == v2 == find_run(tmp_path, other)  # by its alias, and by its record
    third = compare(["sst2"], ["zeroshot"], [13], root=tmp_path, budget=300, **kw)
    assert third["ran"] == 0 and third["records"][0]["finished"] == zs["finished"]
