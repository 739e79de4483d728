"""Exports of a dataset's images and annotations, in formats other tools read.

Every export is a folder holding its files and a ``README.md`` that says what was
exported, when, from what, with which options (the README-style header). Formats:

==============  ===================================================================================
``csv``         ``annotations.csv``: one row per image (``id, path, dataset_label``, the label of
                the chosen label set — consensus, else the latest — with ``reviewer`` and
                ``reviewed_at``, and every annotator's label as ``label:<name>``)
``jsonl``       ``annotations.jsonl``: the same rows, one JSON object per line
``imagefolder`` Hugging Face ``imagefolder``: ``<label>/<file>`` copies plus ``metadata.csv``
                (``file_name`` first, then ``label``); read back with ``datasets.load_dataset(
                "imagefolder", data_dir=...)`` (with a metadata file it takes ``label`` from it)
``fiftyone``    FiftyOne's image classification dataset (``fiftyone.types.
                FiftyOneImageClassificationDataset``): ``data/<uuid>.<ext>`` and ``labels.json``
                ``{"classes": [...], "labels": {"<uuid>": <class index or null>}}``
``manifest``    ``manifest.csv`` that ``python -m lib ingest`` reads back (``path, label, split`` and
                provenance columns; absolute paths unless ``relative``)
==============  ===================================================================================

Sensitive images are exported as files, never displayed. Paths in tables are absolute, or
relative to the dataset root with ``relative=True``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .errors import WorkbenchError
from .files import copy_file, write_json, write_table, write_text

FORMATS = ("csv", "jsonl", "imagefolder", "fiftyone", "manifest")


class ExportError(WorkbenchError):
    """An export cannot be made as asked (the message says why)."""


def annotation_table(ds, store, *, label_set: str | None = None, only_reviewed: bool = False,
                     ids: Iterable[str] | None = None, relative: bool = False) -> pd.DataFrame:
    """One row per dataset row (or per row of ``ids``): ``id, path, dataset_label, label,
    reviewer, reviewed_at, label_source`` and ``label:<annotator>`` per annotator.

    ``label`` is the chosen label set's consensus, else the latest label of any annotator,
    else (unless ``only_reviewed``, which drops unreviewed images) the dataset's own label
    for the default set.
    """
    from .annotations import CONSENSUS, DEFAULT_SET, scope
    from .sensitivity import latest_reviews

    schema = store.schema(ds.name, label_set)
    where = scope(ds.name, schema.name)
    images = ds.images
    if ids is not None:
        wanted = set(map(str, ids))
        images = images[images["id"].astype(str).isin(wanted)]
    cur = store.current(where)
    latest = latest_reviews(cur).set_index("id") if len(cur) else pd.DataFrame(columns=["review", "reviewer",
                                                                                        "reviewed_at"])
    out = pd.DataFrame({
        "id": images["id"].astype(str).to_numpy(),
        "path": [p if relative else str(ds.abspath(p)) for p in images["path"]],
        "dataset_label": images["label"].to_numpy(),
    })
    rev = latest.reindex(out["id"])
    out["label"] = rev["review"].to_numpy()
    out["reviewer"] = rev["reviewer"].to_numpy()
    out["reviewed_at"] = rev["reviewed_at"].to_numpy()
    out["label_source"] = ["consensus" if r == CONSENSUS else "review" if isinstance(r, str) else None
                           for r in out["reviewer"]]
    if schema.name == DEFAULT_SET and not only_reviewed:
        fill = out["label"].isna() & out["dataset_label"].notna()
        out.loc[fill, "label"] = out.loc[fill, "dataset_label"]
        out.loc[fill, "label_source"] = "dataset"
    for who in sorted(set(cur["annotator"]) - {CONSENSUS}) if len(cur) else []:
        mine = cur[cur["annotator"] == who].set_index("image_id")["label"]
        out[f"label:{who}"] = mine.reindex(out["id"]).to_numpy()
    if only_reviewed:
        out = out[out["label_source"].isin(["consensus", "review"])]
    return out.reset_index(drop=True)


def _readme(path: Path, ds, fmt: str, table: pd.DataFrame, options: dict) -> None:
    counts = table["label"].fillna("(none)").value_counts()
    lines = [f"# Export of dataset `{ds.name}` ({fmt})", "",
             f"- exported: {time.strftime('%Y-%m-%dT%H:%M:%S%z')} by the sensitive image workbench",
             f"- from: dataset root `{ds.root}`, ingested from `{ds.info.get('source', '?')}` "
             f"({ds.info.get('created', '?')})",
             f"- images: {len(table)}", *(f"- {k}: {v}" for k, v in options.items()), "",
             "Labels:", "", "| label | images |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in counts.items()), "",
             "**Content warning**: the images may show wounds or other sensitive content; they are files "
             "here, open them behind a warning.", ""]
    write_text(path / "README.md", "\n".join(lines))


def _safe_part(label) -> str:
    """A class name as a folder name (no separators, no dot-only names)."""
    text = str(label).replace("/", "_").replace("\\", "_").strip() or "_"
    return "_" + text if text.strip(".") == "" else text


def export(ds, store, out: str | Path, fmt: str, *, label_set: str | None = None, only_reviewed: bool = False,
           ids: Iterable[str] | None = None, relative: bool = False) -> Path:
    """Write dataset ``ds``'s images and labels to folder ``out`` in format ``fmt`` (:data:`FORMATS`).

    Returns the folder. Refuses a non-empty folder that is not an earlier export (no
    ``README.md``), so nothing of the user's is overwritten.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / "README.md").exists():
        raise ExportError(f"{out} is not empty and holds no earlier export: choose an empty or new folder")
    schema = store.schema(ds.name, label_set)
    table = annotation_table(ds, store, label_set=schema.name, only_reviewed=only_reviewed, ids=ids,
                             relative=relative)
    if table.empty:
        raise ExportError(f"nothing to export from {ds.name!r} with these options"
                          + (" (no reviewed image: drop --only-reviewed)" if only_reviewed else ""))
    if fmt in ("imagefolder", "fiftyone") and schema.multi:
        raise ExportError(f"label set {schema.name!r} gives several tags per image: export it as csv, jsonl or "
                          "manifest (imagefolder and fiftyone classification hold one class per image)")
    out.mkdir(parents=True, exist_ok=True)
    options = {"format": fmt, "label set": schema.name, "only reviewed": only_reviewed,
               "paths": "relative to the dataset root" if relative else "absolute"}
    rows = table.drop_duplicates("id") if fmt in ("imagefolder", "fiftyone") else table
    src = {str(i): ds.abspath(p) for i, p in zip(ds.images["id"], ds.images["path"], strict=True)}
    if fmt == "csv":
        write_table(out / "annotations.csv", table)
    elif fmt == "jsonl":
        lines = [json.dumps({k: (None if v is None or (isinstance(v, float) and v != v) else v)
                             for k, v in r.items()}, default=str) for r in table.to_dict("records")]
        write_text(out / "annotations.jsonl", "\n".join(lines) + "\n")
    elif fmt == "imagefolder":
        meta = []
        for r in rows.to_dict("records"):
            s = src[r["id"]]
            folder = _safe_part(r["label"]) if isinstance(r["label"], str) else "unlabelled"
            name = f"{folder}/{r['id'][:16]}{s.suffix.lower()}"
            copy_file(s, out / name)
            meta.append({"file_name": name, "id": r["id"], "source_path": r["path"], "label": r["label"],
                         "label_source": r["label_source"]})
        write_table(out / "metadata.csv", pd.DataFrame(meta))
    elif fmt == "fiftyone":
        classes = sorted({str(v) for v in rows["label"].dropna()})
        labels = {}
        for r in rows.to_dict("records"):
            s = src[r["id"]]
            uid = uuid.uuid5(uuid.NAMESPACE_URL, r["id"]).hex
            copy_file(s, out / "data" / f"{uid}{s.suffix.lower()}")
            labels[uid] = classes.index(str(r["label"])) if isinstance(r["label"], str) else None
        write_json(out / "labels.json", {"classes": classes, "labels": labels})
    elif fmt == "manifest":
        man = table.rename(columns={"label": "label", "dataset_label": "dataset_label"})
        man = man[["path", "label", "id", "dataset_label", "reviewer", "reviewed_at", "label_source"]]
        write_table(out / "manifest.csv", man)
        options["ingest with"] = (f"python -m lib ingest {out / 'manifest.csv'} --name {ds.name}-export"
                                  + (f" --root {ds.root}" if relative else ""))
    _readme(out, ds, fmt, table, options)
    return out
