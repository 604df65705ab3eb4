"""Integrity check of the data folder against its ``MANIFEST.json`` (md5 and size of every file).

:func:`check_file` is what loading a task calls for each file it reads: the size first (a stat),
then the md5, computed once per file per process (cached on path, size and mtime), so verifying
costs one pass over each file the first time and nothing after. A data root without a manifest
(a user's own ``DFLORA_DATA``/``root=``) is not an error here: the caller checks its row counts
against the task's declared sizes instead (:mod:`dflora_core.data.fewshot`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..errors import DataError
from .root import data_root
from .types import VERIFICATION_LEVELS

__all__ = [
    "MANIFEST_NAME",
    "check_file",
    "file_md5",
    "read_manifest",
    "verification_level",
    "verify_files",
    "verify_manifest",
    "weakest",
]

MANIFEST_NAME = "MANIFEST.json"


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _cached_md5(path_s: str, size: int, mtime_ns: int) -> str:
    return file_md5(path_s)


@functools.lru_cache(maxsize=16)
def _manifest_index(path_s: str, size: int, mtime_ns: int) -> dict[str, dict]:
    return {e["file"]: e for e in read_manifest(Path(path_s).parent)}


def _index(base: Path) -> dict[str, dict] | None:
    path = base / MANIFEST_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    return _manifest_index(str(path.resolve()), st.st_size, st.st_mtime_ns)


def check_file(root: str | Path, rel: str, rows: int | None = None) -> bool:
    """Verify ``root/rel`` against ``root/MANIFEST.json``: size, then md5 (cached per process).

    True when it matches; False when the root has no manifest or the manifest does not list the
    file (the caller then checks rows). A mismatch raises a one-line DataError naming the file,
    what differs and, given ``rows``, how many rows the intact file holds.
    """
    base = Path(root)
    entries = _index(base)
    entry = None if entries is None else entries.get(rel)
    if entry is None:
        return False
    path = base / rel
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{rel}: file not found under data root {base} (listed in its {MANIFEST_NAME})") from None
    intact = f" (the intact file has {rows:,} rows)" if rows is not None else ""
    fix = f"restore it (git checkout -- data) or fix {base / MANIFEST_NAME}"
    if "bytes" in entry and st.st_size != entry["bytes"]:
        raise DataError(
            f"{rel}: {st.st_size:,} bytes, but {MANIFEST_NAME} expects {entry['bytes']:,}{intact}: "
            f"the file is truncated or changed; {fix}"
        )
    md5 = _cached_md5(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if md5 != entry["md5"]:
        raise DataError(
            f"{rel}: md5 {md5} differs from {entry['md5']} in {MANIFEST_NAME}{intact}: the file is changed; {fix}"
        )
    return True


def verify_files(root: Path, hints: dict[str, int | None]) -> bool:
    """Check every file against the root's manifest (``hints``: rel -> rows of the intact file);
    True when all of them are listed there and match."""
    return all([check_file(root, rel, rows) for rel, rows in hints.items()])


def verification_level(listed: bool, rel: str, found: int, expected: int | None, what: str) -> str:
    """The verification level of ``found`` rows read from ``rel`` (DataError when they are wrong)."""
    if found == 0:
        raise DataError(f"{rel}: no rows (an empty or header-only file cannot be {what})")
    if listed:
        return VERIFICATION_LEVELS[0]
    if expected is None:
        return VERIFICATION_LEVELS[2]
    if found != expected:
        raise DataError(
            f"{rel}: {found:,} rows, but {what} has {expected:,}: the file is truncated or not the one "
            "this task expects (its data root has no MANIFEST.json entry to check it against)"
        )
    return VERIFICATION_LEVELS[1]


def weakest(*levels: str) -> str:
    """The weakest of some verification levels (the level of data read from several files)."""
    return max(levels, key=VERIFICATION_LEVELS.index)


def read_manifest(root: str | Path | None = None) -> list[dict]:
    """The entries (``file``, ``bytes``, ``md5``, ...) of ``<root>/MANIFEST.json``.

    Accepts ``{"files": [...]}`` or a bare list. Raises DataError if it is missing or unreadable.
    """
    base = data_root() if root is None else Path(root)
    path = base / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    entries = data.get("files") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("md5"), str) for e in entries
    ):
        raise DataError(f"{path}: expected a list of entries with 'file' and 'md5'")
    return entries


def verify_manifest(root: str | Path | None = None) -> list[str]:
    """Check every file listed in the manifest of ``root`` (default :func:`data_root`).

    Returns the problems found, one line each (missing manifest, missing file, size or md5
    mismatch); an empty list when all is well.
    """
    try:
        base = data_root() if root is None else Path(root)
        entries = read_manifest(base)
    except DataError as err:
        return [str(err)]
    problems: list[str] = []
    for entry in entries:
        rel = entry["file"]
        path = base / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            problems.append(f"{rel}: size {size} != {entry['bytes']} in the manifest")
        md5 = file_md5(path)
        if md5 != entry["md5"]:
            problems.append(f"{rel}: md5 {md5} != {entry['md5']} in the manifest")
    return problems
