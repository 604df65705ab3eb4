"""The 2025-2026 zeroth-order peers (baselines/zo_pool.py, baselines/lozo.py): their estimators on an
ill-conditioned quadratic outside any model, batched pool scoring against one-by-one scoring, exact pass
counts, resume, and tiny-model runs on both schemes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dflora_core.baselines.zo_functions import function_step, trace
from dflora_core.config import RunConfig
from dflora_core.optim.testfunctions import ellipsoid
from tolerances import forward_bound, loss_bound

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = ("mezo-gv", "mezo-greedy", "fzoo", "lozo", "lozo-m")
D = 6


def f(x: np.ndarray) -> float:
    return float(ellipsoid(x, condition=100.0))


def grad(x: np.ndarray) -> np.ndarray:
    return 2 * 100.0 ** (np.arange(D) / (D - 1)) * x


def shape_of(method: str):
    return (3, 2) if method.startswith("lozo") else (D,)  # LOZO perturbs a matrix by U V^T


@pytest.mark.parametrize("method", NEW)
def test_the_expected_step_descends_along_the_true_gradient(method):
    """Averaged over 200 steps' seeds at one point, the step has a positive inner product with -grad f."""
    x = np.linspace(0.5, 1.0, D)
    moves = []
    for t in range(200):
        params = {"w": torch.tensor(x.reshape(shape_of(method)), dtype=torch.float64)}
        step = function_step(method, params, lr=1e-3, eps=1e-4, seed=7)
        step.loss = lambda _b, p=params: f(p["w"].numpy().reshape(-1))
        step.step(None, t)
        moves.append(params["w"].numpy().reshape(-1) - x)
    mean = np.mean(moves, axis=0)
    cosine = float(-mean @ grad(x) / (np.linalg.norm(mean) * np.linalg.norm(grad(x))))
    assert cosine > 0.3, cosine


LR = {
    "mezo-gv": 5e-4,
    "mezo-greedy": 5e-4,
    "fzoo": 2e-2,
    "lozo": 5e-4,
    "lozo-m": 1e-4,
}  # stable: lr |z|^2 max curvature < 2


@pytest.mark.parametrize("method", NEW)
def test_the_loss_goes_down_on_the_ill_conditioned_quadratic(method):
    t = trace(method, f, np.ones(D), 150, lr=LR[method], eps=1e-3, seed=3, shape=shape_of(method))
    assert np.all(np.isfinite(t["losses"])) and t["losses"][-1] < 0.5 * t["losses"][0]
    passes = {"mezo-gv": 10, "mezo-greedy": 9, "fzoo": 9, "lozo": 2, "lozo-m": 2}[method]
    assert all(len(s) == passes for s in t["samples"])  # every perturbed model scored: one pass each


def test_a_combination_draws_only_its_live_streams():
    """Scoring pool member i shifts by eps z_i alone: the other M - 1 streams are not drawn (M^2 -> M draws
    of the whole model per step on the in-place schemes), and the sum is the one over every stream."""
    from dflora_core.baselines.zeroth_order import directions
    from dflora_core.baselines.zo_pool import combined

    params = {"a": torch.zeros(4, 3), "b": torch.zeros(5)}
    drawn = []

    def draw(ps, seed, masks=None):
        drawn.append(seed)
        yield from directions(ps, seed, masks)

    got = {
        name: d
        for name, (_p, d) in zip(params, combined(params, draw, [1, 2, 3, 4], [0.0, 0.5, 0.0, -2.0]), strict=True)
    }
    assert drawn == [2, 4]
    z = {s: dict(zip(params, (d for _p, d in directions(params, s)), strict=True)) for s in (2, 4)}
    for name in params:  # the same additions in the same order: equal to the last bit
        assert torch.equal(
            got[name], torch.zeros_like(params[name]).add_(z[2][name], alpha=0.5).add_(z[4][name], alpha=-2.0)
        )
    drawn.clear()
    assert all(torch.equal(d, torch.zeros_like(p)) for p, d in combined(params, draw, [1, 2], [0.0, 0.0]))
    assert drawn == []


# -- on a tiny model ----------------------------------------------------------------------------------------
def tiny_cfg(method: str, scheme: str = "lora", **changes) -> RunConfig:
    base = {"method": method, "model.name": "tiny-llama", "model.device": "cpu", "data.max_test": 16,
            "search.budget": 40, "search.eval_every": 20, "baseline.lora_rank": 2, "baseline.zo_params": scheme,
            "baseline.lr": 1e-2, "progress": False}  # fmt: skip
    return RunConfig().replace(**{**base, **changes})


def test_a_batched_pool_scores_like_one_model_at_a_time(tiny_models):
    """The lora scheme's pool in one batched forward (zo_batch) against perturbing in place one by one."""
    pytest.importorskip("peft")
    from dflora_core.baselines.zo_pool import PoolStep
    from dflora_core.baselines.zo_schemes import trainable
    from dflora_core.experiment import Experiment

    exp = Experiment.prepare(tiny_cfg("mezo-gv"), tiny_models["tiny-llama"])
    with trainable(exp, "lora") as tr, torch.no_grad():
        for p in tr.params.values():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))  # B != 0: a non-trivial point
        seeds = [11, 12, 13]
        coefs = [[0.05, 0, 0], [0, -0.05, 0], [0.03, 0.03, -0.03]]
        kw = {"pool": 3}
        batched = PoolStep(tr.exp, tr.params, 0.0, 0.05, "mezo-gv", 42, False, batched=True, **kw)
        alone = PoolStep(tr.exp, tr.params, 0.0, 0.05, "mezo-gv", 42, False, batched=False, **kw)
        before = {k: v.clone() for k, v in tr.params.items()}
        a = batched.score(exp.train, tr.params, seeds, coefs, with_start=True)
        assert all(torch.equal(before[k], v) for k, v in tr.params.items())  # batched scoring leaves theta alone
        b = alone.score(exp.train, tr.params, seeds, coefs, with_start=True)
        logits = exp.logits(exp.train)
    bound = loss_bound(forward_bound(exp.loaded.model.config, logits, max(map(len, exp.train.ids)), adapted=True),
                       float(b.max()), len(exp.train))  # fmt: skip
    assert np.abs(a - b).max() <= bound and np.abs(b[1:] - b[0]).max() > 10 * bound  # the perturbations matter
    assert batched.forward_rows == alone.forward_rows == 4 * len(exp.train)


@pytest.mark.parametrize("scheme", ["lora", "all"])
@pytest.mark.parametrize("method", NEW)
def test_tiny_runs_count_their_passes_exactly(method, scheme, tiny_models, tmp_path):
    pytest.importorskip("peft")
    from dflora_core.runner import run

    rec = run(tiny_cfg(method, scheme), out=tmp_path, loaded=tiny_models["tiny-llama"])
    per_step = {"mezo-gv": 10, "mezo-greedy": 9, "fzoo": 9, "lozo": 2, "lozo-m": 2}[method]
    n = 2 * 16  # train examples: 16 per class
    assert rec["budget_plan"]["cost_per_step"] == per_step
    assert rec["forward_passes"] == rec["steps"] * per_step * n and rec["calls"] <= 40
    assert rec["zo_options"]["batched_scoring"] == (scheme == "lora")
    assert np.isfinite(rec["final_train_loss"])


@pytest.mark.parametrize("method", ["mezo-gv", "lozo-m"])
def test_a_resumed_run_equals_an_uninterrupted_one(method, tiny_models, tmp_path):
    pytest.importorskip("peft")
    from dflora_core.runner import run

    cfg = tiny_cfg(method, **{"search.budget": 60 if method == "mezo-gv" else 30, "search.eval_every": 10,
                              "baseline.lozo_interval": 4})  # fmt: skip
    a = run(cfg, out=tmp_path / "a", loaded=tiny_models["tiny-llama"])

    def stop(_method, row):
        if row["calls"] >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=tmp_path / "b", loaded=tiny_models["tiny-llama"], on_eval=stop)
    b = run(cfg, out=tmp_path / "b", loaded=tiny_models["tiny-llama"], resume=True)
    assert b["final_train_loss"] == a["final_train_loss"] and b["best_dev"] == a["best_dev"]
    assert b["forward_passes"] == a["forward_passes"] and b["steps"] == a["steps"]


def test_lozo_m_keeps_its_momentum_in_factor_form():
    params = {"W": torch.zeros(8, 5, dtype=torch.float64), "b": torch.zeros(5, dtype=torch.float64)}
    step = function_step("lozo-m", params, lr=1e-2, eps=1e-3, seed=1, rank=2, interval=3)
    step.loss = lambda _b: float((params["W"] - 1).pow(2).sum() + (params["b"] + 1).pow(2).sum())
    for t in range(7):  # across two redraws of V
        step.step(None, t)
    assert step.buffers["W"].shape == (8, 2) and step.buffers["b"].shape == (5,)
    assert step.buffer_interval == 2
