"""A per-content-id table on disk: one folder per signal and fingerprint, parquet parts.

Signals computed once per image (NudeNet exposure, perceptual hashes, ...) are cached
by content id, so an image in two datasets is computed once, and a changed file (new
content id) is never served a stale value. Each write adds a part written atomically
(:mod:`lib.files`): a killed process leaves the whole part or none, and concurrent
writers never overwrite each other. Reads take the union of the parts; many parts are
merged on a later write.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from . import config
from .files import write_json, write_table

log = logging.getLogger(__name__)


class IdCache:
    """Rows keyed by content id under ``<cache>/<signal>/<fingerprint>/``.

    Parameters
    ----------
    signal : folder name of the signal (``nudenet``, ``phash``, ...).
    fingerprint : what the values depend on (model, parameters, code version), as a short
        string; a new fingerprint is a new, empty cache.
    columns : the value columns (besides ``id``).
    info : written once as ``info.json`` beside the parts, for humans browsing the cache.
    """

    MAX_PARTS = 16

    def __init__(self, signal: str, fingerprint: str, columns: Iterable[str], *, info: dict | None = None,
                 root: Path | None = None):
        self.columns = list(columns)
        self.dir = (root or config.cache_dir()) / signal / fingerprint
        self.info = info or {}

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []

    def read(self, parts: list[Path] | None = None) -> pd.DataFrame:
        """Every cached row: ``id`` and the value columns, one row per id (latest wins)."""
        frames = []
        for p in self.parts() if parts is None else parts:
            try:
                frames.append(pd.read_parquet(p, columns=["id", *self.columns]))
            except FileNotFoundError:  # merged away by a concurrent writer
                continue
            except Exception as e:  # foreign damage: those rows are computed again
                log.warning("ignoring unreadable cache part %s: %s", p, e)
        if not frames:
            return pd.DataFrame({"id": pd.Series(dtype=object), **{c: pd.Series(dtype=object) for c in self.columns}})
        return pd.concat(frames, ignore_index=True).drop_duplicates("id", keep="last").reset_index(drop=True)

    def lookup(self, ids: Iterable[str]) -> pd.DataFrame:
        """Cached rows of these ids (ids not cached are absent)."""
        df = self.read()
        if not len(df):  # nothing cached: nothing to match (1M ids turned into a set cost seconds)
            return df
        wanted = pd.Series(ids, dtype="string") if not isinstance(ids, pd.Series) else ids.astype("string")
        return df[df["id"].astype("string").isin(wanted).to_numpy(dtype=bool, na_value=False)].reset_index(drop=True)

    def missing(self, ids: Iterable[str]) -> list[str]:
        have = set(self.read()["id"].astype(str))
        return [i for i in dict.fromkeys(map(str, ids)) if i not in have]

    def write(self, rows: pd.DataFrame) -> None:
        """Add rows (``id`` + the value columns). Failed images should not be written:
        they are tried again next time."""
        if rows is None or len(rows) == 0:
            return
        missing = [c for c in ["id", *self.columns] if c not in rows]
        if missing:
            raise ValueError(f"cache rows lack columns {missing}")
        config.ensure(self.dir)
        if not (self.dir / "info.json").exists():
            write_json(self.dir / "info.json", self.info)
        write_table(self.dir / f"part-{uuid.uuid4().hex}.parquet", rows[["id", *self.columns]].reset_index(drop=True))
        parts = self.parts()
        if len(parts) > self.MAX_PARTS:
            # Merge, then delete exactly the parts merged; a reader in between sees duplicates, which read() drops.
            write_table(self.dir / f"part-{uuid.uuid4().hex}.parquet", self.read(parts))
            for p in parts:
                p.unlink(missing_ok=True)

    def updated_at(self) -> str | None:
        """ISO time of the newest part (when the signal was last computed), or None."""
        parts = self.parts()
        if not parts:
            return None
        from datetime import UTC, datetime

        t = max(p.stat().st_mtime for p in parts)
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
