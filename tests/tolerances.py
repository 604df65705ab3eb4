"""Float tolerances derived from the quantity a test compares, never from one machine's error.

CI runs on several CPU kinds (AMD EPYC with and without AVX-512, Intel Xeon with AMX); their
fp32 kernels sum in different orders (vector widths, AMX tiles, blocking), so the same function
rounds differently on each. A tolerance must therefore bound what *any* summation order can
give, and stay far below what a real defect changes. The bounds follow the standard model of
floating point arithmetic (N. J. Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., 2002, §2.2 and Lemma 3.1 / §3.1):

- one correctly rounded operation (``+ - * /``, a fused multiply-add, ``sqrt``, ``exp`` to
  within a few ulp) errs by at most ``u |result|``, ``u = 2^-24`` for fp32;
- a length-``n`` inner product or sum, in *any* order, errs by at most
  ``gamma_n * sum_i |x_i y_i|`` with ``gamma_n = n u / (1 - n u)``;
- errors of products in sequence add to first order: a chain of ``depth`` products of inner
  length at most ``width`` errs relatively by at most ``depth * gamma_width``.

Two fp32 evaluations of the *same* function (batched against one-by-one, a merged weight against
a hook, PEFT's LoRA against dflora's) each lie within that bound of the exact value, so they
differ by at most twice it, scaled by the magnitude of the terms summed. Normalised hidden states
(LayerNorm / RMSNorm outputs) are of order one whatever the logit, so the magnitude is
``max(1, max |reference|)``.

The worst-case bound is conservative by design (typical errors grow like ``sqrt(n) u``), and the
tests that use it also assert that what they check (an update, a perturbation) moves the
compared quantity by at least ``DEFECT_MARGIN`` times the bound, so a real defect (a missing
scale, a transposed factor, a wrong layer) cannot hide under it: tests/test_export.py and
tests/test_lowrank.py plant such defects and expect the checks to fail.

What stays exact: bit-identical comparisons of one computation repeated on one machine (resume
against an uninterrupted run, a removed patch, z = 0), and the golden optimizer digests, which
are computed under pinned numerics (tests/test_optim.py; docs/method.md, "Repeatability").
"""

from __future__ import annotations

import math

import torch

U = 2.0**-24  # fp32 unit roundoff (round to nearest): half the machine epsilon 2^-23
PRODUCTS_PER_BLOCK = 6  # along a transformer block: q/k/v, scores, weights x values, output, MLP in, MLP out
ADAPTER_PRODUCTS = 2  # a low-rank update adds (x A) then (x A) B beside a projection
DEFECT_MARGIN = 10.0  # what a test checks must move the compared values by at least this many bounds


def gamma(n: int) -> float:
    """Higham's gamma_n: the relative error bound of a length-n sum or inner product in fp32."""
    assert n * U < 1, n
    return n * U / (1 - n * U)


def gamma_probabilistic(n: int, lam: float = 10.0) -> float:
    """Higham & Mary's probabilistic gamma (SIAM J. Sci. Comput. 41(5), 2019, Theorem 3.1): a length-n sum
    errs by at most ``exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1`` (about ``lam sqrt(n) u``) relatively, with
    probability at least ``1 - 2 exp(-lam^2 (1 - u)^2 / 2)``: 1 - 4e-22 at lam = 10. For long sums (a
    gradient's tens of thousands of terms), where the worst case ``n u`` is far from any real order."""
    return math.expm1(lam * math.sqrt(n) * U + n * U * U / (1 - U))


def model_dims(config) -> tuple[int, int]:
    """(blocks, widest inner dimension of a projection) of a transformers model config."""
    blocks = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    inner = next((getattr(config, k) for k in ("intermediate_size", "ffn_dim", "n_inner") if getattr(config, k, None)),
                 4 * hidden)  # fmt: skip
    return blocks, max(hidden, int(inner))


def forward_bound(config, reference: torch.Tensor, seq_len: int = 0, adapted: bool = False) -> float:
    """How far two fp32 evaluations of one forward pass of ``config``'s model may differ (absolute).

    ``seq_len``: the longest sequence (attention sums over it); ``adapted``: low-rank updates in
    every block (two more products in sequence).
    """
    blocks, width = model_dims(config)
    per_block = PRODUCTS_PER_BLOCK + (ADAPTER_PRODUCTS if adapted else 0)
    depth = blocks * per_block + 1  # + the LM head
    magnitude = max(1.0, float(reference.abs().max()))
    return 2 * depth * gamma(max(width, seq_len)) * magnitude


def loss_bound(logit_bound: float, loss: float, n: int) -> float:
    """Two fp32 cross-entropy means over ``n`` examples from logits within ``logit_bound`` of each other.

    d CE / d logits = p - y has an L1 norm <= 2, so each example's loss moves by <= 2 x the logit
    bound; the mean of n terms adds gamma_n |loss|.
    """
    return 2 * logit_bound + gamma(n) * abs(loss)


def elementwise_bound(values: torch.Tensor, operations: int) -> float:
    """``operations`` correctly rounded elementwise operations in sequence on tensors of ``values``' size."""
    return 2 * operations * U * max(1e-30, float(values.detach().abs().max()))


def sum_bound(n: int, magnitude: float) -> float:
    """Two fp32 sums of the same n terms of at most ``magnitude`` each, in different orders."""
    return 2 * gamma(n) * n * magnitude


def max_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().float() - ref.detach().float()).abs().max())


def within(got: torch.Tensor, ref: torch.Tensor, bound: float) -> bool:
    """The same function up to fp32 rounding: max |got - ref| <= bound. It implies the same prediction on
    every example whose reference margin between its top two classes exceeds twice the bound (a closer
    call may flip under rounding on another CPU, and is no defect)."""
    return max_diff(got, ref) <= bound


def assert_within(got: torch.Tensor, ref: torch.Tensor, bound: float, what: str = "values") -> None:
    assert within(got, ref, bound), f"{what}: max |diff| {max_diff(got, ref):.3g} exceeds the fp32 bound {bound:.3g}"


def assert_moves(changed: torch.Tensor, ref: torch.Tensor, bound: float, what: str = "the update") -> None:
    """``changed`` differs from ``ref`` by far more than ``bound``: a check at ``bound`` can see it."""
    diff = max_diff(changed, ref)
    assert diff > DEFECT_MARGIN * bound, (
        f"{what} moves the values by {diff:.3g}, under {DEFECT_MARGIN:g} x the bound {bound:.3g}: "
        "the check could not tell it from rounding"
    )


def assert_derivatives_agree(exp, loss: float, total: float, d: float, expected: float, terms: float,
                             n_params: int) -> None:  # fmt: skip
    """Forward mode (a jvp) against reverse mode (backward) on ``exp``'s train set: the same loss, and the
    same directional derivative ``d = sum_i g_i v_i``.

    The loss: two evaluations of one forward pass (``loss_bound``). The derivative: each term carries the
    chain's relative bound (forward or backward through the same products), and the sum of ``n_params``
    terms adds the probabilistic gamma_n, both relative to ``terms = sum_i |g_i v_i|`` (cancellation-safe).
    """
    config, seq = exp.loaded.model.config, max(map(len, exp.train.ids))
    logits = exp.logits(exp.train)
    assert abs(loss - total) <= loss_bound(forward_bound(config, logits, seq, adapted=True), total, len(exp.train)), (
        f"forward-mode loss {loss} against {total}"
    )
    rel = forward_bound(config, torch.ones(1), seq, adapted=True) + 2 * gamma_probabilistic(n_params)
    assert abs(d - expected) <= rel * terms, f"directional derivative {d} against {expected} (bound {rel * terms:.3g})"
    assert abs(expected) > rel * terms, "the derivative is lost in rounding: choose another point"
