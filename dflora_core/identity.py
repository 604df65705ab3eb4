"""Run identity: the fields that make a run what it is, the short hash that names its folder, and the
hashes earlier rules gave the same run (aliases), so that committed folders stay found.

A run is identified by the fields of its configuration that differ from the defaults, so a field added
later with a default leaves every existing run's identity alone. That breaks when the new default
changes what a run *does* (``search.dev_rule``: the end of a run became a selection candidate): a
config written before the field has no key for it and meant the old behaviour. Such fields are listed
in ``LEGACY_VALUES`` with the value a config without them meant; ``config_from_record`` fills them in
when a stored config is read, and the identity version is bumped, so

- a run of the new default never reuses an old run's folder (their fields differ),
- an old run is still found by the hash its folder was named with (``identity_aliases``), and
- an old record reads as what it was (``search.dev_rule = "periodic"``), whatever the defaults now.

A method's identity also leaves out the fields it never reads (``IGNORED_FIELDS``, version 3): the
zero-shot arms do not search, so another ``search.budget`` is the same zero-shot run, found and reused.
Folders named by an earlier version, whose hash held those fields, are found by that hash (an alias) or
by their records, whose identity is computed by the same rule.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .config import RunConfig, flatten, from_dict

IDENTITY_VERSION = 3  # 3: fields a method ignores left out; 2: search.dev_rule (2026-12-07); 1: the folders before
# the same run with or without: a progress bar, the user's permission for task files to name files outside their folder
NOT_IDENTITY = ("progress", "data.allow_task_files_outside")
# field -> what a stored config without that key meant (the code's behaviour before the field existed)
LEGACY_VALUES: dict[str, Any] = {"search.dev_rule": "periodic"}


def _defaults() -> dict[str, Any]:
    return flatten(RunConfig().to_dict())


def _sections(*sections: str, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every field of the config ``sections`` (dotted paths), except ``but``."""
    return tuple(k for k in _defaults() if k.split(".")[0] in sections and k not in but)


# method -> the config fields its runner never reads (the methods table's rows, by name: identity sits below it).
# The prompt-only arms neither search nor adapt: budget, optimizer, low-rank and peer settings change nothing.
IGNORED_FIELDS: dict[str, tuple[str, ...]] = {
    "zeroshot": _sections("lowrank", "optim", "search", "baseline"),
    "zeroshot-calibrated": _sections("lowrank", "optim", "search", "baseline", but=("baseline.calibration",)),
    "icl": _sections("lowrank", "optim", "search", "baseline", but=("baseline.icl_shots", "baseline.icl_context")),
    # random z from the start distribution: the projections (lowrank, optim.sigma) and the draws, no search
    "no-opt": _sections("optim", "search", "baseline", but=("optim.sigma", "baseline.init_draws")),
}


def with_legacy_values(config: dict[str, Any]) -> dict[str, Any]:
    """A stored (nested) config with every ``LEGACY_VALUES`` field it lacks filled in."""
    out = json.loads(json.dumps(config))
    for path, value in LEGACY_VALUES.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, value)
    return out


def config_from_record(config: dict[str, Any]) -> RunConfig:
    """The RunConfig of a stored config (record.json, config.json): legacy fields filled, and no permission
    for task files outside their folder (a stored one is not the reader's: the command's flag grants it)."""
    data = with_legacy_values(config)
    if isinstance(data.get("data"), dict):
        data["data"]["allow_task_files_outside"] = False
    return from_dict(data)


def _changed(cfg: RunConfig) -> dict[str, Any]:
    """The fields differing from the defaults (dotted paths): a run's identity up to version 2."""
    values, defaults = flatten(cfg.to_dict()), _defaults()
    return {k: v for k, v in sorted(values.items()) if k not in NOT_IDENTITY and defaults.get(k, object()) != v}


def identity_fields(cfg: RunConfig) -> dict[str, Any]:
    """The fields that make this run what it is: those differing from the defaults that its method reads."""
    ignored = IGNORED_FIELDS.get(cfg.method, ())
    return {k: v for k, v in _changed(cfg).items() if k not in ignored}


def _hash(version: int, fields: dict[str, Any]) -> str:
    doc = {"identity_version": version, "fields": fields}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]


def identity(cfg: RunConfig) -> str:
    """A short hash of ``identity_fields`` and ``IDENTITY_VERSION``: the suffix of a run's folder name."""
    return _hash(IDENTITY_VERSION, identity_fields(cfg))


def identity_aliases(cfg: RunConfig) -> list[str]:
    """The hashes earlier identity versions gave this run, newest first (its folder may be named by one).

    Versions 1 and 2 hashed every field that differs from the defaults, ignored or not (so a zero-shot
    run's alias holds the budget it was launched with; another budget's folder is found by its record).
    Version 1 knew no ``LEGACY_VALUES`` field: only a config holding every legacy value was a version-1
    run, and its version-1 fields are the others.
    """
    fields = _changed(cfg)
    out = [_hash(2, fields)]
    values = flatten(cfg.to_dict())
    if all(values.get(path) == value for path, value in LEGACY_VALUES.items()):
        out.append(_hash(1, {k: v for k, v in fields.items() if k not in LEGACY_VALUES}))
    return out


def upgrade_fields(fields: dict[str, Any], version: int | None) -> dict[str, Any]:
    """``identity_fields`` stored by an earlier version (a checkpoint) in this version's terms."""
    out = dict(fields)
    if version is None or version < 2:
        defaults = _defaults()
        out = {**{k: v for k, v in LEGACY_VALUES.items() if defaults.get(k) != v}, **out}
    if version is None or version < 3:
        ignored = IGNORED_FIELDS.get(out.get("method", RunConfig.method), ())
        out = {k: v for k, v in out.items() if k not in ignored}
    return dict(sorted(out.items()))
