"""Tables a fresh process reads instead of deriving again: the safe view's decision and the EB
scores (lib.files.stored_table). A stored table is used only for the very inputs it was made
from: any change of evidence makes it again, never a stale decision shown raw."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from lib import config, dataset, evidence, files, gallery
from lib import sensitivity as sv
from lib.annotations import AnnotationStore, LabelSchema, scope


def test_stored_table_is_read_back_only_for_the_same_key_and_when_valid(caplog):
    calls = []

    def compute(v):
        def go():
            calls.append(v)
            return pd.DataFrame({"a": [v, v + 1], "s": ["x", None]})
        return go

    valid = lambda t: len(t) == 2  # noqa: E731
    first = files.stored_table("t", "ds", ["k", 1], compute(1), valid=valid)
    again = files.stored_table("t", "ds", ["k", 1], compute(99), valid=valid)  # read, not computed
    pd.testing.assert_frame_equal(first, again)
    assert calls == [1]
    other = files.stored_table("t", "ds", ["k", 2], compute(2), valid=valid)  # another key: computed
    assert calls == [1, 2] and other["a"].tolist() == [2, 3]
    folder = config.cache_dir() / "t" / "ds"
    assert len(list(folder.glob("*.parquet"))) == 1  # one stored table per kind and name
    files.stored_table("t", "ds", ["k", 2], compute(3), valid=lambda t: False)  # fails the check: computed
    assert calls[-1] == 3
    (stored,) = folder.glob("*.parquet")
    stored.write_bytes(b"not parquet")  # damaged on disk: computed again, with a warning
    with caplog.at_level("WARNING"):
        assert files.stored_table("t", "ds", ["k", 2], compute(4), valid=valid)["a"].tolist() == [4, 5]
    assert "unreadable" in caplog.text
    files.stored_table("t", "ds2", ["k"], compute(5), valid=valid, keep=lambda t: False)
    assert not (config.cache_dir() / "t" / "ds2").exists()  # not kept: nothing stored


@pytest.fixture()
def wounds(corpus_dir, tmp_path):
    return _wounds(corpus_dir, tmp_path)


def _wounds(corpus_dir, tmp_path):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path / "wounds"
    for folder, paths in {"burns": m[m.source == "medetec"].path[:4], "skin": m[m.subclass == "normal_skin"].path[:4]}.items():
        (root / folder).mkdir(parents=True)
        for p in paths:
            shutil.copy(corpus_dir / p, root / folder / p.replace("/", "_"))
    dataset.ingest(root, "stored-wounds")
    sv.set_policy("stored-wounds", safe=["skin"], by="test")
    return dataset.load("stored-wounds")


def _key(name: str, store: AnnotationStore) -> tuple:
    policy = sv.policy_path(name)
    return (policy.stat().st_mtime_ns, store.last_event(name))


def _stored(ds, store):
    def stored(key):
        return evidence.stored_decision(ds.name, ds.images, key[:-1], lambda: evidence.dataset_evidence(ds, nudity=False),
                                        event=key[-1], store=store)
    return stored


def test_a_stored_decision_is_never_read_after_its_evidence_changed(wounds, tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite")
    ds, name = wounds, "stored-wounds"

    def decide():
        return evidence.decide_dataset(ds, store=store, nudity=False)

    stored = _stored(ds, store)

    fresh = stored(_key(name, store))
    pd.testing.assert_frame_equal(fresh, decide())
    assert list(fresh.columns) == sv.DECISION_COLUMNS
    raw = fresh.loc[~fresh["censored"], "id"].tolist()
    assert raw and fresh["censored"].any()  # skin raw by the policy, burns censored
    evidence._LAST.clear()
    assert stored(_key(name, store)) is not fresh  # a fresh process: read from disk ...
    pd.testing.assert_frame_equal(stored(_key(name, store)), fresh)  # ... the same table

    # A review: the key's latest event moves, the stored table is not read.
    store.set_label(name, raw[0], "ana", "Blur")
    after = stored(_key(name, store))
    assert after.set_index("id").loc[raw[0], "censored"].all()
    pd.testing.assert_frame_equal(after, decide())

    # A label set's meaning changed (no event is written): decided again.
    store.add_schema(name, LabelSchema("look", ("gross", "fine")))
    store.set_label(scope(name, "look"), raw[1], "ana", "gross")
    before = stored(_key(name, store))
    assert not before.set_index("id").loc[raw[1], "censored"].any()  # "gross" means nothing yet
    store.add_schema(name, LabelSchema("look", ("gross", "fine"), meanings={"gross": "sensitive"}))
    changed = stored(_key(name, store))
    assert changed.set_index("id").loc[raw[1], "censored"].all()
    pd.testing.assert_frame_equal(changed, decide())


def test_after_a_few_labels_only_their_rows_are_decided_again(corpus_dir, tmp_path, monkeypatch):
    """Labels, a clear, a consensus and a label set's value after a decision: only the rows
    of those images (every copy) are decided again, and the table equals a decision of the
    whole dataset; past REDECIDE_MAX images, or with another input changed, all of it."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path / "few"
    for k, p in enumerate(m.path[:24]):
        for copy in range(1 + (k % 4 == 0)):  # every fourth image twice
            (root / f"f{copy}").mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus_dir / p, root / f"f{copy}" / p.replace("/", "_"))
    dataset.ingest(root, "stored-few")
    sv.set_policy("stored-few", safe=["f1"], by="test")
    ds = dataset.load("stored-few")
    store = AnnotationStore(tmp_path / "few.sqlite")
    store.add_schema("stored-few", LabelSchema("look", ("gross", "fine"), meanings={"gross": "sensitive", "fine": "safe"}))
    sizes = []
    real = sv.decide
    monkeypatch.setattr(sv, "decide", lambda images, **kw: sizes.append(len(images)) or real(images, **kw))
    evidence._LAST.clear()
    stored = _stored(ds, store)

    def key():
        return ("policy", sv.policy_path("stored-few").stat().st_mtime_ns, store.last_event("stored-few"))

    def whole():
        return real(ds.images, reviews=evidence.reviews("stored-few", store), **evidence.dataset_evidence(ds, nudity=False))

    first = stored(key())
    assert sizes == [len(ds.images)]
    ids = ds.images["id"].tolist()
    copied = ds.images["id"][ds.images["id"].duplicated()].iloc[0]
    steps = [lambda: store.set_label("stored-few", copied, "ana", "Ok"),
             lambda: (store.set_label("stored-few", ids[1], "ana", "Blur"), store.set_label("stored-few", ids[2], "bob", "Ok")),
             lambda: store.clear("stored-few", copied, "ana"),
             lambda: store.resolve("stored-few", ids[2], "Maybe", by="carol"),  # the consensus
             lambda: store.set_label(scope("stored-few", "look"), ids[3], "ana", "fine")]
    touched = [{copied}, {ids[1], ids[2]}, {copied}, {ids[2]}, {ids[3]}]
    before = first
    for step, images in zip(steps, touched, strict=True):
        sizes.clear()
        step()
        after = stored(key())
        assert sizes == [int(ds.images["id"].isin(images).sum())]  # those rows, every copy
        assert after.dtypes.to_dict() == before.dtypes.to_dict()
        pd.testing.assert_frame_equal(after.reset_index(drop=True), whole().reset_index(drop=True), check_dtype=False)
        changed = set(after["id"][after["reason"].to_numpy() != before["reason"].to_numpy()])
        assert changed <= images
        before = after
    assert before["reason"].str.startswith("review").sum() >= 3  # the labels above count
    sizes.clear()
    monkeypatch.setattr(evidence, "REDECIDE_MAX", 1)
    store.set_label("stored-few", ids[5], "ana", "Ok")
    store.set_label("stored-few", ids[6], "ana", "Ok")
    stored(key())
    assert sizes == [len(ds.images)]  # two images labelled: more than the limit
    sizes.clear()
    monkeypatch.setattr(evidence, "REDECIDE_MAX", 5000)
    sv.set_policy("stored-few", safe=["f0"], by="test")  # another input: all of it
    store.set_label("stored-few", ids[7], "ana", "Ok")
    pd.testing.assert_frame_equal(stored(key()).reset_index(drop=True), whole().reset_index(drop=True),
                                  check_dtype=False)
    assert sizes == [len(ds.images)]



def test_a_label_on_an_image_no_table_scores_is_decided_again_like_the_whole(wounds, tmp_path):
    """Evidence tables by id that cover only some images (NudeNet scores of a few, a
    detector's table of others), then labels on images none of them scores: the rows
    decided again must equal a decision of the whole dataset. (It raised in the app: the
    NudeNet table narrowed to the labelled images was empty.)"""
    ds, name = wounds, "stored-wounds"
    store = AnnotationStore(tmp_path / "partial.sqlite")
    skin = ds.images.loc[ds.images["label"] == "skin", "id"].tolist()  # safe by the policy
    ids = [skin[0], skin[1], *ds.images.loc[ds.images["label"] != "skin", "id"].tolist()[:1], skin[2]]
    nude = pd.DataFrame({"id": [ids[0]], "nudity": [0.9], "part": ["FEMALE_BREAST_EXPOSED"],
                         "at": ["2026-12-08T00:00:00+00:00"]})
    screening = sv.Screening(pd.DataFrame({"id": [ids[1]], "p": [0.99]}), threshold=0.5, name="partial")

    def inputs():
        return {**evidence.dataset_evidence(ds, nudity=False), "nudity": nude, "screening": screening}

    def whole():
        return sv.decide(ds.images, reviews=evidence.reviews(name, store), **inputs())

    def stored():
        return evidence.stored_decision(name, ds.images, ("partial",), inputs, event=store.last_event(name), store=store)

    evidence._LAST.clear()
    first = stored()
    pd.testing.assert_frame_equal(first, whole())
    by = first.set_index("id")["basis"]
    assert (by[ids[0]], by[ids[1]], by[ids[3]]) == ("NudeNet", "detector", "label")  # the tables count
    for image, label in ((ids[2], "Blur"), (ids[3], "Ok"), (ids[0], "Ok")):  # last: an Ok after a NudeNet flag
        store.set_label(name, image, "ana", label)
        pd.testing.assert_frame_equal(stored().reset_index(drop=True), whole().reset_index(drop=True),
                                      check_dtype=False)
    alone = sv.decide(ds.images, nudity=nude.iloc[:0], screening=sv.Screening(screening.table.iloc[:0]))  # empty tables
    pd.testing.assert_frame_equal(alone, sv.decide(ds.images))



def test_decisions_in_threads_equal_the_serial_ones(wounds):
    """The app's sessions are threads: decisions made at once (tables by id in other orders,
    so each call looks rows up) equal the ones made one by one."""
    from concurrent.futures import ThreadPoolExecutor

    ds = wounds
    ev = evidence.dataset_evidence(ds, nudity=False)
    ids = ds.images["id"].tolist()
    cases = []
    for k in range(8):
        order = ids[k % len(ids):] + ids[:k % len(ids)]  # each table in another order
        nude = pd.DataFrame({"id": order[::-1][:k + 1], "nudity": [0.3 + 0.1 * j for j in range(k + 1)]})
        cases.append({**ev, "eb": ev["eb"].iloc[::-1] if k % 2 else ev["eb"], "nudity": nude})
    serial = [sv.decide(ds.images, **c) for c in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            for got, want in zip(pool.map(lambda c: sv.decide(ds.images, **c), cases), serial, strict=True):
                pd.testing.assert_frame_equal(got, want)


def test_eb_scores_stored_equal_the_computed_ones(wounds):
    from lib.colorscore import DEFAULT_PARAMS

    computed = gallery._eb_scores(wounds, DEFAULT_PARAMS, None, None)
    first = gallery.eb_scores(wounds)
    folder = config.cache_dir() / "eb" / files.slug(wounds.name)
    (path,) = folder.glob("*.parquet")
    mtime = path.stat().st_mtime_ns
    second = gallery.eb_scores(wounds)  # read back
    assert path.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first, computed)
    pd.testing.assert_frame_equal(second, computed)
    assert list(second.columns) == gallery.EB_COLUMNS


def test_cache_coverage_is_stored_and_never_stale(corpus_dir, tmp_path, monkeypatch):
    """The model list's coverage counts (a million ids against each cache: seconds) are read
    back by a fresh process, and counted again as soon as a cache gains a shard."""
    import numpy as np

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))  # an empty colour cache
    wounds = _wounds(corpus_dir, tmp_path)

    from lib import catalog
    from lib.embeddings import EmbeddingStore
    from lib.models import load_model

    backend = load_model("color")
    store = EmbeddingStore(backend.fingerprint)
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim})
    ids = wounds.unique_ids
    store.write_shard(ids[:3], np.ones((3, backend.dim), np.float32))
    row = catalog.model_status(wounds.name).set_index("spec").loc["color"]
    assert (row["vectors"], row["total"], row["status"]) == (3, len(ids), "partial")
    (path,) = (config.cache_dir() / "coverage" / files.slug(wounds.name)).glob("*.parquet")
    mtime = path.stat().st_mtime_ns
    assert catalog.model_status(wounds.name).set_index("spec").loc["color", "vectors"] == 3
    assert path.stat().st_mtime_ns == mtime  # read back, not counted again
    store.write_shard(ids[3:], np.ones((len(ids) - 3, backend.dim), np.float32))
    row = catalog.model_status(wounds.name).set_index("spec").loc["color"]
    assert (row["vectors"], row["status"]) == (len(ids), "full")
    other = EmbeddingStore(backend.fingerprint)  # a shard that repeats ids (two runs side by side)
    other.write_shard(ids[:5], np.full((5, backend.dim), 2, np.float32))
    assert other.missing(ids) == [] and len(other.ids()) == len(ids)
    assert catalog.model_status(wounds.name).set_index("spec").loc["color", "vectors"] == len(ids)


def test_cache_coverage_counts_each_distinct_image_once(corpus_dir, tmp_path, monkeypatch):
    """A folder with byte-identical copies: the coverage counts distinct images, whether a
    cache holds them in the dataset's own order (matched without an index) or in another."""
    import numpy as np

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path / "copies"
    for k, p in enumerate(m.path[:6]):
        for copy in range(1 + k % 3):  # 0, 1 or 2 extra copies in other folders
            (root / f"f{copy}").mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus_dir / p, root / f"f{copy}" / p.replace("/", "_"))
    dataset.ingest(root, "stored-copies")
    ds = dataset.load("stored-copies")
    distinct = list(dict.fromkeys(ds.images["id"]))
    assert len(ds.images) == 12 and len(distinct) == 6
    assert ds.images["id"][ds.first_rows].tolist() == distinct == ds.unique_ids

    from lib import catalog
    from lib.embeddings import EmbeddingStore
    from lib.models import load_model

    backend = load_model("color")

    def coverage():
        row = catalog.model_status("stored-copies").set_index("spec").loc["color"]
        return int(row["vectors"]), int(row["total"]), row["status"]

    store = EmbeddingStore(backend.fingerprint)
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim})
    assert coverage() == (0, 6, "none")
    picked = [distinct[4], distinct[1], "f" * 64]  # out of order, and an id the dataset lacks
    store.write_shard(picked, np.ones((3, backend.dim), np.float32))
    assert coverage() == (2, 6, "partial")
    store.write_shard([i for i in distinct if i not in picked], np.ones((4, backend.dim), np.float32))
    assert coverage() == (6, 6, "full")

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home2"))  # in the dataset's own order
    dataset.ingest(root, "stored-copies")
    store = EmbeddingStore(backend.fingerprint)
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim})
    store.write_shard(distinct, np.ones((6, backend.dim), np.float32))
    assert coverage() == (6, 6, "full")
