"""2-D projections (lib/projection.py): PCA against an SVD, UMAP quality and its on-disk cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.manifold import trustworthiness

from lib import projection
from lib.embeddings import load_embeddings


def test_pca_matches_svd(corpus_color):
    emb = load_embeddings("corpus", "color")
    X = emb.matrix().astype(np.float64)
    xy = projection.project(emb, "pca")
    Xc = X - X.mean(axis=0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    ref = U[:, :2] * S[:2]
    for j in range(2):  # components are defined up to sign
        sign = np.sign(ref[:, j] @ xy[:, j])
        np.testing.assert_allclose(xy[:, j], sign * ref[:, j], atol=1e-3)


def test_umap_is_cached_and_better_than_pca(corpus_color, monkeypatch):
    emb = load_embeddings("corpus", "color")
    xy = projection.project(emb, "umap", n_neighbors=15, min_dist=0.1, seed=0)
    assert xy.shape == (len(emb), 2) and np.isfinite(xy).all()
    path = projection.cache_path(emb.key, projection.projection_params("umap", 15, 0.1, 0, "cosine"))
    assert path.exists() and pd.read_parquet(path)["id"].tolist() == emb.ids

    # UMAP keeps local neighbourhoods better than the linear preview, which beats chance.
    X = emb.matrix()
    t_umap = trustworthiness(X, xy, n_neighbors=10, metric="cosine")
    t_pca = trustworthiness(X, projection.project(emb, "pca"), n_neighbors=10, metric="cosine")
    t_rand = trustworthiness(X, np.random.default_rng(0).normal(size=xy.shape), n_neighbors=10, metric="cosine")
    assert t_umap > t_pca > t_rand

    # Same key and parameters: read from disk, never recomputed.
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(projection, "_compute", boom)
    np.testing.assert_array_equal(projection.project(emb, "umap", n_neighbors=15, min_dist=0.1, seed=0), xy)
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters: another map
        projection.project(emb, "umap", n_neighbors=15, min_dist=0.5, seed=0)


def test_projection_frame_and_small_inputs(corpus_color):
    from lib import dataset

    ds = dataset.load("corpus")
    xy = np.arange(2 * len(ds.images), dtype=np.float32).reshape(-1, 2)
    df = projection.projection_frame(ds, xy, ["source", "nope"])
    assert list(df.columns) == ["x", "y", "id", "path", "label", "source"]
    assert (df["id"].to_numpy() == ds.images["id"].to_numpy()).all() and (df["x"].to_numpy() == xy[:, 0]).all()
    with pytest.raises(ValueError):
        projection.projection_frame(ds, xy[:-1])
    with pytest.raises(ValueError, match="at least 3"):
        projection.project(np.eye(2, dtype=np.float32), "pca")
    with pytest.raises(ValueError):
        projection.project(np.eye(3, dtype=np.float32), "tsne")


def test_cli_project(corpus_color, tmp_path, capsys):
    from lib.cli import main

    out = tmp_path / "p.parquet"
    assert main(["project", "corpus", "--model", "color", "--method", "pca", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 658 and {"x", "y", "id", "label", "source"} <= set(df.columns)
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), projection.project(load_embeddings("corpus", "color"), "pca"))
    assert "658 points" in capsys.readouterr().out
