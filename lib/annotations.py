"""Annotations: who labelled which image how, and when, in one SQLite file.

The MedGore workflow: annotators label images from a small label set (default
``Blur`` / ``Maybe`` / ``Ok``), seeds are expanded through nearest neighbours,
annotators review samples, and disagreements between two annotators are resolved
into a label by the reserved annotator ``consensus``.

Storage
-------
``events`` is append-only (triggers refuse UPDATE and DELETE): every label, change
and clear is one row, so the full history survives. ``current`` holds the latest
label per (dataset, image_id, annotator); a trigger on ``events`` maintains it in the
same statement, so the two can never disagree. A clear is an event whose label is
NULL: it removes the ``current`` row and keeps the history. "Latest" means highest
event id, i.e. commit order; ``created_at`` is taken after the write lock is held,
so it follows the same order on one machine.

Label sets
----------
Every dataset has the default label set (``Blur`` / ``Maybe`` / ``Ok``, or what
:meth:`AnnotationStore.set_label_set` made of it) and any number of named ones
(:class:`LabelSchema`: values, keyboard keys, what each value means for the safe view, one
value per image or several). A named set keeps its annotations under its own *scope*,
``"<dataset>/<set>"`` (:func:`scope`), which every method accepts where it takes a dataset:
an annotator's wound-type label never replaces their Blur/Ok. Dataset names cannot hold
``/``, so scopes never collide with datasets. Several values of a multi-label set are
stored as one label, sorted and joined by ``|``.

Concurrency
-----------
WAL mode lets readers run while one writer writes; every write is one
``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a transaction
never has to upgrade a read snapshot, which is the one case where SQLite gives
``SQLITE_BUSY`` without waiting) and ``busy_timeout`` makes a second writer wait for
the lock instead of failing. Each thread gets its own connection (Streamlit runs
each session on its own thread); a process that forks opens new ones. WAL needs a
local filesystem, not NFS/SMB. ``synchronous=NORMAL``: a committed label survives a
crash of the process; only a power loss can drop the last few commits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import config
from .errors import WorkbenchError

DEFAULT_LABELS: tuple[str, ...] = ("Blur", "Maybe", "Ok")
CONSENSUS = "consensus"
MAX_NAME = 64
SCHEMA_VERSION = 4  # 2: label_schemas (label sets beside the default one); 3: current by label, label counts;
# 4: the latest event per dataset scope

CURRENT_COLUMNS = ["dataset", "image_id", "annotator", "label", "note", "task", "updated_at"]
#: Up to this many images are looked up by key (``image_id IN (...)``); more: one scan.
LOOKUP_MAX = 20_000
#: pandas' default text dtype from 3.0 on; spelled out so empty and all-missing columns get it too
TEXT = pd.StringDtype(na_value=np.nan)
HISTORY_COLUMNS = ["id", "dataset", "image_id", "annotator", "label", "note", "task", "created_at", "context"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset    TEXT NOT NULL,
    image_id   TEXT NOT NULL,
    annotator  TEXT NOT NULL,
    label      TEXT,                -- NULL: the annotator cleared the label
    note       TEXT,
    task       TEXT NOT NULL,
    created_at TEXT NOT NULL,       -- UTC ISO 8601 with microseconds
    context    TEXT                 -- JSON object, e.g. {"seed": ..., "rank": ...}
);
CREATE INDEX IF NOT EXISTS events_key ON events (dataset, image_id, annotator, id);
CREATE INDEX IF NOT EXISTS events_annotator ON events (dataset, annotator, id);

CREATE TABLE IF NOT EXISTS current (
    dataset    TEXT NOT NULL,
    image_id   TEXT NOT NULL,
    annotator  TEXT NOT NULL,
    label      TEXT NOT NULL,
    note       TEXT,
    task       TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    event_id   INTEGER NOT NULL REFERENCES events (id),
    PRIMARY KEY (dataset, image_id, annotator)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS current_annotator ON current (dataset, annotator, image_id);
-- v3: images by label ("status") without scanning the dataset's rows (1M rows: a scan is ~0.5 s)
CREATE INDEX IF NOT EXISTS current_label ON current (dataset, label, annotator);

-- v3: current labels counted per (dataset, annotator, label), kept by triggers on current,
-- so label_counts reads a few rows instead of counting a million
CREATE TABLE IF NOT EXISTS current_counts (
    dataset    TEXT NOT NULL,
    annotator  TEXT NOT NULL,
    label      TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (dataset, annotator, label)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS current_count_insert AFTER INSERT ON current
BEGIN
    INSERT INTO current_counts (dataset, annotator, label, n) VALUES (NEW.dataset, NEW.annotator, NEW.label, 1)
    ON CONFLICT (dataset, annotator, label) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS current_count_update AFTER UPDATE OF label ON current
WHEN OLD.label IS NOT NEW.label
BEGIN
    UPDATE current_counts SET n = n - 1
    WHERE dataset = OLD.dataset AND annotator = OLD.annotator AND label = OLD.label;
    INSERT INTO current_counts (dataset, annotator, label, n) VALUES (NEW.dataset, NEW.annotator, NEW.label, 1)
    ON CONFLICT (dataset, annotator, label) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS current_count_delete AFTER DELETE ON current
BEGIN
    UPDATE current_counts SET n = n - 1
    WHERE dataset = OLD.dataset AND annotator = OLD.annotator AND label = OLD.label;
END;

-- v4: the latest event id per dataset scope (a dataset and each "<dataset>/<label set>"),
-- kept by a trigger: the pages' cache key, read once per thumbnail. MAX(id) over events
-- walked the ids back from the newest, ~0.2 s when another dataset wrote the last million.
CREATE TABLE IF NOT EXISTS last_events (
    dataset    TEXT PRIMARY KEY,
    id         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS last_event_insert AFTER INSERT ON events
BEGIN
    INSERT INTO last_events (dataset, id) VALUES (NEW.dataset, NEW.id)
    ON CONFLICT (dataset) DO UPDATE SET id = MAX(id, excluded.id);
END;

CREATE TABLE IF NOT EXISTS label_schemas (
    scope      TEXT PRIMARY KEY,    -- "<dataset>/<label set name>"
    spec       TEXT NOT NULL,       -- JSON: name, description, multi, values [{value, key, meaning}]
    updated_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS label_sets (
    dataset    TEXT PRIMARY KEY,
    labels     TEXT NOT NULL,       -- JSON list of label names, in display order
    updated_at TEXT NOT NULL
);

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

CREATE TRIGGER IF NOT EXISTS events_set_current AFTER INSERT ON events
WHEN NEW.label IS NOT NULL
BEGIN
    INSERT INTO current (dataset, image_id, annotator, label, note, task, updated_at, event_id)
    VALUES (NEW.dataset, NEW.image_id, NEW.annotator, NEW.label, NEW.note, NEW.task, NEW.created_at, NEW.id)
    ON CONFLICT (dataset, image_id, annotator) DO UPDATE SET
        label = excluded.label, note = excluded.note, task = excluded.task,
        updated_at = excluded.updated_at, event_id = excluded.event_id;
END;
CREATE TRIGGER IF NOT EXISTS events_clear_current AFTER INSERT ON events
WHEN NEW.label IS NULL
BEGIN
    DELETE FROM current
    WHERE dataset = NEW.dataset AND image_id = NEW.image_id AND annotator = NEW.annotator;
END;
"""


class AnnotationError(WorkbenchError):
    """An annotation cannot be stored or read as asked (the message says why)."""


class UnknownLabel(AnnotationError):
    """Labels outside a dataset's label set; ``labels`` lists them, ``allowed`` the set."""

    def __init__(self, dataset: str, labels: Mapping[str, int], allowed: Sequence[str]):
        self.dataset = dataset
        self.labels = dict(labels)
        self.allowed = tuple(allowed)
        listed = ", ".join(f"{name!r} ({n} row{'s' if n != 1 else ''})" for name, n in self.labels.items())
        super().__init__(
            f"unknown label{'s' if len(self.labels) != 1 else ''} for dataset {dataset!r}: {listed}; "
            f"allowed: {', '.join(map(repr, self.allowed))}"
        )


#: The default label set's name, and what its values mean for the safe view.
DEFAULT_SET = "safety"
MEANINGS = ("sensitive", "safe", "unknown")
#: Keys the Annotate page keeps for itself (next, previous, reveal).
RESERVED_KEYS = ("n", "p", "v")
_SET_NAME = __import__("re").compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
LABEL_SETS_DIR = Path(__file__).with_name("label_sets")


@dataclass(frozen=True)
class LabelSchema:
    """A label set: its values, their keyboard keys and what each means for the safe view.

    Attributes
    ----------
    name : lower-case letters, digits, ``-`` and ``_`` (``safety`` is the default set).
    values : the labels, in display order.
    keys : one keyboard key per value (``1``..``9`` by default).
    meanings : value -> ``sensitive`` / ``safe`` / ``unknown``: a review with that label
        flags, clears, or says nothing (:mod:`lib.sensitivity`).
    multi : several values per image (tags) instead of one.
    """

    name: str
    values: tuple[str, ...]
    keys: tuple[str, ...] = ()
    meanings: Mapping[str, str] = field(default_factory=dict)
    multi: bool = False
    description: str = ""

    def __post_init__(self):
        if not _SET_NAME.match(self.name or ""):
            raise AnnotationError(f"label set name {self.name!r}: use 1-40 lower-case letters, digits, '-' or '_'")
        values = tuple(_check_text("label", v) for v in self.values)
        if not values:
            raise AnnotationError(f"label set {self.name!r} needs at least one value")
        folded = [v.casefold() for v in values]
        dupes = sorted({v for v, f in zip(values, folded, strict=True) if folded.count(f) > 1})
        if dupes:
            raise AnnotationError(f"label set {self.name!r} repeats values (case-insensitively): {dupes}")
        if any("|" in v or len(v) > MAX_NAME for v in values):
            raise AnnotationError(f"label values are at most {MAX_NAME} characters and hold no '|'")
        keys = tuple(str(k).lower() for k in self.keys) or tuple(str(i + 1) for i in range(min(len(values), 9)))
        if len(keys) > len(values) or len(set(keys)) != len(keys) or any(len(k) != 1 for k in keys):
            raise AnnotationError(f"label set {self.name!r}: give one distinct single-character key per value "
                                  f"(at most one per value), got {list(self.keys)}")
        bad = [k for k in keys if k in RESERVED_KEYS]
        if bad:
            raise AnnotationError(f"keys {bad} are taken by the Annotate page (N next, P previous, V reveal)")
        meanings = {v: str(self.meanings.get(v, "unknown")) for v in values}
        wrong = {v: m for v, m in meanings.items() if m not in MEANINGS}
        if wrong:
            raise AnnotationError(f"label set {self.name!r}: meanings must be one of {MEANINGS}, got {wrong}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "meanings", meanings)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "multi": bool(self.multi),
                "values": [{"value": v, "key": self.keys[i] if i < len(self.keys) else None,
                            "meaning": self.meanings[v]} for i, v in enumerate(self.values)]}

    @classmethod
    def from_json(cls, data: Mapping, where: str = "label set") -> LabelSchema:
        try:
            vals = list(data["values"])
            return cls(str(data["name"]), tuple(v["value"] for v in vals),
                       tuple(v["key"] for v in vals if v.get("key")),
                       {v["value"]: v.get("meaning", "unknown") for v in vals}, bool(data.get("multi", False)),
                       str(data.get("description", "")))
        except (KeyError, TypeError) as e:
            raise AnnotationError(f"{where}: not a label set ({e}); see lib/label_sets/*.json") from None

    def meaning_of(self, label) -> str | None:
        """What a stored label means for the safe view: for several tags, sensitive if any
        is, safe if all are; None when it says nothing."""
        if _blank(label):
            return None
        parts = [p for p in str(label).split("|")] if self.multi else [str(label)]
        m = [self.meanings.get(p, "unknown") for p in parts]
        if "sensitive" in m:
            return "sensitive"
        return "safe" if m and all(x == "safe" for x in m) else None


def parse_label_set(name: str, text: str, *, multi: bool = False, description: str = "") -> LabelSchema:
    """A label set from lines ``value[, key[, meaning]]`` (what the Annotate page's form takes);
    keys default to 1, 2, ... and meanings to unknown."""
    values, keys, meanings = [], [], {}
    for n, line in enumerate(str(text).splitlines(), start=1):
        parts = [p.strip() for p in line.split(",")]
        if not parts[0]:
            continue
        if len(parts) > 3:
            raise AnnotationError(f"line {n} {line!r}: write value, key, meaning (commas separate them)")
        values.append(parts[0])
        if len(parts) > 1 and parts[1]:
            keys.append(parts[1])
        if len(parts) > 2 and parts[2]:
            meanings[parts[0]] = parts[2].lower()
    if keys and len(keys) != len(values):
        raise AnnotationError("give a key for every value, or for none (keys 1, 2, ... then)")
    return LabelSchema(str(name).strip(), tuple(values), tuple(keys), meanings, multi, description)


def default_schema(labels: Sequence[str] = DEFAULT_LABELS) -> LabelSchema:
    """The default set over ``labels``: Blur and Maybe flag, Ok clears, other values say nothing."""
    meaning = {"blur": "sensitive", "maybe": "sensitive", "ok": "safe"}
    return LabelSchema(DEFAULT_SET, tuple(labels), meanings={v: meaning.get(v.casefold(), "unknown") for v in labels},
                       description="MedGore's review labels (default)")


def shipped_label_sets() -> dict[str, LabelSchema]:
    """The example label sets shipped as data (``lib/label_sets/*.json``): a multi-class
    ``wound-type`` and a multi-label ``tags``."""
    out = {}
    for p in sorted(LABEL_SETS_DIR.glob("*.json")):
        s = LabelSchema.from_json(json.loads(p.read_text()), str(p))
        out[s.name] = s
    return out


def scope(dataset: str, label_set: str | None = None) -> str:
    """Where a label set's annotations live: the dataset itself for the default set, else
    ``"<dataset>/<label set>"``."""
    dataset = _check_text("dataset", dataset)
    return dataset if label_set in (None, "", DEFAULT_SET) else f"{dataset}/{label_set}"


class Progress(NamedTuple):
    done: int
    left: int


def utc_now() -> str:
    """Current UTC time as ISO 8601 with microseconds, e.g. ``2024-05-01T12:00:00.123456+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def default_path() -> Path:
    return config.home() / "annotations.sqlite"


def check_annotator(name: Any, *, allow_reserved: bool = False) -> str:
    """The annotator name stripped; raises :class:`AnnotationError` unless it is usable."""
    if not isinstance(name, str) or not name.strip():
        raise AnnotationError(f"annotator name must be a non-empty string, got {name!r}")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise AnnotationError(f"annotator name is {len(name)} characters long, at most {MAX_NAME}: {name[:20]!r}...")
    if not name.isprintable():
        raise AnnotationError(f"annotator name contains control characters: {name!r}")
    if not allow_reserved and name.casefold() == CONSENSUS:
        raise AnnotationError(f"{CONSENSUS!r} is reserved for resolved labels: use resolve(..., by=<your name>)")
    return name


def _blank(value: Any) -> bool:
    """None, NaN (a missing cell from pandas) or whitespace."""
    return value is None or (isinstance(value, float) and value != value) or (
        isinstance(value, str) and not value.strip())


def _check_text(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def _check_note(note: Any) -> str | None:
    if _blank(note):
        return None
    if not isinstance(note, str):
        raise AnnotationError(f"note must be a string or None, got {type(note).__name__}")
    return note


def _json_default(obj: Any) -> Any:
    # numpy scalars (ranks, distances from an index search) serialise as Python numbers
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_context(context: Any) -> str | None:
    if _blank(context):
        return None
    if not isinstance(context, Mapping):
        raise AnnotationError(f"context must be a mapping or None, got {type(context).__name__}")
    try:
        return json.dumps(dict(context), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise AnnotationError(f"context is not JSON serialisable: {e}") from None


def _canonical(label: Any, allowed: Sequence[str]) -> str | None:
    """The allowed label ``label`` names (exact, else case-insensitive), or None."""
    if not isinstance(label, str):
        return None
    label = label.strip()
    if label in allowed:
        return label
    folded = {a.casefold(): a for a in allowed}
    return folded.get(label.casefold())


def _canonical_multi(label: Any, allowed: Sequence[str]) -> str | None:
    """Several labels (a list, or one string joined by ``|``) as the stored form: each in its
    set's spelling, sorted, joined by ``|``; None when any is not allowed (or none is given)."""
    parts = list(label) if isinstance(label, (list, tuple, set)) else str(label).split("|")
    canon = [_canonical(str(p), allowed) for p in parts if str(p).strip()]
    if not canon or any(c is None for c in canon):
        return None
    return "|".join(sorted(set(canon), key=list(allowed).index))


# Connections inherited through fork() are never closed in the child: closing them
# there could checkpoint or remove the parent's WAL. They are parked here instead.
_INHERITED: list[sqlite3.Connection] = []


class AnnotationStore:
    """Annotations of every dataset in one SQLite file.

    Parameters
    ----------
    path : str or Path, optional
        The database file; default ``config.home() / "annotations.sqlite"``. Created
        with its folder on first use.
    timeout : float
        Seconds a writer waits for another writer's lock before giving up.
    """

    def __init__(self, path: str | Path | None = None, *, timeout: float = 60.0):
        self.path = Path(path).expanduser().resolve() if path is not None else default_path()
        self.timeout = float(timeout)
        self._local = threading.local()
        config.ensure(self.path.parent)
        self._init_schema()

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.path)!r})"

    # -- connections and transactions ---------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module issues no implicit BEGIN; transactions are ours
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:
            _INHERITED.append(conn)
        local.conn, local.pid = self._connect(), os.getpid()
        return local.conn

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # one snapshot for every query of a method
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL, once: the mode persists in the file for every later opener.

        The switch needs an exclusive lock and SQLite reports a busy lock at once here,
        without the busy handler, when several processes create the file together:
        so retry until ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode.lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise AnnotationError(f"{self.path} stayed locked for {self.timeout:g} s: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            if mode.lower() != "wal":
                raise AnnotationError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            return

    def _init_schema(self) -> None:
        conn = self._conn()
        self._use_wal(conn)
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AnnotationError(
                    f"{self.path} has annotation schema {version}, this workbench knows {SCHEMA_VERSION}: "
                    "update the workbench"
                )
            for statement in _split_sql(_SCHEMA):
                c.execute(statement)
            if version < 3:  # the counts of the labels a store before v3 holds
                c.execute("DELETE FROM current_counts")
                c.execute("INSERT INTO current_counts (dataset, annotator, label, n) "
                          "SELECT dataset, annotator, label, COUNT(*) FROM current GROUP BY dataset, annotator, label")
            if version < 4:  # the latest events a store before v4 holds
                c.execute("INSERT OR REPLACE INTO last_events (dataset, id) "
                          "SELECT dataset, MAX(id) FROM events GROUP BY dataset")
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- label sets ---------------------------------------------------------------------

    @staticmethod
    def _label_set(conn: sqlite3.Connection, dataset: str) -> tuple[str, ...]:
        row = conn.execute("SELECT labels FROM label_sets WHERE dataset = ?", (dataset,)).fetchone()
        return tuple(json.loads(row[0])) if row else DEFAULT_LABELS

    def label_set(self, dataset: str) -> tuple[str, ...]:
        """The labels annotators may give in ``dataset`` (default ``DEFAULT_LABELS``)."""
        dataset = _check_text("dataset", dataset)
        with self._read() as conn:
            return self._label_set(conn, dataset)

    def set_label_set(self, dataset: str, labels: Iterable[str]) -> tuple[str, ...]:
        """Set the labels of ``dataset``; refuses to drop a label some current annotation uses."""
        dataset = _check_text("dataset", dataset)
        if isinstance(labels, str):
            raise AnnotationError(f"labels must be a sequence of names, got the string {labels!r}")
        names = tuple(_check_text("label", label) for label in labels)
        if not names:
            raise AnnotationError("a label set needs at least one label")
        if any(len(n) > MAX_NAME for n in names):
            raise AnnotationError(f"label names are at most {MAX_NAME} characters")
        folded = [n.casefold() for n in names]
        dupes = sorted({n for n, f in zip(names, folded, strict=True) if folded.count(f) > 1})
        if dupes:
            raise AnnotationError(f"label set repeats labels (case-insensitively): {', '.join(map(repr, dupes))}")
        with self._write() as conn:
            in_use = conn.execute(
                "SELECT label, COUNT(*) FROM current WHERE dataset = ? GROUP BY label ORDER BY label", (dataset,)
            ).fetchall()
            dropped = {label: n for label, n in in_use if label not in names}
            if dropped:
                listed = ", ".join(f"{label!r} ({n})" for label, n in dropped.items())
                raise AnnotationError(
                    f"cannot set labels of {dataset!r} to {names}: current annotations use {listed}; "
                    "relabel or clear them first"
                )
            conn.execute(
                "INSERT INTO label_sets (dataset, labels, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (dataset) DO UPDATE SET labels = excluded.labels, updated_at = excluded.updated_at",
                (dataset, json.dumps(list(names)), utc_now()),
            )
        return names

    def schemas(self, dataset: str) -> list[LabelSchema]:
        """Every label set of ``dataset``: the default one first, then the named ones by name."""
        dataset = _check_text("dataset", dataset)
        with self._read() as conn:
            rows = conn.execute("SELECT scope, spec FROM label_schemas WHERE scope LIKE ? ORDER BY scope",
                                (f"{dataset}/%",)).fetchall()
            default = default_schema(self._label_set(conn, dataset))
        return [default] + [LabelSchema.from_json(json.loads(spec), scope_) for scope_, spec in rows]

    def schema(self, dataset: str, name: str | None = None) -> LabelSchema:
        """One label set of ``dataset`` by name (the default set for None or ``safety``)."""
        for s in self.schemas(dataset):
            if s.name == (name or DEFAULT_SET):
                return s
        known = ", ".join(s.name for s in self.schemas(dataset))
        raise AnnotationError(f"dataset {dataset!r} has no label set {name!r} (it has: {known})")

    def add_schema(self, dataset: str, schema: LabelSchema) -> LabelSchema:
        """Define (or redefine) a named label set of ``dataset``; the default set's values
        are changed with :meth:`set_label_set`. Redefining refuses to drop a value in use."""
        if schema.name == DEFAULT_SET:
            raise AnnotationError(f"{DEFAULT_SET!r} is the default label set: change it with set_label_set")
        where = scope(dataset, schema.name)
        self.set_label_set(where, schema.values)  # validates, refuses to drop values in use
        with self._write() as conn:
            conn.execute(
                "INSERT INTO label_schemas (scope, spec, updated_at) VALUES (?, ?, ?) ON CONFLICT (scope) "
                "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                (where, json.dumps(schema.to_json()), utc_now()))
        return schema

    @staticmethod
    def _multi(conn: sqlite3.Connection, where: str) -> bool:
        row = conn.execute("SELECT spec FROM label_schemas WHERE scope = ?", (where,)).fetchone()
        return bool(row and json.loads(row[0]).get("multi"))

    # -- writing ------------------------------------------------------------------------

    def _prepare(self, row: Mapping[str, Any], allow_reserved: bool) -> dict[str, Any]:
        """Validate one annotation (label left raw: it is checked against the set in the transaction)."""
        unknown = set(row) - {"dataset", "image_id", "annotator", "label", "note", "task", "context"}
        if unknown:
            raise AnnotationError(f"unknown annotation field(s): {', '.join(sorted(unknown))}")
        try:
            return {
                "dataset": _check_text("dataset", row["dataset"]),
                "image_id": _check_text("image_id", row["image_id"]),
                "annotator": check_annotator(row["annotator"], allow_reserved=allow_reserved),
                "label": row["label"],
                "note": _check_note(row.get("note")),
                "task": _check_text("task", row.get("task", "label")),
                "context": _check_context(row.get("context")),
            }
        except KeyError as e:
            raise AnnotationError(f"annotation is missing the field {e.args[0]!r}") from None

    def _insert(self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Check labels against each dataset's set, then append the events; the caller holds the lock."""
        sets = {ds: self._label_set(conn, ds) for ds in {r["dataset"] for r in rows}}
        for ds, allowed in sets.items():
            bad: dict[str, int] = {}
            multi = self._multi(conn, ds)
            for r in rows:
                if r["dataset"] != ds or r["label"] is None:
                    continue
                label = _canonical_multi(r["label"], allowed) if multi else _canonical(r["label"], allowed)
                if label is None:
                    bad[str(r["label"])] = bad.get(str(r["label"]), 0) + 1
                else:
                    r["label"] = label
            if bad:
                raise UnknownLabel(ds, bad, allowed)
        ids = []
        for r in rows:
            cur = conn.execute(
                "INSERT INTO events (dataset, image_id, annotator, label, note, task, created_at, context) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r["dataset"], r["image_id"], r["annotator"], r["label"], r["note"], r["task"], utc_now(),
                 r["context"]),
            )
            ids.append(cur.lastrowid)
        return ids

    def set_label(
        self,
        dataset: str,
        image_id: str,
        annotator: str,
        label: str,
        *,
        note: str | None = None,
        task: str = "label",
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Record that ``annotator`` gives ``image_id`` the ``label``; returns the event id.

        ``label`` must be in :meth:`label_set` (matched case-insensitively, stored in the
        set's spelling). ``task`` says where it came from (``'seed'``, ``'review'``, ...),
        ``context`` is any JSON object (seed id, neighbour rank, ...).
        """
        if _blank(label):
            raise AnnotationError("label is empty: use clear() to remove a label")
        row = self._prepare(
            dict(dataset=dataset, image_id=image_id, annotator=annotator, label=label, note=note, task=task,
                 context=context),
            allow_reserved=False,
        )
        with self._write() as conn:
            return self._insert(conn, [row])[0]

    def set_labels(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        """Record many annotations in one transaction: all are written or none.

        Parameters
        ----------
        rows : iterable of mappings or DataFrame
            Each with ``dataset, image_id, annotator, label`` and optionally ``note, task,
            context``; the keyword arguments of :meth:`set_label`.

        Returns
        -------
        list of int, one event id per row in order.
        """
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        prepared = []
        for r in rows:
            if _blank(r.get("label")):
                raise AnnotationError(f"label is empty for image {r.get('image_id')!r}: use clear() to remove a label")
            prepared.append(self._prepare(r, allow_reserved=False))
        if not prepared:
            return []
        with self._write() as conn:
            return self._insert(conn, prepared)

    def bulk_label(self, dataset: str, image_ids: Iterable[str], annotator: str, label, *, task: str = "bulk",
                   context: Mapping[str, Any] | None = None) -> dict[str, str | None]:
        """Give every image of ``image_ids`` the ``label`` by ``annotator``, in one transaction
        (all or none). Returns each image's previous current label (None: it had none), which
        :meth:`restore` puts back: the undo of a bulk action."""
        ids = list(dict.fromkeys(_check_text("image_id", i) for i in image_ids))
        if not ids:
            return {}
        if _blank(label):
            raise AnnotationError("label is empty: use clear() to remove a label")
        rows = [self._prepare(dict(dataset=dataset, image_id=i, annotator=annotator, label=label, task=task,
                                   context=context), allow_reserved=False) for i in ids]
        with self._write() as conn:
            prev = dict(conn.execute(
                f"SELECT image_id, label FROM current WHERE dataset = ? AND annotator = ? AND image_id IN "
                f"({','.join('?' * len(ids))})", (rows[0]["dataset"], rows[0]["annotator"], *ids)).fetchall())
            self._insert(conn, rows)
        return {i: prev.get(i) for i in ids}

    def restore(self, dataset: str, annotator: str, previous: Mapping[str, str | None], *,
                task: str = "undo") -> int:
        """Put back the labels :meth:`bulk_label` returned, in one transaction: a label where
        there was one, a clear where there was none. Returns the number of events written."""
        rows = [self._prepare(dict(dataset=dataset, image_id=i, annotator=annotator,
                                   label=None if _blank(lab) else lab, task=task), allow_reserved=False)
                for i, lab in previous.items()]
        if not rows:
            return 0
        with self._write() as conn:
            self._insert(conn, rows)
        return len(rows)

    def clear(
        self, dataset: str, image_id: str, annotator: str, *, note: str | None = None, task: str = "clear"
    ) -> bool:
        """Remove the current label of (``dataset``, ``image_id``, ``annotator``); the history keeps it.

        The clear itself is an event (label NULL). Clearing ``'consensus'`` undoes a
        resolution. Returns whether there was a label to remove.
        """
        row = self._prepare(
            dict(dataset=dataset, image_id=image_id, annotator=annotator, label=None, note=note, task=task),
            allow_reserved=True,
        )
        with self._write() as conn:
            had = conn.execute(
                "SELECT 1 FROM current WHERE dataset = ? AND image_id = ? AND annotator = ?",
                (row["dataset"], row["image_id"], row["annotator"]),
            ).fetchone()
            self._insert(conn, [row])
        return had is not None

    def resolve(self, dataset: str, image_id: str, label: str, *, by: str, note: str | None = None) -> int:
        """Write the consensus ``label`` of ``image_id``, decided by annotator ``by``; returns the event id.

        The event (annotator ``'consensus'``, task ``'consensus'``) records in its context
        who resolved it and every annotator's current label at that moment.
        """
        by = check_annotator(by)
        if _blank(label):
            raise AnnotationError("consensus label is empty: use clear(dataset, image_id, 'consensus') to undo one")
        row = self._prepare(
            dict(dataset=dataset, image_id=image_id, annotator=CONSENSUS, label=label, note=note,
                 task="consensus"),
            allow_reserved=True,
        )
        with self._write() as conn:
            seen = conn.execute(
                "SELECT annotator, label FROM current WHERE dataset = ? AND image_id = ? AND annotator != ? "
                "ORDER BY annotator",
                (row["dataset"], row["image_id"], CONSENSUS),
            ).fetchall()
            row["context"] = json.dumps({"by": by, "labels": dict(seen)}, sort_keys=True)
            return self._insert(conn, [row])[0]

    # -- reading ------------------------------------------------------------------------

    def current(self, dataset: str, annotator: str | None = None,
                columns: Sequence[str] = tuple(CURRENT_COLUMNS), image_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Current labels of ``dataset`` (of one annotator, or all, ``'consensus'`` included).

        ``columns``: a subset of :data:`CURRENT_COLUMNS` to read (at a million labels each
        text column costs ~0.25 s to fetch and convert). ``image_ids``: only these images'.

        Returns
        -------
        DataFrame, one row per (image_id, annotator), sorted by both, with ``str`` columns
        ``dataset, image_id, annotator, label, note, task, updated_at`` (a missing note is NaN),
        or those of ``columns``.
        """
        dataset = _check_text("dataset", dataset)
        columns = list(columns)
        if not columns or set(columns) - set(CURRENT_COLUMNS):
            raise ValueError(f"columns must be some of {CURRENT_COLUMNS}, not {columns}")
        # a subset of images: their rows in chunks (SQLite's parameter limit), sorted here by
        # the two trailing sort columns
        picked = columns if image_ids is None else [*columns, "image_id", "annotator"]
        sql = f"SELECT {', '.join(picked)} FROM current WHERE dataset = ?"
        args: tuple = (dataset,)
        if annotator is not None:
            sql += " AND annotator = ?"
            args += (check_annotator(annotator, allow_reserved=True),)
        with self._read() as conn:
            if image_ids is None:
                return _frame(conn.execute(sql + " ORDER BY image_id, annotator", args).fetchall(), columns)
            wanted = sorted({_check_text("image_id", i) for i in image_ids})
            rows = []
            for at in range(0, len(wanted), 500):
                chunk = tuple(wanted[at:at + 500])
                rows += conn.execute(sql + f" AND image_id IN ({', '.join('?' * len(chunk))})", args + chunk).fetchall()
        rows.sort(key=lambda r: (r[-2], r[-1]))
        return _frame([r[:len(columns)] for r in rows], columns)

    def labelled_since(self, dataset: str, event: int, limit: int) -> list[str] | None:
        """The distinct images of ``dataset`` and its label sets with an event (label, clear,
        consensus) after event id ``event``; None when there are more than ``limit``."""
        dataset = _check_text("dataset", dataset)
        # NOT INDEXED: a range of the event ids (the primary key), the newest only; by the
        # dataset's index the planner walked all of its events (1.1M: 120 ms against 0.07 ms)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT image_id FROM events NOT INDEXED WHERE id > ?"
                " AND (dataset = ? OR (dataset >= ? AND dataset < ?)) LIMIT ?",
                (int(event), dataset, f"{dataset}/", f"{dataset}0", int(limit) + 1)).fetchall()
        return None if len(rows) > limit else [r[0] for r in rows]

    def last_event(self, dataset: str) -> int:
        """Id of the latest event of ``dataset`` and its label sets (0 when none): changes with
        every label, clear and consensus, so readers can cache what they derive from the labels."""
        dataset = _check_text("dataset", dataset)
        with self._read() as conn:  # "<dataset>/..." sorts between "<dataset>/" and "<dataset>0"
            row = conn.execute("SELECT MAX(id) FROM last_events WHERE dataset = ? OR (dataset >= ? AND dataset < ?)",
                               (dataset, f"{dataset}/", f"{dataset}0")).fetchone()
        return int(row[0] or 0)

    def history(self, dataset: str, image_id: str | None = None, annotator: str | None = None) -> pd.DataFrame:
        """Every event of ``dataset`` (optionally one image and/or annotator) in the order written.

        Returns
        -------
        DataFrame with columns ``id, dataset, image_id, annotator, label, note, task,
        created_at, context``; text columns have dtype ``str`` (``label`` is NaN for clears),
        ``context`` is a dict or None.
        """
        dataset = _check_text("dataset", dataset)
        sql = f"SELECT {', '.join(HISTORY_COLUMNS)} FROM events WHERE dataset = ?"
        args: tuple = (dataset,)
        if image_id is not None:
            sql += " AND image_id = ?"
            args += (_check_text("image_id", image_id),)
        if annotator is not None:
            sql += " AND annotator = ?"
            args += (check_annotator(annotator, allow_reserved=True),)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        df = _frame(rows, HISTORY_COLUMNS)
        df["context"] = pd.Series([json.loads(r[-1]) if r[-1] else None for r in rows], index=df.index,
                                  dtype=object)
        return df

    def image_labels(self, dataset: str, image_id: str, *, history: bool = False) -> pd.DataFrame:
        """One image's current labels (or, with ``history``, every event) in every label set of
        ``dataset``: the :meth:`current` (or :meth:`history`) columns plus ``label_set``."""
        dataset = _check_text("dataset", dataset)
        frames = []
        for s in self.schemas(dataset):
            where = scope(dataset, s.name)
            df = self.history(where, image_id) if history else self.current(where)
            df = df[df["image_id"] == image_id]
            frames.append(df.assign(label_set=s.name))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def datasets(self) -> list[str]:
        """Datasets with at least one event, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT dataset FROM events ORDER BY dataset")]

    def annotators(self, dataset: str) -> list[str]:
        """Everyone who ever annotated in ``dataset`` (``'consensus'`` included once resolved), sorted."""
        dataset = _check_text("dataset", dataset)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT annotator FROM events WHERE dataset = ? ORDER BY annotator", (dataset,)
            ).fetchall()
        return [r[0] for r in rows]

    def ids_with_label(self, dataset: str, label: str, annotator: str | None = None) -> list[str]:
        """Image ids whose current label is ``label`` (by ``annotator``, or by anyone), sorted,
        each once. Served by the ``current_label`` index: milliseconds at a million labels."""
        dataset = _check_text("dataset", dataset)
        label = _check_text("label", label)
        # INDEXED BY: without statistics the planner prefers the primary key (sorted by image_id),
        # a scan of the whole dataset; the label index is sorted by image_id within a label too.
        # One annotator has one row per image (the primary key): DISTINCT only across annotators
        # (1M rows, 100k answers: 105 -> 63 ms without it).
        distinct = "DISTINCT " if annotator is None else ""
        sql = f"SELECT {distinct}image_id FROM current INDEXED BY current_label WHERE dataset = ? AND label = ?"
        args: tuple = (dataset, label)
        if annotator is not None:
            sql += " AND annotator = ?"
            args += (check_annotator(annotator, allow_reserved=True),)
        with self._read() as conn:
            return [r[0] for r in conn.execute(sql + " ORDER BY image_id", args)]

    def label_counts(self, dataset: str, annotator: str | None = None) -> dict[str, int]:
        """{label: number of current labels} of ``dataset`` (one annotator's, or everyone's),
        from the counts the store keeps (table ``current_counts``): a few rows at any size."""
        dataset = _check_text("dataset", dataset)
        sql = "SELECT label, SUM(n) FROM current_counts WHERE dataset = ? AND n > 0"
        args: tuple = (dataset,)
        if annotator is not None:
            sql += " AND annotator = ?"
            args += (check_annotator(annotator, allow_reserved=True),)
        with self._read() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(sql + " GROUP BY label ORDER BY label", args)}

    def _labelled(self, dataset: str, annotator: str, among: list[str] | None = None) -> set[str]:
        """The images ``annotator`` labels in ``dataset`` (of ``among`` only, when given: a
        queue's few thousand are looked up by key, where all of an annotator's million labels
        took ~1 s to read on every Annotate page run)."""
        if among is not None and len(among) <= LOOKUP_MAX:
            return set(self.current(dataset, annotator, columns=("image_id",), image_ids=among)["image_id"])
        dataset = _check_text("dataset", dataset)
        annotator = check_annotator(annotator, allow_reserved=True)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT image_id FROM current WHERE dataset = ? AND annotator = ?", (dataset, annotator)
            ).fetchall()
        return {r[0] for r in rows}

    def progress(self, dataset: str, annotator: str, image_ids: Iterable[str]) -> Progress:
        """How many of the distinct ``image_ids`` ``annotator`` has a current label for, and how many not."""
        wanted = list(dict.fromkeys(image_ids))
        done = len(self._labelled(dataset, annotator, wanted) & set(wanted))
        return Progress(done, len(wanted) - done)

    def unlabelled(self, dataset: str, annotator: str, image_ids: Iterable[str]) -> list[str]:
        """The ``image_ids`` (first occurrences, in order) ``annotator`` has no current label for."""
        wanted = list(dict.fromkeys(image_ids))
        labelled = self._labelled(dataset, annotator, wanted)
        return [i for i in wanted if i not in labelled]

    def pairs(self, dataset: str, a: str, b: str) -> pd.DataFrame:
        """Images both ``a`` and ``b`` currently label.

        Returns
        -------
        DataFrame with ``str`` columns ``image_id, label_a, label_b, consensus`` (the
        current consensus label, NaN where none), sorted by image_id.
        """
        dataset = _check_text("dataset", dataset)
        a = check_annotator(a, allow_reserved=True)
        b = check_annotator(b, allow_reserved=True)
        if a == b:
            raise AnnotationError(f"compare two different annotators, got {a!r} twice")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT x.image_id, x.label, y.label, c.label FROM current x "
                "JOIN current y ON y.dataset = x.dataset AND y.image_id = x.image_id AND y.annotator = ? "
                "LEFT JOIN current c ON c.dataset = x.dataset AND c.image_id = x.image_id AND c.annotator = ? "
                "WHERE x.dataset = ? AND x.annotator = ? ORDER BY x.image_id",
                (b, CONSENSUS, dataset, a),
            ).fetchall()
        return _frame(rows, ["image_id", "label_a", "label_b", "consensus"])

    def disagreements(self, dataset: str, a: str, b: str, include_maybe: bool = True) -> pd.DataFrame:
        """Images ``a`` and ``b`` label differently; columns as :meth:`pairs`.

        ``include_maybe=False`` keeps only hard disagreements: pairs where either label is
        ``Maybe`` (any case) are left out.
        """
        df = self.pairs(dataset, a, b)
        keep = df["label_a"] != df["label_b"]
        if not include_maybe:
            keep &= (df["label_a"].str.casefold() != "maybe") & (df["label_b"].str.casefold() != "maybe")
        return df[keep].reset_index(drop=True)

    # -- files --------------------------------------------------------------------------

    def export(self, dataset: str, path: str | Path, *, what: str = "current") -> int:
        """Write the ``current`` labels (or the full ``history``) of ``dataset`` to CSV or parquet.

        The format follows the extension: ``.csv`` (``.csv.gz`` too) or ``.parquet``.
        Returns the number of rows written.
        """
        path = Path(path)
        if what == "current":
            df = self.current(dataset)
        elif what == "history":
            df = self.history(dataset)
            df["context"] = [json.dumps(c, sort_keys=True) if c is not None else None for c in df["context"]]
        else:
            raise AnnotationError(f"export what={what!r}: choose 'current' or 'history'")
        from .files import write_table

        if not path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
            raise AnnotationError(f"cannot export to {path}: use a .csv, .csv.gz or .parquet file name")
        write_table(path, df)  # atomic: a reader sees the old export or the whole new one
        return len(df)

    def import_labels(
        self,
        dataset: str,
        source: str | Path | pd.DataFrame,
        *,
        annotator: str | None = None,
        label_col: str = "label",
        id_col: str | None = None,
        task: str = "import",
    ) -> dict[str, int]:
        """Add labels from a CSV/parquet file or DataFrame to ``dataset``, in one transaction.

        Parameters
        ----------
        source : path or DataFrame
            One row per annotation. Needs ``id_col`` (default ``image_id``, else ``id``)
            and ``label_col``; an ``annotator`` column unless ``annotator`` is given (it
            then applies to every row); an optional ``note`` column. An export of
            :meth:`export` imports as is, consensus rows included.
        task : str
            The task recorded on the events.

        Returns
        -------
        dict with ``rows`` (in the source), ``written``, ``unchanged`` (already the current
        label and note, not written again) and ``blank`` (empty label, skipped).

        Raises
        ------
        UnknownLabel
            If any label is outside the label set; nothing is written.
        """
        dataset = _check_text("dataset", dataset)
        df, origin = _read_table(source)
        if id_col is None:
            id_col = next((c for c in ("image_id", "id") if c in df.columns), None)
            if id_col is None:
                raise AnnotationError(f"{origin} has no 'image_id' or 'id' column (columns: {list(df.columns)})")
        for col, why in ((id_col, "id_col"), (label_col, "label_col")):
            if col not in df.columns:
                raise AnnotationError(f"{origin} has no column {col!r} ({why}); columns: {list(df.columns)}")
        if annotator is None and "annotator" not in df.columns:
            raise AnnotationError(f"{origin} has no 'annotator' column: pass annotator=<name>")

        blank = 0
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for i, rec in enumerate(df.to_dict("records")):
            label = rec[label_col]
            if _blank(label):
                blank += 1
                continue
            if _blank(rec[id_col]):
                raise AnnotationError(f"{origin} row {i} has a label but no image id in {id_col!r}")
            who = annotator if annotator is not None else rec["annotator"]
            row = self._prepare(
                dict(dataset=dataset, image_id=str(rec[id_col]), annotator=who, label=str(label),
                     note=rec.get("note"), task=task, context={"source": origin, "row": i}),
                allow_reserved=True,
            )
            key = (row["image_id"], row["annotator"])
            prev = rows.get(key)
            if prev is not None and (prev["label"].strip().casefold(), prev["note"]) != (
                row["label"].strip().casefold(), row["note"]
            ):
                raise AnnotationError(
                    f"{origin} gives image {key[0]!r} by {key[1]!r} two different labels "
                    f"({prev['label']!r} and {row['label']!r})"
                )
            rows[key] = row

        with self._write() as conn:
            allowed = self._label_set(conn, dataset)
            bad: dict[str, int] = {}
            for r in rows.values():
                if _canonical(r["label"], allowed) is None:
                    bad[r["label"]] = bad.get(r["label"], 0) + 1
            if bad:
                raise UnknownLabel(dataset, bad, allowed)
            have = {
                (i, a): (label, note)
                for i, a, label, note in conn.execute(
                    "SELECT image_id, annotator, label, note FROM current WHERE dataset = ?", (dataset,)
                )
            }
            todo = [r for key, r in rows.items() if have.get(key) != (_canonical(r["label"], allowed), r["note"])]
            self._insert(conn, todo)
        return {"rows": len(df), "written": len(todo), "unchanged": len(rows) - len(todo), "blank": blank}


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """Query rows as a DataFrame whose text columns are always pandas' ``str`` dtype (missing: NaN)."""
    df = pd.DataFrame.from_records(rows, columns=columns)
    return df.astype({c: TEXT for c in columns if c not in ("id", "context")})


def _read_table(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(source, pd.DataFrame):
        return source, "DataFrame"
    path = Path(source)
    if not path.is_file():
        raise AnnotationError(f"no such file to import labels from: {path}")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        # every column as text: ids like '0012' stay as written and 'NA' is not a missing value
        return pd.read_csv(path, dtype=str, keep_default_na=False), str(path)
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path), str(path)
    raise AnnotationError(f"cannot import labels from {path}: use a .csv, .csv.gz or .parquet file")


def _split_sql(script: str) -> list[str]:
    """Statements of ``script``; a trigger body's inner ';' stays inside its statement."""
    statements, buf = [], ""
    for line in script.splitlines():
        line = line.split("--", 1)[0].rstrip()
        if not line:
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    return statements
