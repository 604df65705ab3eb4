"""Few-shot splits and test sets of the seven tasks, built from the raw files under :func:`data_root`.

Sampling from a train pool (``source="pool"``), following the paper (BBT/BBTv2 "true few-shot"):

1. The pool is read in file order and cleaned, texts compared through :func:`text_key` (case,
   whitespace and the PTB ``\\/`` escape ignored): texts that occur with conflicting labels are
   dropped entirely; pool texts that also occur in the task's test set are dropped (for AG News
   also compared with the test descriptions alone, since that pool has no titles); repeated texts
   keep their first row only. :func:`pool_report` gives the counts.
2. ``order = numpy.random.default_rng(seed).permutation(len(pool))``.
3. Walking ``pool[order[0]], pool[order[1]], ...``: an example goes to train while its class has
   fewer than ``k`` train examples, else to dev while its class has fewer than ``k`` dev examples,
   else it is skipped; the walk stops when every class has ``k`` of each. Train and dev keep the
   walk order. They are disjoint, balanced, and share no text (step 1).

Fixed splits (``source="fixed"``) are the shipped LM-BFF / RLPrompt ``16-<seed>/{train,dev}.tsv``
files; for ``k < 16`` the first ``k`` rows of each class in file order are taken.

Every file a split or test set reads is verified when it is read: against the data root's
``MANIFEST.json`` (size and md5, :func:`dflora_core.data.manifest.check_file`) or, for a root
without one, by its row count against the task's declared sizes (``TaskSpec.test_size``,
``pool_size``; a fixed split file holds 16 rows per class). A file with no rows is always refused.
The outcome is the ``verification`` field of the split and of the test set (``VERIFICATION_LEVELS``).
"""

from __future__ import annotations

import functools
import numbers
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import loaders as L
from .manifest import verification_level, verify_files, weakest
from .root import ENV_VAR, data_root
from .tasks import get_task
from .types import Example, FewShotSplit, TaskSpec, TestSet

__all__ = [
    "ENV_VAR",
    "FIXED_DIRS",
    "POOL_FILES",
    "TEST_FILES",
    "data_root",
    "fixed_split_paths",
    "load_pool",
    "load_test",
    "pool_report",
    "sample_fewshot",
    "stratified_indices",
    "text_key",
]

_FIXED_K = 16

#: Files of each task's test set (the first one holds the examples).
TEST_FILES: dict[str, tuple[str, ...]] = {
    "sst2": ("sst2/glue/SST-2/dev.tsv",),
    "yelp": ("yelp_polarity/test_sample/test.tsv",),
    "agnews": ("agnews/charcnn/ag_news_csv/test.csv",),
    "dbpedia": ("dbpedia/test_sample/test.json", "dbpedia/test_sample/labels.json"),
    "mrpc": ("mrpc/glue/MRPC/dev.tsv",),
    "snli": ("snli/hf_export/snli_test.csv",),
    "rte": ("rte/glue/RTE/dev.tsv",),
}

#: Folder holding ``16-<seed>/{train,dev}.tsv`` for each task.
FIXED_DIRS: dict[str, str] = {
    "sst2": "sst2/lmbff_k-shot/SST-2",
    "yelp": "yelp_polarity/rlprompt_16-shot/yelp-2",
    "agnews": "agnews/rlprompt_16-shot/agnews",
    "dbpedia": "dbpedia/rlprompt_16-shot/dbpedia",
    "mrpc": "mrpc/lmbff_k-shot/MRPC",
    "snli": "snli/lmbff_k-shot/SNLI",
    "rte": "rte/lmbff_k-shot/RTE",
}

#: Files of each task's train pool (tasks without a pool are absent).
POOL_FILES: dict[str, tuple[str, ...]] = {
    "sst2": ("sst2/glue/SST-2/train.tsv",),
    "agnews": ("agnews/train_pool_partial_alps/agnews/dev.tsv",),
    "mrpc": ("mrpc/glue/MRPC/msr_paraphrase_train.txt", "mrpc/glue/MRPC/dev_ids.tsv"),
    "snli": ("snli/train_pool_subset/SNLI/train.json", "snli/train_pool_subset/SNLI/dev.json"),
    "rte": ("rte/glue/RTE/train.tsv",),
}


# --------------------------------------------------------------------------- data root


def _root(root: str | Path | None, spec: TaskSpec | None = None) -> Path:
    if spec is not None and spec.files is not None:  # a task file: its paths are relative to its folder
        return Path(spec.files.root)
    if root is None:
        return data_root()
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} is not a folder")
    return path


# --------------------------------------------------------------------------- raw readers per task


def _test_files(spec: TaskSpec) -> tuple[str, ...]:
    return spec.files.test_files if spec.files is not None else TEST_FILES[spec.name]


def _pool_files(spec: TaskSpec) -> tuple[str, ...]:
    return spec.files.pool_files if spec.files is not None else POOL_FILES.get(spec.name, ())


# The file formats each task's test file and fixed splits come in (the SOURCE notes in data/);
# test and fixed splits share a format except SNLI (CSV test, TSV splits) and the RLPrompt splits.
_SHARED_FORMAT = {"sst2": L.read_glue_sst2_tsv, "rte": L.read_glue_rte_tsv, "mrpc": L.read_mrpc_tsv, "yelp": L.read_yelp_tsv}
_TEST_FORMAT = {
    **_SHARED_FORMAT,
    "snli": L.read_snli_csv,
    "agnews": L.read_agnews_csv,
    "dbpedia": lambda root, rel: L.read_dbpedia_json(root, rel, TEST_FILES["dbpedia"][1]),
}
_FIXED_FORMAT = {
    **_SHARED_FORMAT,
    "snli": L.read_snli_tsv,
    "agnews": lambda root, rel: L.read_rlprompt_tsv(root, rel, len(get_task("agnews").classes)),
    "dbpedia": lambda root, rel: L.read_rlprompt_tsv(root, rel, len(get_task("dbpedia").classes)),
}


def _read_test_raw(task: str, root: Path) -> list[Example]:
    if get_task(task).files is not None:  # a task file (data/user_task.py) reads its own columns
        return get_task(task).files.read_test(root)
    return _TEST_FORMAT[task](root, TEST_FILES[task][0])


def _read_fixed_raw(task: str, root: Path, rel: str) -> list[Example]:
    if get_task(task).files is not None:
        return get_task(task).files.read(root, rel)
    return _FIXED_FORMAT[task](root, rel)


def _read_pool_raw(task: str, root: Path) -> list[Example]:
    if get_task(task).files is not None:
        return get_task(task).files.read_pool(root)
    files = POOL_FILES[task]
    if task == "sst2":
        return L.read_glue_sst2_tsv(root, files[0])
    if task == "rte":
        return L.read_glue_rte_tsv(root, files[0])
    if task == "mrpc":
        return L.read_mrpc_tsv(root, files[0], files[1])
    if task == "snli":
        return [e for rel in files for e in L.read_snli_json(root, rel)]
    if task == "agnews":
        return L.read_agnews_alps_tsv(root, files[0])
    raise AssertionError(task)


def _test_keys(task: str, root: Path) -> frozenset[str]:
    keys = {text_key(e) for e in _read_test_raw(task, root)}
    if task == "agnews":  # the alps pool has descriptions only: compare with the test descriptions too
        keys |= {text_key(e) for e in L.read_agnews_csv(root, TEST_FILES[task][0], True)}
    return frozenset(keys)


def text_key(item: Example | tuple[str, ...] | str) -> str:
    """Normalised text used to find duplicates and test overlap: lower case, no whitespace at all,
    PTB ``\\/`` read as ``/``; the fields of a pair are joined with a unit separator."""
    texts = item.texts if isinstance(item, Example) else (item,) if isinstance(item, str) else item
    return "\x1f".join("".join(t.replace("\\/", "/").lower().split()) for t in texts)


# --------------------------------------------------------------------------- verification


def _test_examples(spec: TaskSpec, root: Path) -> tuple[list[Example], str]:
    files = _test_files(spec)
    listed = verify_files(root, {rel: spec.test_size if i == 0 else None for i, rel in enumerate(files)})
    examples = _read_test_raw(spec.name, root)
    what = f"the {spec.title} test set, {spec.test_name}"
    return examples, verification_level(listed, files[0], len(examples), spec.test_size, what)


# --------------------------------------------------------------------------- pool


def _stamps(root: Path, files: tuple[str, ...]) -> tuple:
    out = []
    for rel in files:
        try:
            st = (root / rel).stat()
        except OSError:
            raise DataError(f"{rel}: file not found under data root {root}") from None
        out.append((rel, st.st_mtime_ns, st.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=32)
def _clean_pool(task: str, root_s: str, stamps: tuple) -> tuple[tuple[Example, ...], tuple]:
    root = Path(root_s)
    raw = _read_pool_raw(task, root)
    by_key: dict[str, list[Example]] = {}
    for e in raw:
        by_key.setdefault(text_key(e), []).append(e)
    conflicting = {key for key, group in by_key.items() if len({e.label for e in group}) > 1}
    test_keys = _test_keys(task, root)
    kept: list[Example] = []
    seen: set[str] = set()
    n_dup = n_conf = n_test = 0
    for e in raw:
        key = text_key(e)
        if key in conflicting:
            n_conf += 1
        elif key in test_keys:
            n_test += 1
        elif key in seen:
            n_dup += 1
        else:
            kept.append(e)
            seen.add(key)
    n_classes = len(get_task(task).classes)
    counts = Counter(e.label for e in kept)
    report = {
        "files": _pool_files(get_task(task)),
        "raw_rows": len(raw),
        "duplicate_rows_removed": n_dup,
        "conflicting_label_rows_removed": n_conf,
        "test_overlap_removed": n_test,
        "size": len(kept),
        "per_class": tuple(counts.get(c, 0) for c in range(n_classes)),
    }
    return tuple(kept), tuple(report.items())


def _pool(task: str, root: Path) -> tuple[list[Example], dict]:
    spec = get_task(task)
    if spec.pool_kind == "none" or not _pool_files(spec):
        raise ConfigError(
            "source",
            f"task {spec.name!r} has no train pool: use source='fixed' with one of the seeds "
            f"{', '.join(map(str, spec.fixed_seeds))}",
        )
    pool_files = _pool_files(spec)
    one = len(pool_files) == 1
    listed = verify_files(root, {rel: spec.pool_size if one else None for rel in pool_files})
    test_level = _test_examples(spec, root)[1]  # the test texts are removed from the pool
    kept, items = _clean_pool(spec.name, str(root.resolve()), _stamps(root, pool_files + _test_files(spec)))
    report = dict(items)
    what = f"the {spec.title} train pool"
    level = verification_level(listed, pool_files[0], report["raw_rows"], spec.pool_size, what)
    return list(kept), {**report, "verification": weakest(level, test_level)}


def load_pool(task: str, *, root: str | Path | None = None) -> list[Example]:
    """The cleaned train pool of ``task`` (deduplicated, test texts removed), in file order."""
    return _pool(task, _root(root, get_task(task)))[0]


def pool_report(task: str, *, root: str | Path | None = None) -> dict:
    """Counts of the pool cleaning: raw rows, duplicates, conflicting labels, test overlap, size."""
    return _pool(task, _root(root, get_task(task)))[1]


# --------------------------------------------------------------------------- few-shot splits


def _check_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def fixed_split_paths(task: str, seed: int) -> tuple[str, str]:
    """Relative paths of the shipped ``(train, dev)`` files of ``task`` for ``seed``."""
    spec = get_task(task)
    if spec.files is not None:
        return spec.files.fixed_paths(seed)
    folder = f"{FIXED_DIRS[spec.name]}/{_FIXED_K}-{seed}"
    return f"{folder}/train.tsv", f"{folder}/dev.tsv"


def _first_k_per_class(rows: list[Example], k: int, n_classes: int, rel: str, what: str) -> list[Example]:
    taken = [0] * n_classes
    out = []
    for e in rows:
        if taken[e.label] < k:
            out.append(e)
            taken[e.label] += 1
    short = [c for c in range(n_classes) if taken[c] < k]
    if short:
        raise DataError(f"{rel}: fewer than {k} rows for label(s) {short}; the file is not {what}")
    return out


def _sample_fixed(task: str, seed: int, k: int, root: Path) -> FewShotSplit:
    spec = get_task(task)
    if seed not in spec.fixed_seeds:
        raise ConfigError(
            "seed",
            f"task {spec.name!r} has fixed {_FIXED_K}-shot splits only for seeds "
            f"{', '.join(map(str, spec.fixed_seeds))}, got {seed}",
        )
    if k > _FIXED_K and spec.files is None:
        raise ConfigError("k", f"k={k} is larger than the {_FIXED_K} examples per class of the fixed splits")
    n = len(spec.classes)
    parts, levels = [], []
    expected = None if spec.files is not None else _FIXED_K * n  # a task file's splits hold any k per class
    for rel in fixed_split_paths(spec.name, seed):
        listed = verify_files(root, {rel: expected})
        rows = _read_fixed_raw(spec.name, root, rel)
        what = f"a {_FIXED_K}-shot {spec.title} split ({_FIXED_K} rows per class)"
        if spec.files is not None:
            what = f"a {k}-shot split (splits.{seed} of {spec.name})"
        levels.append(verification_level(listed, rel, len(rows), expected, what))
        parts.append(_first_k_per_class(rows, k, n, rel, what))
    train_rel, dev_rel = fixed_split_paths(spec.name, seed)
    origin = f"{train_rel}, {dev_rel}" + ("" if k == _FIXED_K else f" (first {k} per class in file order)")
    return FewShotSplit(spec.name, seed, k, "fixed", parts[0], parts[1], origin, weakest(*levels))


def _sample_pool(task: str, seed: int, k: int, root: Path) -> FewShotSplit:
    spec = get_task(task)
    pool, report = _pool(spec.name, root)
    n = len(spec.classes)
    counts = report["per_class"]
    short = [(spec.classes[c], counts[c]) for c in range(n) if counts[c] < 2 * k]
    if short:
        detail = ", ".join(f"{name}: {cnt}" for name, cnt in short)
        raise ConfigError(
            "k",
            f"k={k} needs {2 * k} pool examples per class (k train + k dev), but the {spec.name} pool has {detail}",
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    n_train, n_dev = [0] * n, [0] * n
    train: list[Example] = []
    dev: list[Example] = []
    remaining = 2 * k * n
    for i in order:
        e = pool[int(i)]
        if n_train[e.label] < k:
            n_train[e.label] += 1
            train.append(e)
        elif n_dev[e.label] < k:
            n_dev[e.label] += 1
            dev.append(e)
        else:
            continue
        remaining -= 1
        if remaining == 0:
            break
    files = report["files"]
    joined = f"{files[0]} minus {files[1]}" if spec.name == "mrpc" else " + ".join(files)
    origin = (
        f"{joined}: {report['raw_rows']:,} rows -> pool of {report['size']:,} "
        f"({report['duplicate_rows_removed']} duplicate, {report['conflicting_label_rows_removed']} "
        f"conflicting-label and {report['test_overlap_removed']} test-overlap rows removed); "
        f"numpy default_rng({seed}).permutation, first {k} per class -> train, next {k} -> dev"
    )
    return FewShotSplit(spec.name, seed, k, "pool", train, dev, origin, report["verification"])


def sample_fewshot(
    task: str, seed: int, k: int = 16, source: str = "auto", *, root: str | Path | None = None
) -> FewShotSplit:
    """The few-shot train and dev sets of one run: ``k`` examples per class in each.

    ``source``: ``"pool"`` samples from the task's train pool with ``seed`` (see the module doc),
    ``"fixed"`` reads the shipped 16-shot split of ``seed`` (13, 21, 42, 87 or 100), ``"auto"`` uses
    the task's ``default_split_source``. ``root`` overrides :func:`data_root`.
    """
    spec = get_task(task)
    k = _check_int("k", k, 1)
    if source not in ("auto", "pool", "fixed"):
        raise ConfigError("source", f"must be 'auto', 'pool' or 'fixed', got {source!r}")
    if source == "auto":
        source = spec.default_split_source
    seed = _check_int("seed", seed, 0)
    data = _root(root, spec)
    if source == "fixed":
        return _sample_fixed(spec.name, seed, k, data)
    return _sample_pool(spec.name, seed, k, data)


# --------------------------------------------------------------------------- test sets


def stratified_indices(labels: list[int], m: int, seed: int) -> list[int]:
    """``m`` indices into ``labels``, proportional per class, sorted.

    Each class gets ``floor(m * n_c / N)`` and the remaining slots go to the largest fractional
    parts (ties: smaller label first); within each class (in label order) the indices are drawn
    with ``numpy.random.default_rng(seed).choice(n_c, q_c, replace=False)``.
    """
    total = len(labels)
    if not 0 <= m <= total:
        raise ValueError(f"m={m} outside 0..{total}")
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    classes = sorted(by_class)
    exact = {c: m * len(by_class[c]) / total for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    left = m - sum(quota.values())
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[:left]:
        quota[c] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in classes:
        members = by_class[c]
        picks = rng.choice(len(members), size=quota[c], replace=False)
        chosen.extend(members[int(j)] for j in picks)
    return sorted(chosen)


def load_test(
    task: str, max_test: int | None = None, subsample_seed: int = 0, *, root: str | Path | None = None
) -> TestSet:
    """The test set of ``task`` (the table in data/README.md), in file order.

    With ``max_test`` smaller than the test set, a stratified subsample of ``max_test`` examples
    (:func:`stratified_indices` with ``subsample_seed``) is returned and recorded in the TestSet.
    """
    spec = get_task(task)
    if max_test is not None:
        max_test = _check_int("max_test", max_test, 1)
    subsample_seed = _check_int("subsample_seed", subsample_seed, 0)
    examples, verification = _test_examples(spec, _root(root, spec))
    full = len(examples)
    n = len(spec.classes)
    full_counts = Counter(e.label for e in examples)
    extra = {
        "classes": spec.classes,
        "full_label_counts": tuple(full_counts.get(c, 0) for c in range(n)),
    }
    name, official, used_max, used_seed = spec.test_name, spec.test_official, None, None
    if max_test is not None and max_test < full:
        idx = stratified_indices([e.label for e in examples], max_test, subsample_seed)
        examples = [examples[i] for i in idx]
        name = f"{spec.test_name} (subsample {max_test} of {full}, seed {subsample_seed})"
        official, used_max, used_seed = False, max_test, subsample_seed
    elif max_test is not None:
        extra["max_test_requested"] = max_test
    counts = Counter(e.label for e in examples)
    extra["label_counts"] = tuple(counts.get(c, 0) for c in range(n))
    return TestSet(
        task=spec.name,
        examples=examples,
        official=official,
        name=name,
        full_size=full,
        max_test=used_max,
        subsample_seed=used_seed,
        origin=", ".join(_test_files(spec)),
        notes=spec.notes,
        extra=extra,
        verification=verification,
    )
