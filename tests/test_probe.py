"""Linear probes (lib/probe.py) on synthetic features and on the real corpus."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lib import probe
from lib.errors import ModelError

TINY = "open_clip:WB-Tiny-ViT"  # as in conftest.py


def test_out_of_fold_predictions_do_not_leak():
    # Pure noise with more features than samples: a model scored on its own training data
    # separates it perfectly, an honest out-of-fold score stays near chance.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 400))
    y = np.array(["neg", "pos"] * 60)
    metrics, pred = probe.linear_probe(X, y, folds=5)
    in_sample = probe.make_probe().fit(X, y).predict_proba(X)[:, 1]
    assert roc_auc_score(y == "pos", in_sample) == 1.0
    assert 0.3 < metrics["roc_auc"] < 0.7
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y == "pos", pred["score"]))


def test_folds_are_stratified_and_cover_every_row():
    rng = np.random.default_rng(1)
    y = np.array(["a"] * 70 + ["b"] * 30)
    X = rng.normal(size=(100, 5)) + (y == "b")[:, None] * 3.0  # separable by a shift
    metrics, pred = probe.linear_probe(X, y, folds=5, seed=3)
    assert sorted(pred["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = pd.crosstab(pred["fold"], y)
    assert (per_fold["a"] == 14).all() and (per_fold["b"] == 6).all()
    np.testing.assert_allclose(pred[["p:a", "p:b"]].sum(axis=1), 1.0)
    assert metrics["roc_auc"] > 0.99 and metrics["positive"] == "b"
    assert (pred["pred"] == np.where(pred["p:b"] >= 0.5, "b", "a")).all()
    with pytest.raises(probe.ProbeError, match="folds"):
        probe.linear_probe(X, y, folds=31)  # class b has 30 rows
    with pytest.raises(probe.ProbeError, match="two or more classes"):
        probe.linear_probe(X, np.array(["a"] * 100))


def test_train_test_split_mode():
    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 50)
    X = rng.normal(size=(100, 3)) + y[:, None] * 2.0
    train = np.arange(100) < 60
    metrics, pred = probe.linear_probe(X, y, train_mask=train)
    assert (pred.loc[train, "fold"] == -1).all() and pred.loc[train, "score"].isna().all()
    assert (pred.loc[~train, "fold"] == 0).all() and metrics["n"] == 40
    manual = probe.make_probe().fit(X[train], y[train]).predict_proba(X[~train])[:, 1]
    np.testing.assert_allclose(pred.loc[~train, "score"], manual)


def test_color_probe_on_corpus(corpus_color, tmp_path):
    res = probe.run_probe("corpus", "color", "image", folds=5)
    pred = res.predictions
    assert len(pred) == 656 and pred["id"].is_unique  # 658 rows, 2 byte-identical copies
    assert res.dropped == {"duplicate": 2, "no_label": 0}
    assert res.positive == "sensitive" and res.metrics["n"] == 656
    auc = roc_auc_score(pred["label"] == "sensitive", pred["score"])
    assert res.metrics["roc_auc"] == pytest.approx(auc)
    assert auc > 0.8  # colour alone separates wound photos from smears and X-rays well
    paths = res.save(tmp_path / "p.parquet")
    back = pd.read_parquet(paths[0])
    np.testing.assert_allclose(back["score"], pred["score"])
    assert pd.read_csv(paths[1])["roc_auc"].iloc[0] == pytest.approx(auc)


def test_text_probe_errors_on_corpus(corpus_tiny, tiny_model, tiny):
    # The corpus's only captions belong to one class: a clear error, not a crash.
    with pytest.raises(probe.ProbeError, match="no caption"):
        probe.run_probe("corpus", tiny, "text")
    with pytest.raises(ModelError, match="text tower"):
        probe.run_probe("corpus", "color", "text")


@pytest.fixture(scope="module")
def captioned(corpus_dir, tiny_model, tmp_path_factory, tiny):
    """40 corpus images with captions (6 left empty) and a train/test split."""
    from lib import dataset
    from lib.embeddings import embed

    m = pd.read_csv(corpus_dir / "manifest.csv")
    rows = pd.concat([m[m["label"] == "sensitive"].head(20), m[m["label"] == "non_sensitive"].head(20)])
    rows = rows[["path", "label"]].reset_index(drop=True)
    rows["caption"] = np.where(rows["label"] == "sensitive", "photo of an open wound", "blood smear under a microscope")
    rows.loc[[0, 1, 2, 20, 21, 22], "caption"] = ""
    rows["split"] = np.where(np.arange(40) % 4 == 0, "test", "train")
    path = tmp_path_factory.mktemp("captioned") / "manifest.csv"
    rows.to_csv(path, index=False)
    if not dataset.exists("captioned"):
        dataset.ingest(path, "captioned", root=corpus_dir)
    embed("captioned", tiny)
    return rows


def test_text_and_multimodal_probe(captioned, tiny_model, monkeypatch, tiny):
    text = probe.run_probe("captioned", tiny, "text", folds=3)
    assert text.dropped["no_caption"] == 6 and len(text.predictions) == 34
    assert text.n_features == tiny_model.dim
    # two distinct captions, one per class: two points, perfectly separable
    assert text.metrics["roc_auc"] == 1.0
    # the caption vectors are the text tower's, aligned with the rows
    X, rows, _ = probe.probe_features("captioned", tiny, "text")
    np.testing.assert_allclose(X, tiny_model.encode_texts(rows["caption"].tolist()), atol=1e-5)

    # cached: a second run needs no text tower
    monkeypatch.setattr(tiny_model, "encode_texts", lambda texts: (_ for _ in ()).throw(AssertionError("recomputed")))
    both = probe.run_probe("captioned", tiny, "both", folds=3)
    assert both.n_features == 2 * tiny_model.dim and len(both.predictions) == 34
    image = probe.run_probe("captioned", tiny, "image", folds=3)
    assert len(image.predictions) == 40 and "no_caption" not in image.dropped


def test_split_probe_on_dataset(captioned, tiny_model, tiny):
    res = probe.run_probe("captioned", tiny, "image", use_split=True)
    assert res.mode == "split" and len(res.predictions) == 10  # every 4th row is test
    assert (res.predictions["fold"] == 0).all()
    with pytest.raises(probe.ProbeError, match="split"):
        probe.run_probe("corpus", "color", use_split=True)  # the corpus has no split column values


def test_cli_probe(corpus_color, tmp_path, capsys):
    from lib.cli import main

    out = tmp_path / "probe.parquet"
    assert main(["probe", "corpus", "--model", "color", "--folds", "4", "--out", str(out)]) == 0
    pred = pd.read_parquet(out)
    assert len(pred) == 656 and set(pred["fold"]) == {0, 1, 2, 3}
    printed = capsys.readouterr().out
    assert "roc_auc" in printed and "2 duplicate" in printed
    assert main(["probe", "corpus", "--model", "color", "--input", "text"]) == 2
