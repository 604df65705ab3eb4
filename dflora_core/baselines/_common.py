"""What the peer methods share: budget accounting, differentiable scoring and the step loop.

Budget accounting (docs/baselines.md). The common currency is the paper's "API call", one
fitness evaluation = one forward pass over the whole few-shot train set (N examples). A
method that takes steps on batches of B examples is given

    steps = floor(search.budget * N / (B * cost_per_step))

where ``cost_per_step`` counts forward passes per step (``budget_match="forward"``, the
default: ZO-SGD = 2, conservative ZO-SGD = 5, ES = its population, gradient = 1, forward
gradient = 1, hybrid ZO/FO one more) or forward-pass equivalents of
compute (``"compute"``: a backward or a Jacobian-vector product counts as 2 forwards, so a
gradient step = 3, forward gradient = 2). ``baseline.steps`` overrides the mapping. Dev
evaluations are not charged, as in the DFO loop, and happen every ``search.eval_every``
calls of spent budget. ``forward_passes``/``backward_passes`` in the records count example
sequences pushed through the model during the search (dev/test scoring excluded), the same
unit as the DFO methods' ``forward_passes``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..config import RunConfig
from ..errors import DfloraError
from ..experiment import Experiment
from ..methods import RunContext
from ..metrics import losses
from ..models.scoring import EncodedSet, autocast, body_forward
from ..search.selection import DevSelection, TestCheckpoints
from ..seeds import generator

# per step and per example of the batch: (forward passes, backward passes, jvp passes)
STEP_COST = {
    "lora": (1, 1, 0),
    "ft": (1, 1, 0),
    "zo-sgd": (2, 0, 0),
    "zo-sgd-sign": (2, 0, 0),
    "zo-adam": (2, 0, 0),
    "zo-sgd-mmt": (2, 0, 0),
    "zo-sgd-cons": (5, 0, 0),  # the two-point estimate, then L(theta), L(theta - lr e), L(theta + lr e)
    "forward-grad": (1, 0, 1),  # the jvp is the forward pass, carrying a tangent
    "es-full": (1, 0, 0),  # per population member: x baseline.es_population (step_passes)
    "mezo-gv": (2, 0, 0),  # the two-point step along the guide, + baseline.zo_pool for the pool (step_passes)
    "mezo-greedy": (1, 0, 0),  # the other side of the best perturbation, + the pool
    "fzoo": (1, 0, 0),  # L(theta), + the pool of one-sided perturbations
    "lozo": (2, 0, 0),
    "lozo-m": (2, 0, 0),
}
POOL_COST = ("mezo-gv", "mezo-greedy", "fzoo")  # + baseline.zo_pool forwards per step
SPSA_METHODS = ("zo-sgd", "zo-sgd-sign", "zo-adam", "zo-sgd-mmt", "zo-sgd-cons")  # two-point ZO estimates
HYBRID_COST = (1, 1, 0)  # hybrid ZO/FO: + one forward and one backward of the batch for the top layers' gradient
BACKWARD_COST = 2.0  # forward-pass equivalents of one backward pass ("compute" matching)
JVP_EXTRA_COST = 1.0  # a jvp = its forward + about one more forward for the tangent


# -- budgets ----------------------------------------------------------------------------------------
@dataclass
class BudgetPlan:
    """How a budget of fitness evaluations becomes steps for a step-based method."""

    method: str
    budget_calls: int  # search.budget
    match: str  # forward | compute
    train_size: int  # N: one call = one forward over these examples
    batch_size: int  # B: examples per step
    forwards_per_step: int  # per example of the batch
    backwards_per_step: int
    jvps_per_step: int
    cost_per_step: float  # in calls (fitness-evaluation equivalents)
    steps: int
    steps_from: str  # "budget" or "baseline.steps"

    def as_dict(self) -> dict:
        return asdict(self)


def step_passes(cfg: RunConfig) -> tuple[int, int, int]:
    """(forward, backward, jvp) passes per example of one step of ``cfg``'s method, options included."""
    f, b, j = STEP_COST[cfg.method]
    if cfg.method == "es-full":
        f *= cfg.baseline.es_population
    if cfg.method in POOL_COST:
        f += cfg.baseline.zo_pool
    if cfg.method in SPSA_METHODS and cfg.baseline.zo_hybrid_layers:
        f, b, j = f + HYBRID_COST[0], b + HYBRID_COST[1], j + HYBRID_COST[2]
    return f, b, j


def step_cost(passes: tuple[int, int, int], match: str) -> float:
    """Forward-pass equivalents per example of one step."""
    f, b, j = passes
    if match == "forward":
        return float(f)
    return f + BACKWARD_COST * b + JVP_EXTRA_COST * j


def plan_budget(cfg: RunConfig, train_size: int) -> BudgetPlan:
    b = cfg.baseline
    batch = min(b.batch_size or train_size, train_size)
    f, bw, j = step_passes(cfg)
    per_example = step_cost((f, bw, j), b.budget_match)
    cost = per_example * batch / train_size
    if b.steps is not None:
        steps, source = b.steps, "baseline.steps"
    else:
        steps, source = max(1, int(math.floor(cfg.search.budget / cost + 1e-9))), "budget"
    return BudgetPlan(cfg.method, cfg.search.budget, b.budget_match, train_size, batch, f, bw, j, cost, steps, source)


# -- encoded sets -------------------------------------------------------------------------------------
def subset(data: EncodedSet, index) -> EncodedSet:
    """The examples ``index`` of an encoded set (labels follow)."""
    idx = [int(i) for i in index]
    return EncodedSet([data.ids[i] for i in idx], [data.positions[i] for i in idx], data.labels[idx], data.pad_id, 0)


def max_positions(model) -> int | None:
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if n is None:
        return None
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2  # RoBERTa's positions start after the padding index
    return int(n)


def leading_specials(tokenizer) -> int:
    """Number of special tokens the tokenizer puts before the text (<s> for RoBERTa, 0 for SmolLM2)."""
    with_sp = tokenizer("great movie").input_ids
    plain = tokenizer("great movie", add_special_tokens=False).input_ids
    for lead in range(len(with_sp) - len(plain) + 1):
        if with_sp[lead : lead + len(plain)] == plain:
            return lead
    return 0


# -- differentiable scoring -------------------------------------------------------------------------
def batch_loss_terms(exp: Experiment, data: EncodedSet, loss_fn: Callable, head=None):
    """Yield (chunk weight, loss of the chunk) over the token-budget chunks of ``data`` (grad enabled).

    The chunk losses are means; weights (chunk size / N) make their weighted sum the loss of the set.
    """
    loaded = exp.loaded
    n = len(data)
    for batch in data.batches(exp.max_tokens, loaded.device):
        with autocast(loaded.device, exp.dtype):
            hidden = body_forward(loaded.model, batch.input_ids, batch.attention_mask).last_hidden_state
            picked = hidden[torch.arange(len(batch.positions), device=hidden.device), batch.positions]
            logits = (head or exp.head)(picked).float()
        yield len(batch.index) / n, loss_fn(logits, data.labels[batch.index.cpu()].to(logits.device))


def make_loss(kind: str, metric: str = "accuracy") -> Callable:
    """Mean loss over a [n, C] logits block (the fitness of the DFO methods, differentiable for ce/hinge)."""

    def fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return losses(logits.unsqueeze(0), labels, kind, metric)[0]

    return fn


# -- the step loop -------------------------------------------------------------------------------------
class StepMethod:
    """One method that takes steps on the trainable tensors (gradient, zeroth order, forward gradient).

    Subclasses implement ``step(batch: EncodedSet) -> float`` (the train loss seen) and keep
    their own optimizer state in ``opt_state()`` / ``load_opt_state``. ``history`` and ``dev_curve``
    are the rows of the run in progress (``run_steps`` keeps them), read by callbacks as a search's.
    """

    def __init__(self, exp: Experiment, params: dict[str, torch.Tensor], lr: float):
        self.exp, self.params, self.lr = exp, params, lr
        self.forward_rows = 0
        self.backward_rows = 0
        self.jvp_rows = 0
        self.history: list[dict] = []
        self.dev_curve: list[dict] = []

    def step(self, batch: EncodedSet, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def opt_state(self) -> dict:
        return {}

    def load_opt_state(self, state: dict) -> None:
        pass

    def refresh(self) -> None:
        """Called before dev/test scoring (full fine-tuning rebuilds the verbalizer head)."""


CHECKPOINT_MAX_NUMEL = 50_000_000  # checkpoint trainable tensors up to 200 MB (fp32); full FT restarts instead


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in params.items()}


def restore(params: dict[str, torch.Tensor], snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(snap[k].to(v.device))


def run_steps(method: StepMethod, exp: Experiment, ctx: RunContext) -> dict:
    """Take the planned steps with dev-based model selection; leaves the best-dev state installed.

    Callbacks: ``on_start(method)`` once (after a resume), ``on_step(method, row)`` after every step
    and its dev evaluations (``row``: the step's history row), ``on_eval(method, row)`` per dev row.
    """
    cfg = exp.cfg
    plan = plan_budget(cfg, len(exp.train))
    rng = generator(cfg.seed, "step_order", scheme=cfg.seed_scheme)
    numel = sum(p.numel() for p in method.params.values())
    selection = DevSelection(cfg.search.patience)
    tests = TestCheckpoints(cfg.search.test_at)
    state = {
        "step": 0,
        "calls": 0.0,
        "next_eval": float(cfg.search.eval_every),
        "best_step": None,
        "history": [],
        "order": [],
        "seconds": 0.0,
    }
    best = None
    ckpt = ctx.load_checkpoint()
    if ckpt is not None and ckpt.get("kind") == "steps" and ckpt.get("plan") == plan.as_dict():
        with ctx.restoring():
            restore(method.params, ckpt["params"])
            method.load_opt_state(ckpt["opt"])
            method.forward_rows, method.backward_rows, method.jvp_rows = ckpt["rows"]
            rng.bit_generator.state = ckpt["rng"]
            state, best = ckpt["state"], ckpt["best"]
            selection.load_state_dict(ckpt["selection"])
            tests.load_state_dict(ckpt["tests"])
    method.history, method.dev_curve = state["history"], selection.curve  # the lists the run appends to
    on_eval, on_step = ctx.callback("on_eval"), ctx.callback("on_step")

    def evaluate_dev() -> None:
        nonlocal best
        method.refresh()
        res = exp.evaluate(exp.dev)
        row = {"calls": state["calls"], "step": state["step"], **res.as_dict(), "selected": False}
        if selection.offer(row):
            state["best_step"] = state["step"]
            best = snapshot(method.params)
        if on_eval is not None:
            on_eval(method, row)

    def test_snapshot(target: int) -> None:
        """Accuracy against calls: the dev-selected state's test metric now (not charged)."""
        current = snapshot(method.params)
        if best is not None:
            restore(method.params, best)
        method.refresh()
        tests.record(target, state["calls"], selection.best, exp.evaluate(exp.test_set).as_dict())
        restore(method.params, current)
        method.refresh()

    def save() -> None:
        if ctx.path is None or numel > CHECKPOINT_MAX_NUMEL:
            return
        ctx.save_checkpoint({
            "kind": "steps", "plan": plan.as_dict(), "params": snapshot(method.params), "opt": method.opt_state(),
            "rows": (method.forward_rows, method.backward_rows, method.jvp_rows), "rng": rng.bit_generator.state,
            "state": copy.deepcopy(state), "best": best, "selection": selection.state_dict(), "tests": tests.state_dict(),
        })  # fmt: skip

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.steps, initial=state["step"], disable=not cfg.progress, unit="step", desc=cfg.method)
    start = ctx.callback("on_start")
    if start is not None:
        start(method)
    try:
        if state["step"] == 0 and not selection.curve and cfg.search.select_start:
            evaluate_dev()
        while state["step"] < plan.steps:
            if not state["order"]:
                perm = rng.permutation(len(exp.train))
                state["order"] = perm.tolist()
            take, state["order"] = state["order"][: plan.batch_size], state["order"][plan.batch_size :]
            if len(take) < plan.batch_size:  # epoch boundary: top up from a fresh permutation
                perm = rng.permutation(len(exp.train)).tolist()
                perm = [i for i in perm if i not in take]
                need = plan.batch_size - len(take)
                take, state["order"] = take + perm[:need], perm[need:]
            t0 = time.perf_counter()
            loss = method.step(subset(exp.train, take), state["step"])
            seconds = time.perf_counter() - t0
            state["seconds"] += seconds
            state["step"] += 1
            state["calls"] += plan.cost_per_step
            row = {"step": state["step"], "calls": state["calls"], "loss": loss, "seconds": seconds,
                   "forward_passes": method.forward_rows, "backward_passes": method.backward_rows}  # fmt: skip
            state["history"].append(row)
            if not math.isfinite(loss):
                raise DfloraError(f"{cfg.method}: the train loss became {loss} at step {state['step']}; lower the lr")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            evaluated = False
            while state["calls"] >= state["next_eval"] - 1e-9:
                state["next_eval"] += cfg.search.eval_every
                if not evaluated:
                    evaluate_dev()
                    evaluated = True
                    save()
            due = tests.due(state["calls"])
            fresh = not selection.curve or selection.curve[-1]["step"] != state["step"]
            if due and fresh and cfg.search.dev_rule == "periodic+final":
                evaluate_dev()  # a test_at point selects among everything up to this step
            for target in due:
                test_snapshot(target)
            if on_step is not None:  # after the step's dev evaluations, as a search's on_generation
                on_step(method, row)
            if selection.out_of_patience(state["calls"]):
                break
        if not selection.curve or selection.curve[-1]["step"] != state["step"]:
            evaluate_dev()  # the final state is a selection candidate too
    finally:
        bar.close()
    save()
    if best is not None:
        restore(method.params, best)
    method.refresh()
    for target in tests.rest():  # beyond the calls the budget could pay: the final selection
        tests.record(target, state["calls"], selection.best, exp.evaluate(exp.test_set).as_dict())
    ctx.write_json("dev_curve.json", selection.curve)
    ctx.write_json("history.json", state["history"])
    stopped = "budget" if state["step"] >= plan.steps else "patience"
    selected_start = state["best_step"] == 0
    return {
        "calls": state["calls"],
        "steps": state["step"],
        "stopped": stopped,
        "budget_plan": plan.as_dict(),
        "best_dev": selection.best,
        "best_step": state["best_step"],
        "selected_start": selected_start,
        "forward_passes": method.forward_rows,
        "backward_passes": method.backward_rows,
        "jvp_passes": method.jvp_rows,
        "fitness_seconds": state["seconds"],
        "final_train_loss": state["history"][-1]["loss"] if state["history"] else None,
        "dev_curve": selection.curve,
        "test_curve": tests.rows,
    }


@contextlib.contextmanager
def no_grad_params(params: dict[str, torch.Tensor]):
    """Trainable tensors without autograd tracking (zeroth-order updates in place)."""
    flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])
