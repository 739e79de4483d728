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


def test_a_stored_decision_is_never_read_after_its_evidence_changed(wounds, tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite")
    ds, name = wounds, "stored-wounds"

    def decide():
        return evidence.decide_dataset(ds, store=store, nudity=False)

    def stored(key):
        return evidence.stored_decision(name, key, decide, n_rows=len(ds.images), store=store)

    fresh = stored(_key(name, store))
    pd.testing.assert_frame_equal(fresh, decide())
    assert list(fresh.columns) == sv.DECISION_COLUMNS
    raw = fresh.loc[~fresh["censored"], "id"].tolist()
    assert raw and fresh["censored"].any()  # skin raw by the policy, burns censored
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
