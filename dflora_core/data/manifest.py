"""Integrity check of the data folder against its ``MANIFEST.json`` (md5 and size of every file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DataError

__all__ = ["MANIFEST_NAME", "file_md5", "read_manifest", "verify_manifest"]

MANIFEST_NAME = "MANIFEST.json"


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: str | Path | None = None) -> list[dict]:
    """The entries (``file``, ``bytes``, ``md5``, ...) of ``<root>/MANIFEST.json``.

    Accepts ``{"files": [...]}`` or a bare list. Raises DataError if it is missing or unreadable.
    """
    from .fewshot import data_root

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
    from .fewshot import data_root

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
