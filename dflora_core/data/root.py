"""Where the data lives: ``$DFLORA_DATA`` if set, else the repository's ``data/``."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

__all__ = ["ENV_VAR", "data_root"]

ENV_VAR = "DFLORA_DATA"


def data_root() -> Path:
    """The data folder: ``$DFLORA_DATA`` if set, else the repository's ``data/``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DataError(
                f"{ENV_VAR}={env!r} is not a folder: point it at the folder that holds sst2/, rte/, ... "
                f"(the repository's data/), or unset it to use {_default_root()}"
            )
        return root
    root = _default_root()
    if not root.is_dir():
        raise DataError(
            f"data folder {root} not found: restore the repository's data/ (git checkout -- data) "
            f"or set {ENV_VAR} to a folder with the same layout (see data/README.md)"
        )
    return root


def _default_root() -> Path:
    return Path(__file__).resolve().parents[2] / "data"
