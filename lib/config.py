"""Where the workbench keeps its data. ``WORKBENCH_HOME`` moves all of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DatasetError

REPO = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The data home: ``$WORKBENCH_HOME`` or ``<repo>/data``."""
    return Path(os.environ.get("WORKBENCH_HOME") or REPO / "data").expanduser().resolve()


def datasets_dir() -> Path:
    return home() / "datasets"


def cache_dir() -> Path:
    return home() / "cache"


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Dataset (and detector) names: they become folder names under the data home.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` if it is a valid dataset name, else :class:`lib.errors.DatasetError`."""
    if not NAME_RE.match(name or ""):
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name
