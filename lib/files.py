"""The one writer of files: every artifact is written to a temporary name beside its
target, flushed to disk and moved into place with ``os.replace``.

A reader (another process, an app session) therefore sees the previous file or the whole
new one, never half of one, and a process killed mid-write leaves no partial file under
the final name. Nothing here writes pickles.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = True) -> Path:
    """Atomically write ``path`` by calling ``write(f)`` on a binary file object; returns the path.

    ``durable`` also forces the bytes to disk before the rename (so a power loss cannot
    leave an empty file under the final name); caches that are cheap to rebuild skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    return write_with(path, lambda f: f.write(data), durable=durable)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """JSON (``default=str`` for dates and paths), newline-terminated."""
    return write_text(path, json.dumps(obj, indent=indent, default=str, sort_keys=False) + "\n")


def write_table(path: str | os.PathLike, df) -> Path:
    """A DataFrame as CSV (``.csv``, ``.csv.gz``) or parquet (any other suffix), without its index."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".csv"):
        return write_with(path, lambda f: df.to_csv(f, index=False))
    if name.endswith(".csv.gz"):
        return write_with(path, lambda f: df.to_csv(f, index=False, compression="gzip"))
    return write_with(path, lambda f: df.to_parquet(f, index=False))


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Numeric arrays as an uncompressed ``.npz`` (read back with ``allow_pickle=False``)."""
    import numpy as np

    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise ValueError(f"array {k!r} has dtype object: it would need a pickle")
    return write_with(path, lambda f: np.savez(f, **arrays))


def write_npy(path: str | os.PathLike, arr) -> Path:
    """One array as ``.npy`` (read back with ``allow_pickle=False``)."""
    import numpy as np

    arr = np.asarray(arr)
    if arr.dtype == object:
        raise ValueError("an object array would need a pickle")
    return write_with(path, lambda f: np.save(f, arr, allow_pickle=False))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, *, durable: bool = True) -> Path:
    """Atomically copy the bytes of ``src`` to ``dst`` (not its permissions or times); returns ``dst``."""
    import shutil

    with open(src, "rb") as fsrc:
        return write_with(dst, lambda f: shutil.copyfileobj(fsrc, f, 1 << 20), durable=durable)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A hard link ``dst`` to ``src`` (no bytes copied; the link appears whole or not at all),
    or an atomic copy where linking fails (another file system, no permission). An existing
    ``dst`` is replaced."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dst)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        copy_file(src, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def write_image(path: str | os.PathLike, img, **params) -> Path:
    """A PIL image in the format its suffix names (``.png``, ``.jpg``, ...); ``params`` go to
    ``Image.save`` (e.g. ``quality``)."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: no image format for the suffix {path.suffix!r}")
    return write_with(path, lambda f: img.save(f, format=fmt, **params))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- result paths


def slug(text: str, limit: int = 80) -> str:
    """A file-name-safe form of a model spec or any name: runs of other characters become ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_")[:limit] or "x"


def results_dir(name: str) -> Path:
    """``<home>/results/<dataset>/``: where every result table of dataset ``name`` goes."""
    from . import config

    return config.home() / "results" / config.check_name(name)


def result_path(name: str, filename: str, out: str | os.PathLike | None = None) -> Path:
    """``out`` when given, else ``results_dir(name) / filename``; its folder exists afterwards."""
    path = Path(out) if out else results_dir(name) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def stored_table(kind: str, name: str, key: list, compute: Callable[[], Any], *,
                 valid: Callable[[Any], bool], keep: Callable[[Any], bool] = lambda _t: True):
    """A table derived from inputs that ``key`` stands for, read from
    ``<home>/cache/<kind>/<name>/<hash of key>.parquet`` when an earlier process stored it,
    else ``compute()``, stored when ``keep(table)`` (one file per kind and name).

    ``key`` (strings, numbers, tuples: anything with a stable ``repr``) must change
    whenever an input does. A stored file that cannot be read or fails ``valid`` is
    computed again, never used. A fresh app server thus starts from what the last one
    derived: a million rows read in a fraction of a second.
    """
    import hashlib
    import logging

    import pandas as pd

    from . import config

    digest = hashlib.sha256(json.dumps([repr(k) for k in key]).encode()).hexdigest()[:32]
    folder = config.cache_dir() / kind / slug(name)
    path = folder / f"{digest}.parquet"
    if path.exists():
        try:
            table = pd.read_parquet(path)
            if valid(table):
                return table
        except (OSError, ValueError) as e:  # pyarrow's errors are OSErrors or ValueErrors
            logging.getLogger(__name__).warning("%s: unreadable (%s): computing it again", path, e)
    table = compute()
    if keep(table):
        if folder.is_dir():
            for old in folder.glob("*.parquet"):
                old.unlink(missing_ok=True)
        write_table(path, table)
    return table


def code_stamp(*modules) -> str:
    """sha256 of the source files of ``modules``: a key part that changes with the code."""
    return _code_stamp(tuple(m.__file__ for m in modules))


@functools.cache  # the code a process runs is the code it loaded: read each file once
def _code_stamp(paths: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()
