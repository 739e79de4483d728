"""Datasets: ingest an image collection, store it as parquet, read it back.

A dataset is a table of images keyed by content id (sha256 of the bytes) with a path
relative to the dataset's root, optional label / split / caption, and metadata.
Sources: a folder (class subfolders become labels; DICOM files are recognised), or a
CSV/parquet manifest with a ``path`` column. A file that cannot be used goes into the
dataset's error table with its path and the reason; ingest never stops on one file.

On disk, under ``<home>/datasets/NAME/``: ``images.parquet``, ``errors.parquet``,
``duplicates.parquet`` and ``dataset.json``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from .config import NAME_RE, check_name  # noqa: F401  (check_name is part of this module's API)
from .errors import DatasetError, ImageError, ManifestError, UnsafePath
from .files import sha256_file, write_table, write_text
from .images import IMAGE_EXTENSIONS, file_kind, is_dicom, open_image_with_meta

RESERVED_COLUMNS = ("id", "path", "label", "split", "caption", "width", "height", "format", "duplicate_of")
DICOM_TAGS = ("Modality", "BodyPartExamined", "ViewPosition")
MANIFEST_SUFFIXES = {".csv", ".parquet", ".pq"}


def dataset_dir(name: str) -> Path:
    return config.datasets_dir() / check_name(name)


def safe_join(root: Path, rel: str | os.PathLike) -> Path:
    """Resolve ``rel`` under ``root``; raise :class:`UnsafePath` if it escapes it.

    Absolute paths, ``..`` and symlinks that lead outside the root are all refused:
    the workbench only ever reads files inside a registered dataset root.
    """
    root = Path(root).resolve()
    rel = Path(rel)
    candidate = (rel if rel.is_absolute() else root / rel).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePath(f"{rel}: path resolves outside the dataset root {root}")
    return candidate


# --------------------------------------------------------------------------- probing


@dataclass
class Probe:
    """What ingest learns about one file."""

    path: str
    ok: bool
    id: str | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    reason: str = ""
    meta: dict = field(default_factory=dict)


def probe_file(path: str) -> Probe:
    """Hash and fully decode one file. Never raises: failures come back as ``ok=False``."""
    try:
        img, meta = open_image_with_meta(path)
        cid = sha256_file(path)  # the content id: the image's identity everywhere
    except ImageError as e:
        reason = str(e)
        prefix = f"{path}: "
        return Probe(path, False, reason=reason[len(prefix):] if reason.startswith(prefix) else reason)
    except MemoryError:
        return Probe(path, False, reason="out of memory while decoding")
    except Exception as e:  # a decoder bug must not abort a whole collection
        return Probe(path, False, reason=f"unexpected {type(e).__name__}: {e}")
    dicom = {k: meta[k] for k in DICOM_TAGS if k in meta}
    return Probe(path, True, id=cid, width=img.width, height=img.height,
                 format=meta.get("format") or "", meta=dicom)


def _probe_all(paths: list[str], workers: int | None, progress: bool,
               progress_callback: Callable[[int, int], None] | None = None) -> list[Probe]:
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = _progress(len(paths), "ingest", progress)
    out: list[Probe] = []

    def tick() -> None:
        bar.update(1)
        if progress_callback is not None:
            progress_callback(len(out), len(paths))

    if workers <= 1 or len(paths) < 16:
        for p in paths:
            out.append(probe_file(p))
            tick()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(os, "fork") else None
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for probe in pool.map(probe_file, paths, chunksize=8):
                out.append(probe)
                tick()
    bar.close()
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------- sources


def _walk_folder(root: Path) -> tuple[list[dict], list[dict]]:
    """Rows (path, label) for every candidate file under ``root`` and early errors."""
    rows, errors = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            full = Path(dirpath) / fname
            rel = full.relative_to(root)
            if full.is_symlink():
                try:
                    safe_join(root, rel)
                except UnsafePath:
                    errors.append({"path": str(rel), "reason": "symlink points outside the dataset root"})
                    continue
            try:
                mode = full.stat().st_mode
            except OSError as e:  # a dangling symlink, a file gone since the listing
                errors.append({"path": str(rel), "reason": f"cannot read file ({e.strerror or e})"})
                continue
            if not stat.S_ISREG(mode):  # a named pipe would block every reader
                errors.append({"path": str(rel), "reason": f"not a regular file ({file_kind(mode)})"})
                continue
            if full.suffix.lower() not in IMAGE_EXTENSIONS and not is_dicom(full):
                if full.suffix.lower() in MANIFEST_SUFFIXES | {".md", ".txt", ".json"}:
                    continue  # documentation and manifests beside the images are not images
                errors.append({"path": str(rel), "reason": f"unsupported file type {full.suffix or '(none)'}"})
                continue
            label = rel.parts[0] if len(rel.parts) > 1 else None
            rows.append({"path": str(rel), "label": label})
    return rows, errors


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        return pd.read_parquet(path)
    except Exception as e:
        raise ManifestError(path, [f"cannot be read as {path.suffix[1:]}: {e}"]) from None


def _manifest_rows(path: Path, root: Path) -> tuple[list[dict], list[dict], list[str]]:
    """Validate a manifest: all structural problems are collected and raised together."""
    df = _read_manifest(path)
    problems: list[str] = []
    if "path" not in df.columns:
        problems.append(f"missing required column 'path' (columns are: {', '.join(map(str, df.columns))})")
        raise ManifestError(path, problems)
    if df.empty:
        raise ManifestError(path, ["no rows"])
    for col in ("label", "split"):
        if col in df.columns:
            values = df[col].dropna()
            kinds = {_value_kind(v) for v in values}
            if len(kinds) > 1:
                examples = {k: next(v for v in values if _value_kind(v) == k) for k in kinds}
                shown = ", ".join(f"{k} (e.g. {v!r})" for k, v in sorted(examples.items()))
                problems.append(f"column {col!r} mixes value types: {shown}")
    rows, errors = [], []
    seen: dict[str, int] = {}
    extra = [c for c in df.columns if c not in RESERVED_COLUMNS]
    for i, rec in enumerate(df.to_dict("records"), start=2 if path.suffix.lower() == ".csv" else 0):
        where = f"line {i}" if path.suffix.lower() == ".csv" else f"row {i}"
        p = rec.get("path")
        if p is None or (isinstance(p, float) and pd.isna(p)) or not str(p).strip():
            problems.append(f"{where}: empty path")
            continue
        p = str(p).strip()
        try:
            full = safe_join(root, p)
        except UnsafePath:
            problems.append(f"{where}: path {p!r} is outside the manifest's folder {root}")
            continue
        if os.path.isabs(p) and full.is_relative_to(root.resolve()):
            rel = os.path.relpath(os.path.normpath(p), root)
            if not rel.startswith(".."):
                p = rel  # stored relative to the root, as folder rows are
        if p in seen:
            problems.append(f"{where}: path {p!r} repeats line/row {seen[p]}")
            continue
        seen[p] = i
        row = {"path": p}
        for col in ("label", "split", "caption"):
            if col in df.columns:
                v = rec.get(col)
                row[col] = None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
        row["meta"] = {c: rec.get(c) for c in extra}
        rows.append(row)
    if problems:
        raise ManifestError(path, problems)
    return rows, errors, extra


def _absolute_root(manifest: Path) -> Path | None:
    """The deepest folder holding every path of a manifest whose paths are all absolute (an
    export with absolute paths ingests without ``--root``); None otherwise."""
    df = _read_manifest(manifest)
    if "path" not in df.columns:
        return None
    paths = [str(p).strip() for p in df["path"].dropna() if str(p).strip()]
    if not paths or not all(os.path.isabs(p) for p in paths):
        return None
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def _value_kind(v) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    s = str(v).strip()
    try:
        float(s)
        return "number"
    except ValueError:
        return "text"


# --------------------------------------------------------------------------- ingest


@dataclass
class IngestReport:
    name: str
    images: int
    errors: int
    duplicates: int
    labels: dict
    seconds: float

    def summary(self) -> str:
        labels = ", ".join(f"{k}: {v}" for k, v in self.labels.items()) or "none"
        return (f"dataset {self.name!r}: {self.images} images ingested, {self.errors} errors, "
                f"{self.duplicates} byte-identical duplicates ({self.seconds:.1f} s); labels: {labels}")


def ingest(
    source: str | os.PathLike,
    name: str,
    *,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = True,
    progress_callback: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Ingest a folder or manifest as dataset ``name``.

    Parameters
    ----------
    source : folder, or CSV/parquet manifest with a ``path`` column (relative to the
        manifest's folder, or to ``root``).
    root : where the images live; defaults to the folder itself or the manifest's folder.
    progress_callback : optional ``progress_callback(done, total)`` called as files are probed
        (the app's progress bar).

    Returns an :class:`IngestReport`; the stored tables are read with :func:`load`.
    """
    t0 = time.perf_counter()
    check_name(name)
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    extra_cols: list[str] = []
    if source.is_dir():
        base = Path(root or source).resolve()
        rows, errors = _walk_folder(base)
        kind = "folder"
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        base = Path(root or _absolute_root(source) or source.parent).resolve()
        rows, errors, extra_cols = _manifest_rows(source, base)
        kind = "manifest"
    else:
        raise DatasetError(f"{source}: not a folder or a .csv/.parquet manifest")
    if not rows and not errors:
        raise DatasetError(f"{source}: no image files found")

    probes = _probe_all([str(base / r["path"]) for r in rows], workers, progress, progress_callback)
    images, dups = [], []
    first_by_id: dict[str, str] = {}
    for row, probe in zip(rows, probes, strict=True):
        if not probe.ok:
            errors.append({"path": row["path"], "reason": probe.reason})
            continue
        # Byte-identical copies stay rows of their own (a manifest's counts are kept) but
        # share the content id, so they are embedded and scored once.
        first = first_by_id.setdefault(probe.id, row["path"])
        if first != row["path"]:
            dups.append({"id": probe.id, "path": row["path"], "duplicate_of": first})
        rec = {
            "id": probe.id, "path": row["path"], "label": row.get("label"), "split": row.get("split"),
            "caption": row.get("caption"), "width": probe.width, "height": probe.height,
            "format": probe.format, "duplicate_of": first if first != row["path"] else None,
        }
        rec.update(row.get("meta", {}))
        rec.update(probe.meta)
        images.append(rec)

    df = pd.DataFrame(images, columns=list(RESERVED_COLUMNS) + _extra_columns(images, extra_cols))
    for col in ("id", "path", "label", "split", "caption", "format", "duplicate_of"):
        df[col] = df[col].astype("string")
    err_df = pd.DataFrame(errors, columns=["path", "reason"]).astype("string")
    dup_df = pd.DataFrame(dups, columns=["id", "path", "duplicate_of"]).astype("string")

    out = dataset_dir(name)
    if out.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {out}")
    config.ensure(out)
    info = {
        "name": name, "root": str(base), "source": str(source.resolve()), "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "images": len(df), "errors": len(err_df),
        "duplicates": len(dup_df), "labels": _counts(df["label"]), "metadata_columns": [
            c for c in df.columns if c not in RESERVED_COLUMNS],
    }
    write_table(out / "images.parquet", df)
    write_table(out / "errors.parquet", err_df)
    write_table(out / "duplicates.parquet", dup_df)
    write_text(out / "dataset.json", json.dumps(info, indent=2))  # last: the dataset exists once it is there
    return IngestReport(name, len(df), len(err_df), len(dup_df), info["labels"], time.perf_counter() - t0)


def _extra_columns(images: list[dict], declared: Iterable[str]) -> list[str]:
    cols = list(declared)
    for rec in images:
        for k in rec:
            if k not in RESERVED_COLUMNS and k not in cols:
                cols.append(k)
    return cols


def _counts(series: pd.Series) -> dict:
    vc = series.dropna().value_counts()
    return {str(k): int(v) for k, v in sorted(vc.items())}


# --------------------------------------------------------------------------- reading


@dataclass
class Dataset:
    """An ingested dataset.

    ``images`` has one row per usable file, in a stable order; byte-identical copies
    share their ``id`` and name the first copy in ``duplicate_of``.
    """

    name: str
    root: Path
    info: dict
    images: pd.DataFrame
    errors: pd.DataFrame
    duplicates: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> list[str]:
        return self.images["id"].tolist()

    @property
    def unique_ids(self) -> list[str]:
        """Content ids in first-seen order, each once."""
        return list(dict.fromkeys(self.images["id"].tolist()))

    def row_of(self, image_id: str | None) -> int | None:
        """The first row of content id ``image_id``, None when the dataset has none: one
        vectorised comparison (ms at 1M rows), where ``image_id in set(images["id"])`` built
        a set of every id on each page run."""
        if image_id is None:
            return None
        hit = (self.images["id"] == str(image_id)).to_numpy(dtype=bool, na_value=False)
        row = int(hit.argmax()) if len(hit) else 0
        return row if len(hit) and hit[row] else None

    @property
    def copy_rows(self) -> np.ndarray:
        """(n,) bool: the rows whose content id has other rows (byte-identical copies, as
        ingest marked them in ``duplicate_of``, and the rows they copy). Once per Dataset
        object (the app's is shared): a collection without copies costs one column read."""
        mask = self.__dict__.get("_copy_rows")
        if mask is None:
            ids = self.images["id"]
            if "duplicate_of" in self.images:
                dup = self.images["duplicate_of"].notna().to_numpy(dtype=bool)
                mask = ids.isin(ids[dup].unique()).to_numpy(dtype=bool) if dup.any() else dup
            else:  # a table from before ingest marked copies
                mask = ids.duplicated(keep=False).to_numpy(dtype=bool)
            self.__dict__["_copy_rows"] = mask
        return mask

    @property
    def first_rows(self) -> np.ndarray:
        """(n,) bool: the first row of each content id (every row without copies, and the
        first of each copied id), so ``images["id"][first_rows]`` is :attr:`unique_ids` in
        order without building a list of every id."""
        keep = ~self.copy_rows
        copied = np.flatnonzero(~keep)
        if len(copied):
            keep[copied[~self.images["id"].iloc[copied].duplicated().to_numpy()]] = True
        return keep

    def n_distinct(self, rows=None) -> int:
        """How many distinct content ids ``rows`` (row numbers; all rows when None) hold:
        each row without copies counts once; only rows with copies are grouped (1M rows
        without copies: ms, where factorizing every id took ~2 s of a fresh server's page)."""
        sub = np.arange(len(self.images)) if rows is None else np.asarray(rows, dtype=np.int64)
        copies = self.copy_rows[sub]
        shared = self.images["id"].iloc[sub[copies]].dropna() if copies.any() else []
        return int(np.count_nonzero(~copies)) + len(set(shared))

    def abspath(self, rel: str) -> Path:
        """Absolute path of an image, refusing anything outside the dataset root."""
        return safe_join(self.root, rel)

    def paths_of(self, ids: Iterable[str]) -> tuple[list[str], list[str], dict[str, str]]:
        """The absolute path of the first file of each content id, for reading them in workers.

        Returns (the ids found, their paths as strings, {id: reason} for ids not in the
        dataset or whose path now leaves the root: those are never read).
        """
        first = self.images.drop_duplicates("id").set_index("id")["path"]
        found, paths, errors = [], [], {}
        for cid in ids:
            try:
                paths.append(str(self.abspath(first[cid])))
                found.append(cid)
            except UnsafePath as e:
                errors[cid] = str(e)
            except KeyError:
                errors[cid] = f"image {cid} is not in dataset {self.name!r}"
        return found, paths, errors

    def path_of(self, image_id: str) -> Path:
        row = self.images.loc[self.images["id"] == image_id]
        if row.empty:
            raise DatasetError(f"image {image_id} is not in dataset {self.name!r}")
        return self.abspath(row["path"].iloc[0])

    def resolve_id(self, prefix: str) -> str:
        """Full content id from a unique prefix (as printed by ``show``)."""
        prefix = prefix.strip().lower()
        hits = self.images["id"][self.images["id"].str.startswith(prefix)]
        if len(hits) == 1:
            return str(hits.iloc[0])
        if hits.empty:
            raise DatasetError(f"no image id starting with {prefix!r} in dataset {self.name!r}")
        raise DatasetError(f"id prefix {prefix!r} is ambiguous in {self.name!r} ({len(hits)} images)")

    @property
    def has_labels(self) -> bool:
        return bool(self.images["label"].notna().any())


def exists(name: str) -> bool:
    return (dataset_dir(name) / "dataset.json").exists()


def load(name: str) -> Dataset:
    """Read dataset ``name`` from the data home."""
    d = dataset_dir(name)
    if not (d / "dataset.json").exists():
        known = ", ".join(list_names()) or "none yet"
        raise DatasetError(
            f"no dataset named {name!r} in {config.datasets_dir()} (known: {known}); "
            f"create it with: python -m lib ingest SOURCE --name {name}"
        )
    info = json.loads((d / "dataset.json").read_text())
    return Dataset(
        name=name, root=Path(info["root"]), info=info,
        images=pd.read_parquet(d / "images.parquet"),
        errors=pd.read_parquet(d / "errors.parquet"),
        duplicates=pd.read_parquet(d / "duplicates.parquet"),
    )


def list_names() -> list[str]:
    d = config.datasets_dir()
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "dataset.json").exists())


def summary_table() -> pd.DataFrame:
    """One row per dataset: name, images, errors, duplicates, labels, kind, root."""
    rows = []
    for name in list_names():
        info = json.loads((dataset_dir(name) / "dataset.json").read_text())
        rows.append({
            "name": name, "images": info["images"], "errors": info["errors"],
            "duplicates": info.get("duplicates", 0),
            "labels": ", ".join(f"{k}={v}" for k, v in info.get("labels", {}).items()),
            "kind": info.get("kind", ""), "root": info.get("root", ""),
        })
    return pd.DataFrame(rows, columns=["name", "images", "errors", "duplicates", "labels", "kind", "root"])
