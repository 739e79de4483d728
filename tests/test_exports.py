"""Exports other tools read, bulk labels with undo, and finding images (lib/exports.py, the
label and show verbs): real corpus files, real SQLite, each format read back with the tool that
defines it (Hugging Face ``datasets`` for imagefolder) or against its documented schema."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lib import dataset, exports
from lib import gallery as gl
from lib.annotations import AnnotationStore, scope, shipped_label_sets
from lib.cli import main


@pytest.fixture(scope="module")
def small(corpus_dir, tmp_path_factory):
    """12 corpus images in class folders, reviewed by two annotators, with a wound-type set."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path_factory.mktemp("exp")
    for label, rows in (("wounds", m[m.label == "sensitive"].iloc[:6]), ("skin", m[m.label == "non_sensitive"].iloc[:6])):
        (root / label).mkdir()
        for p in rows.path:
            shutil.copy(corpus_dir / p, root / label / p.replace("/", "_"))
    dataset.ingest(root, "exp")
    ds = dataset.load("exp")
    store = AnnotationStore()
    ids = ds.images["id"].tolist()
    for i, cid in enumerate(ids[:8]):
        store.set_label("exp", cid, "ana", "Blur" if i < 4 else "Ok")
    store.set_label("exp", ids[0], "bob", "Ok")  # bob disagrees on one, later: latest label
    store.resolve("exp", ids[1], "Maybe", by="carol")
    store.add_schema("exp", shipped_label_sets()["wound-type"])
    store.set_label(scope("exp", "wound-type"), ids[0], "ana", "venous ulcer")
    return ds, store


def test_annotation_table_consensus_then_latest_then_dataset_label(small):
    ds, store = small
    t = exports.annotation_table(ds, store).set_index("id")
    ids = ds.images["id"].tolist()
    assert t.loc[ids[0], "label"] == "Ok" and t.loc[ids[0], "reviewer"] == "bob"
    assert t.loc[ids[1], "label"] == "Maybe" and t.loc[ids[1], "label_source"] == "consensus"
    assert t.loc[ids[9], "label"] == ds.images["label"].iat[9] and t.loc[ids[9], "label_source"] == "dataset"
    assert t.loc[ids[0], "label:ana"] == "Blur" and t.loc[ids[0], "label:bob"] == "Ok"
    assert len(exports.annotation_table(ds, store, only_reviewed=True)) == 8
    w = exports.annotation_table(ds, store, label_set="wound-type", only_reviewed=True)
    assert w["label"].tolist() == ["venous ulcer"]


@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_every_format_reads_back(small, fmt, tmp_path):
    ds, store = small
    out = exports.export(ds, store, tmp_path / fmt, fmt)
    readme = (out / "README.md").read_text()
    assert f"dataset `exp` ({fmt})" in readme and "images: 12" in readme and "Content warning" in readme
    truth = exports.annotation_table(ds, store).set_index("id")
    if fmt == "csv":
        back = pd.read_csv(out / "annotations.csv")
        assert back["id"].tolist() == truth.index.tolist() and back["label"].tolist() == truth["label"].tolist()
        assert all(p.startswith("/") for p in back["path"])
    elif fmt == "jsonl":
        back = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
        assert [r["label"] for r in back] == truth["label"].tolist() and back[0]["label:bob"] == "Ok"
    elif fmt == "imagefolder":
        import datasets

        hf = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
        assert len(hf) == 12 and set(hf.features) >= {"image", "label", "id", "source_path"}
        for row, name in zip(hf, pd.read_csv(out / "metadata.csv")["file_name"], strict=True):
            # the folder class, the label and the pixels of the source file agree
            assert name.split("/")[0] == row["label"] == truth.loc[row["id"], "label"]
            src = ds.abspath(ds.images.set_index("id").loc[row["id"], "path"])
            from PIL import Image

            assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(Image.open(src).convert("RGB")))
    elif fmt == "fiftyone":
        labels = json.loads((out / "labels.json").read_text())
        assert set(labels) == {"classes", "labels"} and labels["classes"] == sorted(set(truth["label"]))
        files = {p.stem for p in (out / "data").iterdir()}
        assert files == set(labels["labels"]) and len(files) == 12
        counts = pd.Series([labels["classes"][i] for i in labels["labels"].values()]).value_counts()
        assert counts.to_dict() == truth["label"].value_counts().to_dict()
    else:  # manifest: ingest reads it back, without --root
        assert main(["ingest", str(out / "manifest.csv"), "--name", "exp-back"]) == 0
        back = dataset.load("exp-back").images.set_index("id")
        assert set(back.index) == set(truth.index)
        assert (back["label"].reindex(truth.index) == truth["label"]).all()
        assert back["path"].str.startswith("/").sum() == 0  # stored relative to the common root


def test_export_refuses_what_it_cannot_do(small, tmp_path):
    ds, store = small
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("x")
    with pytest.raises(exports.ExportError, match="not empty"):
        exports.export(ds, store, tmp_path / "mine", "csv")
    store.add_schema("exp", shipped_label_sets()["tags"])
    store.set_label(scope("exp", "tags"), ds.images["id"].iat[0], "ana", "photo|foot")
    with pytest.raises(exports.ExportError, match="several tags"):
        exports.export(ds, store, tmp_path / "t", "imagefolder", label_set="tags")
    with pytest.raises(exports.ExportError, match="--format"):
        exports.export(ds, store, tmp_path / "t", "coco")
    out = exports.export(ds, store, tmp_path / "tags", "csv", label_set="tags", only_reviewed=True)
    assert pd.read_csv(out / "annotations.csv")["label"].tolist() == ["photo|foot"]


def test_cli_export_label_and_show_where(small, tmp_path, capsys, monkeypatch):
    ds, store = small
    assert main(["export", "exp", "--format", "csv", "--out", str(tmp_path / "c"), "--only-reviewed"]) == 0
    assert "images: 8" in capsys.readouterr().out
    assert main(["export", "exp"]) == 2 and "--format" in capsys.readouterr().err
    # bulk label from the CLI, by path
    assert main(["label", "exp", "--label", "Ok", "--where", "path~skin"]) == 2  # who?
    monkeypatch.setenv("WORKBENCH_ANNOTATOR", "dora")
    assert main(["label", "exp", "--label", "Ok", "--where", "path~skin/"]) == 0
    assert "6 images labelled 'Ok' in safety by dora" in capsys.readouterr().out
    assert len(store.current("exp", "dora")) == 6
    assert main(["show", "exp", "--where", "path~skin", "--where", "label=skin", "--safe-view"]) == 0
    out = capsys.readouterr().out
    assert "(6 of 12 images" in out and "review: Ok (dora," in out
    assert main(["show", "exp", "--where", "colour=red"]) == 2
    assert "no column 'colour'" in capsys.readouterr().err


def test_bulk_label_is_one_transaction_and_undoes(small):
    ds, store = small
    ids = ds.images["id"].tolist()
    before = store.current("exp", "ana").set_index("image_id")["label"].to_dict()
    prev = store.bulk_label("exp", ids[6:10], "ana", "Blur")
    assert prev == {ids[6]: "Ok", ids[7]: "Ok", ids[8]: None, ids[9]: None}
    assert (store.current("exp", "ana").set_index("image_id").loc[ids[6:10], "label"] == "Blur").all()
    with pytest.raises(Exception, match="unknown label"):
        store.bulk_label("exp", ids[:3], "ana", "Gory")  # refused whole: nothing changed
    store.restore("exp", "ana", prev)
    assert store.current("exp", "ana").set_index("image_id")["label"].to_dict() == before


def test_find_and_where():
    images = pd.DataFrame({"id": ["ab" * 32, "cd" * 32, "ce" * 32], "path": ["x/foot-1.png", "y/hand.png", "y/foot-2.png"],
                           "source": ["azh", "bccd", "azh"]})
    assert gl.find_image(images, "abab") == "ab" * 32
    assert gl.find_image(images, "hand") == "cd" * 32
    assert gl.find_image(images, "FOOT-2.PNG") == "ce" * 32
    with pytest.raises(Exception, match="matches 2 images"):
        gl.find_image(images, "foot")
    with pytest.raises(Exception, match="no image"):
        gl.find_image(images, "knee")
    assert gl.where_rows(images, ["path~foot", "source=AZH"]).tolist() == [0, 2]
    assert gl.where_rows(images, ["source!=azh"]).tolist() == [1]
    assert gl.filter_rows(images, path_contains="FOOT").tolist() == [0, 2]
    assert gl.file_name("a/" + "x" * 80 + ".png", 20).endswith(".png") and len(gl.file_name("x" * 80 + ".png", 20)) == 20
