"""Task metrics and fitness losses over verbalizer logits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HINGE_MARGIN = 2.0  # docs/design.md §1: hinge loss option, margin 2


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean()) if len(labels) else float("nan")


def f1_binary(pred: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (MRPC convention: positive = paraphrase = 1)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    tp = int(((pred == positive) & (labels == positive)).sum())
    fp = int(((pred == positive) & (labels != positive)).sum())
    fn = int(((pred != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


METRICS = {"accuracy": accuracy, "f1": f1_binary}


def metric_value(metric: str, pred, labels) -> float:
    return METRICS[metric](pred, labels)


def losses(logits: torch.Tensor, labels: torch.Tensor, kind: str, metric: str = "accuracy") -> torch.Tensor:
    """Per-candidate fitness (lower is better) from class logits [P, N, C] and labels [N].

    ce: mean cross-entropy over the verbalizer logits (softmax over the label words only);
    hinge: mean multi-class hinge with margin 2 on the logits (true class vs the best other);
    neg_metric: minus accuracy (minus F1 for MRPC), a step function that CMA-ES can still rank.
    """
    logits = logits.float()
    P, N, C = logits.shape
    lab = labels.to(logits.device).expand(P, N)
    if kind == "ce":
        return F.cross_entropy(logits.reshape(P * N, C), lab.reshape(-1), reduction="none").view(P, N).mean(1)
    if kind == "hinge":
        true = logits.gather(2, lab.unsqueeze(2)).squeeze(2)
        other = logits.masked_fill(F.one_hot(lab, C).bool(), float("-inf")).amax(2)
        return (HINGE_MARGIN - true + other).clamp_min(0).mean(1)
    if kind == "neg_metric":
        pred = logits.argmax(2).cpu().numpy()
        lab_np = labels.cpu().numpy()
        return torch.tensor([-metric_value(metric, p, lab_np) for p in pred], dtype=torch.float32)
    raise ValueError(f"unknown loss {kind!r}")


LOSSES = ("ce", "hinge", "neg_metric")


def fit_label_bias(logits: torch.Tensor, labels: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """The bias b (b_0 = 0) minimising mean CE of softmax(logits + b): convex, solved by L-BFGS."""
    C = logits.shape[1]
    free = torch.zeros(C - 1, dtype=torch.float64, requires_grad=True)
    lg = logits.double()
    opt = torch.optim.LBFGS([free], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-10)

    def closure():
        opt.zero_grad()
        b = torch.cat([torch.zeros(1, dtype=torch.float64), free])
        loss = F.cross_entropy(lg + b, labels) + 1e-6 * (free**2).sum()  # tiny ridge: finite b if separable
        loss.backward()
        return loss

    opt.step(closure)
    return torch.cat([torch.zeros(1, dtype=torch.float64), free.detach()]).float()
