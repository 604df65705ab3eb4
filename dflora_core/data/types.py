"""Typed records shared by the data layer and the rest of the package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How the files behind a split or test set were checked when read, strongest first: size and md5
#: against the data root's MANIFEST.json; row counts equal to the task's declared sizes (a root
#: without a manifest); nothing to check against (no manifest and no declared size).
VERIFICATION_LEVELS: tuple[str, ...] = ("manifest", "row counts", "unverified")


@dataclass(frozen=True)
class Example:
    """One classification example: one or two text fields and a label index.

    ``source`` says where it came from (``relative/path:line``) so an error or a
    duplicate can be traced back to the raw file.
    """

    texts: tuple[str, ...]
    label: int
    source: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its classes, text fields, metric and where its data lives."""

    name: str  # registry key, e.g. "sst2"
    title: str  # display name, e.g. "SST-2"
    classes: tuple[str, ...]  # label names in label-index order
    n_fields: int  # 1 (single sentence) or 2 (sentence pair)
    metric: str  # "accuracy" or "f1" (MRPC, positive class = 1)
    test_official: bool  # False where only a sample of the official test set is available
    test_name: str  # e.g. "GLUE validation (872)" or "2k test sample"
    fixed_seeds: tuple[int, ...]  # seeds of the fixed 16-shot splits shipped with the data
    pool_kind: str  # "full", "partial" or "none": the train pool for seeded sampling
    default_split_source: str  # "pool" or "fixed": how few-shot splits are made by default
    notes: str = ""  # caveats shown next to every result on this task
    # declared sizes, checked when a data root has no manifest (data/fewshot.py): examples in the
    # test set, and rows read from the pool files before cleaning (None: not declared)
    test_size: int | None = None
    pool_size: int | None = None
    # a task declared in a YAML file (data/user_task.py, docs/tasks.md): its files, reader and templates;
    # None for the seven built-in tasks, whose files are the tables of data/fewshot.py
    files: Any = None
    # a task file's examples per class (its ``shots:`` key: small datasets need fewer than the default 16);
    # a run's data.shots unless the configuration states one (config.task_shots)
    shots: int | None = None


@dataclass
class FewShotSplit:
    """The few-shot train and dev sets of one run."""

    task: str
    seed: int
    k: int  # examples per class in train (and in dev)
    source: str  # "pool" (sampled here) or "fixed" (shipped 16-shot folder)
    train: list[Example]
    dev: list[Example]
    origin: str = ""  # the files they came from
    verification: str = "unverified"  # how its files were checked: see VERIFICATION_LEVELS


@dataclass
class TestSet:
    """The evaluation set of a task, possibly a stratified subsample for quick runs."""

    task: str
    examples: list[Example]
    official: bool  # the official test set (or the paper's stand-in for it) in full
    name: str  # e.g. "GLUE validation (872)"; "(subsample 200 of 872, seed 0)" appended when subsampled
    full_size: int
    max_test: int | None = None
    subsample_seed: int | None = None
    origin: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)
    verification: str = "unverified"  # how its files were checked: see VERIFICATION_LEVELS
