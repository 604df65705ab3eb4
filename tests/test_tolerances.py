"""The tolerance helpers themselves (tests/tolerances.py): they hold for any summation order and
still see a wrong prediction."""

import torch

from tolerances import U, forward_bound, gamma, gamma_probabilistic, sum_bound, within


def test_gamma_is_highams_and_the_probabilistic_one_is_smaller_for_long_sums():
    assert gamma(1) == U / (1 - U)
    assert gamma(64) > 64 * U and gamma(64) < 65 * U
    assert gamma_probabilistic(100_000) < gamma(100_000) / 10


def test_the_sum_bound_holds_for_every_order_of_a_sum():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=gen) * torch.logspace(-3, 3, 4096)
    exact = float(x.double().sum())
    bound = sum_bound(len(x), float(x.abs().max())) / 2  # one fp32 sum against the exact value
    for order in (torch.arange(4096), torch.arange(4095, -1, -1), torch.randperm(4096, generator=gen)):
        acc = torch.zeros((), dtype=torch.float32)
        for v in x[order]:  # sequential (the worst growth), not torch's pairwise sum
            acc = acc + v
        assert abs(float(acc) - exact) <= bound
        assert abs(float(x[order].sum()) - exact) <= bound


def test_the_forward_bound_covers_a_float64_reference_of_a_chain_of_products():
    """A tiny fp32 'network' (blocks of matmul + normalisation) against its float64 value."""
    gen = torch.Generator().manual_seed(1)
    blocks, width = 3, 64
    config = type("C", (), {"num_hidden_layers": blocks, "hidden_size": width, "intermediate_size": width})()
    ws = [torch.randn(width, width, generator=gen) / width**0.5 for _ in range(blocks * 6 + 1)]
    x = torch.randn(8, width, generator=gen)

    def net(x, dtype):
        h = x.to(dtype)
        for i, w in enumerate(ws):
            h = h @ w.to(dtype)
            if i % 6 == 5:
                h = h / h.pow(2).mean(-1, keepdim=True).sqrt()  # RMS norm keeps the magnitude of order 1
        return h

    out32, out64 = net(x, torch.float32), net(x, torch.float64)
    assert float((out32.double() - out64).abs().max()) <= forward_bound(config, out32) / 2


def test_within_implies_the_same_predictions_wherever_the_margin_is_clear():
    gen = torch.Generator().manual_seed(2)
    ref = torch.randn(10_000, 3, generator=gen)
    bound = 0.05
    got = ref + (torch.rand(10_000, 3, generator=gen) * 2 - 1) * bound
    assert within(got, ref, bound) and not within(got + 2 * bound, ref, bound)
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert clear.sum() > 5_000 and (got.argmax(-1) == ref.argmax(-1))[clear].all()
