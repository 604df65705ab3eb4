"""The zeroth-order zoo (issue 15): ZO-Bench's momentum and conservative ZO-SGD, its fine-tuning
schemes and enhancements, ES on all weights, nevergrad and separable CMA-ES as per-layer optimizers."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dflora_core.config import RunConfig, from_dict
from dflora_core.errors import ConfigError
from dflora_core.methods import METHODS, validate
from dflora_core.optim import OptimizerStateError
from tolerances import (
    U,
    assert_derivatives_agree,
    assert_moves,
    assert_within,
    elementwise_bound,
    forward_bound,
    gamma,
    sum_bound,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_METHODS = ("zo-sgd-mmt", "zo-sgd-cons", "es-full", "c-lora-diag", "ng-lora")


def tiny_cfg(method: str, model: str = "tiny-llama", **changes) -> RunConfig:
    base = {"method": method, "model.name": model, "model.device": "cpu", "data.max_test": 16,
            "search.budget": 12, "search.eval_every": 4, "optim.popsize": 4, "baseline.prompt_tokens": 3,
            "baseline.lora_rank": 2, "lowrank.intrinsic_dim": 8, "progress": False}  # fmt: skip
    base.update(changes)
    return RunConfig().replace(**base)


# -- the update rules on a quadratic ------------------------------------------------------------------
class Quadratic:
    """L(theta) = 0.5 |theta - target|^2 on one nn.Parameter-like tensor, as a step method's loss."""

    def __init__(self, dim: int = 6):
        self.target = torch.linspace(-1, 1, dim)
        self.params = {"w": torch.zeros(dim)}

    def loss(self, _batch=None) -> float:
        return float(0.5 * ((self.params["w"] - self.target) ** 2).sum())


def stub_exp():
    return SimpleNamespace(cfg=SimpleNamespace(seed_scheme=1, search=SimpleNamespace(loss="ce")),
                           task=SimpleNamespace(metric="accuracy"))  # fmt: skip


def quadratic_step(cls, problem, **kw):
    step = cls(stub_exp(), problem.params, seed=5, full=False, **kw)
    step.loss = problem.loss
    return step


def spsa(problem, seed: int, eps: float):
    """The two-point estimate g and direction z the step sees at ``seed`` (regenerated here)."""
    from dflora_core.baselines.zeroth_order import directions

    z = next(directions(problem.params, seed))[1]
    w = problem.params["w"].clone()
    plus = float(0.5 * ((w + eps * z - problem.target) ** 2).sum())
    minus = float(0.5 * ((w - eps * z - problem.target) ** 2).sum())
    return (plus - minus) / (2 * eps), z


def loss_rounding(prob: Quadratic, w: torch.Tensor, operations: int, spread: torch.Tensor | float = 0.0) -> float:
    """How far two fp32 evaluations of L at ``w`` (give or take ``spread`` per coordinate) may differ when
    w went through ``operations`` rounded in-place updates: dL <= sum |w - target| dw, plus each loss's own
    rounding (3 operations per term, then a sum of n terms; tests/tolerances.py)."""
    r = (w - prob.target).abs() + spread
    dw = 2 * operations * U * float((w.abs() + spread).max())
    own = (3 * U + gamma(len(w))) * float((r**2).sum())
    return float(r.sum()) * dw + 2 * own


def estimate_rounding(prob: Quadratic, w: torch.Tensor, eps: float, z: torch.Tensor) -> float:
    """How far two fp32 two-point estimates (L(w + eps z) - L(w - eps z)) / (2 eps) may differ."""
    return 2 * loss_rounding(prob, w, 2, eps * z.abs()) / (2 * eps)


def test_momentum_step_accumulates_the_estimates_on_a_quadratic():
    from dflora_core.baselines.zeroth_order import ZerothOrderStep, step_seed

    prob = Quadratic()
    step = quadratic_step(ZerothOrderStep, prob, lr=0.1, eps=1e-3, update="mmt", momentum=0.9)
    m, m_err = torch.zeros(6), torch.zeros(6)
    for t in range(3):
        w = prob.params["w"].clone()
        g, z = spsa(prob, step_seed(5, t), 1e-3)
        m = 0.9 * m + g * z
        m_err = 0.9 * m_err + estimate_rounding(prob, w, 1e-3, z) * z.abs()  # the buffers' accumulated difference
        step.step(None, t)
        tol = 0.1 * float(m_err.max()) + elementwise_bound(w, 8)  # + the perturbation round trip and the step
        assert_within(prob.params["w"], w - 0.1 * m, tol, f"momentum step {t}")
    assert torch.equal(step.opt_state()["buffers"]["w"], step.buffers["w"])


def test_conservative_step_never_raises_the_loss_and_keeps_the_best_of_three():
    from dflora_core.baselines.zeroth_order import ZerothOrderStep, step_seed

    prob = Quadratic()
    step = quadratic_step(ZerothOrderStep, prob, lr=0.3, eps=1e-2, update="sgd", conservative=True)
    losses, slack = [prob.loss()], []
    for t in range(12):
        w = prob.params["w"].clone()
        g, z = spsa(prob, step_seed(5, t), 1e-2)
        seen = step.step(None, t)
        slack.append(loss_rounding(prob, w, 8))  # three perturbations and a step, each 2 rounded operations
        assert seen == pytest.approx(losses[-1], abs=slack[-1])  # the recorded loss is L(theta) before the step
        candidates = {"step": w - 0.3 * g * z, "reverse": w + 0.3 * g * z, "start": w}
        best = min(candidates.values(), key=lambda c: float(0.5 * ((c - prob.target) ** 2).sum()))
        torch.testing.assert_close(prob.params["w"], best, atol=1e-4, rtol=1e-4)  # g's in-place rounding
        losses.append(prob.loss())
    assert all(b <= a + s for a, b, s in zip(losses, losses[1:], slack, strict=False)) and losses[-1] < losses[0]
    # a step far too long is refused: theta stays where it was
    huge = quadratic_step(ZerothOrderStep, prob, lr=1e3, eps=1e-3, update="sgd", conservative=True)
    w = prob.params["w"].clone()
    huge.step(None, 0)
    torch.testing.assert_close(prob.params["w"], w, atol=1e-3, rtol=0)
    assert huge.kept["start"] == 1


def test_es_update_is_the_rank_weighted_sum_of_regenerated_member_noise():
    from dflora_core.baselines.es import EvolutionStep, centered_ranks, member_seed
    from dflora_core.baselines.zeroth_order import directions

    assert centered_ranks([3.0, 1.0, 2.0, 2.0]).tolist() == [0.5, -0.5, 0.0, 0.0]  # ties share their mean rank
    assert centered_ranks([np.nan, 1.0, 0.0]).tolist() == [0.5, 0.0, -0.5]  # a failed member ranks last
    prob = Quadratic(dim=8)
    prob.params["w"] += 0.3
    step = quadratic_step(EvolutionStep, prob, lr=0.2, sigma=1e-2, population=5)
    w0 = prob.params["w"].clone()
    step.step(None, 4)
    seeds = [member_seed(5, 4, n) for n in range(5)]
    noise = [next(directions(prob.params, s))[1] for s in seeds]
    assert all(torch.equal(a, next(directions(prob.params, s))[1]) for a, s in zip(noise, seeds, strict=True))
    expected_losses = [float(0.5 * ((w0 + 1e-2 * e - prob.target) ** 2).sum()) for e in noise]
    slack = max(loss_rounding(prob, w0 + 1e-2 * e, 2 * 2 * n + 2) for n, e in enumerate(noise))  # members before
    np.testing.assert_allclose(step.last_losses, expected_losses, rtol=0, atol=slack)
    u = centered_ranks(expected_losses)
    terms = [0.2 / 5 * float(ui) * e for ui, e in zip(u, noise, strict=True)]
    expected = w0 - sum(terms)
    # 5 members perturbed and restored in place (4 operations each), then a sum of 5 weighted noises
    tol = elementwise_bound(w0, 22) + sum_bound(5, max(float(t.abs().max()) for t in terms))
    assert_within(prob.params["w"], expected, tol, "ES update")
    assert len(set(seeds)) == 5 and member_seed(5, 5, 0) not in seeds  # a fresh population each step


# -- schemes and enhancements ------------------------------------------------------------------------
def test_block_wise_zo_steps_by_the_layer_wise_searchs_round_robin():
    from dflora_core.search.schedule import RoundRobin

    cycle = RoundRobin(3)
    assert [cycle.layer_at(s) for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    stepped = []
    for _ in range(7):  # the search's stateful walk visits the same layers
        stepped.append(cycle.next_layer())
        cycle.update(stepped[-1], 0.0, 1)
    assert stepped == [0, 1, 2, 0, 1, 2, 0] and cycle.round == 2
    with pytest.raises(ValueError):
        RoundRobin(0)


def test_magnitude_mask_keeps_the_largest_entries_and_breaks_ties_by_seed():
    from dflora_core.baselines.zo_schemes import magnitude_masks

    w = torch.tensor([[0.1, -3.0, 0.5], [2.0, 0.0, -0.2]])
    masks = magnitude_masks({"w": w, "zeros": torch.zeros(10)}, 0.5, seed=1)
    assert masks["w"].tolist() == [[False, True, True], [True, False, False]]
    assert int(masks["zeros"].sum()) == 5
    again = magnitude_masks({"w": w, "zeros": torch.zeros(10)}, 0.5, seed=1)
    assert torch.equal(again["zeros"], masks["zeros"])


@pytest.fixture(scope="module")
def llama_exp(tiny_models):
    from dflora_core.experiment import Experiment

    return Experiment.prepare(tiny_cfg("zo-sgd"), loaded=tiny_models["tiny-llama"])


def test_schemes_group_tensors_by_layer_and_restore_the_model(llama_exp):
    pytest.importorskip("peft")
    from dflora_core.baselines.zo_schemes import OUTSIDE, split_hybrid, trainable

    exp = llama_exp
    layers = exp.loaded.model.config.num_hidden_layers
    before = exp.logits(exp.train)
    for scheme, first in (("lora", 0), ("all", OUTSIDE), ("prefix", 0), ("prompt", 0)):
        with trainable(exp, scheme) as tr:
            got = [layer for layer, _names in tr.blocks]
            assert got[0] == first and got == sorted(got)
            assert len(got) == (1 if scheme == "prompt" else layers + (scheme == "all"))
            if scheme != "prompt":
                fo, zo = split_hybrid(tr, 1)
                assert fo == tr.blocks[-1][1] and len(zo) == len(got) - 1
            assert tr.start_is_model == (scheme in ("lora", "all"))
    torch.testing.assert_close(exp.logits(exp.train), before, atol=0, rtol=0)


def test_block_wise_sparse_and_hybrid_steps_move_only_what_they_should(llama_exp):
    pytest.importorskip("peft")
    from dflora_core.baselines._common import batch_loss_terms, no_grad_params
    from dflora_core.baselines.zeroth_order import ZerothOrderStep
    from dflora_core.baselines.zo_schemes import magnitude_masks, split_hybrid, trainable

    exp = llama_exp
    with trainable(exp, "all") as tr, no_grad_params(tr.params):
        blocks = [names for _layer, names in tr.blocks]
        masks = magnitude_masks(tr.params, 0.5, seed=0)
        step = ZerothOrderStep(exp, tr.params, 1e-2, 1e-3, "sgd", 3, True, blocks=blocks, masks=masks)
        before = {k: v.clone() for k, v in tr.params.items()}
        step.step(exp.train, 1)  # block 1 = transformer layer 0
        moved = {k for k in tr.params if not torch.equal(tr.params[k], before[k])}
        assert moved and moved <= set(blocks[1])
        for k in moved:
            assert torch.equal(tr.params[k][~masks[k]], before[k][~masks[k]])  # pruned entries never move
    with trainable(exp, "lora") as tr, no_grad_params(tr.params):
        fo, _zo = split_hybrid(tr, 1)
        for p in tr.params.values():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        for p in (tr.params[n] for n in fo):
            p.requires_grad_(True)
        for w, loss in batch_loss_terms(exp, exp.train, step.loss_fn):
            (loss * w).backward()
        grads = {n: tr.params[n].grad.clone() for n in fo}
        for n in fo:
            tr.params[n].grad = None
            tr.params[n].requires_grad_(False)
        before = {k: v.clone() for k, v in tr.params.items()}
        hybrid = ZerothOrderStep(exp, tr.params, 0.5, 1e-2, "sgd", 3, False, fo_names=fo)
        hybrid.step(exp.train, 0)
        # the first-order tensors' gradients: one backward each, at points within rounding of each other
        rel = forward_bound(exp.loaded.model.config, torch.ones(1), max(map(len, exp.train.ids)), adapted=True)
        for n in fo:
            tol = elementwise_bound(before[n], 3) + 0.5 * rel * float(grads[n].abs().max())
            assert_within(tr.params[n] - before[n], -0.5 * grads[n], tol, f"first-order step of {n}")
            assert_moves(tr.params[n], before[n], tol, f"the step of {n}")
        assert hybrid.backward_rows == len(exp.train) and hybrid.forward_rows == 3 * len(exp.train)


def test_forward_gradient_through_prompt_tensors_equals_autograd(llama_exp):
    from dflora_core.baselines._common import batch_loss_terms, make_loss
    from dflora_core.baselines.zeroth_order import directional_derivative, directions
    from dflora_core.baselines.zo_schemes import trainable

    with trainable(llama_exp, "prefix") as tr:
        exp, loss_fn = tr.exp, make_loss("ce")
        for p in tr.params.values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
        tangents = [z for _p, z in directions(tr.params, 7)]
        loss, d = directional_derivative(exp, tr.params, tangents, exp.train, loss_fn, swap=tr.swap)
        for p in tr.params.values():
            p.requires_grad_(True)
        total = 0.0
        for w, chunk in batch_loss_terms(exp, exp.train, loss_fn):
            (chunk * w).backward()
            total += float(chunk.detach()) * w
        expected = sum(float((p.grad * v).sum()) for p, v in zip(tr.params.values(), tangents, strict=True))
        terms = sum(float((p.grad * v).abs().sum()) for p, v in zip(tr.params.values(), tangents, strict=True))
        assert_derivatives_agree(exp, loss, total, d, expected, terms, sum(p.numel() for p in tr.params.values()))


# -- nevergrad and separable CMA-ES as per-layer optimizers ---------------------------------------------
def drive(opt, fn, budget: int):
    asked = []
    while opt.evaluations < budget:
        x = opt.ask()
        asked.append(x)
        opt.tell(x, fn(x))
    return asked


@pytest.mark.parametrize("name", ["ng:DiagonalCMA", "ng:TBPSA", "cmaes-diag"])
def test_diagonal_and_nevergrad_optimizers_beat_random_search_at_equal_evaluations(name):
    pytest.importorskip("nevergrad")
    from dflora_core.optim import make_optimizer
    from dflora_core.optim.testfunctions import sphere

    shift = np.random.default_rng(3).uniform(-2, 2, 30)

    def fn(x):
        return sphere(x, shift)

    found = {}
    for n in (name, "random"):
        opt = make_optimizer(n, 30, popsize=10, seed=4, max_evaluations=600)
        drive(opt, fn, 600)
        found[n] = opt.best_f
    assert found[name] < 0.5 * found["random"]


def test_nevergrad_optimizer_resumes_to_the_same_trajectory_and_leaves_global_state_alone():
    pytest.importorskip("nevergrad")
    from dflora_core.optim import Optimizer, join_state, make_optimizer, split_state
    from dflora_core.optim.testfunctions import rastrigin

    np.random.seed(123)
    outside = np.random.get_state()[1].copy()
    whole = make_optimizer("ng:TwoPointsDE", 6, popsize=6, seed=9, max_evaluations=120)
    full = drive(whole, rastrigin, 120)
    assert np.array_equal(np.random.get_state()[1], outside)  # the caller's global state is untouched
    part = make_optimizer("ng:TwoPointsDE", 6, popsize=6, seed=9, max_evaluations=120)
    first = drive(part, rastrigin, 60)
    meta, arrays = split_state(part.state_dict())
    resumed = Optimizer.from_state(join_state(json.loads(json.dumps(meta)), arrays))
    rest = drive(resumed, rastrigin, 120)
    assert all(np.array_equal(a, b) for a, b in zip(first + rest, full, strict=True))
    tampered = part.state_dict()
    tampered["fitness"] = tampered["fitness"][::-1].copy()  # other told values: other decisions
    with pytest.raises(OptimizerStateError) as err:
        Optimizer.from_state(tampered)
    assert "\n" not in str(err.value) and "does not replay" in str(err.value)


def test_layerwise_run_with_a_nevergrad_optimizer_resumes_identically(tiny_models, tmp_path):
    pytest.importorskip("nevergrad")
    from dflora_core.runner import run

    cfg = tiny_cfg("c-lora", **{"optim.name": "ng:TBPSA", "search.budget": 40, "search.checkpoint_every": 1,
                                "lowrank.alpha": 1.0})  # fmt: skip
    a = run(cfg, out=tmp_path / "a", loaded=tiny_models["tiny-llama"])
    assert a["optimizer"] == "ng:TBPSA" and a["config"]["optim"]["name"] == "ng:TBPSA"

    def stop(search, gen):
        if search.generation == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=tmp_path / "b", loaded=tiny_models["tiny-llama"], on_generation=stop)
    b = run(cfg, out=tmp_path / "b", loaded=tiny_models["tiny-llama"], resume=True)
    assert b["calls"] == a["calls"] and b["final_train_fitness"] == a["final_train_fitness"]
    assert b["best_dev"] == a["best_dev"]


# -- every new method learns on a tiny model ----------------------------------------------------------
LEARNS = [
    ("zo-sgd-mmt", {"baseline.lr": 1e-2}),
    ("zo-sgd-cons", {"baseline.lr": 1e-2, "search.budget": 30}),
    ("es-full", {"baseline.lr": 0.05, "baseline.es_sigma": 0.01, "baseline.es_population": 4, "search.budget": 24}),
    ("c-lora-diag", {"search.budget": 60, "lowrank.alpha": 1.0, "lowrank.intrinsic_dim": 24, "optim.popsize": 6}),
    ("ng-lora", {"search.budget": 60, "lowrank.alpha": 1.0, "lowrank.intrinsic_dim": 24, "optim.popsize": 6}),
    ("zo-sgd", {"baseline.zo_params": "prompt", "baseline.lr": 0.05, "baseline.zo_eps": 0.01}),
    ("zo-adam", {"baseline.zo_params": "prefix", "baseline.lr": 5e-3, "baseline.zo_eps": 0.01}),
    ("forward-grad", {"baseline.zo_params": "prefix", "baseline.lr": 0.05}),
    ("zo-sgd-mmt", {"baseline.zo_block": True, "baseline.lr": 1e-2}),
    ("zo-sgd", {"baseline.zo_hybrid_layers": 1, "baseline.lr": 1e-2}),
    ("zo-sgd", {"baseline.zo_sparsity": 0.5, "baseline.lr": 1e-2}),
]


@pytest.mark.parametrize("method, changes", LEARNS, ids=[f"{m}-{'-'.join(c)}" for m, c in LEARNS])
def test_new_method_lowers_the_train_loss_and_records_its_budget(tiny_models, tmp_path, method, changes):
    if METHODS[method].family == "zeroth-order":
        pytest.importorskip("peft")
    if method == "ng-lora":
        pytest.importorskip("nevergrad")
    from dflora_core.baselines import plan_budget
    from dflora_core.runner import run

    loaded = tiny_models["tiny-llama"]
    digest = float(sum(p.double().abs().sum() for p in loaded.model.state_dict().values()))
    cfg = tiny_cfg(method, **changes)
    rec = run(cfg, out=tmp_path, loaded=loaded)
    history = json.loads((tmp_path / "history.json").read_text())
    for key in ("calls", "forward_passes", "backward_passes", "params_optimised", "params_stored", "wall_s"):
        assert rec[key] is not None and rec[key] >= 0, key
    assert rec["peak_mem_bytes"] > 0 and rec["params_optimised"] > 0 and rec["calls"] <= cfg.search.budget + 1e-9
    if METHODS[method].family == "dfo-lora":
        # elitist: an accepted generation lowered the fitness of the whole configuration below the start
        assert any(h["accepted"] for h in history)
        assert rec["final_train_fitness"] == min(h["config_fitness"] for h in history)
        assert rec["optimizer"] == METHODS[method].optimizer
    else:
        assert history[-1]["loss"] < history[0]["loss"]
        plan = plan_budget(cfg, rec["budget_plan"]["train_size"])
        assert rec["forward_passes"] == rec["steps"] * plan.batch_size * plan.forwards_per_step
        assert rec["backward_passes"] == rec["steps"] * plan.batch_size * plan.backwards_per_step
        assert rec["calls"] == pytest.approx(rec["steps"] * plan.cost_per_step)
    after = float(sum(p.double().abs().sum() for p in loaded.model.state_dict().values()))
    assert after == pytest.approx(digest, rel=0, abs=0)  # the shared model is left as it was


def test_budget_of_the_new_steps():
    from dflora_core.baselines import plan_budget

    def steps(method, **b):
        cfg = RunConfig(method=method).replace(**{"search.budget": 300, **{f"baseline.{k}": v for k, v in b.items()}})
        return plan_budget(cfg, 32).steps

    assert steps("zo-sgd-mmt") == 150 and steps("zo-sgd-cons") == 60
    assert steps("es-full") == 10 and steps("es-full", es_population=10) == 30
    assert steps("zo-sgd", zo_hybrid_layers=2) == 100  # 3 forwards (+ the backward, free under "forward")
    assert steps("zo-sgd", zo_hybrid_layers=2, budget_match="compute") == 60  # 3 + 2
    assert steps("zo-sgd", zo_block=True) == steps("zo-sgd", zo_sparsity=0.9) == 150


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, change, field",
    [
        ("zo-sgd-mmt", {"baseline": {"zo_momentum": 1.0}}, "baseline.zo_momentum"),
        ("zo-sgd", {"baseline": {"zo_params": "adapter"}}, "baseline.zo_params"),
        ("zo-sgd", {"baseline": {"zo_hybrid_layers": -1}}, "baseline.zo_hybrid_layers"),
        ("zo-sgd", {"baseline": {"zo_hybrid_layers": 30}}, "baseline.zo_hybrid_layers"),
        ("zo-sgd", {"baseline": {"zo_hybrid_layers": 1, "zo_params": "prompt"}}, "baseline.zo_hybrid_layers"),
        ("zo-sgd", {"baseline": {"zo_hybrid_layers": 2, "zo_params": "prefix", "prompt_layers": [0, 1]}},
         "baseline.zo_hybrid_layers"),
        ("forward-grad", {"baseline": {"zo_hybrid_layers": 1}}, "baseline.zo_hybrid_layers"),
        ("zo-sgd", {"baseline": {"zo_hybrid_layers": 1}, "search": {"loss": "neg_metric"}}, "search.loss"),
        ("zo-sgd", {"baseline": {"zo_sparsity": 1.0}}, "baseline.zo_sparsity"),
        ("zo-sgd", {"baseline": {"zo_block": "sometimes"}}, "baseline.zo_block"),
        ("es-full", {"baseline": {"es_population": 1}}, "baseline.es_population"),
        ("es-full", {"baseline": {"es_sigma": 0}}, "baseline.es_sigma"),
        ("es-full", {"baseline": {"zo_block": True}}, "baseline.zo_block"),
        ("es-full", {"baseline": {"zo_params": "prefix"}}, "baseline.zo_params"),
        ("c-lora", {"optim": {"name": "adam"}}, "optim.name"),
        ("c-lora", {"optim": {"name": "ng:NoSuchOptimizer"}}, "optim.name"),
        ("zo-sgd", {"optim": {"name": "cmaes"}}, "optim.name"),
    ],
)
def test_bad_zoo_settings_name_their_field(method, change, field):
    if "ng:" in str(change):
        pytest.importorskip("nevergrad")
    with pytest.raises(ConfigError) as err:
        validate(from_dict({"method": method, **change}), num_layers=30, model_type="llama")
    assert err.value.field == field


def test_new_methods_are_listed_and_validate_with_their_defaults():
    from dflora_core.config import field_docs
    from dflora_core.identity import identity_fields

    docs = field_docs()
    for name in ("zo_momentum", "zo_block", "zo_hybrid_layers", "zo_sparsity", "es_population", "es_sigma"):
        assert f"BaselineConfig.{name}" in docs
    assert "OptimConfig.name" in docs
    for m in NEW_METHODS:
        assert METHODS[m].description and "\n" not in METHODS[m].description
        validate(RunConfig(method=m), num_layers=30, model_type="llama")
    validate(RunConfig(method="c-lora").replace(**{"optim.name": "cmaes-diag"}), num_layers=30, model_type="llama")
    assert identity_fields(RunConfig().replace(**{"optim.name": "ng:NGOpt"})) == {"optim.name": "ng:NGOpt"}
    assert identity_fields(RunConfig()) == {}  # the new fields' defaults leave every old run's identity alone
