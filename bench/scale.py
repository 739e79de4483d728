"""A million-image collection (opt-in: ``--only scale``): ingest speed, loading, the annotation store.

The 1M-row dataset reuses files: ``FILES`` distinct tiny PNGs are ingested for real (that
gives ingest's rows/s: every row is hashed and fully decoded), then each row is repeated
``n / FILES`` times with a distinct synthetic content id ``sha256(<file's id>:<copy>)``
and the copy number in a metadata column ``copy`` (written as ingest writes a dataset:
images.parquet, errors, duplicates, dataset.json through :mod:`lib.files`). So every cache
and the annotation store see 1M distinct images, while the disk holds ``FILES`` files.

Measured at 100k and 1M rows, side by side in one run:

- ``dataset.load`` (parquet -> DataFrame) and the process's RSS after it;
- labelling every image (bulk labels in transactions of 20k) in rows/s;
- the annotation store's queries by status: the images with a label (``ids_with_label``,
  through the v3 ``current_label`` index; a large answer, 10% of the rows, and an empty
  one), the counts per label (v3 ``current_counts``, kept by triggers), an annotator's
  unlabelled images; beside each, the store before v3 (the index dropped in a transaction
  that is rolled back, counts by ``COUNT(*)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

import numpy as np

from .common import Recorder, fresh_home, tiny_image_folder

FILES = 20_000
LABELS = ("Ok", "Blur", "Maybe")


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _best(fn, reps: int = 5) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def _replicate(base: str, name: str, n: int) -> None:
    """Dataset ``name``: the rows of ``base`` repeated to ``n`` rows with distinct synthetic ids."""
    import pandas as pd

    from lib import config, dataset
    from lib.files import write_table, write_text

    src = dataset.load(base)
    rows = src.images
    copies = -(-n // len(rows))
    big = pd.concat([rows] * copies, ignore_index=True).iloc[:n].copy()
    copy = np.repeat(np.arange(copies), len(rows))[:n]
    big["id"] = pd.array([hashlib.sha256(f"{i}:{c}".encode()).hexdigest()
                          for i, c in zip(big["id"].tolist(), copy.tolist(), strict=True)], dtype="string")
    big["copy"] = copy
    out = config.datasets_dir() / name
    config.ensure(out)
    write_table(out / "images.parquet", big)
    write_table(out / "errors.parquet", src.errors)
    write_table(out / "duplicates.parquet", src.duplicates)
    info = {**json.loads((config.datasets_dir() / base / "dataset.json").read_text()), "name": name,
            "images": len(big), "metadata_columns": ["copy"],
            "synthetic": f"rows of {base!r} repeated {copies}x, id = sha256(<id>:<copy>)"}
    write_text(out / "dataset.json", json.dumps(info, indent=2))


def run(rec: Recorder) -> None:
    from lib import dataset
    from lib.annotations import AnnotationStore

    sizes = [20_000, 100_000] if rec.quick else [100_000, 1_000_000]
    fresh_home("scale")
    files = tiny_image_folder(FILES)
    t = time.perf_counter()
    dataset.ingest(files, "files", workers=os.cpu_count())
    dt = time.perf_counter() - t
    rec.add(f"ingest: {FILES} tiny PNGs (hash + full decode per row)", FILES / dt, "rows/s",
            note=f"{dt:.1f} s; at this rate 1M rows take {1e6 / (FILES / dt) / 60:.1f} min")
    store = AnnotationStore()
    for n in sizes:
        tag = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        name = f"big{tag}"
        t = time.perf_counter()
        _replicate("files", name, n)
        rec.add(f"{tag}: build the synthetic dataset", time.perf_counter() - t, "s")
        rss0 = _rss_gib()
        load_s = _best(lambda name=name: dataset.load(name), reps=3)
        ds = dataset.load(name)
        rec.add(f"{tag}: dataset.load", load_s * 1e3, "ms", note=f"RSS {_rss_gib():.2f} GiB after (was {rss0:.2f})")
        ids = ds.images["id"].tolist()
        rng = np.random.default_rng(0)
        which = rng.choice(len(LABELS), size=len(ids), p=[0.6, 0.3, 0.1])
        t = time.perf_counter()
        for k, label in enumerate(LABELS):
            chosen = [i for i, w in zip(ids, which.tolist(), strict=True) if w == k]
            for s in range(0, len(chosen), 20_000):
                store.bulk_label(name, chosen[s:s + 20_000], "ann", label)
        dt = time.perf_counter() - t
        rec.add(f"{tag}: label every image (bulk, 20k per transaction)", len(ids) / dt, "rows/s", note=f"{dt:.1f} s")
        # A second annotator on a tenth: the by-anyone query must deduplicate.
        for s in range(0, len(ids) // 10, 20_000):
            store.bulk_label(name, ids[s:min(s + 20_000, len(ids) // 10)], "bob", "Blur")
        n_blur = len(store.ids_with_label(name, "Blur"))
        goal = ("<", 100) if n == 1_000_000 else None
        q = _best(lambda name=name: store.ids_with_label(name, "Maybe", annotator="ann"))
        q1 = _best(lambda name=name: store.ids_with_label(name, "Maybe", annotator="bob"))  # none: the lookup alone
        qc = _best(lambda name=name: store.label_counts(name))
        # The store before v3, side by side: the same queries with the v3 index dropped inside a
        # transaction that is rolled back (v2 plans: the primary key, current_annotator; COUNT(*)).
        with sqlite3.connect(store.path, isolation_level=None) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DROP INDEX current_label")
            sql = "SELECT DISTINCT image_id FROM current WHERE dataset = ? AND label = ? AND annotator = ? ORDER BY image_id"
            counts = "SELECT label, COUNT(*) FROM current WHERE dataset = ? GROUP BY label"
            v2 = _best(lambda c=conn, q=sql, a=(name, "Maybe", "ann"): c.execute(q, a).fetchall(), reps=3)
            v2_1 = _best(lambda c=conn, q=sql, a=(name, "Maybe", "bob"): c.execute(q, a).fetchall(), reps=3)
            v2_c = _best(lambda c=conn, q=counts, a=(name,): c.execute(q, a).fetchall(), reps=3)
            conn.execute("ROLLBACK")
        rec.add(f"{tag}: ids_with_label(Maybe, ann): 10% of the rows", q * 1e3, "ms", goal,
                note=f"{int((which == 2).sum())} ids; before v3 {v2 * 1e3:.1f} ms (x{v2 / q:.1f})")
        rec.add(f"{tag}: ids_with_label(Maybe, bob): none", q1 * 1e3, "ms", goal,
                note=f"before v3 {v2_1 * 1e3:.2f} ms (x{v2_1 / max(q1, 1e-9):.1f})")
        rec.add(f"{tag}: label_counts", qc * 1e3, "ms", goal, note=f"before v3 (COUNT(*) GROUP BY) {v2_c * 1e3:.1f} ms "
                f"(x{v2_c / max(qc, 1e-9):.0f})")
        rec.add(f"{tag}: ids_with_label(Blur), any annotator", _best(
            lambda name=name: store.ids_with_label(name, "Blur")) * 1e3, "ms", note=f"{n_blur} distinct ids")
        sample = ids[: len(ids) // 2]
        rec.add(f"{tag}: unlabelled(bob) of half the images", _best(
            lambda name=name, sample=sample: store.unlabelled(name, "bob", sample), reps=3) * 1e3, "ms")
        del ds, ids, which
    rec.explain(f"The {sizes[-1]:,}-row dataset reuses {FILES} real files: rows repeated with synthetic content ids "
                "sha256(<file id>:<copy>) and the copy in a metadata column; ingest's rows/s is measured on the "
                "files themselves (it hashes and decodes every row, so it is linear in rows). Query times are the best "
                "of 5 (3 for the scans), on a WAL SQLite file; the app pages at 1M rows are not measured here "
                "(bench app covers 100k).")
