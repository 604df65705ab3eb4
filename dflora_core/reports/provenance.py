"""What a table or figure says about the runs behind it, read from their records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ..fileio import atomic_write_bytes
from ..identity import IGNORED_FIELDS

# what a record without search.dev_rule meant (identity.LEGACY_VALUES; reports read records only)
RULE_TEXT = {
    "periodic+final": "dev selection every eval_every calls, at each test_at call and at the end",
    "periodic": "old dev rule (every eval_every calls only: the end of a run was never selectable)",
}


def dev_rule(record: dict) -> str:
    """The dev rule a recorded run used ("periodic" for records written before the field existed)."""
    search = (record.get("config") or {}).get("search") or {}
    return search.get("dev_rule", "periodic")


def selects_on_dev(record: dict) -> bool:
    """Whether the recorded run chose a snapshot on dev (the prompt-only arms and no-opt never read the rule)."""
    return "search.dev_rule" not in IGNORED_FIELDS.get(str(record.get("method")), ())


def dev_rule_text(records: Iterable[dict]) -> str:
    """One phrase for the rules of ``records`` that select on dev: the rule, or how many runs used each."""
    counts: dict[str, int] = {}
    for rec in records:
        if rec.get("config") and selects_on_dev(rec):
            counts[dev_rule(rec)] = counts.get(dev_rule(rec), 0) + 1
    if not counts:
        return ""
    if len(counts) == 1:
        return RULE_TEXT[next(iter(counts))]
    return "mixed dev rules: " + ", ".join(f"{n} run{'s' * (n != 1)} {RULE_TEXT[r]}" for r, n in sorted(counts.items()))


# -- which copy of a run a figure shows, and the run folders behind every table cell and curve ---------------
PREFER_TEXT = {
    "committed": "the extra root's (committed) record",
    "local": "this machine's (runs_root) record",
}
PROVENANCE = "PROVENANCE.md"


def choice_text(prefer: str, records: Iterable[dict], shadowed: dict[str, list[str]]) -> str:
    """The footer phrase: the profile's choice between two copies of a run, and how many of ``records`` had two."""
    records = list(records)
    both = sum(1 for r in records if r.get("_dir") in shadowed)
    return (f"prefer: {prefer} (a run both in runs_root and in an extra root shows {PREFER_TEXT[prefer]}; "
            f"{both} of these {len(records)} runs had both); run folders: {PROVENANCE}")  # fmt: skip


def run_label(record: dict) -> str:
    """What a run is in its table or figure: its arm label, else its method and the setting its study varies."""
    tags = record.get("tags") or {}
    if tags.get("label"):
        return str(tags["label"])
    if tags.get("axis") not in (None, "method"):
        return f"{record.get('method')} {tags['axis']}={tags.get('value')}"
    return str(record.get("method"))


def _folder(path: str | None, base: Path) -> str:
    if not path:
        return "-"
    p = Path(path)
    return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)


def provenance_markdown(entries: Sequence[tuple[str, Sequence[dict], str]], prefer: str,
                        shadowed: dict[str, list[str]], base: Path) -> str:  # fmt: skip
    """PROVENANCE.md: for each (file stem, records, other source) a table of the run folder behind every
    cell and curve (row: the run's label, column: task, seed) and the copies the profile did not show."""
    lines = ["# Where every figure and table comes from\n",
             f"Run folders relative to the repository. Where runs_root and an extra root hold the same run, the "
             f"profile shows {PREFER_TEXT[prefer]} (`prefer: {prefer}`); the other copy is listed as not shown.\n"]  # fmt: skip
    for stem, records, source in entries:
        lines.append(f"## {stem}\n")
        if source:
            lines.append(f"{source}\n")
        rows = sorted((run_label(r), str(r.get("task")), r.get("seed") or 0, r.get("_dir") or "") for r in records)
        if rows:
            lines += ["| run | task | seed | run folder | same run, not shown |", "|---|---|---:|---|---|"]
            for label, task, seed, folder in rows:
                other = ", ".join(_folder(x, base) for x in shadowed.get(folder, []))
                lines.append(f"| {label} | {task} | {seed} | {_folder(folder, base)} | {other} |")
            lines.append("")
        elif not source:
            lines.append("No runs recorded yet.\n")
    return "\n".join(lines)


def write_provenance(folder: str | Path, entries: Sequence[tuple[str, Sequence[dict], str]], prefer: str,
                     shadowed: dict[str, list[str]], base: Path) -> Path:  # fmt: skip
    """``folder``/PROVENANCE.md (``provenance_markdown``), written atomically; returns its path."""
    path = Path(folder) / PROVENANCE
    atomic_write_bytes(path, provenance_markdown(entries, prefer, shadowed, base).encode())
    return path
