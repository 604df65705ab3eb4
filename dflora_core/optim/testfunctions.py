"""Classic benchmark functions for the optimizers' tests and the notebooks (minimisation).

Each function takes ``x`` of shape ``[n, dim]`` (one candidate per row) and returns ``[n]``
float64; a 1-D ``x`` gives a Python float. ``shift`` moves the optimum: ``f(x - shift)``,
so that a search started at the origin does not start at the optimum.

- sphere:     sum x_i^2                                       min 0 at 0
- ellipsoid:  sum c^((i-1)/(D-1)) x_i^2 (condition number c)  min 0 at 0: an ill-conditioned quadratic
- rastrigin:  10 D + sum (x_i^2 - 10 cos(2 pi x_i))           min 0 at 0, ~10^D local minima
- rosenbrock: sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2       min 0 at (1, ..., 1)
"""

from __future__ import annotations

import numpy as np

__all__ = ["sphere", "ellipsoid", "rastrigin", "rosenbrock", "FUNCTIONS"]


def _rows(x: np.ndarray, shift: np.ndarray | float | None) -> tuple[np.ndarray, bool]:
    arr = np.asarray(x, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if shift is not None:
        arr = arr - np.asarray(shift, dtype=np.float64)
    return arr, single


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


def sphere(x: np.ndarray, shift: np.ndarray | float | None = None) -> np.ndarray | float:
    """Sum of squares (unimodal, separable)."""
    z, single = _rows(x, shift)
    return _out(np.sum(z * z, axis=1), single)


def ellipsoid(x: np.ndarray, shift: np.ndarray | float | None = None, condition: float = 100.0) -> np.ndarray | float:
    """An ill-conditioned quadratic: axis i weighted c^((i-1)/(D-1)), so the curvatures span ``condition``."""
    z, single = _rows(x, shift)
    d = z.shape[1]
    w = condition ** (np.arange(d) / max(1, d - 1))
    return _out(np.sum(w * z * z, axis=1), single)


def rastrigin(x: np.ndarray, shift: np.ndarray | float | None = None) -> np.ndarray | float:
    """Rastrigin (highly multimodal, separable)."""
    z, single = _rows(x, shift)
    d = z.shape[1]
    return _out(10.0 * d + np.sum(z * z - 10.0 * np.cos(2.0 * np.pi * z), axis=1), single)


def rosenbrock(x: np.ndarray, shift: np.ndarray | float | None = None) -> np.ndarray | float:
    """Rosenbrock (curved valley, non-separable); ``shift`` moves the optimum to ``1 + shift``."""
    z, single = _rows(x, shift)
    a, b = z[:, :-1], z[:, 1:]
    return _out(np.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2, axis=1), single)


FUNCTIONS = {"sphere": sphere, "ellipsoid": ellipsoid, "rastrigin": rastrigin, "rosenbrock": rosenbrock}
