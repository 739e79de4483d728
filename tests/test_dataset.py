"""Ingest: real corpus, folders, manifests, DICOM and the bad-file set."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_files import dicom_file, make_bad_folder
from PIL import Image

from lib import dataset
from lib.errors import DatasetError, ManifestError
from lib.images import open_image

REPO = Path(__file__).resolve().parent.parent


def test_corpus_every_image_ingested_with_manifest_label_counts(corpus, corpus_dir):
    manifest = pd.read_csv(corpus_dir / "manifest.csv")
    assert len(corpus.images) == len(manifest) == 658
    assert len(corpus.errors) == 0
    assert corpus.images["label"].value_counts().to_dict() == manifest["label"].value_counts().to_dict()
    # metadata columns of the manifest are kept
    assert {"source", "subclass", "mask"} <= set(corpus.images.columns)
    assert corpus.images.set_index("path")["source"].to_dict() == manifest.set_index("path")["source"].to_dict()


def test_corpus_ids_are_sha256_and_duplicates_reported(corpus, corpus_dir):
    by_hash: dict[str, list[str]] = {}
    for p in corpus.images["path"]:
        by_hash.setdefault(hashlib.sha256((corpus_dir / p).read_bytes()).hexdigest(), []).append(p)
    assert corpus.images.set_index("path")["id"].to_dict() == {p: h for h, ps in by_hash.items() for p in ps}
    expected_dups = sorted(p for ps in by_hash.values() for p in ps[1:])
    assert sorted(corpus.duplicates["path"]) == expected_dups
    assert corpus.info["duplicates"] == len(expected_dups)


def test_bad_files_kept_or_reported_never_crash(tmp_path):
    root = tmp_path / "bad"
    exp = make_bad_folder(root)
    report = dataset.ingest(root, "bad")
    ds = dataset.load("bad")
    kept = set(ds.images["path"])
    errors = dict(zip(ds.errors["path"], ds.errors["reason"], strict=True))
    for rel, (kind, check) in exp.items():
        if kind == "ok":
            assert rel in kept, f"{rel} should be kept, got error {errors.get(rel)}"
            check(open_image(ds.abspath(rel)))
        else:
            assert rel in errors, f"{rel} should be reported"
            assert any(w.lower() in errors[rel].lower() for w in check), errors[rel]
    assert report.images == sum(k == "ok" for k, _ in exp.values())
    assert report.errors == sum(k == "error" for k, _ in exp.values())
    row = ds.images.set_index("path").loc["mono1.dcm"]
    assert (row["Modality"], row["BodyPartExamined"], row["ViewPosition"]) == ("CR", "CHEST", "PA")


def test_folder_subfolders_become_labels(tmp_path):
    for label, color in (("wound", (200, 20, 20)), ("skin", (220, 180, 150))):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (16 + i, 16), color).save(tmp_path / label / f"{i}.png")
    Image.new("RGB", (9, 9)).save(tmp_path / "loose.png")
    dataset.ingest(tmp_path, "folders")
    ds = dataset.load("folders")
    assert ds.images.groupby("label").size().to_dict() == {"skin": 3, "wound": 3}
    assert ds.images.loc[ds.images["path"] == "loose.png", "label"].isna().all()


def test_paths_of_gives_each_ids_first_file_and_never_a_path_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for name, colour in (("a.png", (1, 2, 3)), ("b.png", (4, 5, 6)), ("copy_of_a.png", (1, 2, 3))):
        Image.new("RGB", (8, 8), colour).save(root / name)
    dataset.ingest(root, "paths")
    ds = dataset.load("paths")
    a, b = (ds.images.set_index("path").loc[n, "id"] for n in ("a.png", "b.png"))
    found, paths, errors = ds.paths_of([b, "f" * 64, a])
    assert found == [b, a] and paths == [str(root / "b.png"), str(root / "a.png")]  # a's first file, not its copy
    assert list(errors) == ["f" * 64] and "not in dataset 'paths'" in errors["f" * 64]
    outside = tmp_path / "outside.png"
    (root / "b.png").rename(outside)
    (root / "b.png").symlink_to(outside)  # swapped for a link out of the root since ingest: never read
    found, paths, errors = ds.paths_of([a, b])
    assert found == [a] and "outside the dataset root" in errors[b]


def test_dicom_folder_windowed_and_tagged(tmp_path):
    import pydicom.data

    for name in ("CT_small.dcm", "MR_small.dcm"):
        (tmp_path / name).write_bytes(Path(pydicom.data.get_testdata_file(name)).read_bytes())
    stored = dicom_file(tmp_path / "windowed.dcm", window=(500.0, 200.0))
    dataset.ingest(tmp_path, "dicoms")
    ds = dataset.load("dicoms")
    assert set(ds.images["Modality"]) == {"CT", "MR", "CR"}
    img = np.asarray(open_image(tmp_path / "windowed.dcm"))[..., 0].astype(int)
    # VOI window centre 500 width 200: stored values <= 400 are black, >= 600 are white.
    assert (img[stored <= 399] == 0).all() and (img[stored >= 600] == 255).all()
    mid = (stored > 420) & (stored < 580)
    assert ((img[mid] > 0) & (img[mid] < 255)).all()


def test_manifest_problems_listed_together(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,sensitive\n../escape.png,1\n/etc/passwd,ok\n,x\n")
    with pytest.raises(ManifestError) as e:
        dataset.ingest(tmp_path / "m.csv", "bad_manifest")
    text = str(e.value)
    assert "outside" in text and "/etc/passwd" in text and "escape.png" in text
    assert "empty path" in text and "mixes value types" in text
    assert len(e.value.problems) == 4  # mixed labels, two escaping paths, one empty path
    assert not dataset.exists("bad_manifest")

    (tmp_path / "nopath.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(ManifestError, match="missing required column 'path'"):
        dataset.ingest(tmp_path / "nopath.csv", "bad_manifest")


def test_manifest_missing_file_is_an_error_row_not_an_abort(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png", "gone.png"], "label": ["x", "y"], "split": ["train", "test"],
                  "caption": ["c1", None], "site": ["s1", "s2"]}).to_parquet(tmp_path / "m.parquet")
    dataset.ingest(tmp_path / "m.parquet", "pq")
    ds = dataset.load("pq")
    assert ds.images[["path", "label", "split", "caption", "site"]].values.tolist() == [
        ["a.png", "x", "train", "c1", "s1"]]
    assert ds.errors["path"].tolist() == ["gone.png"]


def test_bad_names_and_sources():
    with pytest.raises(DatasetError, match="invalid dataset name"):
        dataset.ingest(".", "../evil")
    with pytest.raises(DatasetError, match="no such file"):
        dataset.ingest("/nonexistent/folder", "x")
    with pytest.raises(DatasetError, match="no dataset named"):
        dataset.load("never-made")


def test_cli_datasets_and_show(corpus):
    out = subprocess.run([sys.executable, "-m", "lib", "datasets"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("corpus "))
    assert " 658 " in line and "sensitive=544" in line
    out = subprocess.run([sys.executable, "-m", "lib", "show", "corpus", "--limit", "4"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    rows = [ln for ln in out.splitlines() if "images/" in ln]
    assert len(rows) == 4 and corpus.images["id"].iloc[0][:16] in rows[0]


def test_row_of_and_distinct_counts_on_the_corpus_copies(corpus):
    """row_of: an id's first row (None for an id the dataset lacks); n_distinct: distinct ids
    among rows, byte-identical copies counted once (the corpus has some)."""
    import numpy as np

    ids = corpus.images["id"].astype(str).tolist()
    dup = corpus.duplicates["path"].iloc[0]
    cid = corpus.images.set_index("path").loc[dup, "id"]
    rows = [k for k, i in enumerate(ids) if i == cid]
    assert len(rows) >= 2 and corpus.row_of(cid) == rows[0]
    assert all(corpus.row_of(i) == ids.index(i) for i in ids[::37])
    assert corpus.row_of("0" * 64) is None and corpus.row_of(None) is None
    assert corpus.n_distinct() == len(corpus.unique_ids) < len(ids)
    assert corpus.n_distinct(rows) == 1 and corpus.n_distinct([]) == 0
    pick = np.arange(0, len(ids), 3)
    assert corpus.n_distinct(pick) == len({ids[k] for k in pick})
