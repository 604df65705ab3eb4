"""``icl``: in-context learning with demonstrations from the few-shot train split (no weights change).

Each demonstration is the task's template filled with a train example and its label word
(causal: "<text> . It was positive"; masked: the mask replaced by the word). The order is
fixed by the seed: rounds of one example per class (classes in a seeded order, examples of a
class in a seeded order), so any prefix of the list is class-balanced to within one example.
``baseline.icl_shots`` examples per class are used (None = the whole train split), joined by
a newline (causal) or a space (masked) and put before the query prompt, after the
tokenizer's leading special tokens. A query keeps as many demonstrations as fit in
``min(baseline.icl_context, the model's positions)`` tokens, dropping the ones farthest from
the query first. Nothing is searched: calls = 0; dev is scored for the record.
"""

from __future__ import annotations

import numpy as np

from ..experiment import Experiment
from ..methods import RunContext
from ..models.scoring import EncodedSet
from ..seeds import generator
from ._common import leading_specials, max_positions


def demonstration_order(labels: list[int], shots: int | None, seed: int, scheme: int = 1) -> list[int]:
    """Indices of the demonstrations, class-balanced rounds in a seeded order."""
    rng = generator(seed, "icl_order", scheme=scheme)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    for c in by_class:
        idx = by_class[c]
        by_class[c] = [idx[j] for j in rng.permutation(len(idx))][: shots or len(idx)]
    order: list[int] = []
    rounds = max(len(v) for v in by_class.values())
    classes = sorted(by_class)
    for r in range(rounds):
        for c in [classes[j] for j in rng.permutation(len(classes))]:
            if r < len(by_class[c]):
                order.append(by_class[c][r])
    return order


def demonstration_text(exp: Experiment, texts, label: int) -> str:
    tpl = exp.encoder.template
    word = tpl.words[label]
    fields = [t.strip() for t in texts]
    if exp.loaded.family == "masked":
        return tpl.pattern.format(*fields, mask=word.strip())
    return tpl.pattern.format(*fields) + word


def icl_sets(exp: Experiment) -> tuple[dict[str, EncodedSet], dict]:
    """Dev and test prompts with demonstrations prepended; and what was done."""
    cfg, tok = exp.cfg, exp.loaded.tokenizer
    train = exp.split.train
    order = demonstration_order([ex.label for ex in train], cfg.baseline.icl_shots, cfg.seed, cfg.seed_scheme)
    sep = "\n" if exp.loaded.family == "causal" else " "
    demos = [tok(demonstration_text(exp, train[i].texts, train[i].label) + sep, add_special_tokens=False).input_ids
             for i in order]  # fmt: skip
    limit = cfg.baseline.icl_context
    positions = max_positions(exp.loaded.model)
    if positions is not None:
        limit = min(limit, positions)
    lead = leading_specials(tok)
    used: list[int] = []
    sets = {}
    for name in ("dev", "test_set"):
        data: EncodedSet = getattr(exp, name)
        ids_out, pos_out = [], []
        for seq, pos in zip(data.ids, data.positions, strict=True):
            room = limit - len(seq)
            k, total = 0, 0
            while k < len(demos) and total + len(demos[-1 - k]) <= room:  # keep the ones nearest the query
                total += len(demos[-1 - k])
                k += 1
            prefix = [t for d in demos[len(demos) - k :] for t in d]
            ids_out.append(seq[:lead] + prefix + seq[lead:])
            pos_out.append(pos + len(prefix) if pos >= lead else pos)
            if name == "test_set":
                used.append(k)
        sets[name] = EncodedSet(ids_out, pos_out, data.labels, data.pad_id, data.truncated)
    info = {
        "demonstrations": len(demos),
        "order": [int(i) for i in order],
        "separator": sep,
        "context_limit": limit,
        "demos_used_test_mean": float(np.mean(used)) if used else 0.0,
        "demos_used_test_min": int(min(used)) if used else 0,
        "demo_tokens": int(sum(len(d) for d in demos)),
        "test_prompt_tokens_mean": float(sets["test_set"].lengths.mean()),
    }
    return sets, info


def run_icl(exp: Experiment, ctx: RunContext) -> dict:
    sets, info = icl_sets(exp)
    dev = exp.evaluate(sets["dev"]).as_dict()
    test = exp.evaluate(sets["test_set"]).as_dict()
    ctx.write_json("icl.json", info)
    return {
        "test": test,
        "best_dev": dev,
        "calls": 0,
        "forward_passes": 0,  # no search; dev/test scoring is not counted for any method
        "backward_passes": 0,
        "icl": info,
        "params_optimised": 0,
        "params_stored": 0,
    }

