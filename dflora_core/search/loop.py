"""The layer-wise derivative-free search (docs/design.md §1, Algorithm 1 as released).

One optimizer per transformer layer, each starting at z = 0. A round visits the layers
bottom to top; at each layer one generation: ask a population, score every candidate with
the other layers held at their current update (all candidates in one forward pass), tell
the fitnesses, then fix the layer's update:
- "elitist": the generation's best, only if it lowers the fitness of the whole current
  configuration. Exact, because every candidate was scored with the other layers as they
  are, so the configuration's fitness descends monotonically (docs/design.md §6).
- "released": the layer's best-ever z (the authors' code), whose fitness was measured while
  the other layers were different, so the combined fitness is not monotone.
The budget counts fitness evaluations (one candidate on the whole few-shot train set).
Every ``eval_every`` calls the dev set is scored and the best-dev snapshot of all layers is
kept; the test score uses that snapshot. Under ``search.dev_rule = "periodic+final"`` (the
default) dev is also scored on the final state and at every ``search.test_at`` call, so the
end of a run can be selected and a test_at point is the selection of a run stopped there. Checkpoints make a run resumable with the same
result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..errors import DfloraError
from ..experiment import EvalResult, Experiment
from ..lowrank.adapter import LayerAdapter
from ..lowrank.build import build_adapter, measure_scales
from ..lowrank.population import PopulationEvaluator
from ..methods import RunContext, get
from ..metrics import fit_label_bias, losses
from ..optim import make_optimizer
from ..seeds import derive
from . import calibration
from .schedule import make_schedule
from .selection import DevSelection, TestCheckpoints

CHECKPOINT_VERSION = 2  # 2: code-free statefile (JSON + arrays), optimizer states replayed


@dataclass
class Generation:
    """One row of the history: what one generation at one layer did."""

    generation: int
    round: int
    layer: int
    calls: int  # fitness evaluations spent so far, this generation included
    n: int  # candidates evaluated
    best: float  # best fitness of the generation (finite values only)
    mean: float
    worst: float
    n_nonfinite: int
    step_size: float  # optimizer scale after the tell (CMA-ES sigma, mean firework amplitude)
    layer_best: float  # the layer optimizer's best-ever fitness
    accepted: bool  # the layer's update changed
    config_fitness: float | None  # fitness of the whole current configuration (elitist: exact)
    seconds: float  # wall time of the fitness evaluations
    forward_passes: int | None = None  # example sequences through the model so far (None: rows before it was kept)


class LayerwiseSearch:
    """C-LoRA / F-LoRA and their control arms, driven generation by generation (ask/tell)."""

    def __init__(
        self,
        exp: Experiment,
        ctx: RunContext | None = None,
        on_generation: Callable[[LayerwiseSearch, Generation], None] | None = None,
        on_eval: Callable[[LayerwiseSearch, dict], None] | None = None,
        optimizer: str | None = None,
        adapter: LayerAdapter | None = None,
        train=None,
    ):
        cfg: RunConfig = exp.cfg
        self.exp, self.cfg = exp, cfg
        self.ctx = ctx if ctx is not None else RunContext()
        self.on_generation, self.on_eval = on_generation, on_eval
        self.optimizer_name = optimizer or cfg.optim.name or get(cfg.method).optimizer  # optim.name: --optimizer
        self.train = train if train is not None else exp.train  # prompts may be rewritten by the adapter
        lr = cfg.lowrank
        self.layer_stats, self.layer_std = measure_scales(exp.loaded, self.train, lr, exp.max_tokens)
        if adapter is None:
            adapter = build_adapter(exp.loaded, lr, cfg.seed, cfg.optim.sigma, self.layer_std, cfg.seed_scheme)
        self.adapter = adapter
        self.num_layers = self.adapter.num_layers
        self.evaluator = PopulationEvaluator(
            exp.loaded, exp.head, self.adapter, self.train, exp.dtype, exp.max_tokens, cfg.search.prefix_reuse
        )
        self.optimizers = [self._make_optimizer(layer) for layer in range(self.num_layers)]
        d = self.adapter.dim
        self.z = np.zeros((self.num_layers, d))
        self.z_best_dev = self.z.copy()
        self.current_fitness: float | None = None
        self.start_fitness: float | None = None  # the configuration's train loss at z = 0
        self.calls = 0
        self.generation = 0
        self.layer = 0
        self.round = 0
        self.history: list[Generation] = []
        self.selection = DevSelection(cfg.search.patience)
        s = cfg.search
        self.schedule = make_schedule(s.schedule, self.num_layers, s.generations_per_visit, s.bandit_exploration)
        self.tests = TestCheckpoints(s.test_at)
        self.label_bias = self.bias_best_dev = None  # calibrated logits: the train-fitted label bias
        self.scale_calibration: dict | None = None
        if lr.scale_calibration == "output" and hasattr(self.adapter, "projection"):
            self.scale_calibration = calibration.output_rule(self)
        self.next_eval = cfg.search.eval_every
        self.nonfinite = 0
        self.fitness_seconds = 0.0
        self.stopped: str | None = None
        self._consistent = True
        self._checked_reuse = not cfg.search.prefix_reuse

    # -- set-up ----------------------------------------------------------------------------
    def _make_optimizer(self, layer: int):
        op = self.cfg.optim
        options: dict[str, Any] = {}
        if op.fireworks is not None:
            options["n_fireworks"] = op.fireworks
        if op.sparks is not None:
            options["sparks_per_firework"] = op.sparks
        return make_optimizer(
            self.optimizer_name,
            self.adapter.dim,
            sigma=op.sigma,
            popsize=op.popsize,
            seed=derive(self.cfg.seed, "optimizer", layer, scheme=self.cfg.seed_scheme),
            max_evaluations=self.cfg.search.budget // self.num_layers,
            bounds=None if op.bounds is None else (-op.bounds, op.bounds),
            **options,
        )

    # -- fitness -----------------------------------------------------------------------------
    def fitness(self, layer: int, X: np.ndarray) -> np.ndarray:
        """Fitness of candidates X [n, d] for ``layer``, other layers as they are; NaN/inf -> +inf."""
        return self._scored(layer, X)[0]

    def _scored(self, layer: int, X: np.ndarray):
        t0 = time.perf_counter()
        logits = self.evaluator.logits(layer, X)
        f = self._loss(logits)
        self.fitness_seconds += time.perf_counter() - t0
        bad = ~np.isfinite(f)
        if bad.any():
            self.nonfinite += int(bad.sum())
            f[bad] = np.inf  # the worst value: never accepted, ranked last by the optimizer
        return f, logits

    def _loss(self, logits) -> np.ndarray:
        return losses(logits, self.train.labels, self.cfg.search.loss, self.exp.task.metric).double().numpy()

    def _refit_bias(self, logits) -> float:
        """Calibrated logits: refit the label bias on the train logits of the configuration; its new fitness."""
        delta = fit_label_bias(logits, self.train.labels)
        self.label_bias = delta if self.label_bias is None else self.label_bias + delta
        self.exp.head.label_bias = self.label_bias
        return float(self._loss((logits + delta).unsqueeze(0))[0])

    def reference_fitness(self) -> float:
        """Fitness of the current configuration (elitist: known; else one call at z = 0 of layer 0)."""
        if self.current_fitness is None:
            self.calls += 1
            return float(self.fitness(0, np.zeros((1, self.adapter.dim)))[0])
        return self.current_fitness

    def _apply(self, layer: int) -> None:
        self.adapter.set_z(layer, self.z[layer])

    def _apply_all(self, z: np.ndarray) -> None:
        for layer in range(self.num_layers):
            self.adapter.set_z(layer, z[layer])

    # -- one generation -----------------------------------------------------------------------
    @property
    def budget(self) -> int:
        return self.cfg.search.budget

    @property
    def done(self) -> bool:
        return self.stopped is not None or self.calls >= self.budget

    def start(self) -> None:
        """Score the starting point (z = 0) on train (elitist reference) and dev (selection)."""
        if self.current_fitness is None and self.cfg.search.acceptance == "elitist":
            f, logits = self._scored(0, np.zeros((1, self.adapter.dim)))
            self.calls += 1
            self.current_fitness = self._refit_bias(logits[0]) if self.cfg.search.calibrated_logits else float(f[0])
            self.start_fitness = self.current_fitness
        if self.cfg.lowrank.scale_calibration == "fitness" and self.scale_calibration is None:
            self.scale_calibration = calibration.fitness_rule(self)
            self.calls += self.scale_calibration["calls"]
        if self.best_dev is None and self.cfg.search.select_start:
            self.evaluate_dev()

    def step(self) -> Generation | None:
        """Run one generation at the current layer; None when the budget cannot pay for it."""
        if self.done:
            return None
        if not self._checked_reuse:
            self._check_prefix_reuse()
        layer = self.layer = self.schedule.next_layer()
        opt = self.optimizers[layer]
        before = self.current_fitness
        self._consistent = False
        X = opt.ask()
        if self.calls + len(X) > self.budget:
            self.stopped = "budget"
            self._consistent = True
            return None
        t0 = time.perf_counter()
        f, logits = self._scored(layer, X)
        opt.tell(X, f)
        self.calls += len(X)
        accepted = self._accept(layer, X, f, logits)
        finite = f[np.isfinite(f)]
        gen = Generation(
            generation=self.generation,
            round=self.round,
            layer=layer,
            calls=self.calls,
            n=len(X),
            best=float(finite.min()) if finite.size else math.inf,
            mean=float(finite.mean()) if finite.size else math.inf,
            worst=float(finite.max()) if finite.size else math.inf,
            n_nonfinite=int((~np.isfinite(f)).sum()),
            step_size=float(opt.step_size),
            layer_best=float(opt.best_f),
            accepted=accepted,
            config_fitness=self.current_fitness,
            seconds=time.perf_counter() - t0,
            forward_passes=self.evaluator.forward_rows,
        )
        self.history.append(gen)
        self.generation += 1
        decrease = before - self.current_fitness if before is not None else 0.0
        self.schedule.update(layer, decrease, len(X))
        self.layer, self.round = self.schedule.next_layer(), self.schedule.round
        while self.calls >= self.next_eval:
            self.next_eval += self.cfg.search.eval_every
            self.evaluate_dev()
        due = self.tests.due(self.calls)
        if due:
            self.score_dev_now()  # a test_at point selects among everything up to this call
        for target in due:
            self.test_snapshot(target)
        self._consistent = True
        if self.on_generation:
            self.on_generation(self, gen)
        if self.generation % self.cfg.search.checkpoint_every == 0:
            self.save_checkpoint()
        return gen

    def _accept(self, layer: int, X: np.ndarray, f: np.ndarray, logits) -> bool:
        if self.cfg.search.acceptance == "elitist":
            i = int(np.argmin(f))
            if np.isfinite(f[i]) and f[i] < self.current_fitness:
                self.z[layer] = X[i]
                self.current_fitness = float(f[i])
                self._apply(layer)
                if self.cfg.search.calibrated_logits:
                    self.current_fitness = self._refit_bias(logits[i])
                return True
            return False
        best = np.asarray(self.optimizers[layer].best_x, dtype=float)
        changed = not np.array_equal(best, self.z[layer])
        self.z[layer] = best
        self._apply(layer)
        return changed

    def _check_prefix_reuse(self) -> None:
        """Check once, on a middle layer with small random updates, that replaying lower layers is exact.

        With one adapted layer that layer is checked (nothing is reused only when it is model layer 0).
        """
        self._checked_reuse = True
        layer = self.num_layers // 2
        gen = np.random.default_rng(0)
        X = gen.standard_normal((2, self.adapter.dim)) * self.cfg.optim.sigma
        atol = 1e-4 if self.exp.dtype is None else 5e-2
        self.evaluator.verify_prefix_reuse(layer, X, atol=atol)

    # -- dev evaluation and model selection ------------------------------------------------------
    @property
    def best_dev(self) -> dict | None:
        return self.selection.best

    @property
    def dev_curve(self) -> list[dict]:
        return self.selection.curve

    def score_dev_now(self) -> None:
        """Under the "periodic+final" rule, score dev on the current state unless it already was."""
        if self.cfg.search.dev_rule == "periodic+final" and (
            not self.dev_curve or self.dev_curve[-1]["calls"] != self.calls
        ):
            self.evaluate_dev()

    def finish(self) -> None:
        """The end of the search: the final state is a selection candidate ("periodic+final" rule)."""
        if self.done:
            self.score_dev_now()

    def evaluate_dev(self) -> dict:
        res: EvalResult = self.exp.evaluate(self.exp.dev)
        row = {"calls": self.calls, "generation": self.generation, **res.as_dict(), "selected": False}
        if self.selection.offer(row):
            self.z_best_dev, self.bias_best_dev = self.z.copy(), self.label_bias
        if self.selection.out_of_patience(self.calls):
            self.stopped = "patience"
        if self.on_eval:
            self.on_eval(self, row)
        return row

    # -- driving ------------------------------------------------------------------------------
    def run(self, generations: int | None = None, progress: bool | None = None) -> LayerwiseSearch:
        """Run until the budget is spent (or ``generations`` more generations); resumable."""
        from tqdm.auto import tqdm

        show = self.cfg.progress if progress is None else progress
        bar = tqdm(total=self.budget, initial=self.calls, disable=not show, unit="call", desc=self.cfg.method)
        try:
            self.start()
            count = 0
            while not self.done and (generations is None or count < generations):
                gen = self.step()
                if gen is None:
                    break
                count += 1
                bar.update(gen.n)
                bar.set_postfix(
                    layer=gen.layer,
                    cfg=f"{self.current_fitness or gen.layer_best:.4f}",
                    dev=f"{self.best_dev['value']:.3f}" if self.best_dev else "-",
                    refresh=False,
                )
        except BaseException:
            if self._consistent:
                self.save_checkpoint()  # an interrupt between generations loses nothing
            raise
        finally:
            bar.close()
        return self

    def use_best_dev(self) -> None:
        self._apply_all(self.z_best_dev)
        self.exp.head.label_bias = self.bias_best_dev

    def use_current(self) -> None:
        self._apply_all(self.z)
        self.exp.head.label_bias = self.label_bias

    def test_snapshot(self, target: int) -> dict:
        """Test metric of the dev-selected snapshot now (accuracy against calls; not charged)."""
        self.use_best_dev()
        res = self.exp.evaluate(self.exp.test_set).as_dict()
        self.use_current()
        return self.tests.record(target, self.calls, self.best_dev, res)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer_name,
            "z": self.z.copy(),
            "z_best_dev": self.z_best_dev.copy(),
            "current_fitness": self.current_fitness,
            "start_fitness": self.start_fitness,
            "calls": self.calls,
            "generation": self.generation,
            "layer": self.layer,
            "round": self.round,
            "history": [asdict(g) for g in self.history],
            "dev_curve": copy.deepcopy(self.selection.curve),
            "best_dev": copy.deepcopy(self.selection.best),
            "next_eval": self.next_eval,
            "nonfinite": self.nonfinite,
            "fitness_seconds": self.fitness_seconds,
            "forward_rows": self.evaluator.forward_rows,
            "stopped": self.stopped,
            "layer_std": list(self.layer_std),
            "prefix_reuse": self.evaluator.reuse_prefix,
            "checked_reuse": self._checked_reuse,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedule": self.schedule.state_dict(),
            "scale_calibration": self.scale_calibration,
            "label_bias": self.label_bias,
            "bias_best_dev": self.bias_best_dev,
            "tests": self.tests.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise DfloraError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        if not np.allclose(state["layer_std"], self.layer_std, rtol=1e-6, atol=0):
            raise DfloraError("checkpoint: the hidden-state statistics differ (different model or data?)")
        self.z = np.array(state["z"])
        self.z_best_dev = np.array(state["z_best_dev"])
        self.current_fitness, self.start_fitness = state["current_fitness"], state["start_fitness"]
        self.calls, self.generation = state["calls"], state["generation"]
        self.layer, self.round = state["layer"], state["round"]
        self.history = [Generation(**g) for g in state["history"]]
        self.selection.load_state_dict({"curve": state["dev_curve"], "best": state["best_dev"]})
        self.next_eval, self.nonfinite = state["next_eval"], state["nonfinite"]
        self.fitness_seconds = state["fitness_seconds"]
        self.evaluator.forward_rows = state["forward_rows"]
        self.evaluator.reuse_prefix = state["prefix_reuse"]
        self._checked_reuse = state["checked_reuse"]
        self.stopped = state["stopped"]
        if "wall_s" in state and not self.ctx.elapsed_before:  # written before the context kept the wall time
            self.ctx.elapsed_before = float(state["wall_s"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        self.schedule.load_state_dict(state["schedule"])
        self.tests.load_state_dict(state["tests"])
        if self.cfg.lowrank.scale_calibration == "fitness" and state["scale_calibration"] is not None:
            calibration.reapply(self, state["scale_calibration"])  # "output" was recomputed (deterministic)
        self.scale_calibration = state["scale_calibration"]
        self.label_bias, self.bias_best_dev = state["label_bias"], state["bias_best_dev"]
        self.use_current()

    def save_checkpoint(self) -> None:
        if self.ctx.path is None:
            return
        self.ctx.save_checkpoint(self.state_dict())
        self.ctx.write_json("history.json", [asdict(g) for g in self.history])
        self.ctx.write_json("dev_curve.json", self.dev_curve)

    def close(self) -> None:
        """Undo the adapter (the model is bit-identical to before the search) and the label bias."""
        self.adapter.remove()
        self.exp.head.label_bias = None
