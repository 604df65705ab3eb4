"""What a table or figure says about the runs behind it, read from their records."""

from __future__ import annotations

from collections.abc import Iterable

# what a record without search.dev_rule meant (identity.LEGACY_VALUES; reports read records only)
RULE_TEXT = {
    "periodic+final": "dev selection every eval_every calls, at each test_at call and at the end",
    "periodic": "old dev rule (every eval_every calls only: the end of a run was never selectable)",
}


def dev_rule(record: dict) -> str:
    """The dev rule a recorded run used ("periodic" for records written before the field existed)."""
    search = (record.get("config") or {}).get("search") or {}
    return search.get("dev_rule", "periodic")


def dev_rule_text(records: Iterable[dict]) -> str:
    """One phrase for the rules of ``records``: the rule, or how many runs used each."""
    counts: dict[str, int] = {}
    for rec in records:
        if rec.get("config"):
            counts[dev_rule(rec)] = counts.get(dev_rule(rec), 0) + 1
    if not counts:
        return ""
    if len(counts) == 1:
        return RULE_TEXT[next(iter(counts))]
    return "mixed dev rules: " + ", ".join(f"{n} runs {RULE_TEXT[r]}" for r, n in sorted(counts.items()))
