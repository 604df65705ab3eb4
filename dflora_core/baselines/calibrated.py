"""``zeroshot-calibrated``: the manual prompt with its label bias corrected (no weights change).

A calibration adds a per-class bias b to the verbalizer logits: predict argmax(l + b). The
candidates (``baseline.calibration``):
- ``none``: b = 0 (the zero-shot model);
- ``cc``: contextual calibration (Zhao et al. 2021): b = -log p_cf, p_cf the mean class
  probabilities of the content-free inputs "N/A", "" and "[MASK]" (as text) in the template;
- ``bias``: the b minimising the cross-entropy on the few-shot train set (convex, exact);
- ``threshold``: the b maximising train accuracy (for two classes a threshold on the logit
  margin, docs/design.md §6), ties broken by the train cross-entropy; for more classes a
  coordinate search over the class biases starting from ``bias``;
- ``auto`` (default): each of the above is fitted on train, the one with the best dev
  metric (then lower dev loss) is kept, the same selection rule as every other method.
Cost: one forward over train (1 call) + the content-free inputs; dev and test scoring as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..experiment import Experiment
from ..methods import RunContext
from ..metrics import fit_label_bias, metric_value

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, as plain text (never the model's own mask token)


def _acc(logits: torch.Tensor, labels: torch.Tensor, b: torch.Tensor) -> float:
    return float(((logits + b).argmax(1) == labels).float().mean())


def _ce(logits: torch.Tensor, labels: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cross_entropy(logits + b, labels))


def threshold_bias(logits: torch.Tensor, labels: torch.Tensor, sweeps: int = 3) -> torch.Tensor:
    """The bias maximising train accuracy (ties: lower train CE), by exact 1-D searches per class."""
    b = fit_label_bias(logits, labels)
    C = logits.shape[1]
    for _ in range(sweeps):
        changed = False
        for c in range(1, C):
            others = torch.cat([logits[:, :c] + b[:c], logits[:, c + 1 :] + b[c + 1 :]], 1).amax(1)
            cuts = torch.sort(others - logits[:, c]).values  # b_c above a cut: example switches to class c
            cands = torch.cat([cuts[:1] - 1.0, (cuts[1:] + cuts[:-1]) / 2, cuts[-1:] + 1.0, b[c : c + 1]])
            best_key, best_v = None, b[c]
            for v in cands.tolist():
                trial = b.clone()
                trial[c] = v
                key = (_acc(logits, labels, trial), -_ce(logits, labels, trial))
                if best_key is None or key > best_key:
                    best_key, best_v = key, v
            if float(best_v) != float(b[c]):
                b[c] = best_v
                changed = True
        if not changed:
            break
    return b


def content_free_bias(exp: Experiment) -> tuple[torch.Tensor, int]:
    """-log of the mean class probabilities of the content-free inputs; also how many inputs were scored."""
    tok = exp.loaded.tokenizer
    n_fields = len(exp.split.train[0].texts)
    rows = []
    for text in CONTENT_FREE:
        ids, pos, _ = exp.encoder.encode_one([text] * n_fields)
        rows.append((ids, pos))
    from ..models.scoring import EncodedSet

    data = EncodedSet([r[0] for r in rows], [r[1] for r in rows], torch.zeros(len(rows), dtype=torch.long),
                      tok.pad_token_id)  # fmt: skip
    probs = exp.logits(data).softmax(1).mean(0)
    return -probs.clamp_min(1e-12).log(), len(rows)


def run_calibrated(exp: Experiment, ctx: RunContext) -> dict:
    choice = exp.cfg.baseline.calibration
    metric = exp.task.metric
    train_lg, dev_lg = exp.logits(exp.train), exp.logits(exp.dev)
    ytr, ydev = exp.train.labels, exp.dev.labels
    C = train_lg.shape[1]
    cf_bias, n_cf = content_free_bias(exp)
    fits = {
        "none": torch.zeros(C),
        "cc": cf_bias,
        "bias": fit_label_bias(train_lg, ytr),
        "threshold": threshold_bias(train_lg, ytr),
    }
    if choice != "auto":
        fits = {choice: fits[choice]}
    rows = {}
    for name, b in fits.items():
        rows[name] = {
            "bias": b.tolist(),
            "train": metric_value(metric, (train_lg + b).argmax(1).numpy(), ytr.numpy()),
            "train_loss": _ce(train_lg, ytr, b),
            "dev": metric_value(metric, (dev_lg + b).argmax(1).numpy(), ydev.numpy()),
            "dev_loss": _ce(dev_lg, ydev, b),
        }
    chosen = max(rows, key=lambda k: (rows[k]["dev"], -rows[k]["dev_loss"]))
    bias = fits[chosen]
    test_res = exp.score(exp.logits(exp.test_set) + bias, exp.test_set).as_dict()
    dev_res = exp.score(dev_lg + bias, exp.dev).as_dict()
    ctx.write_json("calibration.json", {"chosen": chosen, "candidates": rows})
    return {
        "test": test_res,
        "calls": 1,  # one forward over the train set
        "forward_passes": len(exp.train) + n_cf,
        "backward_passes": 0,
        "best_dev": {**dev_res, "calibration": chosen},
        "calibration": chosen,
        "calibration_bias": bias.tolist(),
        "calibration_candidates": rows,
        "params_optimised": C,
        "params_stored": C,
    }

