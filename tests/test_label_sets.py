"""Label sets beside MedGore's Blur / Maybe / Ok (lib/annotations.py): real SQLite, real corpus ids.

A named set keeps its own labels per annotator, validates its values (several per image for
tags), migrates an old store once, is compared between annotators with multi-class kappa,
and its values that mean sensitive or safe feed the safe view.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from lib import annotations as an
from lib import workflow as wf
from lib.annotations import AnnotationError, AnnotationStore, LabelSchema, UnknownLabel, scope


@pytest.fixture()
def store(tmp_path):
    return AnnotationStore(tmp_path / "a.sqlite")


def test_shipped_examples_and_scopes_keep_labels_apart(store):
    shipped = an.shipped_label_sets()
    assert {"wound-type", "tags"} <= set(shipped) and shipped["tags"].multi and not shipped["wound-type"].multi
    store.add_schema("ds", shipped["wound-type"])
    store.add_schema("ds", shipped["tags"])
    assert [s.name for s in store.schemas("ds")] == ["safety", "tags", "wound-type"]
    store.set_label("ds", "i1", "ana", "Blur")
    store.set_label(scope("ds", "wound-type"), "i1", "ana", "Venous Ulcer")  # stored in the set's spelling
    store.set_label(scope("ds", "tags"), "i1", "ana", ["foot", "photo"])
    assert store.current("ds", "ana")["label"].tolist() == ["Blur"]  # not replaced by the other sets
    assert store.current(scope("ds", "wound-type"), "ana")["label"].tolist() == ["venous ulcer"]
    assert store.current(scope("ds", "tags"), "ana")["label"].tolist() == ["photo|foot"]  # the set's order
    with pytest.raises(UnknownLabel, match="knee"):
        store.set_label(scope("ds", "tags"), "i2", "ana", "photo|knee")
    with pytest.raises(UnknownLabel):
        store.set_label(scope("ds", "wound-type"), "i2", "ana", "Blur")
    assert store.last_event("ds") == max(store.history(scope("ds", "tags"))["id"])  # the token sees every set


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "Bad Name", "values": ("a",)}, "name"),
    ({"name": "x", "values": ()}, "at least one"),
    ({"name": "x", "values": ("a", "A")}, "repeats"),
    ({"name": "x", "values": ("a", "b"), "keys": ("v", "b")}, "taken"),
    ({"name": "x", "values": ("a", "b"), "keys": ("a", "a")}, "distinct"),
    ({"name": "x", "values": ("a",), "meanings": {"a": "gory"}}, "meanings"),
    ({"name": "x", "values": ("a|b",)}, "'\\|'"),
])
def test_a_bad_label_set_is_refused_with_the_reason(kwargs, match):
    with pytest.raises(AnnotationError, match=match):
        LabelSchema(**kwargs)


def test_parse_label_set_lines():
    s = an.parse_label_set("modality", "photo, f, unknown\nx-ray, x, safe\n\n")
    assert s.values == ("photo", "x-ray") and s.keys == ("f", "x") and s.meanings["x-ray"] == "safe"
    assert an.parse_label_set("m", "a\nb").keys == ("1", "2")
    with pytest.raises(AnnotationError, match="every value"):
        an.parse_label_set("m", "a, 1\nb")
    with pytest.raises(AnnotationError, match="line 1"):
        an.parse_label_set("m", "a, 1, safe, extra")


def test_redefining_a_set_cannot_drop_a_value_in_use(store):
    store.add_schema("ds", LabelSchema("kind", ("cut", "burn")))
    store.set_label(scope("ds", "kind"), "i1", "ana", "burn")
    with pytest.raises(AnnotationError, match="'burn'"):
        store.add_schema("ds", LabelSchema("kind", ("cut",)))
    assert store.schema("ds", "kind").values == ("cut", "burn")
    store.add_schema("ds", LabelSchema("kind", ("cut", "burn", "bite")))
    assert store.schema("ds", "kind").values == ("cut", "burn", "bite")
    with pytest.raises(AnnotationError, match="no label set"):
        store.schema("ds", "nope")


def test_a_version_1_store_is_migrated_once_and_keeps_its_labels(tmp_path):
    path = tmp_path / "old.sqlite"
    s = AnnotationStore(path)
    s.set_label("ds", "i1", "ana", "Ok")
    s.close()
    with sqlite3.connect(path) as conn:  # as the previous schema left it
        conn.execute("DROP TABLE label_schemas")
        conn.execute("PRAGMA user_version = 1")
    s = AnnotationStore(path)
    assert s.current("ds")["label"].tolist() == ["Ok"]
    s.add_schema("ds", an.shipped_label_sets()["wound-type"])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == an.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"label_schemas", "current_counts"} <= tables, tables  # every migration step ran


def test_agreement_per_label_set_is_multiclass_kappa(store):
    store.add_schema("ds", an.shipped_label_sets()["wound-type"])
    where = scope("ds", "wound-type")
    values = an.shipped_label_sets()["wound-type"].values
    rng = np.random.default_rng(0)
    a = rng.choice(values[:4], 60)
    b = np.where(rng.random(60) < 0.7, a, rng.choice(values[:4], 60))
    store.set_labels([{"dataset": where, "image_id": f"i{i}", "annotator": who, "label": lab}
                      for who, labs in (("ana", a), ("bob", b)) for i, lab in enumerate(labs)])
    res = wf.pair_agreement(store, where, "ana", "bob")
    assert res["n"] == 60
    assert res["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert res["percent_agreement"] == pytest.approx(float(np.mean(a == b)))
    # tags: combinations are the categories
    store.add_schema("ds", an.shipped_label_sets()["tags"])
    t = scope("ds", "tags")
    for who, tags in (("ana", ["photo|foot", "x-ray|chest"]), ("bob", ["photo|foot", "x-ray"])):
        for i, tag in enumerate(tags):
            store.set_label(t, f"i{i}", who, tag)
    res = wf.pair_agreement(store, t, "ana", "bob")
    assert res["n"] == 2 and res["percent_agreement"] == 0.5


def test_a_named_sets_meaning_feeds_the_safe_view(corpus, tmp_path, monkeypatch):
    from lib.evidence import reviews
    from lib.sensitivity import decide, load_policy

    s = AnnotationStore(tmp_path / "b.sqlite")
    ids = corpus.images.loc[corpus.images["label"] == "non_sensitive", "id"].iloc[:3].tolist()
    s.add_schema("corpus", an.shipped_label_sets()["wound-type"])
    w = scope("corpus", "wound-type")
    s.set_label(w, ids[0], "ana", "burn")  # sensitive: flags a non_sensitive-labelled image
    s.set_label(w, ids[1], "ana", "no wound")  # means nothing: the label still decides
    s.add_schema("corpus", an.shipped_label_sets()["tags"])
    s.set_label(scope("corpus", "tags"), ids[2], "ana", "photo")  # says nothing either
    r = reviews("corpus", s)
    assert set(r["id"]) == {ids[0]}
    d = decide(corpus.images, policy=load_policy("corpus"), reviews=r).set_index("id")
    assert d.loc[ids[0], "censored"] and d.loc[ids[0], "reason"].startswith("review: burn (ana,")
    assert not d.loc[ids[1], "censored"] and d.loc[ids[1], "reason"] == "label non_sensitive → safe"
    # a later Ok in the default set beats the older flag
    s.set_label("corpus", ids[0], "bob", "Ok")
    d = decide(corpus.images, policy=load_policy("corpus"), reviews=reviews("corpus", s)).set_index("id")
    assert not d.loc[ids[0], "censored"]
    assert isinstance(pd.Timestamp(r["reviewed_at"].iloc[0]), pd.Timestamp)
