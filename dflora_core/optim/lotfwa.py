"""Fireworks optimizers (LoTFWA, bare-bones FWA) and a random-search baseline, ask/tell, minimisation.

References
----------
- [LoT] J. Li, Y. Tan, "Loser-Out Tournament-Based Fireworks Algorithm for Multimodal
  Function Optimization", IEEE TEVC 22(5), 2018.
- [GFWA] J. Li, S. Zheng, Y. Tan, "The Effect of Information Utilization: Introducing a Novel
  Guiding Spark in the Fireworks Algorithm", IEEE TEVC 21(1), 2017 ("Guided FWA").
- [BBFWA] J. Li, Y. Tan, "The bare bones fireworks algorithm: A minimalist global optimizer",
  Applied Soft Computing 62, 2018.

The specification followed is DESIGN.md section 1 (F-LoRA); every equation below is cited
there as (S1) and in the papers. Decisions the specification leaves open are documented in the
class docstrings ("Decisions").

Implementation written from the papers and the specification; no code was copied.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["LoTFWA", "FWA", "RandomSearch", "guiding_delta", "loser_mask"]

_POS, _GUIDE, _SPARK = 0, 1, 2  # kinds of asked rows
KINDS = ("position", "guide", "spark")


# ---------------------------------------------------------------------------------------------
# helpers shared by the three classes
# ---------------------------------------------------------------------------------------------


def _as_start(dim: int, x0: np.ndarray | None) -> np.ndarray:
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise ConfigError("dim", f"must be a positive integer, got {dim!r}")
    if x0 is None:
        return np.zeros(int(dim))
    x = np.array(x0, dtype=np.float64).reshape(-1)
    if x.shape != (dim,):
        raise ConfigError("x0", f"must have shape ({dim},), got {np.shape(x0)}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("x0", "must be finite")
    return x


def _as_bounds(dim: int, bounds: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if bounds is None:
        return None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ConfigError("bounds", f"must be (lower, upper), got {bounds!r}") from None
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (dim,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (dim,)).copy()
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ConfigError("bounds", f"need finite lower < upper, got {bounds!r}")
    return lo, hi


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive number, got {value!r}")
    return value


def _count(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _into_bounds(x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator) -> np.ndarray:
    """Re-sample out-of-bound coordinates uniformly inside the bounds (S1; [LoT] mapping rule)."""
    if bounds is None:
        return x
    lo, hi = np.broadcast_to(bounds[0], x.shape), np.broadcast_to(bounds[1], x.shape)
    out = (x < lo) | (x > hi)
    if np.any(out):
        x[out] = rng.uniform(lo[out], hi[out])
    return x


def _check_tell(pending: np.ndarray | None, solutions: np.ndarray, fitness: np.ndarray) -> np.ndarray:
    """Validate a tell against the pending ask; return fitness as float64 with NaN -> +inf."""
    if pending is None:
        raise RuntimeError("tell() without a pending ask()")
    sol = np.asarray(solutions, dtype=np.float64)
    if sol.shape != pending.shape or not np.array_equal(sol, pending):
        raise ValueError(
            f"tell() needs the array returned by the last ask() (shape {pending.shape}), "
            f"got shape {sol.shape} or different values"
        )
    f = np.asarray(fitness, dtype=np.float64).reshape(-1)
    if f.shape != (len(pending),):
        raise ValueError(f"fitness must have shape ({len(pending)},), got {np.shape(fitness)}")
    f = np.where(np.isnan(f), np.inf, f)
    if np.any(f == -np.inf):
        raise ValueError("fitness -inf is not allowed (minimisation)")
    return f


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    return np.random.Generator(bit_gen)


def guiding_delta(sparks: np.ndarray, fitness: np.ndarray, mu: float = 0.2) -> np.ndarray:
    """GFWA guiding vector of one firework, minimisation ([GFWA] eq. 9; S1).

    ``sparks`` [m, D], ``fitness`` [m]. With k = ceil(mu * m) the sparks are ranked by
    fitness (lowest first, ties by index) and

        delta = mean(best k sparks) - mean(worst k sparks),

    i.e. it points from the bad sparks to the good ones: downhill. (Two public codes have
    the sign reversed; on a sphere this delta points toward the optimum.)
    """
    sparks = np.asarray(sparks, dtype=np.float64)
    m = len(sparks)
    if m == 0:
        return np.zeros(sparks.shape[1:])
    k = max(1, math.ceil(mu * m - 1e-12))
    order = np.argsort(np.asarray(fitness, dtype=np.float64), kind="stable")
    return sparks[order[:k]].mean(axis=0) - sparks[order[-k:]].mean(axis=0)


def loser_mask(fitness: np.ndarray, improvement: np.ndarray, remaining_generations: float) -> np.ndarray:
    """Loser-out tournament test ([LoT] Sec. III-B, eq. 5; S1), minimisation.

    Firework i is a loser when, improving at its current rate ``improvement[i]`` for the
    remaining generations, it would still not reach the best fitness:

        improvement_i * remaining_generations < f_i - f_best.

    The best firework (and any firework tied with it) is never a loser. A firework with
    infinite fitness is a loser when some firework is finite. An improvement of 0 makes every
    non-best firework a loser (0 < gap): that is the paper's rule; see ``LoTFWA`` for how the
    rate is measured.
    """
    f = np.asarray(fitness, dtype=np.float64)
    imp = np.asarray(improvement, dtype=np.float64)
    best = np.min(f)
    if not math.isfinite(best) or remaining_generations <= 0:
        return np.zeros(f.shape, dtype=bool)
    gap = f - best
    with np.errstate(invalid="ignore"):
        lose = imp * remaining_generations < gap
    lose |= ~np.isfinite(f)
    lose &= f > best
    return lose


# ---------------------------------------------------------------------------------------------
# fireworks engine (shared by LoTFWA and FWA)
# ---------------------------------------------------------------------------------------------


class _FireworksEngine:
    """The fireworks generation loop; the public classes fix its options."""

    dim: int

    def _setup(
        self,
        *,
        dim: int,
        x0: np.ndarray | None,
        n_fireworks: int,
        sparks_per_firework: int,
        sigma: float,
        amplitude: float | None,
        seed: int,
        bounds: Any,
        max_evaluations: int | None,
        init_spread: float | None,
        mu: float,
        amp_up: float,
        amp_down: float,
        guiding: str,
        tournament: bool,
        tournament_window: int,
        restart: str,
    ) -> None:
        self.dim = int(dim)
        self._x0 = _as_start(dim, x0)
        self.n_fireworks = _count("n_fireworks", n_fireworks)
        self.sparks_per_firework = _count("sparks_per_firework", sparks_per_firework)
        self.sigma = _positive("sigma", sigma)
        # Initial amplitude: U(-A, A) has std A / sqrt(3), so A0 = sqrt(3) * sigma gives the
        # explosion the same per-coordinate std as CMA-ES's initial sigma.
        self.initial_amplitude = math.sqrt(3.0) * self.sigma if amplitude is None else _positive("amplitude", amplitude)
        self.init_spread = self.initial_amplitude if init_spread is None else float(init_spread)
        if not (math.isfinite(self.init_spread) and self.init_spread >= 0):
            raise ConfigError("init_spread", f"must be >= 0, got {init_spread!r}")
        self.mu = float(mu)
        if not 0 < self.mu <= 0.5:
            raise ConfigError("mu", f"must be in (0, 0.5], got {mu!r}")
        self.amp_up = _positive("amp_up", amp_up)
        self.amp_down = _positive("amp_down", amp_down)
        if guiding not in ("deferred", "sequential", "off"):
            raise ConfigError("guiding", f"must be 'deferred', 'sequential' or 'off', got {guiding!r}")
        self.guiding = guiding
        self.tournament = bool(tournament)
        self.tournament_window = _count("tournament_window", tournament_window)
        self.bounds = _as_bounds(self.dim, bounds)
        if restart == "auto":
            restart = "uniform" if self.bounds is not None else "start"
        if restart not in ("start", "uniform"):
            raise ConfigError("restart", f"must be 'auto', 'start' or 'uniform', got {restart!r}")
        if restart == "uniform" and self.bounds is None:
            raise ConfigError("restart", "'uniform' needs bounds")
        self.restart = restart
        if max_evaluations is not None:
            max_evaluations = _count("max_evaluations", max_evaluations)
        self.max_evaluations = max_evaluations
        self.seed = seed
        self._rng = np.random.default_rng(seed)

        n, d = self.n_fireworks, self.dim
        if self.bounds is not None:
            self._x0 = _into_bounds(self._x0.copy(), self.bounds, self._rng)
        # Start: firework 0 at x0, the others at x0 + init_spread * U(-1, 1)^D.
        self._pos = np.repeat(self._x0[None], n, axis=0)
        if n > 1:
            self._pos[1:] = self._start_points(n - 1)
        self._fit = np.full(n, np.inf)
        self._evaluated = np.zeros(n, dtype=bool)  # start fitness known?
        self._amp = np.full(n, self.initial_amplitude)
        self._restarts = np.zeros(n, dtype=np.int64)
        self._hist = np.full((n, self.tournament_window + 1), np.inf)  # recent fitness, newest last
        self._age = np.zeros(n, dtype=np.int64)  # generations since the start fitness
        self._guide = np.zeros((n, d))  # pending guiding sparks (deferred/sequential)
        self._guide_ok = np.zeros(n, dtype=bool)
        self._last_delta = np.zeros((n, d))
        # sequential mode keeps the evaluated sparks until the guiding sparks are told
        self._spark_x = np.zeros((n, self.sparks_per_firework, d))
        self._spark_f = np.full((n, self.sparks_per_firework), np.inf)
        self._phase = "sparks"
        self._pending: np.ndarray | None = None
        self._pending_owner = np.zeros(0, dtype=np.int64)
        self._pending_kind = np.zeros(0, dtype=np.int64)
        self._generation = 0
        self._evaluations = 0
        self._best_x = self._x0.copy()
        self._best_f = math.inf

    # -- sampling ------------------------------------------------------------------------------

    def _start_points(self, k: int) -> np.ndarray:
        pts = self._x0[None] + self.init_spread * self._rng.uniform(-1.0, 1.0, (k, self.dim))
        return _into_bounds(pts, self.bounds, self._rng)

    def _restart_point(self) -> np.ndarray:
        if self.restart == "uniform":
            lo, hi = self.bounds  # type: ignore[misc]
            return self._rng.uniform(lo, hi)
        return self._start_points(1)[0]

    def _explode(self, i: int) -> np.ndarray:
        # Explosion (S1; [LoT] eq. 1): X_i + A_i * U(-1, 1)^D in all dimensions.
        m = self.sparks_per_firework
        sparks = self._pos[i] + self._amp[i] * self._rng.uniform(-1.0, 1.0, (m, self.dim))
        return _into_bounds(sparks, self.bounds, self._rng)

    @property
    def evaluations_per_generation(self) -> int:
        """Evaluations of one generation without restarts: n*m sparks (+ n guiding sparks)."""
        n, m = self.n_fireworks, self.sparks_per_firework
        return n * (m + (0 if self.guiding == "off" else 1))

    # -- ask/tell ------------------------------------------------------------------------------

    def ask(self) -> np.ndarray:
        """Points to evaluate next, [k, dim]; repeated calls before ``tell`` return the same points."""
        if self._pending is not None:
            return self._pending.copy()
        rows: list[np.ndarray] = []
        owner: list[int] = []
        kind: list[int] = []

        def add(i: int, k: int, x: np.ndarray) -> None:
            rows.append(x)
            owner.extend([i] * len(x))
            kind.extend([k] * len(x))

        if self._phase == "guides":  # sequential mode, second half of a generation
            for i in range(self.n_fireworks):
                add(i, _GUIDE, self._guide[i][None])
        else:
            for i in range(self.n_fireworks):
                if not self._evaluated[i]:
                    add(i, _POS, self._pos[i][None])  # start / restart position
                elif self.guiding == "deferred" and self._guide_ok[i]:
                    add(i, _GUIDE, self._guide[i][None])  # last generation's guiding spark
                add(i, _SPARK, self._explode(i))
        self._pending = np.concatenate(rows, axis=0)
        self._pending_owner = np.asarray(owner, dtype=np.int64)
        self._pending_kind = np.asarray(kind, dtype=np.int64)
        return self._pending.copy()

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        """Report the fitnesses (+inf allowed, NaN is read as +inf) of the last ``ask``."""
        f = _check_tell(self._pending, solutions, fitness)
        x = self._pending
        assert x is not None
        self._evaluations += len(f)
        j = int(np.argmin(f))
        if f[j] < self._best_f:
            self._best_f, self._best_x = float(f[j]), x[j].copy()
        owner, kind = self._pending_owner, self._pending_kind
        self._pending = None

        if self._phase == "guides":
            for i in range(self.n_fireworks):
                r = np.flatnonzero(owner == i)
                self._select(i, self._spark_x[i], self._spark_f[i], x[r], f[r])
            self._end_generation()
            return

        centre = self._pos.copy()  # the sparks' centres (selection below moves X_i)
        for i in range(self.n_fireworks):
            mine = owner == i
            rp = np.flatnonzero(mine & (kind == _POS))
            if len(rp):  # the (re)start position's fitness
                self._fit[i] = f[rp[0]]
                self._evaluated[i] = True
                self._hist[i] = f[rp[0]]
                self._age[i] = 0
            rs = np.flatnonzero(mine & (kind == _SPARK))
            sx, sf = x[rs], f[rs]
            # Guiding spark (S1; [GFWA] eq. 9-10): G_i = X_i + delta_i, X_i the sparks' centre.
            delta = guiding_delta(sx, sf, self.mu) if self.guiding != "off" else np.zeros(self.dim)
            self._last_delta[i] = delta
            if self.guiding == "sequential":
                self._spark_x[i], self._spark_f[i] = sx, sf
            rg = np.flatnonzero(mine & (kind == _GUIDE))
            if self.guiding != "sequential":
                self._select(i, sx, sf, x[rg], f[rg])
            if self.guiding != "off":
                self._guide[i] = _into_bounds(centre[i] + delta, self.bounds, self._rng)
                self._guide_ok[i] = True
        if self.guiding == "sequential":
            self._phase = "guides"
        else:
            self._end_generation()

    def _select(self, i: int, sx: np.ndarray, sf: np.ndarray, gx: np.ndarray, gf: np.ndarray) -> None:
        """Elitist selection and amplitude update of firework i (S1; [LoT] Sec. III-A)."""
        cand_f = np.concatenate([[self._fit[i]], sf, gf])
        k = int(np.argmin(cand_f))  # ties keep X_i (index 0 first)
        improved = cand_f[k] < self._fit[i]
        if improved:
            self._pos[i] = np.concatenate([sx, gx], axis=0)[k - 1]
            self._fit[i] = cand_f[k]
        # Amplitude (S1; [BBFWA]): x amp_up after an improvement, x amp_down otherwise.
        self._amp[i] *= self.amp_up if improved else self.amp_down
        self._hist[i, :-1] = self._hist[i, 1:].copy()
        self._hist[i, -1] = self._fit[i]
        self._age[i] += 1

    def _remaining_generations(self) -> int | None:
        if self.max_evaluations is None:
            return None
        return (self.max_evaluations - self._evaluations) // self.evaluations_per_generation

    def _improvement_rate(self) -> np.ndarray:
        """Improvement per generation over the last min(window, age) generations."""
        w = np.minimum(self.tournament_window, np.maximum(self._age, 1))
        old = self._hist[np.arange(self.n_fireworks), -1 - w]
        new = self._hist[:, -1]
        with np.errstate(invalid="ignore"):
            imp = (old - new) / w
        imp = np.where(np.isinf(old) & np.isinf(new), 0.0, imp)  # inf -> inf: no progress
        return np.where(np.isnan(imp), 0.0, imp)

    def _end_generation(self) -> None:
        self._generation += 1
        self._phase = "sparks"
        remaining = self._remaining_generations()
        if not self.tournament or remaining is None or remaining <= 0 or self.n_fireworks < 2:
            return
        lose = loser_mask(self._fit, self._improvement_rate(), remaining)
        for i in np.flatnonzero(lose):
            # Loser-out: restart at a fresh random position with the initial amplitude; the
            # position is evaluated in the next ask.
            self._pos[i] = self._restart_point()
            self._fit[i] = np.inf
            self._evaluated[i] = False
            self._amp[i] = self.initial_amplitude
            self._guide_ok[i] = False
            self._hist[i] = np.inf
            self._age[i] = 0
            self._restarts[i] += 1

    # -- results and state ---------------------------------------------------------------------

    @property
    def best_x(self) -> np.ndarray:
        return self._best_x.copy()

    @property
    def best_f(self) -> float:
        return self._best_f

    @property
    def step_size(self) -> float:
        """Mean firework amplitude."""
        return float(np.mean(self._amp))

    @property
    def evaluations(self) -> int:
        return self._evaluations

    @property
    def generation(self) -> int:
        """Completed generations."""
        return self._generation

    @property
    def positions(self) -> np.ndarray:
        """Fireworks' positions X_i, [n, dim] (a restarted one before its evaluation included)."""
        return self._pos.copy()

    @property
    def fitnesses(self) -> np.ndarray:
        """Fireworks' fitnesses f_i, [n] (+inf while a position is not yet evaluated)."""
        return self._fit.copy()

    @property
    def amplitudes(self) -> np.ndarray:
        """Fireworks' amplitudes A_i, [n]."""
        return self._amp.copy()

    @property
    def restarts(self) -> np.ndarray:
        """Restart count per firework, [n]."""
        return self._restarts.copy()

    @property
    def guiding_sparks(self) -> np.ndarray:
        """Current guiding sparks G_i = centre + delta_i, [n, dim] (rows of a restarted firework are stale)."""
        return self._guide.copy()

    @property
    def pending_owner(self) -> np.ndarray:
        """Firework index of each row of the pending (or last) ask, [k]."""
        return self._pending_owner.copy()

    @property
    def pending_kind(self) -> list[str]:
        """Kind of each row of the pending (or last) ask: "position", "guide" or "spark"."""
        return [KINDS[k] for k in self._pending_kind]

    @property
    def last_deltas(self) -> np.ndarray:
        """delta_i of the last told sparks, [n, dim]."""
        return self._last_delta.copy()

    _STATE_ARRAYS = (
        "_x0",
        "_pos",
        "_fit",
        "_evaluated",
        "_amp",
        "_restarts",
        "_hist",
        "_age",
        "_guide",
        "_guide_ok",
        "_last_delta",
        "_spark_x",
        "_spark_f",
        "_pending_owner",
        "_pending_kind",
        "_best_x",
    )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: getattr(self, k).copy() for k in self._STATE_ARRAYS}
        state.update(
            cls=type(self).__name__,
            rng=_rng_state(self._rng),
            pending=None if self._pending is None else self._pending.copy(),
            phase=self._phase,
            generation=self._generation,
            evaluations=self._evaluations,
            best_f=self._best_f,
            config=self._config(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("cls") != type(self).__name__:
            raise ValueError(f"state of {state.get('cls')!r} cannot be loaded into {type(self).__name__}")
        for key, value in state["config"].items():
            setattr(self, key, value)
        for k in self._STATE_ARRAYS:
            setattr(self, k, np.array(state[k], copy=True))
        self._rng = _rng_from_state(state["rng"])
        self._pending = None if state["pending"] is None else np.array(state["pending"], copy=True)
        self._phase = state["phase"]
        self._generation = int(state["generation"])
        self._evaluations = int(state["evaluations"])
        self._best_f = float(state["best_f"])

    def _config(self) -> dict[str, Any]:
        keys = (
            "dim",
            "n_fireworks",
            "sparks_per_firework",
            "sigma",
            "initial_amplitude",
            "init_spread",
            "mu",
            "amp_up",
            "amp_down",
            "guiding",
            "tournament",
            "tournament_window",
            "restart",
            "max_evaluations",
            "seed",
            "bounds",
        )
        return {k: getattr(self, k) for k in keys}


# ---------------------------------------------------------------------------------------------
# public classes
# ---------------------------------------------------------------------------------------------


class LoTFWA(_FireworksEngine):
    """Loser-out tournament fireworks algorithm with guiding sparks, minimisation ([LoT], S1).

    State: n fireworks, each with position X_i, fitness f_i and amplitude A_i. One generation:

    1. Explosion ([LoT] eq. 1): m sparks per firework, s = X_i + A_i * U(-1, 1)^D (all
       dimensions); out-of-bound coordinates are re-sampled uniformly inside ``bounds``.
    2. Guiding spark ([GFWA] eq. 9-10): rank firework i's sparks by fitness, k = ceil(mu m);
       delta_i = mean(best k) - mean(worst k); G_i = X_i + delta_i (X_i = the sparks' centre).
       delta points downhill (tested on a sphere); see ``guiding_delta``.
    3. Selection (independent per firework): X_i <- best of {X_i, its sparks, G_i}.
    4. Amplitude: A_i *= amp_up (1.2) if f_i improved, else A_i *= amp_down (0.9).
    5. Loser-out tournament ([LoT] eq. 5): with R the remaining generations, firework i
       restarts when imp_i * R < f_i - f_best; a restarted firework gets a fresh random
       position and the initial amplitude; its position is evaluated in the next ask.

    One ask = one generation (``guiding="deferred"``, default). The guiding spark needs the
    sparks' fitnesses, so it cannot be in the ask that contains those sparks. G_i (computed
    exactly as above, around the centre of the sparks it comes from) is therefore evaluated in
    the NEXT ask, together with the next sparks, and competes in that generation's selection.
    Every ask then has exactly n (m + 1) points: per firework one "slot" + m sparks, the slot
    holding G_i, or the firework's own position when that has no fitness yet (the first
    generation and the generation after a restart). So the first generation evaluates the
    start positions (elitism against x0 from the start) at the same cost as every other one,
    and all points compared in a selection were scored in the same ask, which matters in the
    layer-wise F-LoRA loop where the other layers change between asks. ``"sequential"`` is
    the textbook order (two asks per generation: positions + sparks, then the n guiding
    sparks; selection after the second); ``"off"`` drops the guiding spark (ablation).

    Decisions where the specification is silent:

    - Start and amplitude: firework 0 starts at x0, the others at x0 + init_spread * U(-1, 1)^D
      (default init_spread = the initial amplitude: where sparks of firework 0 would land).
      The initial amplitude is ``amplitude`` if given, else sqrt(3) * sigma: U(-A, A) has std
      A / sqrt(3), so the explosion's per-coordinate std equals ``sigma``, CMA-ES's sigma0 in
      the same projection (DESIGN.md: std_P is calibrated to sigma).
    - Restart position (``restart="auto"``): uniform in the bounds when bounds are set (the
      paper's rule), else drawn like a start position (x0 + init_spread * U(-1, 1)^D): with no
      box, "random" needs a scale, and around x0 (z = 0, the unmodified model) is the only
      meaningful one.
    - imp = 0 (no improvement this generation; elitism makes imp >= 0): restarted whenever
      the firework is not the best, as in the paper (0 * R < gap). Reasoning: with elitism a
      zero improvement means the firework stagnated; projecting its measured rate it cannot
      close any positive gap, and its shrinking amplitude only refines a worse basin. The
      alternative "exempt imp = 0" would be perverse: stagnating fireworks would survive while
      slowly improving ones are restarted. With few sparks a single unlucky generation can
      trigger it; ``tournament_window=w`` measures the rate over the last w generations
      instead ((f_i[t-w] - f_i[t]) / w; 1 = paper). Measured: w = 5 or 20 changed neither
      the restart count nor the results materially (restarts are driven by the gap), so the
      default stays the paper's 1.
    - R = (max_evaluations - evaluations) // (n (m + 1)), the generations the instance can
      still run. ``max_evaluations=None``: never restart. R <= 0 (budget spent, the caller
      went on): no restarts, since every non-best firework would otherwise restart every
      generation. The best firework (and ties) never restarts; a firework with +inf fitness
      restarts when some firework is finite; a firework whose previous fitness was +inf and
      is now finite counts as improving without bound (not restarted).
    - Guiding sparks outside the bounds are mapped like sparks. Ties in selection keep X_i;
      ties in the spark ranking are broken by index. +inf fitness (failures) ranks last.
    - ``max_evaluations`` is this instance's own budget (in the layer-wise loop: the calls
      its layer will receive), not the run's total.

    Defaults n = 2, m = 9 (20 evaluations per generation, like CMA-ES with popsize 20).
    Measured (median best f of 9 seeds; x0 = 0, sigma = 1, no bounds; sphere and Rastrigin
    shifted to an optimum s ~ U(-3, 3)^D, Rosenbrock to 1 + s; 20 evaluations/generation):

        200 generations (4,000 calls)  sph30   sph125  ras30  ras125  ros30  ros125
        random search (popsize 20)     51.1    326     256    1403    1.9e4  2.2e5
        CMA-ES (popsize 20)            1.4e-6  0.41    97.6   1317    27.7   292
        FWA (1 firework, m = 20)       0.095   47.5    103    770     53.4   7.9e3
        n=1, m=19 (no tournament)      6.8e-4  7.9     104    502     29.0   1.2e3
        n=2, m=9   (default)           0.022   27.7    98.0   646     31.6   4.6e3
        n=2, m=9,  sequential          0.014   24.5    98.8   580     32.8   3.9e3
        n=2, m=9,  no guiding spark    0.12    56.8    97.2   703     61.6   1.1e4
        n=3, m=6                       0.081   60.1    91.7   688     55.9   9.5e3
        n=4, m=4                       0.22    76.7    88.6   820     109    1.7e4
        n=5, m=3 (paper: n = 5)        0.29    87.6    96.0   841     117    2.2e4

        15 generations (300 calls)     sph30   sph125  ras30  ras125  ros30  ros125
        random search                  63.8    345     294    1468    3.0e4  2.6e5
        CMA-ES                         20.8    179     269    1481    4.0e3  9.7e4
        n=1, m=19                      20.7    221     299    1504    4.7e3  1.2e5
        n=2, m=9   (default)           36.1    276     285    1507    1.9e4  1.5e5
        n=4, m=4                       52.6    313     291    1491    2.2e4  1.9e5
        n=5, m=3                       49.6    309     314    1491    2.0e4  1.9e5

    With 20 calls per generation every extra firework costs the best one sparks: fewer
    fireworks win on the unimodal functions and at D = 125; more fireworks help only on
    Rastrigin D = 30 (about 10 %). n = 1 is best on 4 of 6 columns but has no tournament
    (it is GFWA with one firework); n = 2, m = 9 is the best configuration with a tournament
    in 5 of 6 columns, keeps k = ceil(0.2 * 9) = 2 sparks on each side of delta (m = 3 or
    4 gives k = 1, a noisier direction). The guiding spark is worth a factor 2-5 on sphere
    and Rosenbrock over "off" (about 10 % on Rastrigin). Sequential guiding was 10 % better
    at D = 125 after 200 generations and 4 % worse after 15; deferred stays the default for
    its one-ask generations.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        n_fireworks: int = 2,  # measured best with a tournament at 20 calls/generation (doc)
        sparks_per_firework: int = 9,  # n (m + 1) = 20 calls/generation, like CMA-ES popsize 20
        sigma: float = 1.0,  # initial per-coordinate std of the explosion (= CMA-ES sigma0)
        amplitude: float | None = None,  # initial amplitude A0; None = sqrt(3) * sigma
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # box; out-of-bound coordinates re-sampled
        max_evaluations: int | None = None,  # this instance's budget (tournament); None: no restarts
        init_spread: float | None = None,  # start offsets of fireworks 1..n-1; None = A0
        mu: float = 0.2,  # guiding-spark fraction ([GFWA])
        amp_up: float = 1.2,  # amplitude factor after an improvement ([LoT], [BBFWA])
        amp_down: float = 0.9,  # amplitude factor otherwise
        guiding: str = "deferred",  # "deferred" (one ask/generation), "sequential", "off"
        tournament_window: int = 1,  # generations over which imp is measured (1 = paper)
        restart: str = "auto",  # "auto": "uniform" in bounds if set, else "start" (around x0)
    ) -> None:
        self._setup(
            dim=dim,
            x0=x0,
            n_fireworks=n_fireworks,
            sparks_per_firework=sparks_per_firework,
            sigma=sigma,
            amplitude=amplitude,
            seed=seed,
            bounds=bounds,
            max_evaluations=max_evaluations,
            init_spread=init_spread,
            mu=mu,
            amp_up=amp_up,
            amp_down=amp_down,
            guiding=guiding,
            tournament=True,
            tournament_window=tournament_window,
            restart=restart,
        )


class FWA(_FireworksEngine):
    """Bare-bones fireworks algorithm ([BBFWA]), minimisation: one firework, elitist.

    Each generation: ``sparks`` sparks X + A * U(-1, 1)^D (out-of-bound coordinates
    re-sampled uniformly inside ``bounds``); X <- the best of {X, sparks}; A *= 1.2 after an
    improvement, else A *= 0.9. The first ask also contains x0 itself (``sparks`` + 1 points),
    so the search is elitist with respect to the start point; later asks have ``sparks``
    points. No guiding spark: FWA is the minimal baseline against which LoTFWA's ingredients
    (guiding spark, several fireworks, tournament) are measured; ``LoTFWA(n_fireworks=1,
    guiding="off")`` is the same algorithm with a guiding-spark slot layout. Initial amplitude
    sqrt(3) * sigma as in ``LoTFWA``.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        sparks: int = 20,  # sparks per generation, like CMA-ES popsize 20
        sigma: float = 1.0,  # initial per-coordinate std of the explosion (= CMA-ES sigma0)
        amplitude: float | None = None,  # initial amplitude A0; None = sqrt(3) * sigma
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # box; out-of-bound coordinates re-sampled
        max_evaluations: int | None = None,  # informational only
        amp_up: float = 1.2,  # amplitude factor after an improvement ([BBFWA] C_a)
        amp_down: float = 0.9,  # amplitude factor otherwise ([BBFWA] C_r)
    ) -> None:
        self._setup(
            dim=dim,
            x0=x0,
            n_fireworks=1,
            sparks_per_firework=sparks,
            sigma=sigma,
            amplitude=amplitude,
            seed=seed,
            bounds=bounds,
            max_evaluations=max_evaluations,
            init_spread=0.0,
            mu=0.2,
            amp_up=amp_up,
            amp_down=amp_down,
            guiding="off",
            tournament=False,
            tournament_window=1,
            restart="auto",
        )


class RandomSearch:
    """Pure random search around the start point, minimisation: the baseline every method must beat.

    Each ``ask`` returns ``popsize`` points x0 + sigma * N(0, I) (out-of-bound coordinates
    re-sampled uniformly inside the bounds, as for the fireworks); the best told point is
    kept. The sampling distribution never moves: it is the "no learning" reference at the
    same scale as CMA-ES's initial distribution.
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        sigma: float = 1.0,  # per-coordinate std of the samples, like CMA-ES's sigma0
        popsize: int = 20,  # points per ask, like one CMA-ES generation
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # optional box, same for all optimizers
        max_evaluations: int | None = None,  # informational only
    ) -> None:
        self.dim = int(dim)
        self._x0 = _as_start(dim, x0)
        self.sigma = _positive("sigma", sigma)
        self.popsize = _count("popsize", popsize)
        self.seed = seed
        self.bounds = _as_bounds(self.dim, bounds)
        self.max_evaluations = max_evaluations
        self._rng = np.random.default_rng(seed)
        if self.bounds is not None:
            self._x0 = _into_bounds(self._x0, self.bounds, self._rng)
        self._pending: np.ndarray | None = None
        self._evaluations = 0
        self._generation = 0
        self._best_x = self._x0.copy()
        self._best_f = math.inf

    def ask(self) -> np.ndarray:
        """``popsize`` samples around x0; repeated calls before ``tell`` return the same points."""
        if self._pending is None:
            x = self._x0 + self.sigma * self._rng.standard_normal((self.popsize, self.dim))
            self._pending = _into_bounds(x, self.bounds, self._rng)
        return self._pending.copy()

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        f = _check_tell(self._pending, solutions, fitness)
        x = self._pending
        assert x is not None
        self._pending = None
        self._evaluations += len(f)
        self._generation += 1
        j = int(np.argmin(f))
        if f[j] < self._best_f:
            self._best_f, self._best_x = float(f[j]), x[j].copy()

    @property
    def best_x(self) -> np.ndarray:
        return self._best_x.copy()

    @property
    def best_f(self) -> float:
        return self._best_f

    @property
    def step_size(self) -> float:
        return self.sigma

    @property
    def evaluations(self) -> int:
        return self._evaluations

    @property
    def generation(self) -> int:
        return self._generation

    def state_dict(self) -> dict[str, Any]:
        return {
            "cls": "RandomSearch",
            "config": {k: getattr(self, k) for k in ("dim", "sigma", "popsize", "seed", "bounds", "max_evaluations")},
            "x0": self._x0.copy(),
            "rng": _rng_state(self._rng),
            "pending": None if self._pending is None else self._pending.copy(),
            "evaluations": self._evaluations,
            "generation": self._generation,
            "best_x": self._best_x.copy(),
            "best_f": self._best_f,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("cls") != "RandomSearch":
            raise ValueError(f"state of {state.get('cls')!r} cannot be loaded into RandomSearch")
        for key, value in state["config"].items():
            setattr(self, key, value)
        self._x0 = np.array(state["x0"], copy=True)
        self._rng = _rng_from_state(state["rng"])
        self._pending = None if state["pending"] is None else np.array(state["pending"], copy=True)
        self._evaluations = int(state["evaluations"])
        self._generation = int(state["generation"])
        self._best_x = np.array(state["best_x"], copy=True)
        self._best_f = float(state["best_f"])
