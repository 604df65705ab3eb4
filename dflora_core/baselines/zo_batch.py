"""Several perturbed copies of the PEFT LoRA factors scored in one batched forward.

The ``lora`` scheme of the zeroth-order methods tunes PEFT's LoRA factors (``zo_schemes``). A pool
method scores P perturbed models per step; one by one that is P forwards, perturbing and restoring the
factors in place each time. Here the batch is repeated P times (candidate-major, as the population
evaluator of the layer-wise search does) and every PEFT LoRA layer computes each candidate's delta
with its own factors by a batched matmul:

    y_p = base(x_p) + scaling * (x_p A_p^T) B_p^T,   A_p = A + d_A[p],  B_p = B + d_B[p]

so a step's pool costs one forward of P x the batch (each candidate still counts as one forward
pass: docs/baselines.md). The factors themselves are not touched.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..models.scoring import forward_class_logits


def lora_layers(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> list[tuple[torch.nn.Module, str, str]]:
    """(PEFT LoRA layer, name of its A weight, name of its B weight) of every adapted module."""
    owner = {id(p): n for n, p in params.items()}
    out = []
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            if id(a) in owner and id(b) in owner:
                out.append((module, owner[id(a)], owner[id(b)]))
    return out


@contextlib.contextmanager
def candidates(layers, params: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]):
    """Every LoRA layer computes P candidates (``deltas[name]``: [P, *shape], zero where absent)."""
    installed = []
    try:
        for module, a_name, b_name in layers:
            A, B = params[a_name], params[b_name]
            P = next(iter(deltas.values())).shape[0]
            As = A.unsqueeze(0) + deltas[a_name] if a_name in deltas else A.unsqueeze(0).expand(P, -1, -1)
            Bs = B.unsqueeze(0) + deltas[b_name] if b_name in deltas else B.unsqueeze(0).expand(P, -1, -1)
            scaling = module.scaling["default"]

            def forward(x, *args, _m=module, _As=As, _Bs=Bs, _s=scaling, **kwargs):
                y = _m.base_layer(x, *args, **kwargs)
                xs = x.reshape(_As.shape[0], -1, x.shape[-1]).to(_As.dtype)  # candidate-major rows
                d = torch.bmm(torch.bmm(xs, _As.transpose(1, 2)), _Bs.transpose(1, 2)) * _s
                return y + d.reshape(y.shape).to(y.dtype)

            module.forward = forward  # an instance attribute shadows PEFT's forward
            installed.append(module)
        yield
    finally:
        for module in installed:
            del module.forward


def pool_logits(exp, layers, params: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], data) -> torch.Tensor:
    """Class logits [P, N, C] of P candidates on ``data``, in one forward per token-budget chunk."""
    P = next(iter(deltas.values())).shape[0]
    out = torch.empty(P, len(data), len(exp.head.weight))
    with torch.no_grad(), candidates(layers, params, deltas):
        for batch in data.batches(exp.max_tokens, exp.loaded.device, copies=P):
            logits = forward_class_logits(exp.loaded, exp.head, batch, copies=P, dtype=exp.dtype)
            out[:, batch.index] = logits.view(P, len(batch.index), -1).float().cpu()
    return out


def pool_losses(exp, layers, params, deltas, data, loss_fn) -> np.ndarray:
    """The loss of each of the P candidates on ``data``."""
    logits = pool_logits(exp, layers, params, deltas, data)
    return np.array([float(loss_fn(lg, data.labels)) for lg in logits])
