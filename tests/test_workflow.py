"""The annotation workflow (lib/workflow.py): queues, seeds from annotations, saved expansions,
review samples, homogeneity from review and dataset labels, agreement, export and re-ingest.

References: the corpus manifest read directly with pandas, brute-force cosine top-k over the
embedding matrix, scikit-learn's Cohen kappa, the Beta distribution's closed-form mean, and
hand-written small examples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from lib import dataset as ds_mod
from lib import expansion as ex
from lib import workflow as wf
from lib.annotations import CONSENSUS, AnnotationStore
from lib.embeddings import load_embeddings
from lib.expansion import seeds_from_labels
from lib.neighbors import open_space


@pytest.fixture
def store(tmp_path) -> AnnotationStore:
    return AnnotationStore(tmp_path / "annotations.sqlite")


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> pd.DataFrame:
    """The corpus manifest as written, the independent truth."""
    return pd.read_csv(corpus_dir / "manifest.csv")


@pytest.fixture(scope="module")
def space(corpus_color):
    return open_space("corpus", "color")


@pytest.fixture(scope="module")
def saved(space):
    seeds = seeds_from_labels(space.dataset, 10, seed=3)
    return ex.run_expansion(space, seeds, k=99, origin="test:labels")


def truth_by_id(ds, manifest) -> dict[str, str]:
    """Content id -> manifest label, through the path (not through the dataset's label column)."""
    lab = dict(zip(manifest["path"], manifest["label"], strict=True))
    return {i: lab[p] for i, p in zip(ds.images["id"], ds.images["path"], strict=True)}


def direct_counts(pairs: pd.DataFrame, truth: dict, band_width: int) -> pd.DataFrame:
    """confirmed / rejected / unjudged per (seed class, band) by a plain loop."""
    rows = {}
    for r in pairs.itertuples():
        band = (r.rank - 1) // band_width
        t = truth.get(r.id)
        for scope in (r.seed_label, "all"):
            c = rows.setdefault((scope, band), [0, 0, 0])
            if t is None:
                c[2] += 1
            elif t == r.seed_label:
                c[0] += 1
            else:
                c[1] += 1
    return pd.DataFrame([(s, b, *c) for (s, b), c in rows.items()],
                        columns=["scope", "band", "confirmed", "rejected", "unjudged"])


# --------------------------------------------------------------------------- labels and seeds


def test_to_classes_mapping():
    got = ex.to_classes(pd.Series(["Blur", "ok", "MAYBE", None, "sensitive"]))
    assert got.tolist() == ["sensitive", "non_sensitive", None, None, "sensitive"]
    custom = ex.to_classes(["Blur", "Ok"], {"blur": "wound", "ok": None})
    assert custom.tolist() == ["wound", None]


def test_an_unmapped_review_label_is_unjudged(store, space):
    """One review truth: a label the mapping does not name and that spells no class
    (a typo, a label of another set) is not evidence. It used to count as a class of its
    own in workflow.review_truth (rejecting every neighbour it touched) while
    neighbors.truth_from_store called it NaN."""
    res = ex.expand(space, seeds_from_labels(space.dataset, 2, seed=0), k=5)
    a, b, c = res.hits["id"].drop_duplicates().tolist()[:3]
    cls_of_c = ds_mod.load("corpus").images.set_index("id")["label"].astype(str).to_dict()[c]
    store.set_label_set("corpus", ["Blur", "Maybe", "Ok", "Unsure", cls_of_c])
    store.set_label("corpus", a, "ann", "Unsure")  # in the label set, but mapped to no class
    store.set_label("corpus", b, "ann", "Blur")
    store.set_label("corpus", c, "ann", cls_of_c)  # spells a dataset class: counts as it
    truth = ex.review_truth(store, "corpus", "ann")
    assert truth[a] is None
    assert truth[b] == ex.class_mapping("corpus")["Blur"] and truth[c] == cls_of_c
    table = ex.homogeneity(res, truth, band_width=5, by_class=False)
    pairs_a, pairs_b = (res.hits["id"] == a).sum(), (res.hits["id"] == b).sum()
    assert table["confirmed"].sum() + table["rejected"].sum() == pairs_b + (res.hits["id"] == c).sum()
    assert table["unjudged"].sum() == len(res.hits) - pairs_b - (res.hits["id"] == c).sum() >= pairs_a
    assert not hasattr(__import__("lib.neighbors").neighbors, "truth_from_store")


def test_consensus_labels_rules(store):
    d = "toy"
    for image, votes in {"i1": {"ann": "Blur", "bob": "Blur"}, "i2": {"ann": "Blur", "bob": "Ok"},
                         "i3": {"ann": "Ok"}, "i4": {"ann": "Maybe", "bob": "Ok"},
                         "i5": {"ann": "Maybe", "bob": "Maybe"}}.items():
        for who, lab in votes.items():
            store.set_label(d, image, who, lab)
    store.resolve(d, "i4", "Ok", by="carol")
    got = ex.consensus_labels(store, d).set_index("image_id")
    assert got.loc["i1", "label"] == "Blur" and got.loc["i1", "source"] == "unanimous"
    assert pd.isna(got.loc["i2", "label"]) and got.loc["i2", "source"] == "disagree"
    assert got.loc["i3", "label"] == "Ok" and got.loc["i3", "source"] == "single"
    assert got.loc["i4", "label"] == "Ok" and got.loc["i4", "reviewer"] == CONSENSUS
    assert got.loc["i5", "label"] == "Maybe"
    assert ex.consensus_labels(store, d, min_votes=2).set_index("image_id").loc["i3", "source"] == "too_few"
    truth = ex.review_truth(store, d)
    assert truth.to_dict() == {"i1": "sensitive", "i2": None, "i3": "non_sensitive", "i4": "non_sensitive",
                               "i5": None}
    assert ex.review_truth(store, d, "bob").to_dict() == {"i1": "sensitive", "i2": "non_sensitive",
                                                         "i4": "non_sensitive", "i5": None}


def test_seeds_from_annotations(store, corpus, manifest):
    truth = truth_by_id(corpus, manifest)
    ids = corpus.unique_ids
    sens = [i for i in ids if truth[i] == "sensitive"][:6]
    non = [i for i in ids if truth[i] == "non_sensitive"][:4]
    maybe = [i for i in ids if truth[i] == "sensitive"][6:8]
    rows = [{"dataset": "corpus", "image_id": i, "annotator": "ann", "label": lab, "task": "seed"}
            for group, lab in ((sens, "Blur"), (non, "Ok"), (maybe, "Maybe")) for i in group]
    rows.append({"dataset": "corpus", "image_id": "f" * 64, "annotator": "ann", "label": "Blur"})  # not in corpus
    store.set_labels(rows)
    seeds = wf.seeds_from_annotations(store, corpus, "ann")
    assert seeds == {"non_sensitive": sorted(non), "sensitive": sorted(sens)}
    few = wf.seeds_from_annotations(store, corpus, "ann", n_per_class=2, seed=1)
    assert {k: len(v) for k, v in few.items()} == {"non_sensitive": 2, "sensitive": 2}
    assert set(few["sensitive"]) <= set(sens)
    with pytest.raises(wf.WorkflowError):
        wf.seeds_from_annotations(store, corpus, "nobody")


# --------------------------------------------------------------------------- queues


def test_seed_queue_filters_orders_and_skips(store, corpus, manifest):
    rng = np.random.default_rng(0)
    eb = pd.DataFrame({"id": corpus.images["id"], "eb": rng.normal(size=len(corpus.images))})
    q = wf.seed_queue(corpus, eb=eb, order="eb_desc")
    assert list(q.columns[:len(wf.QUEUE_COLUMNS)]) == wf.QUEUE_COLUMNS
    assert len(q) == len(corpus.unique_ids) == q["id"].nunique()  # byte-identical copies once
    first_eb = eb.drop_duplicates("id").set_index("id")["eb"]
    assert q["id"].tolist() == first_eb.sort_values(ascending=False).index.tolist()
    assert (corpus.images["id"].to_numpy()[q["row"].to_numpy()] == q["id"].to_numpy()).all()

    truth = truth_by_id(corpus, manifest)
    non = wf.seed_queue(corpus, labels=["non_sensitive"], order="dataset")
    assert len(non) == len({i for i, t in truth.items() if t == "non_sensitive"})
    assert non["row"].is_monotonic_increasing

    store.set_label("corpus", non["id"].iloc[0], "ann", "Ok")
    store.set_label("corpus", non["id"].iloc[2], "ann", "Ok")
    left = wf.seed_queue(corpus, store=store, annotator="ann", labels=["non_sensitive"], order="dataset", limit=5)
    assert left["id"].tolist() == [non["id"].iloc[i] for i in (1, 3, 4, 5, 6)]
    a = wf.seed_queue(corpus, order="random", seed=4)["id"].tolist()
    assert a == wf.seed_queue(corpus, order="random", seed=4)["id"].tolist() != wf.seed_queue(
        corpus, order="random", seed=5)["id"].tolist()
    assert sorted(a) == sorted(corpus.unique_ids)
    with pytest.raises(wf.WorkflowError):
        wf.seed_queue(corpus, order="eb_desc")  # no EB table


def test_next_unlabelled_wraps():
    ids = ["a", "b", "c", "d"]
    assert wf.next_unlabelled(ids, {"a", "b"}, 0) == 2
    assert wf.next_unlabelled(ids, {"c", "d"}, 2) == 0
    assert wf.next_unlabelled(ids, {"b"}, 1) == 2
    assert wf.next_unlabelled(ids, set(ids), 1) is None


# --------------------------------------------------------------------------- expansion


def test_expansion_conflicts_match_brute_force_and_reload(saved, space):
    res = saved.result
    ds = space.dataset
    emb = load_embeddings("corpus", "color")
    mat = emb.matrix()
    ids = ds.images["id"].to_numpy()
    reached: dict[str, set] = {}
    for sid, label in zip(res.seeds["id"], res.seeds["label"], strict=True):
        q = mat[space.row_of(sid)]
        order = np.argsort(-(mat @ q), kind="stable")
        got = [i for i in dict.fromkeys(ids[order]) if i != sid][:99]
        reached.setdefault(label, set()).update(got)
    seeds_of = dict(zip(res.seeds["id"], res.seeds["label"], strict=True))
    classes = sorted(reached)
    conflicts = set()
    for i in set().union(*reached.values()) | set(seeds_of):
        owners = {c for c in classes if i in reached[c]} | ({seeds_of[i]} if i in seeds_of else set())
        if len(owners) > 1:
            conflicts.add(i)
    assert len(conflicts) > 0
    assert set(res.conflicts["id"]) == conflicts
    assert set(res.labelled.loc[res.labelled["conflict"], "id"]) == conflicts

    back = ex.load_expansion("corpus", saved.name)
    assert back.meta["spec"] == "color" and back.meta["k"] == 99 and back.meta["origin"] == "test:labels"
    for part in ("seeds", "hits", "labelled", "conflicts"):
        pd.testing.assert_frame_equal(getattr(back.result, part), getattr(res, part))
    assert saved.path == ex.expansion_path("corpus", saved.name)
    assert saved.path.parent.name == "corpus" and saved.path.name.startswith("expansion-")
    listed = ex.list_expansions("corpus")
    assert saved.name in set(listed["name"])
    with pytest.raises(wf.WorkflowError):
        ex.load_expansion("corpus", "no-such-expansion")
    with pytest.raises(wf.WorkflowError):
        ex.run_expansion(space, {"sensitive": res.seeds["id"].tolist()[:1]}, k=100)


def write_format1(res, path):
    """An expansion saved the old way (the expand verb before the one save format): the
    labelled table at ``path`` and ``-hits`` / ``-conflicts`` / ``-counts`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    res.labelled.to_parquet(path)
    res.hits.to_parquet(path.with_name(f"{path.stem}-hits.parquet"))
    res.conflicts.to_parquet(path.with_name(f"{path.stem}-conflicts.parquet"))
    res.counts.to_csv(path.with_name(f"{path.stem}-counts.csv"), index=False)


def test_old_expand_output_is_migrated_once(space, tmp_path):
    fresh = ex.run_expansion(space, seeds_from_labels(space.dataset, 4, seed=2), k=30, save=False)
    old = tmp_path / "exp.parquet"
    write_format1(fresh.result, old)

    first = ex.load_expansion("corpus", old)
    assert first.path == tmp_path / "expansion-exp" == ex.migrated_path(old)
    assert first.meta["format"] == ex.SAVE_FORMAT and first.meta["migrated_from"] == str(old.resolve())
    assert first.result.k == 30 and first.result.rule == "best_rank"
    assert sorted(first.result.seeds["id"]) == sorted(fresh.result.seeds["id"])
    pd.testing.assert_frame_equal(first.result.labelled, fresh.result.labelled)
    pd.testing.assert_frame_equal(first.result.hits, fresh.result.hits)
    assert old.exists()  # the user's files are left alone

    stamp = (first.path / "meta.json").stat().st_mtime_ns
    old.with_name("exp-hits.parquet").unlink()  # later loads read the migrated folder, not the old files
    again = ex.load_expansion("corpus", old)
    assert (first.path / "meta.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.result.hits, fresh.result.hits)
    assert ex.load_expansion("corpus", first.path).name == "exp"
    # and what is migrated is an ordinary expansion: review samples and exports work on it
    assert len(ex.review_sample(again, per_rank=1)) > 0


# --------------------------------------------------------------------------- review samples


def test_review_sample_per_band_stratified_by_source(saved, corpus, manifest):
    sample = ex.review_sample(saved, corpus, band_width=20, per_rank=None, per_band=6, stratify="source", seed=1)
    src = dict(zip(manifest["path"], manifest["source"], strict=True))
    hits = saved.result.hits.assign(
        source=[src[p] for p in corpus.images["path"].to_numpy()[saved.result.hits["row"].to_numpy()]],
        band=(saved.result.hits["rank"] - 1) // 20)
    available = hits.groupby(["band", "source"]).size()
    got = sample.groupby(["band", "source"]).size()
    assert got.to_dict() == {key: min(6, n) for key, n in available.items()}
    assert (sample["source"].to_numpy() == [src[p] for p in corpus.images["path"].to_numpy()[sample["row"]]]).all()
    key = ["seed_id", "rank", "id"]
    assert not sample.duplicated(key).any()
    assert len(sample.merge(saved.result.hits[key], on=key)) == len(sample)  # real pairs only
    assert ex.review_sample(saved, corpus, per_rank=None, per_band=6, stratify="source", seed=1).equals(sample)

    per_rank = ex.review_sample(saved, corpus, per_rank=3, stratify="seed_label")
    counts = per_rank.groupby(["rank", "seed_label"]).size()
    assert counts.max() == 3 and set(per_rank["band_label"]) == {"1-20", "21-40", "41-60", "61-80", "81-99"}
    with pytest.raises(wf.WorkflowError):
        ex.review_sample(saved, corpus, stratify="no_such_column")

    path = wf.save_review_sample(saved, sample, wf.sample_file_name(20, None, 6, "source", 1))
    assert path in wf.list_review_samples(saved)
    pd.testing.assert_frame_equal(wf.load_review_sample(path), sample)
    queue = wf.review_queue(sample, corpus)
    assert sorted(queue["id"]) == sorted(set(sample["id"]))
    best = sample.groupby("id")["rank"].min()
    assert (queue["rank"].to_numpy() == best.reindex(queue["id"]).to_numpy()).all()
    assert queue["rank"].is_monotonic_increasing
    assert int(queue["pairs"].sum()) == len(sample)
    assert (queue["task"] == "review").all()


# --------------------------------------------------------------------------- homogeneity


def test_homogeneity_from_corpus_labels_matches_direct_count(saved, corpus, manifest):
    truth = truth_by_id(corpus, manifest)
    table = ex.homogeneity(saved, ex.dataset_truth(corpus), band_width=20)
    ref = direct_counts(saved.result.hits, truth, 20)
    merged = table.merge(ref, on=["scope", "band"], suffixes=("", "_ref"))
    assert len(merged) == len(table) == len(ref)
    for c in ("confirmed", "rejected", "unjudged"):
        assert (merged[c] == merged[f"{c}_ref"]).all(), c
    mean = (merged["confirmed_ref"] + 1) / (merged["confirmed_ref"] + merged["rejected_ref"] + 2)
    np.testing.assert_allclose(merged["mean"], mean, rtol=1e-12)


def simulate_reviews(store, dataset: str, ids, truth: dict, flips: set, maybes: set, names=("ann", "bob")):
    """Two annotators label from the ground truth; the second flips ``flips`` and says Maybe on ``maybes``."""
    a, b = names
    rows = []
    for i in ids:
        lab = ex.CLASS_TO_LABEL[truth[i]]
        rows.append({"dataset": dataset, "image_id": i, "annotator": a, "label": lab, "task": "review"})
        other = "Maybe" if i in maybes else ({"Blur": "Ok", "Ok": "Blur"}[lab] if i in flips else lab)
        rows.append({"dataset": dataset, "image_id": i, "annotator": b, "label": other, "task": "review"})
    store.set_labels(rows)


def test_review_homogeneity_agreement_resolution(saved, corpus, manifest, store):
    truth = truth_by_id(corpus, manifest)
    sample = ex.review_sample(saved, corpus, band_width=20, per_rank=2, stratify="seed_label", seed=0)
    ids = list(dict.fromkeys(sample["id"]))
    flips, maybes = set(ids[::9]), set(ids[4::13]) - set(ids[::9])
    simulate_reviews(store, "corpus", ids, truth, flips, maybes)

    # agreement, against scikit-learn on the same label vectors
    agree = wf.pair_agreement(store, "corpus", "ann", "bob")
    pairs = store.pairs("corpus", "ann", "bob")
    assert agree["n"] == len(ids) == len(pairs)
    assert agree["kappa"] == pytest.approx(cohen_kappa_score(pairs["label_a"], pairs["label_b"]))
    assert agree["percent_agreement"] == pytest.approx(1 - (len(flips) + len(maybes)) / len(ids))
    assert int(np.trace(agree["confusion"].to_numpy())) == len(ids) - len(flips) - len(maybes)

    todo = wf.to_resolve(store, "corpus", "ann", "bob")
    assert set(todo["image_id"]) == flips | maybes
    assert (todo["reason"] == "disagree").all()  # ann never says Maybe: every Maybe is a disagreement

    # before resolving: disagreements are unjudged
    before = ex.homogeneity(saved, ex.review_truth(store, "corpus"), 20, pairs=sample)
    undecided = {i: t for i, t in truth.items() if i in set(ids) - flips - maybes}
    ref = direct_counts(sample, undecided, 20)
    got = before.merge(ref, on=["scope", "band"], suffixes=("", "_ref"))
    assert len(got) == len(before)
    for c in ("confirmed", "rejected", "unjudged"):
        assert (got[c] == got[f"{c}_ref"]).all(), c

    # resolve every disagreement with the ground truth: review homogeneity = dataset homogeneity on the sample
    for i in todo["image_id"]:
        store.resolve("corpus", i, ex.CLASS_TO_LABEL[truth[i]], by="carol")
    assert wf.to_resolve(store, "corpus", "ann", "bob", unresolved_only=True).empty
    comp = ex.homogeneity_comparison(saved, {"review": ex.review_truth(store, "corpus"),
                                             "dataset": ex.dataset_truth(corpus)}, 20, pairs=sample)
    r = comp[comp["truth"] == "review"].reset_index(drop=True)
    d = comp[comp["truth"] == "dataset"].reset_index(drop=True)
    pd.testing.assert_frame_equal(r.drop(columns="truth"), d.drop(columns="truth"))
    assert (r["unjudged"] == 0).all() and (r["pairs"] > 0).all()
    fig = ex.homogeneity_figure(comp)
    assert len(fig.data) == 2 * comp["scope"].nunique()


# --------------------------------------------------------------------------- export


def test_assign_splits_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 21 + ["c"]
    s = wf.assign_splits(labels, val_frac=0.2, test_frac=0.1, seed=3)
    df = pd.DataFrame({"label": labels, "split": s})
    counts = df.groupby(["label", "split"]).size().to_dict()
    assert counts == {("a", "train"): 35, ("a", "val"): 10, ("a", "test"): 5, ("b", "train"): 15,
                      ("b", "val"): 4, ("b", "test"): 2, ("c", "train"): 1}
    assert (wf.assign_splits(labels, 0.2, 0.1, seed=3) == s).all()
    assert (wf.assign_splits(labels, 0.2, 0.1, seed=4) != s).any()
    with pytest.raises(wf.WorkflowError):
        wf.assign_splits(labels, 0.6, 0.5)


def test_export_round_trip_through_ingest(saved, corpus, manifest, store, tmp_path):
    truth = truth_by_id(corpus, manifest)
    lab = saved.result.labelled
    expanded = lab[~lab["is_seed"] & lab["label"].notna()]
    changed = expanded["id"].iloc[0]  # the review gives it the other class
    maybe = expanded["id"].iloc[1]  # undecided review: dropped
    kept = expanded["id"].iloc[2]  # review agrees
    other = {"sensitive": "Ok", "non_sensitive": "Blur"}[expanded["label"].iloc[0]]
    store.set_label("corpus", changed, "ann", other)
    store.set_label("corpus", maybe, "ann", "Maybe")
    store.set_label("corpus", kept, "ann", ex.CLASS_TO_LABEL[expanded["label"].iloc[2]])
    reviews = ex.review_labels(store, "corpus")

    m = wf.export_table(corpus, saved, reviews=reviews, val_frac=0.2, seed=0, keep_columns=["source"])
    assert list(m.columns) == wf.EXPORT_COLUMNS + ["source"]
    assert m["path"].is_unique and len(m) == int(lab["label"].notna().sum()) - 1  # the Maybe is dropped
    by_path = m.set_index("path")
    first_rows = corpus.images.drop_duplicates("id")
    path_of = dict(zip(first_rows["id"], first_rows["path"], strict=True))
    assert path_of[maybe] not in by_path.index
    assert by_path.loc[path_of[changed], "label"] == ex.to_classes([other])[0]
    assert by_path.loc[path_of[changed], "label_source"] == "review"
    assert by_path.loc[path_of[changed], "review_label"] == other
    assert by_path.loc[path_of[kept], "label_source"] == "review"
    seeds = m[m["label_source"] == "seed"]
    assert len(seeds) == len(saved.result.seeds) and (seeds["rank"] == 0).all()
    assert (m["rank"] <= 99).all() and set(m["split"]) == {"train", "val"}
    # every unreviewed expanded label is the class of its seed at its best rank
    hits = saved.result.hits
    for r in m[m["label_source"] == "expansion"].head(50).itertuples():
        h = hits[(hits["seed_id"] == r.seed_id) & (hits["rank"] == r.rank)]
        assert len(h) == 1 and h["seed_label"].iloc[0] == r.label

    out = wf.write_manifest(m, tmp_path / "export.csv")
    ds_mod.ingest(out, "corpus-export", root=corpus.root)
    back = ds_mod.load("corpus-export")
    assert len(back.images) == len(m) and len(back.errors) == 0
    b = back.images.set_index("path")
    assert (b.loc[m["path"], "label"].to_numpy() == m["label"].to_numpy()).all()
    assert (b.loc[m["path"], "split"].to_numpy() == m["split"].to_numpy()).all()
    assert (b.loc[m["path"], "id"].to_numpy() == [dict(zip(corpus.images["path"], corpus.images["id"],
                                                          strict=True))[p] for p in m["path"]]).all()
    assert set(wf.EXPORT_COLUMNS[3:]) <= set(back.images.columns)
    agree = sum(truth[i] == lab for i, lab in zip(b["id"], b["label"], strict=True))
    assert agree > len(b) / 2  # the expanded labels mostly match the manifest

    first = wf.export_table(corpus, saved, first_n=3, val_frac=0.0)
    assert (first["rank"] <= 3).all() and (first["split"] == "train").all()
    last = wf.export_table(corpus, saved, last_n=3, include_seeds=False)
    assert (last["rank"] >= 97).all() and (last["label_source"] == "expansion").all()
    absolute = wf.export_table(corpus, saved, absolute=True)
    assert all(p.startswith(str(corpus.root)) for p in absolute["path"])
    with pytest.raises(wf.WorkflowError):
        wf.export_table(corpus, saved, keep_columns=["label"])


def test_cli_export_then_ingest(saved, corpus, tmp_path, capsys):
    from lib import cli

    out = tmp_path / "m.parquet"
    assert cli.main(["export", "corpus", "--expansion", saved.name, "--out", str(out), "--last-n", "5",
                     "--reviews", "none", "--val-frac", "0.25", "--absolute"]) == 0
    text = capsys.readouterr().out
    assert f"--root {corpus.root}" in text and str(out) in text
    m = pd.read_parquet(out)
    assert (m.loc[m["rank"] > 0, "rank"] >= 95).all() and set(m["split"]) == {"train", "val"}
    assert cli.main(["ingest", str(out), "--name", "corpus-last5", "--root", str(corpus.root)]) == 0
    back = ds_mod.load("corpus-last5")
    assert len(back.images) == len(m) and back.images["label"].tolist() == m["label"].tolist()
    assert cli.main(["export", "corpus", "--expansion", "missing"]) == 2
    assert cli.main(["export", "corpus", "--expansion", saved.name, "--first-n", "200"]) == 2


def test_include_maybe_means_the_same_for_disagreements_and_to_resolve(tmp_path):
    """Without Maybe cases, a Blur/Maybe pair is neither a disagreement nor to resolve
    (to_resolve used to keep it: its include_maybe selected the opposite filter)."""
    store = AnnotationStore(tmp_path / "a.sqlite")
    for img, (x, y) in {"i1": ("Blur", "Ok"), "i2": ("Blur", "Maybe"), "i3": ("Maybe", "Maybe"),
                        "i4": ("Ok", "Ok")}.items():
        store.set_label("d", img, "ann", x)
        store.set_label("d", img, "bob", y)
    hard = set(store.disagreements("d", "ann", "bob", include_maybe=False)["image_id"])
    assert hard == {"i1"}
    assert set(wf.to_resolve(store, "d", "ann", "bob", include_maybe=False)["image_id"]) == hard
    assert set(store.disagreements("d", "ann", "bob")["image_id"]) == {"i1", "i2"}
    todo = wf.to_resolve(store, "d", "ann", "bob")
    assert dict(zip(todo["image_id"], todo["reason"], strict=True)) == {"i1": "disagree", "i2": "disagree",
                                                                         "i3": "maybe"}


def test_expand_default_k_fits_the_dataset_and_captions_stay_short():
    from lib import expansion as ex

    assert ex.default_k(658, 20) == 16  # the corpus, 10 seeds per class: about half the images reached
    assert ex.default_k(24, 4) == 5 and ex.default_k(3, 2) == 2  # never below 5 unless the set is smaller
    assert ex.default_k(100_000, 20) == ex.MEDGORE_K == 99  # MedGore's k on a large collection
    text = ex.mapping_text({f"l{i}": "sensitive" if i % 2 else None for i in range(13)})
    assert text.count("→") == 6 and text.endswith("and 7 more") and "unjudged" in text
