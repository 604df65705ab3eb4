"""The benchmark harness on tiny models: rows, fields, fidelity of the exact strategies (no timed assertions)."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dflora_core import bench
from dflora_core.bench.report import fidelity_table
from dflora_core.cli import main
from dflora_core.errors import ConfigError
from dflora_core.lowrank.patching import LowRankWrapper
from dflora_core.lowrank.population import PopulationEvaluator
from dflora_core.metrics import fit_label_bias
from dflora_core.models.tiny import ROBERTA_MASK_ID

ROW_FIELDS = (
    "model",
    "strategy",
    "device",
    "dtype",
    "evals_per_s",
    "ratio_vs_reference",
    "spearman_vs_fp32",
    "same_best",
    "peak_mem_bytes",
)
EXACT = ("reference", "population", "trim", "scored-head", "prefix-reuse")  # fp32: must rank like fp32


def test_spearman():
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # tied ranks averaged
    fid = bench.fidelity([0.3, 0.1, 0.2], [0.31, 0.11, 0.2])
    assert fid["same_best"] and fid["spearman_vs_fp32"] == pytest.approx(1.0)
    assert fid["max_abs_fitness_diff"] == pytest.approx(0.01)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-roberta", "gpt2-tiny-shape"])
def test_exact_strategies_rank_like_fp32(model):
    s = bench.make_setup(model, "cpu", population=6, max_tokens=128, n_examples=8, mean_tokens=12, shots=4)
    model_obj = s.loaded.model
    before = {k: v.clone() for k, v in model_obj.state_dict().items()}
    try:
        rows, extra = bench.run_speed(s, [*EXACT, "bf16"], reps=1, log=lambda *a: None, gemm_seconds=0.05)
        # the benchmark leaves the model as it found it (every layer back at z = 0)
        assert all(torch.equal(before[k], v) for k, v in model_obj.state_dict().items())
        assert all(s.adapter.get(i) is None for i in range(s.adapter.num_layers))
    finally:
        s.adapter.remove()
    by = {r.strategy: r for r in rows}
    assert list(by) == [*EXACT, "bf16"]
    assert set(extra["gemm_gflops"]) >= {"float32", "bfloat16"}
    for name in EXACT:
        r = by[name]
        assert r.error is None, r.error
        assert r.evals_per_s > 0 and r.reps == 1 and len(r.fitness) == 6
        assert r.same_best and r.spearman_vs_fp32 >= 0.99
        assert r.max_abs_fitness_diff < 1e-4  # padding, head and prefix reuse change nothing in fp32
        assert r.layer_tokens_per_eval > 0 and r.gflop_per_eval > 0
    assert by["reference"].ratio_vs_reference == pytest.approx(1.0)
    # each optimisation removes work: trimmed padding, no vocabulary projection, no prefix layers
    assert by["trim"].layer_tokens_per_eval <= by["population"].layer_tokens_per_eval
    assert by["scored-head"].gflop_per_eval < by["trim"].gflop_per_eval
    assert by["prefix-reuse"].layer_tokens_per_eval < by["scored-head"].layer_tokens_per_eval
    assert by["prefix-reuse"].prefix_reuse_exact is True
    gemm = extra["gemm_gflops"]
    if gemm["bfloat16"] < bench.SLOW_DTYPE * gemm["float32"]:  # no native bf16 kernels on this CPU: not timed
        assert by["bf16"].error.startswith("skipped: bfloat16 matmuls run at")
        assert by["bf16"].max_abs_fitness_diff is None and not by["bf16"].fastest_faithful
    else:  # reduced precision: close, ranking not asserted on random weights
        assert by["bf16"].max_abs_fitness_diff < 0.5
    assert sum(r.fastest_faithful for r in rows) == 1
    assert not any(isinstance(m, LowRankWrapper) for m in model_obj.modules())


def test_speed_cli_writes_json_rows(tmp_path):
    out = tmp_path / "speed.json"
    rc = main(
        ["bench", "speed", "--model", "tiny-gpt2", "--device", "cpu", "--shots", "4", "--reps", "1", "--popsize", "4",
         "--strategies", "reference,population,prefix-reuse", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["mode"] == "speed" and doc["command"].startswith("dflora ")
    assert doc["versions"]["torch"] and doc["machine"]["cpu_count"]
    assert [r["strategy"] for r in doc["rows"]] == ["reference", "population", "prefix-reuse"]
    for r in doc["rows"]:
        for f in ROW_FIELDS:
            assert f in r, f
        assert r["evals_per_s"] > 0 and r["peak_mem_bytes"] > 0
        assert r["versions"]["torch"] and r["command"] == doc["command"] and r["machine"]
    assert doc["models"]["tiny-gpt2"]["population"] == 4


def test_table_and_unknown_strategy(tmp_path, capsys):
    out = tmp_path / "s.json"
    main(["bench", "speed", "--model", "tiny-llama", "--device", "cpu", "--shots", "4", "--reps", "1", "--popsize", "3",
          "--strategies", "reference,prefix-reuse", "--out", str(out), "--quiet"])  # fmt: skip
    capsys.readouterr()
    assert main(["bench", "table", str(out)]) == 0
    text = capsys.readouterr().out
    # which row is the fastest depends on the machine's load; the table marks it, the rows are there either way
    assert re.search(r"\| tiny-llama \| reference( \*\*\(fastest faithful\)\*\*)? \|", text) and "prefix-reuse" in text
    assert main(["bench", "speed", "--model", "tiny-llama", "--device", "cpu", "--strategies", "warp-drive"]) == 2


def test_fidelity_rows():
    s = bench.make_setup("tiny-llama", "cpu", population=5, max_tokens=256, shots=4)
    try:
        rows = bench.run_fidelity(s, [0, -1], ("bfloat16",), log=lambda *a: None)
    finally:
        s.adapter.remove()
    assert [(r["model_layer"], r["dtype"]) for r in rows] == [(0, "bfloat16"), (2, "bfloat16")]
    for r in rows:
        assert {"spearman_vs_fp32", "same_best", "max_abs_fitness_diff", "fp32_fitness_spread", "faithful"} <= set(r)


def test_fidelity_under_search_options_scores_what_the_started_search_scores(tmp_path):
    """--set lowrank.scale_calibration / search.calibrated_logits: the calibrated scales and the fitted bias."""
    small = {"lowrank.intrinsic_dim": 24, "lowrank.alpha": 1.0}
    base = bench.make_setup("tiny-llama", "cpu", population=5, max_tokens=256, shots=4, cfg_overrides=small)
    ril_std = list(base.adapter.projection.layer_std)
    base.adapter.remove()
    assert base.options == {} and base.multipliers is None and base.head.label_bias is None
    options = {"lowrank.scale_calibration": "output", "search.calibrated_logits": True}
    s = bench.make_setup("tiny-llama", "cpu", population=5, max_tokens=256, shots=4,
                         cfg_overrides={**small, **options, "lowrank.calibration_range": [0.02, 0.05]})  # fmt: skip
    try:
        assert s.options == options and len(s.multipliers) == s.adapter.num_layers
        assert any(m != 1.0 for m in s.multipliers)  # random weights: at least one layer outside 2%-5%
        assert list(s.adapter.projection.layer_std) == pytest.approx(
            [v * m for v, m in zip(ril_std, s.multipliers, strict=True)]
        )
        # the bias is the one fitted on the start (z = 0) train logits, as the calibrated search's start
        bias = s.head.label_bias
        s.head.label_bias = None
        ev = PopulationEvaluator(s.loaded, s.head, s.adapter, s.data, None, s.max_tokens, True)
        raw = ev.logits(0, np.zeros((1, s.adapter.dim)))[0]
        torch.testing.assert_close(bias, fit_label_bias(raw, s.data.labels))
        s.head.label_bias = bias
        rows = bench.run_fidelity(s, [0], ("bfloat16",), log=lambda *a: None)
    finally:
        s.adapter.remove()
    assert rows[0]["options"] == options and rows[0]["scale_multiplier"] == s.multipliers[0]
    assert "| options | scale x RIL |" in fidelity_table(rows)
    with pytest.raises(ConfigError, match="real model"):
        bench.make_setup("gpt2-tiny-shape", "cpu", population=2, cfg_overrides=options)
    out = tmp_path / "fid.json"
    assert main(["bench", "fidelity", "--model", "tiny-llama", "--device", "cpu", "--tasks", "sst2", "--layers", "0",
                 "--dtypes", "bfloat16", "--shots", "4", "--set", "lowrank.scale_calibration=fitness",
                 "--set", "lowrank.intrinsic_dim=24", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    row = json.loads(out.read_text())["rows"][0]
    assert row["options"] == {"lowrank.scale_calibration": "fitness"} and row["scale_multiplier"] in (0.1, 1.0, 10.0)


def test_sweep_cli(tmp_path):
    out = tmp_path / "sweep.json"
    rc = main(["bench", "sweep", "--model", "tiny-llama", "--device", "cpu", "--shots", "4", "--reps", "1", "--popsize", "3",
               "--max-tokens", "128,512", "--strategies", "prefix-reuse", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["prefix-reuse@128", "prefix-reuse@512"]
    assert [r["max_tokens"] for r in rows] == [128, 512]
    assert all(r["same_best"] for r in rows) and rows[0]["ratio_vs_reference"] == pytest.approx(1.0)
    assert rows[0]["reference_strategy"] == "prefix-reuse@128"


def test_memory_worker_in_process():
    base = dict(model="gpt2-tiny-shape", device="cpu", batch=2, seq=16, dtype="float32", population=3,
                max_tokens=64, steps=1, threads=None)  # fmt: skip
    for config in bench.MEMORY_CONFIGS:
        row = bench.memory_worker(SimpleNamespace(config=config, **base))
        assert row["config"] == config and row["peak_mem_bytes"] > 0 and row["batch"] == 2


@pytest.mark.slow
def test_memory_subprocesses(tmp_path):
    out = tmp_path / "mem.json"
    rc = main(["bench", "memory", "--model", "gpt2-tiny-shape", "--device", "cpu", "--batch", "2", "--seq", "16",
               "--configs", "clora-one,lora-adamw", "--steps", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["clora-one", "lora-adamw"]
    assert all("error" not in r for r in rows), rows
    assert rows[1]["ratio_vs_lora"] == pytest.approx(1.0) and rows[0]["ratio_vs_lora"] > 0


def test_synthetic_prompts_are_scored_where_the_family_scores():
    s = bench.make_setup("roberta-tiny-shape", "cpu", population=2, n_examples=5, mean_tokens=10)
    try:
        for ids, p in zip(s.data.ids, s.data.positions, strict=True):
            assert ids[p] == ROBERTA_MASK_ID and ids[0] == 0 and ids[-1] == 2
        assert np.all(s.data.lengths >= 4)
    finally:
        s.adapter.remove()


def test_speed_defaults_are_short_with_a_progress_line_per_strategy_and_pass(tmp_path, capsys):
    """`dflora bench speed` as a new user runs it: the defaults (1 timed repetition, 2 one-by-one candidates,
    no compile on a CPU), one line per strategy in the untimed and in the timed passes, an estimate of the
    timed passes, and the expected time in --help."""
    from dflora_core.bench.cli import SPEED_TIME
    from dflora_core.bench.strategies import DEFAULT_STRATEGIES

    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--model", "tiny-llama", "--device", "cpu", "--shots", "4", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = list(DEFAULT_STRATEGIES["cpu"])
    assert "compile" not in names
    n = len(names)
    for k, name in enumerate(names):
        assert any(re.match(rf"\s+warm-up {k + 1}/{n} {re.escape(name)}\b", ln) for ln in lines), name
    ran = [r["strategy"] for r in json.loads(out.read_text())["rows"] if r["reps"]]
    for name in ran:
        assert sum(bool(re.match(rf"\s+rep 1/1 {re.escape(name)}\s", ln)) for ln in lines) == 1, name
    assert any(re.match(r"\s+timing 1 repetition of \d+ strategies: about \d+ s", ln) for ln in lines)
    doc = json.loads(out.read_text())
    assert doc["reps"] == 1 and {r["reps"] for r in doc["rows"] if r["evals_per_s"]} == {1}
    with pytest.raises(SystemExit):
        main(["bench", "speed", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert SPEED_TIME in help_text and "--reps" in help_text
