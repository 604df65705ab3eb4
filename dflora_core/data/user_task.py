"""Tasks declared in a YAML file: your own data without code (docs/tasks.md).

    dflora run --task path/to/task.yaml ...          # data.task = "path/to/task.yaml"

The file names the data files (CSV, TSV or JSONL, paths relative to the YAML's folder), the
text fields, the label field and the label names, a test file (or the rows of one file whose
``split_field`` has a given value), a train pool and/or fixed few-shot splits, and a template
with its verbalizer per model family. :func:`load_task_file` reads it into a ``TaskSpec`` whose
``files`` (a :class:`UserFiles`) tells ``data/fewshot.py`` where the rows are and how to read
them, so a declared task goes through the same pool cleaning, seeded sampler, verification and
test sets as the seven built-in tasks. Its folder has no manifest: its files are verified by
row counts when the YAML declares ``test_size`` / ``pool_size``, else they are "unverified".
``shots`` (examples per class) is the task's default for ``data.shots``: a configuration that
states none gets it (``config.task_shots``), ``--shots`` overrides it.

A bad declaration is a one-line error naming the YAML file and the key (or the data file, line
and column): a missing column, a label outside ``labels``, a template without its fields.

A task file is data a user may get from someone else, so the files it names must lie in its own
folder or below it, links followed (``../x.csv``, ``/etc/passwd`` or a link leading out are
refused), unless the user allows it for the command (``--allow-task-files-outside``,
``data.allow_task_files_outside``: :func:`files_outside_allowed`); even then an error about such a
file never shows its content.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from . import loaders as L
from .types import Example, TaskSpec

__all__ = ["FORMATS", "Source", "UserFiles", "files_outside_allowed", "is_task_file", "load_task_file"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
FAMILIES = ("causal", "masked")
KEYS = ("name", "title", "format", "text_fields", "label_field", "labels", "label_values", "metric", "test",
        "pool", "splits", "split_field", "templates", "notes", "test_size", "pool_size", "test_name",
        "test_official", "default_split_source", "shots")  # fmt: skip


# whether the command at hand lets task files name files outside their folder (the user's flag, never a file's)
_OUTSIDE_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("task_files_outside", default=False)
OUTSIDE_FLAG = "--allow-task-files-outside"
OUTSIDE_HINT = f"{OUTSIDE_FLAG} (data.allow_task_files_outside)"


def add_outside_flag(parser) -> None:
    """The command-line flag that grants the permission (``dflora run``, ``compare``, ``evaluate``...)."""
    parser.add_argument(OUTSIDE_FLAG, action="store_true",
                        help="let task files name data files outside their own folder (only for task files you trust)")  # fmt: skip


@contextlib.contextmanager
def files_outside_allowed(allowed: bool = True) -> Iterator[None]:
    """Meanwhile task files may name files outside their folder if ``allowed`` (a permission only widens)."""
    token = _OUTSIDE_ALLOWED.set(_OUTSIDE_ALLOWED.get() or bool(allowed))
    try:
        yield
    finally:
        _OUTSIDE_ALLOWED.reset(token)


def is_task_file(name) -> bool:
    """Whether ``data.task`` names a task file (``*.yaml`` / ``*.yml``) rather than a built-in task."""
    return isinstance(name, str) and name.strip().lower().endswith((".yaml", ".yml"))


@dataclass(frozen=True)
class Source:
    """Rows of one data file: all of them, or those whose ``split_field`` equals ``split``."""

    file: str  # relative to the YAML's folder
    split: str = ""


@dataclass(frozen=True)
class UserFiles:
    """Where a declared task's rows are and how to read them (``TaskSpec.files``)."""

    declared_in: str  # the YAML file, as given
    root: str  # its folder: paths below are relative to it
    fmt: str  # the format of files whose extension is not .csv/.tsv/.jsonl ("" = none declared)
    text_fields: tuple[str, ...]
    label_field: str
    label_map: tuple[tuple[str, int], ...]  # value in the files -> label index
    split_field: str
    test: Source
    pool: tuple[Source, ...]
    fixed: tuple[tuple[int, str, str], ...]  # (seed, train file, dev file)
    templates: tuple[tuple[str, str, tuple[str, ...]], ...]  # (family, {0}/{1}/{mask} pattern, words)
    outside: frozenset[str] = frozenset()  # files outside the YAML's folder (allowed by the user): never echoed

    @property
    def test_files(self) -> tuple[str, ...]:
        return (self.test.file,)

    @property
    def pool_files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.file for s in self.pool))

    def fixed_paths(self, seed: int) -> tuple[str, str]:
        return next((train, dev) for s, train, dev in self.fixed if s == seed)

    def read(self, root: Path, source: Source | str) -> list[Example]:
        source = Source(source) if isinstance(source, str) else source
        fmt = FORMATS.get(Path(source.file).suffix.lower(), "") or self.fmt  # the extension, else ``format``
        if not fmt:
            raise DataError(f"{self.declared_in}: format: cannot tell the format of {source.file} from its name "
                            f"(.csv, .tsv, .jsonl); declare format: csv, tsv or jsonl")  # fmt: skip
        layout = (self.declared_in, fmt, self.text_fields, self.label_field, self.label_map, self.split_field,
                  source.split)  # fmt: skip
        try:
            return read_table(root, source.file, layout)
        except DataError as err:
            if source.file not in self.outside:
                raise
            where = str(err).split(": ", 1)[0]  # file:line, without the values the message quotes
            raise DataError(f"{where}: not readable as {self.declared_in} declares it (details not shown: the "
                            "file is outside the task file's folder)") from None  # fmt: skip

    def read_test(self, root: Path) -> list[Example]:
        return self.read(root, self.test)

    def read_pool(self, root: Path) -> list[Example]:
        return [e for s in self.pool for e in self.read(root, s)]

    def template(self, family: str) -> tuple[str, tuple[str, ...]] | None:
        return next(((p, w) for f, p, w in self.templates if f == family), None)


# -- reading the data files ----------------------------------------------------------------------------
def _table_rows(root: Path, rel: str, fmt: str):
    """(line, {column: value}) for every record; the columns of the first row name them (CSV/TSV)."""
    if fmt == "jsonl":
        for line, raw in enumerate(L._read_text(root, rel).splitlines(), 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{rel}:{line}: invalid JSON ({err.msg})") from None
            if not isinstance(item, dict):
                raise DataError(f"{rel}:{line}: expected one JSON object per line")
            yield line, {k: v if isinstance(v, str) else json.dumps(v) for k, v in item.items()}
        return
    header = None
    for line, row in L._rows(root, rel, delimiter="\t" if fmt == "tsv" else ",", quoted=True):
        if header is None:
            header = [c.strip() for c in row]
            continue
        if len(row) != len(header):
            raise DataError(
                f"{rel}:{line}: expected {len(header)} {fmt.upper()} fields as in the header, found {len(row)}"
            )
        yield line, dict(zip(header, row, strict=True))


@L._cached_reader
def read_table(root: Path, rel: str, layout: tuple) -> list[Example]:
    """The examples of one declared data file; ``layout`` = (yaml, format, text fields, label field,
    value -> index pairs, split field, split value) as in :class:`UserFiles`."""
    yaml_file, fmt, text_fields, label_field, label_map, split_field, split = layout
    mapping = dict(label_map)
    needed = [*text_fields, label_field, *([split_field] if split else [])]
    out: list[Example] = []
    for line, row in _table_rows(root, rel, fmt):
        missing = [c for c in needed if c not in row]
        if missing:
            key = (
                "label_field" if label_field in missing else "split_field" if split_field in missing else "text_fields"
            )
            raise DataError(f"{rel}:{line}: no column {missing[0]!r} ({key} in {yaml_file}); its columns: "
                            f"{', '.join(row) or 'none'}")  # fmt: skip
        if split and row[split_field].strip() != split:
            continue
        value = row[label_field].strip()
        if value not in mapping:
            raise DataError(f"{rel}:{line}: label {value!r} (column {label_field!r}) is not one of the labels "
                            f"declared in {yaml_file} ({', '.join(mapping)}): add it to labels or label_values")  # fmt: skip
        texts = tuple(L._text(rel, line, row[c], c) for c in text_fields)
        out.append(Example(texts, mapping[value], f"{rel}:{line}"))
    return out


# -- the declaration -----------------------------------------------------------------------------------
class _Declaration:
    """The YAML mapping of one task file, with errors that name the file and the key."""

    def __init__(self, given: str, path: Path, data: dict, outside_ok: bool):
        self.given, self.path, self.data, self.outside_ok = given, path, data, outside_ok
        self.outside: set[str] = set()  # the file names that lead outside the folder (allowed)

    def fail(self, key: str, message: str):
        raise DataError(f"{self.given}: {key}: {message}")

    def get(self, key: str, kind, default=None, required: bool = False):
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "missing (docs/tasks.md lists the keys)")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def names(self, key: str, lo: int, hi: int) -> tuple[str, ...]:
        value = self.get(key, (list, str), required=True)
        value = [value] if isinstance(value, str) else value
        if any(isinstance(v, bool) for v in value):
            self.fail(key, f'YAML reads yes/no/on/off/true/false as booleans: quote them ("yes"), got {value!r}')
        if not lo <= len(value) <= hi or not all(isinstance(v, str | int) and str(v).strip() for v in value):
            self.fail(key, f"expected {lo} to {hi} names, got {value!r}")
        names = tuple(str(v).strip() for v in value)
        if len(set(names)) != len(names):
            self.fail(key, f"repeated name in {list(names)}")
        return names

    def data_file(self, key: str, value) -> str:
        folder = self.path.parent
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a file name relative to {folder}, got {value!r}")
        value = value.strip()
        if not (folder / value).resolve().is_relative_to(folder.resolve()):  # links followed: where it really is
            if not self.outside_ok:
                self.fail(key, f"{value} is outside the task file's folder {folder} (links followed): a task file "
                          f"may name only files in its folder or below; move the data there, or pass {OUTSIDE_HINT} "
                          "if you trust this task file")  # fmt: skip
            self.outside.add(value)
        if not (folder / value).is_file():
            self.fail(key, f"file {value} not found in {folder}")
        return value

    def source(self, key: str, value, split_field: str) -> Source:
        if isinstance(value, dict):
            unknown = set(value) - {"file", "split"}
            if unknown or "file" not in value:
                self.fail(key, f"expected a file name or {{file: ..., split: ...}}, got {value!r}")
            if value.get("split") is not None and not split_field:
                self.fail(key, "a split needs split_field: the column that names each row's split")
            return Source(self.data_file(f"{key}.file", value["file"]), str(value.get("split") or "").strip())
        return Source(self.data_file(key, value))

    def label_map(self, labels: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        mapping = {name: i for i, name in enumerate(labels)}
        for raw, name in self.get("label_values", dict, {}).items():
            if str(name).strip() not in mapping:
                self.fail("label_values", f"{raw!r} maps to {name!r}, which is not one of labels ({', '.join(labels)})")
            mapping[str(raw).strip()] = mapping[str(name).strip()]
        return tuple(mapping.items())

    def fixed(self) -> tuple[tuple[int, str, str], ...]:
        out = []
        for seed, pair in self.get("splits", dict, {}).items():
            key = f"splits.{seed}"
            if (
                not (isinstance(seed, int) or str(seed).isdigit())
                or not isinstance(pair, dict)
                or set(pair) != {"train", "dev"}
            ):
                self.fail(key, f"expected <seed>: {{train: file, dev: file}}, got {seed!r}: {pair!r}")
            out.append(
                (int(seed), self.data_file(f"{key}.train", pair["train"]), self.data_file(f"{key}.dev", pair["dev"]))
            )
        return tuple(sorted(out))

    def templates(self, text_fields: tuple[str, ...], n_labels: int) -> tuple:
        found = self.get("templates", dict, required=True)
        out = []
        for family, entry in found.items():
            key = f"templates.{family}"
            if family not in FAMILIES:
                self.fail(key, f"unknown model family; declare {' and/or '.join(FAMILIES)}")
            if not isinstance(entry, dict) or set(entry) != {"template", "verbalizer"}:
                self.fail(key, "expected {template: ..., verbalizer: [one word per label]}")
            words = entry["verbalizer"]
            if (
                not isinstance(words, list)
                or len(words) != n_labels
                or not all(isinstance(w, str) and w.strip() for w in words)
            ):
                self.fail(f"{key}.verbalizer", f"expected {n_labels} words (one per label; quote yes/no: YAML reads "
                          f"them as booleans), got {words!r}")  # fmt: skip
            words = tuple(" " + w.strip() if family == "causal" else w.strip() for w in words)
            out.append((family, self.pattern(f"{key}.template", entry["template"], text_fields, family), words))
        return tuple(out)

    def pattern(self, key: str, template, text_fields: tuple[str, ...], family: str) -> str:
        """The template with field names replaced by {0}/{1} (the form of models/templates.py)."""
        if not isinstance(template, str):
            self.fail(key, f"expected a string, got {template!r}")
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as err:
            self.fail(key, f"not a template ({err}); write literal braces as {{{{ }}}}")
        used = [name for _, name, _, _ in parts if name is not None]
        allowed = {*text_fields, *(["mask"] if family == "masked" else [])}
        bad = [n for n in used if n not in allowed]
        if bad:
            self.fail(key, f"unknown field {{{bad[0]}}}; use the text fields {', '.join(text_fields)}"
                      + (" and {mask}" if family == "masked" else ""))  # fmt: skip
        missing = [f for f in text_fields if f not in used]
        if missing or (family == "masked" and used.count("mask") != 1):
            what = f"{{{missing[0]}}}" if missing else "{mask} exactly once"
            self.fail(key, f"must contain {what}")
        index = {f: str(i) for i, f in enumerate(text_fields)}
        return "".join(lit.replace("{", "{{").replace("}", "}}") + ("" if name is None else "{" + index.get(name, name) + "}")
                       for lit, name, _, _ in parts)  # fmt: skip


def _read_yaml(given: str, path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{given}: cannot read the task file ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{given}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{given}: expected a YAML mapping of task keys (docs/tasks.md)")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise DataError(f"{given}: {unknown[0]}: unknown key; known keys: {', '.join(KEYS)}")
    return data


def load_task_file(given: str) -> TaskSpec:
    """The ``TaskSpec`` of a task file (named by ``given`` in every record); cached until the file changes."""
    path = Path(given.strip()).expanduser()
    if not path.is_file():
        raise DataError(f"{given}: task file not found (data.task names a built-in task or a .yaml file)")
    st = path.stat()
    return _load(given, str(path.resolve()), st.st_mtime_ns, st.st_size, _OUTSIDE_ALLOWED.get())


@functools.lru_cache(maxsize=32)
def _load(given: str, path_s: str, _mtime: int, _size: int, outside_ok: bool) -> TaskSpec:
    path = Path(path_s)
    d = _Declaration(given, path, _read_yaml(given, path), outside_ok)
    text_fields = d.names("text_fields", 1, 2)
    labels = d.names("labels", 2, 1000)
    split_field = d.get("split_field", str, "")
    metric = d.get("metric", str, "accuracy")
    if metric not in ("accuracy", "f1") or metric == "f1" and len(labels) != 2:
        d.fail("metric", f"accuracy, or f1 for two labels (the second is the positive class), got {metric!r}")
    if "test" not in d.data:
        d.fail("test", "missing: the file (or split) the tuned model is scored on")
    pools = d.get("pool", (str, dict, list), [])
    pool = tuple(
        d.source(f"pool[{i}]", p, split_field) for i, p in enumerate(pools if isinstance(pools, list) else [pools])
    )
    fixed = d.fixed()
    if not pool and not fixed:
        d.fail("pool", "declare a train pool (pool: file) or fixed few-shot splits (splits: {seed: {train, dev}})")
    source = d.get("default_split_source", str, "pool" if pool else "fixed")
    if source not in ("pool", "fixed") or (source == "pool" and not pool) or (source == "fixed" and not fixed):
        d.fail("default_split_source", f"{source!r}: pool or fixed, and the task must declare it")
    files = UserFiles(
        given, str(path.parent), FORMATS.get("." + d.get("format", str, "").lower().lstrip("."), ""), text_fields,
        d.names("label_field", 1, 1)[0], d.label_map(labels), split_field, d.source("test", d.data["test"], split_field),
        pool, fixed, d.templates(text_fields, len(labels)), frozenset(d.outside),
    )  # fmt: skip
    if d.data.get("format") and not files.fmt:
        d.fail("format", f"{d.data['format']!r}: choose from {', '.join(FORMATS.values())}")
    shots = d.get("shots", int)
    if shots is not None and shots < 1:
        d.fail("shots", f"examples per class in train (and again in dev): >= 1, got {shots}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    test = files.test.file + (f" (split {files.test.split})" if files.test.split else "")
    return TaskSpec(
        name=given,
        title=str(d.get("title", str) or d.get("name", str) or path.stem),
        classes=labels,
        n_fields=len(text_fields),
        metric=metric,
        test_official=d.get("test_official", bool, True),
        test_name=d.get("test_name", str, test),
        fixed_seeds=tuple(s for s, _, _ in fixed),
        pool_kind="full" if pool else "none",
        default_split_source=source,
        notes=f"{d.get('notes', str, '')} Declared in {given} (sha256 {sha}).".strip(),
        test_size=d.get("test_size", int),
        pool_size=d.get("pool_size", int),
        files=files,
        shots=shots,
    )
