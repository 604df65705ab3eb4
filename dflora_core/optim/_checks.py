"""Argument checks shared by the optimizers' constructors; each raises ``ConfigError`` naming the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError


def dimension(dim: Any) -> int:
    if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or dim < 1:
        raise ConfigError("dim", f"must be a positive integer, got {dim!r}")
    return int(dim)


def as_start(dim: int, x0: Any) -> np.ndarray:
    """x0 as a fresh float64 vector of shape (dim,); None is the origin."""
    if x0 is None:
        return np.zeros(dim)
    x = np.array(x0, dtype=np.float64).reshape(-1)
    if x.shape != (dim,):
        raise ConfigError("x0", f"must have shape ({dim},), got {np.shape(x0)}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("x0", "must be finite")
    return x


def as_bounds(dim: int, bounds: Any, finite: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """(lower, upper) broadcast to (dim,) with lower < upper; ``finite=False`` admits +-inf (pycma does)."""
    if bounds is None:
        return None
    try:
        lo, hi = bounds
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (dim,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (dim,)).copy()
    except (TypeError, ValueError):
        raise ConfigError("bounds", f"must be (lower, upper), got {bounds!r}") from None
    ok = np.all(lo < hi) and (not finite or (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))))
    if not ok:
        raise ConfigError("bounds", f"need {'finite ' if finite else ''}lower < upper, got {bounds!r}")
    return lo, hi


def positive(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive number, got {value!r}")
    return value


def count(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def seed(value: Any) -> int:
    """A concrete seed: None draws one from OS entropy, so even an unseeded run can be replayed."""
    if value is None:
        return int(np.random.SeedSequence().entropy)
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise ConfigError("seed", f"must be an integer >= 0 or None, got {value!r}")
    return int(value)
