"""faiss index: exactness, approximate kinds, persistence, the neighbors CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib import index as index_mod
from lib.embeddings import DatasetEmbeddings, load_embeddings
from lib.neighbors import neighbours, open_space

REPO = Path(__file__).resolve().parent.parent


def test_flat_index_equals_brute_force_cosine(corpus_color):
    space = open_space("corpus", "color")
    assert space.index.kind == "flat"
    x = space.emb.matrix()
    sims = x @ x.T
    for row in (0, 100, 450, 640):
        got = neighbours(space, row, k=10)
        order = [r for r in np.argsort(-sims[row], kind="stable") if r != row][:10]
        assert np.allclose(got["score"].to_numpy(), sims[row, order], atol=1e-5)
        assert set(got["row"]) == set(order) or np.allclose(np.sort(sims[row, got["row"]]), np.sort(sims[row, order]))
        assert (got["rank"].to_numpy() == np.arange(1, 11)).all()
        assert got["label"].tolist() == corpus_color.images["label"].iloc[got["row"]].tolist()


def test_index_is_persisted_and_reused(corpus_color):
    emb = load_embeddings("corpus", "color")
    first = index_mod.get_index(emb, "corpus")
    second = index_mod.get_index(emb, "corpus")
    assert second.path == first.path and second.path.exists() and second.build_seconds == 0.0
    q = emb.take([5])
    assert np.array_equal(first.search(q, 5)[1], second.search(q, 5)[1])


def _synthetic(n: int, d: int = 64, clusters: int = 50, seed: int = 0) -> DatasetEmbeddings:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    locs = np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], 1)
    return DatasetEmbeddings([f"{i:064x}" for i in range(n)], locs, [x], "synthetic" + str(seed), Path("/nonexistent"))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_have_high_recall(kind):
    emb = _synthetic(8000)
    exact = index_mod.get_index(emb, "syn", "flat", persist=False)
    approx = index_mod.get_index(emb, "syn", kind, persist=False)
    q = emb.take(np.arange(0, 8000, 40))
    _, truth = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)])
    assert recall >= 0.9, recall


def test_auto_kind_follows_size():
    assert index_mod.choose_kind(1000) == "flat"
    assert index_mod.choose_kind(index_mod.EXACT_MAX + 1) != "flat"
    with pytest.raises(ValueError):
        index_mod.choose_kind(10, "lsh")


def test_index_rebuilt_when_the_cache_changes(corpus_dir, tmp_path, monkeypatch):
    import pandas as pd

    from lib import dataset
    from lib.embeddings import embed

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m.iloc[:20].to_csv(tmp_path / "m.csv", index=False)
    dataset.ingest(tmp_path / "m.csv", "grow", root=corpus_dir)
    embed("grow", "color", workers=0)
    old = index_mod.get_index(load_embeddings("grow", "color"), "grow")
    m.iloc[:30].to_csv(tmp_path / "m.csv", index=False)
    dataset.ingest(tmp_path / "m.csv", "grow", root=corpus_dir)
    embed("grow", "color", workers=0)
    new = index_mod.get_index(load_embeddings("grow", "color"), "grow")
    assert new.ntotal == 30 and new.path != old.path and not old.path.exists()


def test_cli_neighbors_by_id_and_by_file(corpus_color, corpus_dir):
    qid = corpus_color.images["id"].iloc[3]
    out = subprocess.run([sys.executable, "-m", "lib", "neighbors", "corpus", "--model", "color", "--id",
                          qid[:10], "--k", "10"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    rows = [ln.split() for ln in out.splitlines()[2:]]
    assert len(rows) == 10
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    assert all(r[3] in ("sensitive", "non_sensitive") for r in rows)
    img = corpus_dir / corpus_color.images["path"].iloc[3]
    out = subprocess.run([sys.executable, "-m", "lib", "neighbors", "corpus", "--model", "color", "--image",
                          str(img), "--k", "3"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[2].split()
    assert first[2] == qid[:16] and float(first[1]) > 0.999  # the image finds itself first
