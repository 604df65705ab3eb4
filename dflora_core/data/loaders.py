"""Readers for the raw dataset files, in the formats they are distributed in.

Every reader takes the data root and a path relative to it, and returns ``list[Example]`` with
``texts`` (one or two stripped text fields), ``label`` (an index into the task's ``classes``) and
``source`` (``"relative/path:line"``; for JSON files ``"relative/path:[item]"``). A malformed row
raises :class:`DataError` naming the file and the line.

Parsed files are cached in memory (keyed on the absolute path and the file's mtime and size), so
reading the 67k-row SST-2 pool twice costs nothing; callers get a fresh list each time.

Format facts the readers rely on (checked on the shipped files):

- GLUE tsv (SST-2, RTE, MRPC) and the LM-BFF k-shot tsv are *not* csv-quoted: quote characters are
  literal text, so they are read with ``csv.QUOTE_NONE`` (a quoting reader merges 70 RTE rows).
- MRPC files (``msr_paraphrase_*.txt``, ``dev.tsv``, LM-BFF MRPC) start with a UTF-8 byte-order mark.
- LM-BFF SNLI tsv rows have 11 or 15 columns (1 or 5 annotator labels); ``gold_label`` is the last.
- RLPrompt tsv (Yelp, AG News, DBPedia), the Yelp 2k test sample and the alps AG News pool were
  written by pandas: csv-quoted (inner quotes doubled, one DBPedia text holds a quoted tab), so they
  are read with a quoting reader. DBPedia files have CRLF line ends.
- Official Yelp text keeps the release's literal escapes (two-character ``\\n``, ``\\u00e9``, ``\\r``)
  and its quotes as ``\\"``; RLPrompt's files double those quotes once more (``\\""``). The Yelp
  readers restore ``\\"`` (what Hugging Face's ``yelp_polarity`` gives) and replace the literal
  ``\\n`` with a space, as the paper does; other escapes are kept as the paper keeps them.
- AG News text is ``title + " " + description`` after csv unquoting, backslashes (``\\$``, ``\\``)
  kept: this is Hugging Face ``ag_news``'s text and equals RLPrompt's test.tsv row for row.
- DBPedia text is the content field only (no title), as the paper's loader uses it.

Every text field is stripped of leading/trailing whitespace (GLUE SST-2 lines end with a space,
DBPedia content starts with one); inner whitespace is kept.

What no reader accepts (a one-line DataError with ``file:line``):

- A control character in a text field other than tab and newline (a NUL byte, a lone carriage
  return, ...). Tabs are real text in two DBPedia rows; C1 characters (``\x80``, ``\x99``: RTE's
  mojibake) are kept as they are.
- A record that spans more than one physical line. No field of the shipped files holds a line
  break, so in the quoted formats such a record is two or more rows merged by a stray quote
  (``"a<TAB>0`` ... ``b"<TAB>1`` parses as one row); a quoting reader would drop them silently.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DataError
from .types import Example

__all__ = [
    "read_agnews_alps_tsv",
    "read_agnews_csv",
    "read_dbpedia_json",
    "read_glue_rte_tsv",
    "read_glue_sst2_tsv",
    "read_mrpc_ids",
    "read_mrpc_tsv",
    "read_rlprompt_tsv",
    "read_snli_csv",
    "read_snli_json",
    "read_snli_tsv",
    "read_yelp_tsv",
    "clear_cache",
]

_ENTAILMENT2 = {"entailment": 0, "not_entailment": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_AGNEWS_NAMES = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
_MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]

_CACHES: list[Callable] = []


# --------------------------------------------------------------------------- helpers


def _stamp(root: Path, rel: str) -> tuple[int, int]:
    path = root / rel
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{rel}: file not found under data root {root}") from None
    except OSError as err:
        raise DataError(f"{rel}: cannot read ({err})") from None
    if not path.is_file():
        raise DataError(f"{rel}: not a file (under data root {root})")
    return (st.st_mtime_ns, st.st_size)


def _cached_reader(fn: Callable[..., list]) -> Callable[..., list]:
    """Cache ``fn(root, rel, *args)``; every ``str`` in ``args`` is another relative path it reads."""

    @functools.lru_cache(maxsize=128)
    def cached(root_s: str, rel: str, args: tuple, stamps: tuple) -> tuple:
        return tuple(fn(Path(root_s), rel, *args))

    @functools.wraps(fn)
    def wrapper(root: str | Path, rel: str, *args) -> list:
        root = Path(root)
        deps = [rel, *(a for a in args if isinstance(a, str) and a)]
        stamps = tuple(_stamp(root, d) for d in deps)
        return list(cached(str(root.resolve()), rel, tuple(args), stamps))

    _CACHES.append(cached.cache_clear)
    return wrapper


def clear_cache() -> None:
    """Forget every parsed file (they are re-read on the next call)."""
    for clear in _CACHES:
        clear()


def _read_text(root: Path, rel: str) -> str:
    path = root / rel
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{rel}: cannot read ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{rel}:{line}: not valid UTF-8 ({err.reason})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _rows(
    root: Path, rel: str, *, delimiter: str, quoted: bool, skipinitialspace: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first physical line, fields)`` for every non-blank record of a delimited file."""
    text = _read_text(root, rel)
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        doublequote=True,
        skipinitialspace=skipinitialspace,
        strict=quoted,
    )
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{rel}:{reader.line_num}: malformed row ({err})") from None
        end = reader.line_num
        if row and end > start:
            raise DataError(
                f"{rel}:{start}: one record spans lines {start}-{end}: a stray quote merges rows (no field holds a line break)"
            )
        if row:
            yield start, row
        start = end + 1


def _where(rel: str, line: int | str) -> str:
    return f"{rel}:{line}"


def _check_fields(rel: str, line: int, row: list[str], n: int) -> None:
    if len(row) != n:
        sep = "tab-separated" if rel.endswith((".tsv", ".txt")) else "comma-separated"
        raise DataError(f"{_where(rel, line)}: expected {n} {sep} fields, found {len(row)}")


def _check_header(rel: str, row: list[str], expected: list[str]) -> None:
    if [c.strip() for c in row] != expected:
        raise DataError(f"{_where(rel, 1)}: expected header {expected}, found {row}")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # C0 controls and DEL, but tab and newline


def _text(rel: str, line: int | str, value: str, what: str = "text") -> str:
    value = value.strip()
    if not value:
        raise DataError(f"{_where(rel, line)}: empty {what} field")
    bad = _CONTROL.search(value)
    if bad:
        raise DataError(f"{_where(rel, line)}: control character {bad.group()!r} in the {what} field")
    return value


def _label(rel: str, line: int | str, value: str, mapping: dict[str, int]) -> int:
    key = value.strip()
    if key not in mapping:
        known = ", ".join(repr(k) for k in mapping)
        raise DataError(f"{_where(rel, line)}: unknown label {value!r} (expected one of {known})")
    return mapping[key]


def _int_labels(n: int, offset: int = 0) -> dict[str, int]:
    return {str(i + offset): i for i in range(n)}


def _load_json(root: Path, rel: str):
    text = _read_text(root, rel)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{_where(rel, err.lineno)}: invalid JSON ({err.msg})") from None


# --------------------------------------------------------------------------- GLUE / LM-BFF tsv


@_cached_reader
def read_glue_sst2_tsv(root: Path, rel: str) -> list[Example]:
    """GLUE SST-2 ``train.tsv``/``dev.tsv`` and LM-BFF ``SST-2/16-*/{train,dev}.tsv``.

    Header ``sentence<TAB>label``; label 0 = negative, 1 = positive; no csv quoting.
    """
    out: list[Example] = []
    rows = _rows(root, rel, delimiter="\t", quoted=False)
    for line, row in rows:
        if line == 1:
            _check_header(rel, row, ["sentence", "label"])
            continue
        _check_fields(rel, line, row, 2)
        out.append(Example((_text(rel, line, row[0]),), _label(rel, line, row[1], _int_labels(2)), _where(rel, line)))
    return out


@_cached_reader
def read_glue_rte_tsv(root: Path, rel: str) -> list[Example]:
    """GLUE RTE ``train.tsv``/``dev.tsv`` and LM-BFF ``RTE/16-*/{train,dev}.tsv``.

    Header ``index sentence1 sentence2 label``; label ``entailment`` = 0, ``not_entailment`` = 1.
    """
    out: list[Example] = []
    for line, row in _rows(root, rel, delimiter="\t", quoted=False):
        if line == 1:
            _check_header(rel, row, ["index", "sentence1", "sentence2", "label"])
            continue
        _check_fields(rel, line, row, 4)
        texts = (_text(rel, line, row[1], "sentence1"), _text(rel, line, row[2], "sentence2"))
        out.append(Example(texts, _label(rel, line, row[3], _ENTAILMENT2), _where(rel, line)))
    return out


@_cached_reader
def read_mrpc_ids(root: Path, rel: str) -> list[tuple[str, str]]:
    """``dev_ids.tsv``: one ``#1 ID<TAB>#2 ID`` pair per line, no header."""
    out: list[tuple[str, str]] = []
    for line, row in _rows(root, rel, delimiter="\t", quoted=False):
        _check_fields(rel, line, row, 2)
        out.append((_text(rel, line, row[0], "#1 ID"), _text(rel, line, row[1], "#2 ID")))
    return out


@_cached_reader
def _read_mrpc_rows(root: Path, rel: str) -> list[Example]:
    # texts = (id1, id2, string1, string2) internally; public readers drop the ids.
    out: list[Example] = []
    for line, row in _rows(root, rel, delimiter="\t", quoted=False):
        if line == 1:
            _check_header(rel, row, _MRPC_HEADER)
            continue
        _check_fields(rel, line, row, 5)
        label = _label(rel, line, row[0], _int_labels(2))
        ids = (_text(rel, line, row[1], "#1 ID"), _text(rel, line, row[2], "#2 ID"))
        strings = (_text(rel, line, row[3], "#1 String"), _text(rel, line, row[4], "#2 String"))
        out.append(Example(ids + strings, label, _where(rel, line)))
    return out


def read_mrpc_tsv(root: str | Path, rel: str, exclude_ids_rel: str = "") -> list[Example]:
    """MRPC ``msr_paraphrase_*.txt``, GLUE ``dev.tsv`` and LM-BFF ``MRPC/16-*/{train,dev}.tsv``.

    Header ``Quality #1 ID #2 ID #1 String #2 String`` (after a byte-order mark); Quality 1 =
    paraphrase. ``exclude_ids_rel`` names an id file (``dev_ids.tsv``) whose pairs are left out: the
    GLUE/Hugging Face train split is ``msr_paraphrase_train.txt`` minus ``dev_ids.tsv`` (3,668 rows).
    """
    rows = _read_mrpc_rows(root, rel)
    skip = frozenset(read_mrpc_ids(root, exclude_ids_rel)) if exclude_ids_rel else frozenset()
    return [Example(e.texts[2:], e.label, e.source) for e in rows if e.texts[:2] not in skip]


@_cached_reader
def read_snli_tsv(root: Path, rel: str) -> list[Example]:
    """LM-BFF ``SNLI/16-*/{train,dev}.tsv`` (GLUE-style SNLI tsv).

    Header ``index captionID pairID sentence1_binary_parse ... sentence1 sentence2 label1 gold_label``;
    rows carry 1 or 5 annotator labels, so they have 11 or 15 fields; ``gold_label`` is the last.
    """
    out: list[Example] = []
    i1 = i2 = 0
    n_header = 0
    for line, row in _rows(root, rel, delimiter="\t", quoted=False):
        if line == 1:
            header = [c.strip() for c in row]
            if "sentence1" not in header or "sentence2" not in header or header[-1] != "gold_label":
                raise DataError(
                    f"{_where(rel, 1)}: expected a GLUE SNLI header with sentence1, sentence2 and gold_label last"
                )
            i1, i2, n_header = header.index("sentence1"), header.index("sentence2"), len(header)
            continue
        if len(row) not in (n_header, n_header + 4):
            raise DataError(
                f"{_where(rel, line)}: expected {n_header} or {n_header + 4} tab-separated fields, found {len(row)}"
            )
        texts = (_text(rel, line, row[i1], "sentence1"), _text(rel, line, row[i2], "sentence2"))
        out.append(Example(texts, _label(rel, line, row[-1], _NLI3), _where(rel, line)))
    return out


# --------------------------------------------------------------------------- SNLI csv / json


@_cached_reader
def read_snli_csv(root: Path, rel: str) -> list[Example]:
    """``snli_test.csv`` (Hugging Face export): header ``index,premise,hypothesis,label``, label 0..2."""
    out: list[Example] = []
    for line, row in _rows(root, rel, delimiter=",", quoted=True):
        if line == 1:
            _check_header(rel, row, ["index", "premise", "hypothesis", "label"])
            continue
        _check_fields(rel, line, row, 4)
        texts = (_text(rel, line, row[1], "premise"), _text(rel, line, row[2], "hypothesis"))
        out.append(Example(texts, _label(rel, line, row[3], _int_labels(3)), _where(rel, line)))
    return out


@_cached_reader
def read_snli_json(root: Path, rel: str) -> list[Example]:
    """PowerfulPromptFT ``glue_pretrain/SNLI/{train,dev}.json``.

    A JSON object ``{"0": {"text_a", "text_b", "label"}, ...}`` with string labels; ``source`` is
    ``rel:[key]``.
    """
    data = _load_json(root, rel)
    if not isinstance(data, dict):
        raise DataError(f"{rel}: expected a JSON object of numbered items")
    out: list[Example] = []
    for key, item in data.items():
        where = f"[{key}]"
        if not isinstance(item, dict) or not {"text_a", "text_b", "label"} <= set(item):
            raise DataError(f"{_where(rel, where)}: expected an object with text_a, text_b and label")
        a, b, lab = item["text_a"], item["text_b"], item["label"]
        if not (isinstance(a, str) and isinstance(b, str) and isinstance(lab, str)):
            raise DataError(f"{_where(rel, where)}: text_a, text_b and label must be strings")
        texts = (_text(rel, where, a, "text_a"), _text(rel, where, b, "text_b"))
        out.append(Example(texts, _label(rel, where, lab, _NLI3), _where(rel, where)))
    return out


# --------------------------------------------------------------------------- RLPrompt / pandas tsv


@_cached_reader
def read_rlprompt_tsv(root: Path, rel: str, n_classes: int) -> list[Example]:
    """RLPrompt 16-shot ``{train,dev}.tsv`` (AG News, DBPedia): header ``text<TAB>label`` or
    ``sentence<TAB>label``, integer labels ``0..n_classes-1``, pandas csv quoting."""
    out: list[Example] = []
    labels = _int_labels(n_classes)
    for line, row in _rows(root, rel, delimiter="\t", quoted=True):
        if line == 1:
            if [c.strip() for c in row] not in (["text", "label"], ["sentence", "label"]):
                raise DataError(
                    f"{_where(rel, 1)}: expected header ['text', 'label'] or ['sentence', 'label'], found {row}"
                )
            continue
        _check_fields(rel, line, row, 2)
        out.append(Example((_text(rel, line, row[0]),), _label(rel, line, row[1], labels), _where(rel, line)))
    return out


_YELP_QUOTE = re.compile(r'\\""')


def yelp_text(raw: str) -> str:
    """Yelp text as the paper feeds it: RLPrompt's ``\\""`` back to the release's ``\\"`` (as in
    Hugging Face ``yelp_polarity``), then the literal two-character ``\\n`` replaced by a space."""
    return _YELP_QUOTE.sub(r'\\"', raw).replace("\\n", " ")


@_cached_reader
def read_yelp_tsv(root: Path, rel: str) -> list[Example]:
    """Yelp polarity in RLPrompt's tsv format: the 16-shot ``{train,dev}.tsv`` and the 2k
    ``test_sample/test.tsv``. Header ``text<TAB>label``; 0 = negative, 1 = positive; see :func:`yelp_text`."""
    out: list[Example] = []
    for line, row in _rows(root, rel, delimiter="\t", quoted=True):
        if line == 1:
            _check_header(rel, row, ["text", "label"])
            continue
        _check_fields(rel, line, row, 2)
        text = _text(rel, line, yelp_text(row[0]))
        out.append(Example((text,), _label(rel, line, row[1], _int_labels(2)), _where(rel, line)))
    return out


# --------------------------------------------------------------------------- AG News


@_cached_reader
def read_agnews_csv(root: Path, rel: str, description_only: bool = False) -> list[Example]:
    """Char-CNN ``ag_news_csv/{train,test}.csv``: no header, ``"class","title","description"``,
    class 1..4 (label = class - 1). Text = ``title + " " + description`` (Hugging Face ``ag_news``),
    or the description alone with ``description_only`` (to compare with the alps pool)."""
    out: list[Example] = []
    labels = _int_labels(4, offset=1)
    # Read as Hugging Face's ag_news script does (csv, skipinitialspace); the text is its text.
    for line, row in _rows(root, rel, delimiter=",", quoted=True, skipinitialspace=True):
        _check_fields(rel, line, row, 3)
        raw = row[2] if description_only else row[1] + " " + row[2]
        out.append(Example((_text(rel, line, raw),), _label(rel, line, row[0], labels), _where(rel, line)))
    return out


@_cached_reader
def read_agnews_alps_tsv(root: Path, rel: str) -> list[Example]:
    """alps ``data/agnews/{train,dev}.tsv``: no header, ``description<TAB>class name`` (World,
    Sports, Business, Sci/Tech), pandas csv quoting. Descriptions only: there is no title."""
    out: list[Example] = []
    for line, row in _rows(root, rel, delimiter="\t", quoted=True):
        _check_fields(rel, line, row, 2)
        out.append(Example((_text(rel, line, row[0]),), _label(rel, line, row[1], _AGNEWS_NAMES), _where(rel, line)))
    return out


# --------------------------------------------------------------------------- DBPedia

_DBPEDIA_SENTENCE = re.compile(r"Title: (?P<title>[^\n]*)\nText: (?P<content>.*)\n?", re.S)


@_cached_reader
def read_dbpedia_json(root: Path, rel: str, labels_rel: str) -> list[Example]:
    """O-LoRA ``dbpedia/test.json``: a JSON list of ``{"label": <name>, "sentence": "Title: <title>\\nText:
    <content>\\n"}``; ``labels_rel`` (``labels.json``) lists the names in label-index order (the official
    classes.txt order). Text = the content only, as the paper uses it; ``source`` is ``rel:[index]``."""
    names = _load_json(root, labels_rel)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{labels_rel}: expected a JSON list of class names")
    labels = {n: i for i, n in enumerate(names)}
    data = _load_json(root, rel)
    if not isinstance(data, list):
        raise DataError(f"{rel}: expected a JSON list of items")
    out: list[Example] = []
    for i, item in enumerate(data):
        where = f"[{i}]"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("sentence"), str)
            or not isinstance(item.get("label"), str)
        ):
            raise DataError(f"{_where(rel, where)}: expected an object with string 'label' and 'sentence'")
        m = _DBPEDIA_SENTENCE.fullmatch(item["sentence"])
        if m is None:
            raise DataError(f"{_where(rel, where)}: sentence is not 'Title: ...\\nText: ...'")
        text = _text(rel, where, m.group("content"), "content")
        out.append(Example((text,), _label(rel, where, item["label"], labels), _where(rel, where)))
    return out
