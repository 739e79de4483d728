"""Seed expansion, rank sampling and homogeneity (lib/expansion.py, on lib/neighbors.py search).

References: brute-force numpy cosine top-k, a hand-built geometry whose neighbours are
known by construction, a plain-Python re-implementation of the conflict rules, the
corpus manifest's own labels and the Beta distribution's closed-form moments.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib import dataset as ds_mod
from lib import expansion as ex
from lib import neighbors as nb
from lib.dataset import Dataset
from lib.embeddings import DatasetEmbeddings

# ------------------------------------------------------------------ a synthetic space


def synthetic_space(tmp_path, vectors: np.ndarray, ids: list[str], labels=None) -> nb.Space:
    """A Space over given vectors (rows may repeat an id, like byte-identical files)."""
    vectors = np.asarray(vectors, np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(ids)
    images = pd.DataFrame({"id": ids, "path": [f"img{i}.png" for i in range(n)],
                           "label": labels if labels is not None else [None] * n,
                           "duplicate_of": None})
    ds = Dataset("synthetic", tmp_path, {}, images, pd.DataFrame(), pd.DataFrame())
    locs = np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], 1)
    emb = DatasetEmbeddings(ids, locs, [vectors], "f" * 64, tmp_path)
    return nb.Space(ds, "synthetic", emb, "flat")


def on_circle(degrees) -> np.ndarray:
    t = np.radians(np.asarray(degrees, float))
    return np.stack([np.cos(t), np.sin(t)], 1)


# Seed a (pos) at 0 deg, seed b (neg) at 30 deg; x1 near a, x2 near b, x3 half-way,
# x4 far away. With k=3: a -> x1, x3, x2 and b -> x2, x3, x1.
ANGLES = {"a": 0, "b": 30, "x1": 5, "x2": 25, "x3": 15, "x4": -40}


@pytest.fixture
def circle(tmp_path):
    names = list(ANGLES)
    # x1 is stored twice (a byte-identical copy): it must still count once.
    ids = [*names, "x1"]
    return synthetic_space(tmp_path, on_circle([ANGLES[n] for n in ids]), ids)


def test_expand_known_geometry(circle):
    res = ex.expand(circle, {"pos": ["a"], "neg": ["b"]}, k=3)
    got = {(r.seed_id, r.id): r.rank for r in res.hits.itertuples()}
    assert got == {("a", "x1"): 1, ("a", "x3"): 2, ("a", "x2"): 3,
                   ("b", "x2"): 1, ("b", "x3"): 2, ("b", "x1"): 3}
    score = res.hits.set_index(["seed_id", "id"])["score"]
    assert score["a", "x1"] == pytest.approx(np.cos(np.radians(5)), abs=1e-6)
    assert score["b", "x1"] == pytest.approx(np.cos(np.radians(25)), abs=1e-6)

    lab = res.labelled.set_index("id")
    assert set(lab.index) == {"a", "b", "x1", "x2", "x3"}  # x4 is never reached
    assert lab.loc["x1", "label"] == "pos" and lab.loc["x1", "resolution"] == "best_rank"
    assert lab.loc["x1", "seed_id"] == "a" and lab.loc["x1", "rank"] == 1
    assert lab.loc["x2", "label"] == "neg" and lab.loc["x2", "rank"] == 1
    assert pd.isna(lab.loc["x3", "label"]) and lab.loc["x3", "resolution"] == "tie"  # rank 2 from both
    assert lab.loc[["x1", "x2", "x3"], "conflict"].all()
    assert (lab.loc[["x1", "x2", "x3"], "n_seeds_reaching"] == 2).all()
    assert lab.loc["a", "label"] == "pos" and lab.loc["a", "resolution"] == "seed" and lab.loc["a", "rank"] == 0
    assert not lab.loc["a", "conflict"]  # with k=3 neither seed reaches the other

    conf = res.conflicts.set_index("id")
    assert set(conf.index) == {"x1", "x2", "x3"}
    assert conf.loc["x1", "best_rank:pos"] == 1 and conf.loc["x1", "best_rank:neg"] == 3
    assert conf.loc["x3", "best_rank:pos"] == conf.loc["x3", "best_rank:neg"] == 2

    counts = res.counts.set_index("class")
    assert counts.loc["pos", "hits"] == 3 and counts.loc["pos", "unique"] == 3
    assert counts.loc["all", "unique"] == 3 and counts.loc["all", "share_unique"] == pytest.approx(0.5)
    assert counts.loc["pos", "exclusive"] == 0 and counts.loc["all", "labelled"] == 4


def test_seeds_keep_their_label_when_reached_by_another_class(circle):
    res = ex.expand(circle, {"pos": ["a"], "neg": ["b"]}, k=4)  # now a and b reach each other at rank 4
    lab = res.labelled.set_index("id")
    assert lab.loc["a", "label"] == "pos" and lab.loc["b", "label"] == "neg"
    assert lab.loc["a", "conflict"] and lab.loc["a", "resolution"] == "seed"
    assert res.conflicts.set_index("id").loc["a", "best_rank:neg"] == 4


def test_drop_rule_and_bad_seeds(circle):
    res = ex.expand(circle, {"pos": ["a"], "neg": ["b"]}, k=3, rule="drop")
    lab = res.labelled.set_index("id")
    assert lab.loc[["x1", "x2", "x3"], "label"].isna().all()
    assert (lab.loc[["x1", "x2", "x3"], "resolution"] == "drop").all()
    with pytest.raises(ds_mod.DatasetError, match="both"):
        ex.expand(circle, {"pos": ["a"], "neg": ["a"]}, k=3)
    with pytest.raises(ds_mod.DatasetError, match="not in dataset"):
        ex.expand(circle, {"pos": ["nope"]}, k=3)
    with pytest.raises(ValueError):
        ex.expand(circle, {"pos": ["a"]}, k=3, rule="vote")


def reference_resolution(vectors, ids, seeds, k, rule):
    """Plain-Python seed expansion: brute-force cosine, dict bookkeeping."""
    first = {}
    for r, i in enumerate(ids):
        first.setdefault(i, r)
    reached = {}  # id -> {label: [best_rank, n_seeds]}
    for label, seed_ids in seeds.items():
        for s in seed_ids:
            sims = {i: float(vectors[r] @ vectors[first[s]]) for i, r in first.items() if i != s}
            for rank, i in enumerate(sorted(sims, key=lambda i: -sims[i])[:k], start=1):
                entry = reached.setdefault(i, {}).setdefault(label, [rank, 0])
                entry[0] = min(entry[0], rank)
                entry[1] += 1
    seed_label = {s: lab for lab, ss in seeds.items() for s in ss}
    out = {}
    for i, per in reached.items():
        if i in seed_label:
            out[i] = seed_label[i]
        elif len(per) == 1:
            out[i] = next(iter(per))
        elif rule == "best_rank":
            best = min(v[0] for v in per.values())
            winners = [lab for lab, v in per.items() if v[0] == best]
            out[i] = winners[0] if len(winners) == 1 else None
        else:  # majority, then best rank
            most = max(v[1] for v in per.values())
            cands = {lab: v for lab, v in per.items() if v[1] == most}
            best = min(v[0] for v in cands.values())
            winners = [lab for lab, v in cands.items() if v[0] == best]
            out[i] = winners[0] if len(winners) == 1 else None
    for s, lab in seed_label.items():
        out[s] = lab
    return out


@pytest.mark.parametrize("rule", ["best_rank", "majority"])
def test_resolution_matches_reference(tmp_path, rule):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(150, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{n:03d}" for n in range(150)]
    space = synthetic_space(tmp_path, vectors, ids)
    seeds = {"A": ids[:6], "B": ids[6:10], "C": ids[10:13]}
    res = ex.expand(space, seeds, k=15, rule=rule)
    want = reference_resolution(vectors, ids, seeds, 15, rule)
    got = dict(zip(res.labelled["id"], res.labelled["label"].astype(object).where(res.labelled["label"].notna()),
                   strict=True))
    assert (res.labelled["resolution"] == rule).sum() > 10  # the rule really decides cases here
    assert set(got) == set(want)
    assert {i: (None if pd.isna(v) else v) for i, v in got.items()} == want


def test_majority_and_best_rank_differ(tmp_path):
    # p (0 deg) is rank 1 of the single N seed (2.5 deg) and rank 2 of both A seeds (-3, -3.5 deg).
    ids = ["a1", "a2", "n", "p", "q"]
    space = synthetic_space(tmp_path, on_circle([-3, -3.5, 2.5, 0, 50]), ids)
    # from a1 (-3): p 3.0 (a2 is nearer at 0.5) -> rank 2; from a2: a1, p -> rank 2; from n: p at 2.5 -> rank 1
    best = ex.expand(space, {"A": ["a1", "a2"], "N": ["n"]}, k=2).labelled.set_index("id")
    major = ex.expand(space, {"A": ["a1", "a2"], "N": ["n"]}, k=2, rule="majority").labelled.set_index("id")
    assert best.loc["p", "label"] == "N" and best.loc["p", "rank"] == 1
    assert major.loc["p", "label"] == "A" and major.loc["p", "resolution"] == "majority"


def test_expand_matches_brute_force_on_corpus(corpus_color):
    space = nb.open_space("corpus", "color")
    images = space.dataset.images
    dup_id = images.loc[images["id"].duplicated(), "id"].iloc[0]  # a file stored twice in the corpus
    seeds = ex.seeds_from_labels(space.dataset, 4, seed=1)
    seeds["sensitive" if images.loc[images["id"] == dup_id, "label"].iloc[0] == "sensitive"
          else "non_sensitive"].append(dup_id)
    k = 30
    res = ex.expand(space, seeds, k=k)

    first = ~images["id"].duplicated().to_numpy()
    X = space.emb.matrix()[first]
    uid = images["id"].to_numpy()[first]
    pos = {i: n for n, i in enumerate(uid)}
    for seed_id, hits in res.hits.groupby("seed_id"):
        sims = X @ X[pos[seed_id]]
        sims[pos[seed_id]] = -np.inf
        top = np.sort(sims)[::-1][:k]
        hits = hits.sort_values("rank")
        assert hits["rank"].tolist() == list(range(1, k + 1))
        assert hits["id"].is_unique and seed_id not in set(hits["id"])
        np.testing.assert_allclose(hits["score"].to_numpy(), top, atol=1e-4)
        np.testing.assert_allclose(sims[[pos[i] for i in hits["id"]]], hits["score"].to_numpy(), atol=1e-4)


def test_counts_and_unique_share(corpus_color):
    space = nb.open_space("corpus", "color")
    res = ex.expand(space, ex.seeds_from_labels(space.dataset, 5, seed=0), k=40)
    for cls, row in res.counts.set_index("class").iterrows():
        h = res.hits if cls == "all" else res.hits[res.hits["seed_label"] == cls]
        assert row["hits"] == len(h) == (row["seeds"] * 40)
        assert row["unique"] == h["id"].nunique()
        assert row["share_unique"] == pytest.approx(h["id"].nunique() / len(h))
    assert res.counts.set_index("class").loc["all", "labelled"] == res.labelled["label"].notna().sum()


def test_homogeneity_matches_manifest_counts_and_beta_closed_form(corpus_color, corpus_dir):
    space = nb.open_space("corpus", "color")
    res = ex.expand(space, ex.seeds_from_labels(space.dataset, 10, seed=0), k=99)
    table = ex.homogeneity(res, ex.dataset_truth(space.dataset), band_width=20)

    # By hand: the neighbour's label read straight from the manifest, by path.
    manifest = pd.read_csv(corpus_dir / "manifest.csv").set_index("path")["label"]
    h = res.hits.assign(truth=space.dataset.images["path"].to_numpy()[res.hits["row"].to_numpy()])
    h["truth"] = h["truth"].map(manifest)
    h["ok"] = h["truth"] == h["seed_label"]
    h["band"] = (h["rank"] - 1) // 20
    for scope, d in [*h.groupby("seed_label"), ("all", h)]:
        exp = d.groupby("band")["ok"].agg(["sum", "size"])
        got = table[table["scope"] == scope].set_index("band")
        assert list(got.index) == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(got["confirmed"], exp["sum"])
        np.testing.assert_array_equal(got["rejected"], exp["size"] - exp["sum"])
    assert (table["unjudged"] == 0).all()
    assert table.loc[table["band"] == 4, "band_label"].eq("81-99").all()
    a, b = table["confirmed"] + 1.0, table["rejected"] + 1.0
    np.testing.assert_allclose(table["mean"], a / (a + b), rtol=1e-12)
    np.testing.assert_allclose(table["sd"], np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))), rtol=1e-12)


def test_homogeneity_with_partial_review(circle):
    res = ex.expand(circle, {"pos": ["a"], "neg": ["b"]}, k=3)
    # x3 has a review row without a label (pd.NA), x4 none at all: both unjudged
    truth = pd.Series(["pos", "pos", pd.NA], index=["x1", "x2", "x3"], dtype=pd.StringDtype(na_value=pd.NA))
    t = ex.homogeneity(res, truth, band_width=2).set_index(["scope", "band"])
    # pos seed a: x1 rank1 ok, x3 rank2 unjudged | x2 rank3 ok
    assert tuple(t.loc[("pos", 0), ["confirmed", "rejected", "unjudged"]]) == (1, 0, 1)
    assert tuple(t.loc[("pos", 1), ["confirmed", "rejected", "unjudged"]]) == (1, 0, 0)
    # neg seed b: x2 rank1 rejected, x3 unjudged | x1 rank3 rejected
    assert tuple(t.loc[("neg", 0), ["confirmed", "rejected", "unjudged"]]) == (0, 1, 1)
    assert t.loc[("neg", 1), "band_label"] == "3-3"
    assert t.loc[("all", 0), "pairs"] == 4
    fig = ex.homogeneity_figure(t.reset_index())
    assert [tr.name for tr in fig.data] == ["neg", "pos", "all"]  # classes sorted, then all
    np.testing.assert_allclose(fig.data[1].error_y.array, t.loc["pos", "sd"].to_numpy())


def test_sample_by_rank_resolves_within_band(circle):
    res = ex.expand(circle, {"pos": ["a"], "neg": ["b"]}, k=3)
    first = ex.sample_by_rank(res, first_n=1).set_index("id")["label"].to_dict()
    assert first == {"x1": "pos", "x2": "neg"}
    # Rank 3: a reaches x2 and b reaches x1, so the last-1 labels are the opposite ones.
    last = ex.sample_by_rank(res, last_n=1).set_index("id")["label"].to_dict()
    assert last == {"x2": "pos", "x1": "neg"}
    with_seeds = ex.sample_by_rank(res, first_n=1, include_seeds=True)
    assert set(with_seeds["id"]) == {"a", "b", "x1", "x2"}
    with pytest.raises(ValueError):
        ex.sample_by_rank(res, first_n=1, last_n=1)
    with pytest.raises(ValueError):
        ex.sample_by_rank(res, first_n=5)


def test_sample_by_rank_and_review_sample_on_corpus(corpus_color):
    space = nb.open_space("corpus", "color")
    res = ex.expand(space, ex.seeds_from_labels(space.dataset, 6, seed=2), k=50)
    hits = res.hits
    for kw, lo, hi in (({"first_n": 3}, 1, 3), ({"last_n": 3}, 48, 50)):
        sub = ex.sample_by_rank(res, **kw)
        band = hits[hits["rank"].between(lo, hi)]
        assert set(sub["id"]) <= set(band["id"])
        for r in sub.itertuples():  # the label comes from an in-band hit of a seed of that class
            assert ((band["id"] == r.id) & (band["seed_label"] == r.label)).any()
    small = ex.sample_by_rank(res, first_n=3, n_per_class=4, seed=1)
    assert small["label"].value_counts().max() <= 4
    assert small.equals(ex.sample_by_rank(res, first_n=3, n_per_class=4, seed=1))

    rev = ex.review_sample(res, band_width=20, per_rank=2, stratify="seed_label", seed=5)
    per = rev.groupby(["rank", "seed_label"]).size()
    assert (per == 2).all() and len(per) == 50 * 2
    assert rev.merge(hits, on=["seed_id", "rank", "id"]).shape[0] == len(rev)  # real hits
    assert (rev["rank"].between(rev["rank_lo"], rev["rank_hi"])).all()
    assert set(rev["band_label"]) == {"1-20", "21-40", "41-50"}
    assert rev.equals(ex.review_sample(res, band_width=20, per_rank=2, stratify="seed_label", seed=5))
    plain = ex.review_sample(res, per_rank=3)
    assert (plain.groupby("rank").size() == 3).all()


def test_read_seeds(corpus_color, tmp_path):
    ds = ds_mod.load("corpus")
    a, b = ds.images["id"].iloc[0], ds.images["id"].iloc[-1]
    p = tmp_path / "seeds.csv"
    pd.DataFrame({"id": [a[:12], b], "label": ["sensitive", "non_sensitive"]}).to_csv(p, index=False)
    assert ex.read_seeds(p, ds) == {"sensitive": [a], "non_sensitive": [b]}
    j = tmp_path / "seeds.json"
    j.write_text(json.dumps({"sensitive": [a]}))
    assert ex.read_seeds(j, ds) == {"sensitive": [a]}
    seeds = ex.seeds_from_labels(ds, 3, seed=7)
    assert seeds == ex.seeds_from_labels(ds, 3, seed=7)
    lab = ds.images.drop_duplicates("id").set_index("id")["label"]
    assert all(lab[i] == c for c, ids in seeds.items() for i in ids)


def test_cli_expand_and_homogeneity(corpus_color, tmp_path, capsys):
    from lib.cli import main

    out = tmp_path / "exp"
    assert main(["expand", "corpus", "--model", "color", "--seeds-from-labels", "3", "--k", "25",
                 "--out", str(out)]) == 0
    space = nb.open_space("corpus", "color")
    ref = ex.expand(space, ex.seeds_from_labels(space.dataset, 3, seed=0), k=25)
    back, meta = ex.ExpansionResult.load(out)  # the one save format, as the app writes it
    assert meta["format"] == ex.SAVE_FORMAT and meta["k"] == 25 and meta["spec"] == "color"
    for part in ("seeds", "hits", "labelled", "conflicts"):
        pd.testing.assert_frame_equal(getattr(back, part), getattr(ref, part))
    assert "share_unique" in capsys.readouterr().out
    # without --out it lands where the app lists expansions
    assert main(["expand", "corpus", "--model", "color", "--seeds-from-labels", "3", "--k", "25"]) == 0
    listed = ex.list_expansions("corpus")
    assert ex.expansion_name("color", 25, "best_rank", ex.seeds_from_labels(space.dataset, 3, seed=0)) \
        in set(listed["name"])
    capsys.readouterr()

    csv = tmp_path / "h.csv"
    assert main(["homogeneity", "corpus", "--model", "color", "--k", "25", "--band", "10",
                 "--seeds-per-class", "3", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    want = ex.homogeneity(ref, ex.dataset_truth(space.dataset), band_width=10)
    np.testing.assert_array_equal(table["confirmed"], want["confirmed"])
    assert "21-25" in capsys.readouterr().out
    assert main(["expand", "corpus", "--model", "color"]) == 2  # no seeds: a user error
