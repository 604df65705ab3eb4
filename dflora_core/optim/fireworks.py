"""Fireworks optimizers: LoTFWA (several fireworks, guiding sparks, loser-out tournament) and FWA.

References
----------
- [LoT] J. Li, Y. Tan, "Loser-Out Tournament-Based Fireworks Algorithm for Multimodal
  Function Optimization", IEEE TEVC 22(5), 2018.
- [GFWA] J. Li, S. Zheng, Y. Tan, "The Effect of Information Utilization: Introducing a Novel
  Guiding Spark in the Fireworks Algorithm", IEEE TEVC 21(1), 2017 ("Guided FWA").
- [BBFWA] J. Li, Y. Tan, "The bare bones fireworks algorithm: A minimalist global optimizer",
  Applied Soft Computing 62, 2018.

The algorithm, the decisions the papers leave open and the measurements behind the defaults
are in docs/method.md, section "Optimizers"; the equations below are cited from the papers.
Implementation written from the papers; no code was copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import _checks
from .base import Optimizer, into_bounds

__all__ = ["FireworksOptions", "LoTFWA", "FWA", "guiding_delta", "loser_mask"]

_POS, _GUIDE, _SPARK = 0, 1, 2  # kinds of asked rows
KINDS = ("position", "guide", "spark")
_GUIDING = ("deferred", "sequential", "off")


def guiding_delta(sparks: np.ndarray, fitness: np.ndarray, mu: float = 0.2) -> np.ndarray:
    """GFWA guiding vector of one firework, minimisation ([GFWA] eq. 9).

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
    """Loser-out tournament test ([LoT] Sec. III-B, eq. 5), minimisation.

    Firework i is a loser when, improving at its current rate ``improvement[i]`` for the
    remaining generations, it would still not reach the best fitness:

        improvement_i * remaining_generations < f_i - f_best.

    The best firework (and any firework tied with it) is never a loser. A firework with
    infinite fitness is a loser when some firework is finite. An improvement of 0 makes every
    non-best firework a loser (0 < gap): the paper's rule (docs/method.md, "Optimizers").
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


@dataclass(frozen=True)
class FireworksOptions:
    """The fireworks' own parameters, validated when made (the shared ones are constructor arguments).

    ``amplitude``, ``init_spread`` and ``restart`` may be left to the optimizer (None, None,
    "auto"); ``resolved`` fills them in from sigma and the bounds.
    """

    n_fireworks: int = 2  # n; measured best with a tournament at 20 calls/generation
    sparks_per_firework: int = 9  # m; n (m + 1) = 20 calls/generation, like CMA-ES popsize 20
    amplitude: float | None = None  # initial amplitude A0; None: sqrt(3) * sigma
    init_spread: float | None = None  # start offsets of fireworks 1..n-1; None: A0
    mu: float = 0.2  # guiding-spark fraction ([GFWA])
    amp_up: float = 1.2  # amplitude factor after an improvement ([LoT], [BBFWA] C_a)
    amp_down: float = 0.9  # amplitude factor otherwise ([BBFWA] C_r)
    guiding: str = "deferred"  # "deferred" (one ask per generation), "sequential", "off"
    tournament: bool = True  # loser-out restarts ([LoT])
    tournament_window: int = 1  # generations over which the improvement rate is measured (1 = paper)
    restart: str = "auto"  # "auto": "uniform" in the bounds if set, else "start" (around x0)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: normalise once, here

        put("n_fireworks", _checks.count("n_fireworks", self.n_fireworks))
        put("sparks_per_firework", _checks.count("sparks_per_firework", self.sparks_per_firework))
        if self.amplitude is not None:
            put("amplitude", _checks.positive("amplitude", self.amplitude))
        if self.init_spread is not None:
            spread = float(self.init_spread)
            if not (math.isfinite(spread) and spread >= 0):
                raise ConfigError("init_spread", f"must be >= 0, got {self.init_spread!r}")
            put("init_spread", spread)
        put("mu", float(self.mu))
        if not 0 < self.mu <= 0.5:
            raise ConfigError("mu", f"must be in (0, 0.5], got {self.mu!r}")
        put("amp_up", _checks.positive("amp_up", self.amp_up))
        put("amp_down", _checks.positive("amp_down", self.amp_down))
        if self.guiding not in _GUIDING:
            raise ConfigError("guiding", f"must be 'deferred', 'sequential' or 'off', got {self.guiding!r}")
        put("tournament", bool(self.tournament))
        put("tournament_window", _checks.count("tournament_window", self.tournament_window))
        if self.restart not in ("auto", "start", "uniform"):
            raise ConfigError("restart", f"must be 'auto', 'start' or 'uniform', got {self.restart!r}")

    def resolved(self, sigma: float, bounded: bool) -> FireworksOptions:
        """A0 = sqrt(3) sigma: U(-A, A) has std A / sqrt(3), the explosion's std is CMA-ES's sigma0."""
        amplitude = math.sqrt(3.0) * sigma if self.amplitude is None else self.amplitude
        restart = ("uniform" if bounded else "start") if self.restart == "auto" else self.restart
        if restart == "uniform" and not bounded:
            raise ConfigError("restart", "'uniform' needs bounds")
        spread = amplitude if self.init_spread is None else self.init_spread
        return replace(self, amplitude=amplitude, init_spread=spread, restart=restart)


def _option(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.options, name), doc=doc)


class _Fireworks(Optimizer):
    """The fireworks generation loop; LoTFWA and FWA fix its options."""

    n_fireworks = _option("n_fireworks", "n, the number of fireworks.")
    sparks_per_firework = _option("sparks_per_firework", "m, sparks per firework and generation.")
    initial_amplitude = _option("amplitude", "A0, the initial (and restart) amplitude.")
    init_spread = _option("init_spread", "Start offsets of fireworks 1..n-1.")
    mu = _option("mu", "Guiding-spark fraction.")
    amp_up = _option("amp_up", "Amplitude factor after an improvement.")
    amp_down = _option("amp_down", "Amplitude factor otherwise.")
    guiding = _option("guiding", '"deferred", "sequential" or "off".')
    tournament = _option("tournament", "Loser-out restarts on?")
    tournament_window = _option("tournament_window", "Generations over which imp is measured.")
    restart = _option("restart", '"start" or "uniform" (resolved).')

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None,
        *,
        sigma: float,
        seed: int,
        bounds: Any,
        max_evaluations: int | None,
        options: FireworksOptions,
    ) -> None:
        if max_evaluations is not None:
            max_evaluations = _checks.count("max_evaluations", max_evaluations)
        super().__init__(dim, x0, seed=seed, bounds=bounds, max_evaluations=max_evaluations)
        self.sigma = _checks.positive("sigma", sigma)
        self.options = options.resolved(self.sigma, self.bounds is not None)
        self._asks_per_generation = 2 if self.guiding == "sequential" else 1

        n, d = self.n_fireworks, self.dim
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
        self._pending_owner = np.zeros(0, dtype=np.int64)
        self._pending_kind = np.zeros(0, dtype=np.int64)

    # -- sampling ------------------------------------------------------------------------------

    def _start_points(self, k: int) -> np.ndarray:
        pts = self._x0[None] + self.init_spread * self._rng.uniform(-1.0, 1.0, (k, self.dim))
        return into_bounds(pts, self.bounds, self._rng)

    def _restart_point(self) -> np.ndarray:
        if self.restart == "uniform":
            lo, hi = self.bounds  # type: ignore[misc]
            return self._rng.uniform(lo, hi)
        return self._start_points(1)[0]

    def _explode(self, i: int) -> np.ndarray:
        # Explosion ([LoT] eq. 1): X_i + A_i * U(-1, 1)^D in all dimensions.
        m = self.sparks_per_firework
        sparks = self._pos[i] + self._amp[i] * self._rng.uniform(-1.0, 1.0, (m, self.dim))
        return into_bounds(sparks, self.bounds, self._rng)

    @property
    def evaluations_per_generation(self) -> int:
        """Evaluations of one generation without restarts: n*m sparks (+ n guiding sparks)."""
        n, m = self.n_fireworks, self.sparks_per_firework
        return n * (m + (0 if self.guiding == "off" else 1))

    # -- ask/tell ------------------------------------------------------------------------------

    def _ask(self) -> np.ndarray:
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
        self._pending_owner = np.asarray(owner, dtype=np.int64)
        self._pending_kind = np.asarray(kind, dtype=np.int64)
        return np.concatenate(rows, axis=0)

    def _tell(self, x: np.ndarray, f: np.ndarray) -> None:
        owner, kind = self._pending_owner, self._pending_kind
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
            # Guiding spark ([GFWA] eq. 9-10): G_i = X_i + delta_i, X_i the sparks' centre.
            delta = guiding_delta(sx, sf, self.mu) if self.guiding != "off" else np.zeros(self.dim)
            self._last_delta[i] = delta
            if self.guiding == "sequential":
                self._spark_x[i], self._spark_f[i] = sx, sf
            rg = np.flatnonzero(mine & (kind == _GUIDE))
            if self.guiding != "sequential":
                self._select(i, sx, sf, x[rg], f[rg])
            if self.guiding != "off":
                self._guide[i] = into_bounds(centre[i] + delta, self.bounds, self._rng)
                self._guide_ok[i] = True
        if self.guiding == "sequential":
            self._phase = "guides"
        else:
            self._end_generation()

    def _select(self, i: int, sx: np.ndarray, sf: np.ndarray, gx: np.ndarray, gf: np.ndarray) -> None:
        """Elitist selection and amplitude update of firework i ([LoT] Sec. III-A)."""
        cand_f = np.concatenate([[self._fit[i]], sf, gf])
        k = int(np.argmin(cand_f))  # ties keep X_i (index 0 first)
        improved = cand_f[k] < self._fit[i]
        if improved:
            self._pos[i] = np.concatenate([sx, gx], axis=0)[k - 1]
            self._fit[i] = cand_f[k]
        # Amplitude ([BBFWA]): x amp_up after an improvement, x amp_down otherwise.
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
        self._phase = "sparks"
        remaining = self._remaining_generations()
        if not self.tournament or remaining is None or remaining <= 0 or self.n_fireworks < 2:
            return
        lose = loser_mask(self._fit, self._improvement_rate(), remaining)
        for i in np.flatnonzero(lose):
            # Loser-out ([LoT] eq. 5): restart at a fresh random position with the initial
            # amplitude; the position is evaluated in the next ask.
            self._pos[i] = self._restart_point()
            self._fit[i] = np.inf
            self._evaluated[i] = False
            self._amp[i] = self.initial_amplitude
            self._guide_ok[i] = False
            self._hist[i] = np.inf
            self._age[i] = 0
            self._restarts[i] += 1

    # -- introspection -------------------------------------------------------------------------

    @property
    def step_size(self) -> float:
        """Mean firework amplitude."""
        return float(np.mean(self._amp))

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


_D = FireworksOptions()  # the defaults, spelled once


class LoTFWA(_Fireworks):
    """Loser-out tournament fireworks algorithm with guiding sparks, minimisation ([LoT], [GFWA]).

    n fireworks, each with a position X_i, fitness f_i and amplitude A_i. One generation:
    explosion (m sparks X_i + A_i U(-1, 1)^D, [LoT] eq. 1), guiding spark (G_i = X_i + delta_i,
    ``guiding_delta``, [GFWA] eq. 9-10), elitist selection per firework, amplitude x1.2 after an
    improvement else x0.9, and the loser-out tournament (a firework that cannot catch up with
    the best in the remaining generations restarts, [LoT] eq. 5; needs ``max_evaluations``).
    With ``guiding="deferred"`` (default) each ask is one generation of n (m + 1) points:
    per firework one slot (its guiding spark from the previous generation, or its position
    when that has no fitness yet) and m sparks. Details, the decisions the papers leave open
    and the measurements behind n = 2, m = 9: docs/method.md, section "Optimizers".
    """

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        n_fireworks: int = _D.n_fireworks,
        sparks_per_firework: int = _D.sparks_per_firework,
        sigma: float = 1.0,  # initial per-coordinate std of the explosion (= CMA-ES sigma0)
        amplitude: float | None = _D.amplitude,
        seed: int = 0,  # seeds the instance's own numpy Generator
        bounds: tuple[float, float] | None = None,  # box; out-of-bound coordinates re-sampled
        max_evaluations: int | None = None,  # this instance's budget (tournament); None: no restarts
        init_spread: float | None = _D.init_spread,
        mu: float = _D.mu,
        amp_up: float = _D.amp_up,
        amp_down: float = _D.amp_down,
        guiding: str = _D.guiding,
        tournament_window: int = _D.tournament_window,
        restart: str = _D.restart,
    ) -> None:
        options = FireworksOptions(
            n_fireworks=n_fireworks, sparks_per_firework=sparks_per_firework, amplitude=amplitude,
            init_spread=init_spread, mu=mu, amp_up=amp_up, amp_down=amp_down, guiding=guiding,
            tournament=True, tournament_window=tournament_window, restart=restart,
        )  # fmt: skip
        super().__init__(
            dim, x0, sigma=sigma, seed=seed, bounds=bounds, max_evaluations=max_evaluations, options=options
        )


class FWA(_Fireworks):
    """Bare-bones fireworks algorithm ([BBFWA]), minimisation: one firework, elitist.

    Each generation: ``sparks`` sparks X + A U(-1, 1)^D; X <- the best of {X, sparks};
    A x1.2 after an improvement, else x0.9. The first ask also holds x0 itself (``sparks`` + 1
    points, elitist from the start). No guiding spark, no tournament: the minimal baseline
    for LoTFWA's ingredients (docs/method.md, "Optimizers").
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
        amp_up: float = _D.amp_up,  # [BBFWA] C_a
        amp_down: float = _D.amp_down,  # [BBFWA] C_r
    ) -> None:
        options = FireworksOptions(
            n_fireworks=1, sparks_per_firework=sparks, amplitude=amplitude, init_spread=0.0,
            amp_up=amp_up, amp_down=amp_down, guiding="off", tournament=False,
        )  # fmt: skip
        super().__init__(
            dim, x0, sigma=sigma, seed=seed, bounds=bounds, max_evaluations=max_evaluations, options=options
        )
