"""Retrieval: Recall@K on hand-built cases, search through faiss against brute force, caption eval on the corpus."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from PIL import Image

from lib.errors import DatasetError, ModelError
from lib.retrieval import (
    evaluate_retrieval,
    image_to_image,
    recall_at_k,
    relevant_ranks,
    run_retrieval_eval,
    text_to_image,
)

# --------------------------------------------------------------------------- Recall@K, pure


def test_recall_at_k_hand_built_matrix():
    # Rank of each query's true item, read off by hand: 1, 2, 4, 5.
    sim = np.array([
        [0.9, 0.1, 0.2, 0.3, 0.0],   # gt 0: best               -> rank 1
        [0.8, 0.7, 0.1, 0.0, 0.2],   # gt 1: behind 0.8         -> rank 2
        [0.5, 0.6, 0.4, 0.7, 0.1],   # gt 2: behind .7,.6,.5    -> rank 4
        [0.9, 0.8, 0.7, 0.6, 0.5],   # gt 4: last of five       -> rank 5
    ])
    gt = [0, 1, 2, 4]
    assert relevant_ranks(sim, gt).tolist() == [1, 2, 4, 5]
    assert recall_at_k(sim, gt, ks=(1, 2, 3, 4, 5, 10)) == {1: 0.25, 2: 0.5, 3: 0.5, 4: 0.75, 5: 1.0, 10: 1.0}


def test_ties_count_against_the_query_and_multiple_relevant_items():
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    assert relevant_ranks(sim, [0, 1]).tolist() == [2, 2]  # a tie with a wrong item ranks it ahead
    rel = np.array([[True, True, False], [False, False, True]])
    assert relevant_ranks(sim, rel).tolist() == [1, 2]  # both tied items relevant: rank 1
    with pytest.raises(ValueError, match="no relevant"):
        relevant_ranks(sim, np.zeros((2, 3), bool))


def test_relevant_ranks_match_sorting_reference():
    rng = np.random.default_rng(7)
    sim = rng.normal(size=(40, 70))
    rel = rng.random((40, 70)) < 0.05
    rel[np.arange(40), rng.integers(0, 70, 40)] = True
    want = [int(np.flatnonzero(rel[q][np.argsort(-sim[q])])[0]) + 1 for q in range(40)]
    assert relevant_ranks(sim, rel).tolist() == want


def _hand_case():
    """Images e0, e1, e2; captions placed so every rank is known (see the comments)."""
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0.6, 0, 0.8]], np.float32)
    # T2I: t0 -> [1, 0, 0] rank 1; t1 -> [.8, .6, 0] rank 2; t2 -> [.6, 0, .8] rank 1.
    # I2T: i0 -> [1, .8, .6] rank 1; i1 -> [0, .6, 0] rank 1; i2 -> [0, 0, .8] rank 1.
    return img, txt


def test_evaluate_retrieval_hand_case_both_directions():
    img, txt = _hand_case()
    t = evaluate_retrieval(img, txt, ks=(1, 2, 5))
    assert len(t) == 1 and t.loc[0, "group"] == "all" and t.loc[0, "pairs"] == 3 and t.loc[0, "gallery"] == 3
    assert t.loc[0, "t2i_R@1"] == pytest.approx(2 / 3)
    assert t.loc[0, ["t2i_R@2", "t2i_R@5", "i2t_R@1", "i2t_R@2", "i2t_R@5"]].tolist() == [1.0] * 5
    assert t.loc[0, "mean_R_ks"] == pytest.approx((2 / 3 + 5) / 6)
    # mean_R is the papers' average over K = 5, 50, 200: all beyond the 3-item gallery, so 1.0.
    assert t.loc[0, "mean_R"] == 1.0
    # K=5 exceeds the 3-item gallery: trivially 1.0, or NaN and out of the mean on request.
    n = evaluate_retrieval(img, txt, ks=(1, 2, 5), beyond_gallery="nan")
    assert np.isnan(n.loc[0, "t2i_R@5"]) and np.isnan(n.loc[0, "i2t_R@5"])
    assert n.loc[0, "mean_R_ks"] == pytest.approx((2 / 3 + 3) / 4)
    assert np.isnan(n.loc[0, "mean_R"])


def test_evaluate_retrieval_groups_pooled_vs_restricted():
    img, txt = _hand_case()
    groups = ["a", "b", "b"]
    pooled = evaluate_retrieval(img, txt, groups, ks=(1,), pooled=True).set_index("group")
    # t1 (group b) still loses to image 0 in the pooled gallery.
    assert pooled.loc["b", "t2i_R@1"] == 0.5 and pooled.loc["b", "gallery"] == 3
    assert pooled.loc["a", "t2i_R@1"] == 1.0
    restricted = evaluate_retrieval(img, txt, groups, ks=(1,), pooled=False).set_index("group")
    # Against images {1, 2} only, t1 -> [.6, 0]: rank 1.
    assert restricted.loc["b", "t2i_R@1"] == 1.0 and restricted.loc["b", "gallery"] == 2
    assert restricted.loc["all", "t2i_R@1"] == pytest.approx(2 / 3)
    assert list(restricted.index) == ["all", "a", "b"]


def test_evaluate_retrieval_shared_images_are_mutually_relevant():
    img = np.array([[1.0, 0], [1.0, 0], [0, 1.0]], np.float32)  # rows 0 and 1: the same image
    txt = np.array([[1.0, 0], [0.9, np.sqrt(0.19)], [0, 1.0]], np.float32)
    plain = evaluate_retrieval(img, txt, ks=(1,))
    keyed = evaluate_retrieval(img, txt, ks=(1,), image_keys=["x", "x", "y"])
    assert plain.loc[0, "t2i_R@1"] == pytest.approx(1 / 3)  # t0, t1 tie with the other copy
    assert keyed.loc[0, "t2i_R@1"] == 1.0


def test_evaluate_retrieval_chunking_matches_full_matrix():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(60, 8)).astype(np.float32)
    txt = (img + rng.normal(scale=1.5, size=img.shape)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t = evaluate_retrieval(img, txt, ks=(1, 5, 10), chunk=7)
    sim = txt @ img.T
    for k, r in recall_at_k(sim, np.arange(60), ks=(1, 5, 10)).items():
        assert t.loc[0, f"t2i_R@{k}"] == pytest.approx(r)
    for k, r in recall_at_k(sim.T, np.arange(60), ks=(1, 5, 10)).items():
        assert t.loc[0, f"i2t_R@{k}"] == pytest.approx(r)


# --------------------------------------------------------------------------- search on the corpus


@pytest.fixture(scope="session")
def tiny_space(corpus_tiny, tiny_model, tiny):
    from lib.neighbors import open_space

    return open_space("corpus", tiny)


def _single_row(space) -> int:
    images = space.dataset.images
    counts = images["id"].map(images["id"].value_counts())
    return int(np.flatnonzero((counts == 1).to_numpy())[123])


class QueryIsImage:
    """A 'text tower' whose every query embeds to one given image vector."""

    has_text = True

    def __init__(self, model, vector):
        self.spec, self.fingerprint, self.vector = model.spec, model.fingerprint, vector

    def encode_texts(self, texts):
        return np.repeat(self.vector[None], len(texts), axis=0)


def test_text_to_image_finds_the_image_equal_to_the_query(tiny_space, tiny_model):
    row = _single_row(tiny_space)
    hits = text_to_image(tiny_space, QueryIsImage(tiny_model, tiny_space.emb.take([row])[0]), "anything", k=5)
    assert hits.iloc[0]["row"] == row and hits.iloc[0]["id"] == tiny_space.dataset.images["id"].iloc[row]
    assert hits.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits["rank"].tolist() == [1, 2, 3, 4, 5]


def test_text_to_image_matches_brute_force(tiny_space, tiny_model):
    query = "a chest radiograph with bilateral opacities"
    hits = text_to_image(tiny_space, tiny_model, query, k=10)
    sims = tiny_space.emb.matrix() @ tiny_model.encode_texts([query])[0]
    order = np.argsort(-sims, kind="stable")[:10]
    np.testing.assert_allclose(hits["score"], sims[order], atol=1e-5)
    assert set(hits["row"]) == set(order.tolist())
    many = text_to_image(tiny_space, tiny_model, [query, "a foot ulcer"], k=3)
    assert many["query"].tolist() == [0, 0, 0, 1, 1, 1]


def test_image_to_image_by_row_and_by_file(tiny_space, tiny_model):
    row = _single_row(tiny_space)
    by_row = image_to_image(tiny_space, None, row, k=5)
    assert row not in by_row["row"].tolist() and len(by_row) == 5
    sims = tiny_space.emb.matrix() @ tiny_space.emb.take([row])[0]
    sims[row] = -np.inf
    np.testing.assert_allclose(by_row["score"], np.sort(sims)[::-1][:5], atol=1e-5)
    path = tiny_space.dataset.abspath(tiny_space.dataset.images["path"].iloc[row])
    by_file = image_to_image(tiny_space, tiny_model, str(path), k=6)
    assert by_file.iloc[0]["row"] == row and by_file.iloc[0]["score"] == pytest.approx(1.0, abs=2e-3)
    # fp32 query vs fp16 cache: the ranked scores (order statistics) move by no more than that.
    np.testing.assert_allclose(by_file["score"].iloc[1:], by_row["score"], atol=2e-3)
    with pytest.raises(ModelError, match="needs the model"):
        image_to_image(tiny_space, None, Image.new("RGB", (8, 8)), k=3)


def test_text_search_refuses_color(corpus_color):
    from lib.models import load_model
    from lib.neighbors import open_space

    space = open_space("corpus", "color")
    with pytest.raises(ModelError, match="text tower"):
        text_to_image(space, load_model("color"), "wound", k=3)


# --------------------------------------------------------------------------- caption evaluation


def test_run_retrieval_eval_on_corpus_captions(corpus_tiny, tiny_model, tiny_space, tmp_path, tiny):
    res = run_retrieval_eval("corpus", tiny, "source",
                             out=tmp_path / "r.csv")
    assert res.pairs == 28 and res.skipped == 630
    t = res.table.set_index("group")
    assert list(t.index) == ["all", "figure1_cxr"]
    # Independent: captions embedded by hand, ranks from the full similarity matrix.
    images = corpus_tiny.images
    rows = np.flatnonzero(images["caption"].notna().to_numpy())
    txt = tiny_model.encode_texts(images["caption"].iloc[rows].tolist())
    sim = txt @ tiny_space.emb.take(rows).T
    for k, r in recall_at_k(sim, np.arange(28)).items():
        assert t.loc["all", f"t2i_R@{k}"] == pytest.approx(r)
    for k, r in recall_at_k(sim.T, np.arange(28)).items():
        assert t.loc["all", f"i2t_R@{k}"] == pytest.approx(r)
    assert t.loc["all", "t2i_R@50"] == 1.0  # K above the 28-image gallery
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r.csv"), res.table, check_dtype=False)


def test_run_retrieval_eval_errors(corpus_tiny, tiny_model, tmp_path, monkeypatch, tiny):
    from lib import dataset

    with pytest.raises(DatasetError, match="no column 'nope'"):
        run_retrieval_eval("corpus", tiny, "nope")
    folder = tmp_path / "nocap" / "cls"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 10)).save(folder / f"{i}.png")
    dataset.ingest(tmp_path / "nocap", "nocaptions", workers=0)
    with pytest.raises(DatasetError, match="has no captions"):
        run_retrieval_eval("nocaptions", tiny)


def test_cli_retrieve_eval_and_search(corpus_tiny, capsys, tmp_path):
    from lib.cli import main

    rc = main(["retrieve", "corpus", "--model", TINY, "--random-weights", "--eval", "--group-col", "source",
               "--out", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "28 (image, caption) pairs" in out and "t2i_R@200" in out and "figure1_cxr" in out
    rc = main(["retrieve", "corpus", "--model", TINY, "--random-weights", "--text", "chest x-ray", "--k", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "query text" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 4
