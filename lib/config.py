"""Where the workbench keeps its data. ``WORKBENCH_HOME`` moves all of it."""

from __future__ import annotations

import os
from pathlib import Path

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
