"""Model comparison (lib/compare.py): brute-force neighbours, set arithmetic, textbook rank correlations."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from lib import compare

TINY = "open_clip:WB-Tiny-ViT"  # as in conftest.py


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_knn(X, k):
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def test_knn_rows_matches_brute_force():
    X = unit(np.random.default_rng(0).normal(size=(300, 16)))
    np.testing.assert_array_equal(compare.knn_rows(X, 7), brute_knn(X, 7))
    with pytest.raises(ValueError):
        compare.knn_rows(X, 300)


def test_knn_rows_excludes_self_among_duplicates():
    X = unit(np.random.default_rng(1).normal(size=(50, 4)))
    X = np.vstack([X, X[:5], X[:5]])  # three identical copies of the first five rows
    nn = compare.knn_rows(X, 3)
    assert not (nn == np.arange(len(X))[:, None]).any()
    for i in range(5):  # the two other copies are the nearest
        assert set(nn[i, :2]) == {i + 50, i + 55}


def test_jaccard_rows_against_python_sets():
    rng = np.random.default_rng(2)
    a = np.stack([rng.choice(30, 8, replace=False) for _ in range(200)])
    b = np.stack([rng.choice(30, 8, replace=False) for _ in range(200)])
    want = [len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(compare.jaccard_rows(a, b), want)


def test_jaccard_at_k_invariances():
    rng = np.random.default_rng(3)
    A = unit(rng.normal(size=(200, 12)))
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))  # a rotation keeps every cosine
    assert compare.jaccard_at_k(A, A, 10).min() == 1.0
    assert compare.jaccard_at_k(A, unit(A @ Q), 10).min() == 1.0
    B = unit(rng.normal(size=(200, 12)))  # unrelated space: overlap near chance (~k/n)
    assert compare.jaccard_at_k(A, B, 10).mean() < 0.1


def test_score_correlation_textbook():
    rng = np.random.default_rng(4)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    ids = [f"i{i}" for i in range(40)]
    tab = compare.score_correlation({"a": pd.Series(x, ids), "b": pd.Series(y, ids)})
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    rho = np.corrcoef(rx, ry)[0, 1]
    pairs = list(combinations(range(40), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    assert tab.loc[0, "n"] == 40
    assert tab.loc[0, "spearman"] == pytest.approx(rho)
    assert tab.loc[0, "kendall"] == pytest.approx(s / len(pairs))
    # only the ids both models scored are compared
    part = compare.score_correlation({"a": pd.Series(x, ids), "b": pd.Series(y[:30], ids[:30])})
    assert part.loc[0, "n"] == 30


def test_metrics_and_agreement_tables():
    truth = ["pos", "neg", "pos", "neg"]
    a = pd.DataFrame({"id": list("wxyz"), "label": truth, "pred": truth, "score": [0.9, 0.1, 0.8, 0.2]})
    b = pd.DataFrame({"id": list("wxy"), "label": truth[:3], "pred": ["neg", "pos", "pos"],
                      "score": [0.2, 0.7, 0.9]})
    m = compare.metrics_table({"A": a, "B": b}, positive="pos").set_index("model")
    assert (m["n"] == 3).all()  # z was not predicted by B
    assert m.loc["A", "accuracy"] == 1.0 and m.loc["B", "accuracy"] == pytest.approx(1 / 3)
    assert m.loc["A", "roc_auc"] == 1.0 and m.loc["B", "roc_auc"] == 0.5
    ag = compare.agreement_table({"A": a, "B": b}).set_index("id")
    assert list(ag.index) == ["w", "x", "y"]
    assert ag["n_correct"].tolist() == [1, 1, 2] and ag["all_agree"].tolist() == [False, False, True]
    dis = compare.disagreements(ag.reset_index())
    assert dis["id"].tolist() == ["w", "x"]


def test_compare_models_on_corpus(corpus_color, corpus_tiny, tiny_model, tmp_path, tiny):
    res = compare.compare_models("corpus", ["color", tiny], k=10)
    # Jaccard@10 against a brute-force numpy reference on the same vectors
    from lib import dataset
    from lib.embeddings import load_embeddings

    ds = dataset.load("corpus")
    rows = np.flatnonzero(~ds.images["id"].duplicated().to_numpy())
    na = brute_knn(load_embeddings("corpus", "color").take(rows), 10)
    nb = brute_knn(load_embeddings("corpus", tiny).take(rows), 10)
    ref = np.mean([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(na, nb, strict=True)])
    assert res.overlap.loc[0, "n"] == 656
    assert res.overlap.loc[0, "mean_jaccard"] == pytest.approx(ref, abs=0.005)
    assert res.overlap_items["id"].is_unique

    assert list(res.metrics["model"]) == ["color", TINY] and (res.metrics["n"] == 656).all()
    assert len(res.agreement) == 656
    assert len(res.disagreements) == (~res.agreement["all_agree"]).sum()
    assert res.correlation.loc[0, "n"] == 656 and -1 <= res.correlation.loc[0, "spearman"] <= 1
    written = res.save(tmp_path)
    assert {p.name for p in written} >= {"compare-metrics.csv", "compare-overlap.csv", "compare-agreement.parquet"}

    with pytest.raises(compare.WorkbenchError):
        compare.compare_models("corpus", ["color", "color"])


def test_cli_compare(corpus_color, corpus_tiny, tmp_path, capsys):
    from lib.cli import main

    assert main(["compare", "corpus", "--models", f"color,{TINY}", "--random-weights", "--task", "none",
                 "--k", "5", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith("-overlap.csv") for f in files) and not any(f.endswith("-metrics.csv") for f in files)
    overlap = pd.read_csv(next(tmp_path.glob("*-overlap.csv")))
    assert overlap.loc[0, "k"] == 5 and 0 <= overlap.loc[0, "mean_jaccard"] <= 1
    assert "Jaccard@5" in capsys.readouterr().out
