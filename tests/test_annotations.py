"""Annotation store on real SQLite files: history, current labels, files, and concurrent writers."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from lib import annotations
from lib.annotations import CONSENSUS, AnnotationError, AnnotationStore, UnknownLabel

REPO = Path(__file__).resolve().parents[1]
LABELS = ("Blur", "Maybe", "Ok")


def img(i: int) -> str:
    """A sha256-shaped content id for test image ``i``."""
    return f"{i:064x}"


@pytest.fixture
def store(tmp_path):
    s = AnnotationStore(tmp_path / "a.sqlite")
    yield s
    s.close()


# -- single process ------------------------------------------------------------------------


def test_round_trip_history_and_current(store):
    store.set_label("ds", img(1), "ann", "Blur", note="first", task="seed", context={"seed": img(9), "rank": 3})
    store.set_label("ds", img(1), "ann", "Maybe")
    store.set_label("ds", img(1), "ann", "Ok", note="changed my mind", task="review")
    store.set_label("ds", img(2), "ann", "Blur")
    store.set_label("ds", img(1), "bob", "Blur")

    hist = store.history("ds", image_id=img(1), annotator="ann")
    assert list(hist["label"]) == ["Blur", "Maybe", "Ok"]
    assert list(hist["task"]) == ["seed", "label", "review"]
    assert hist["context"].iloc[0] == {"seed": img(9), "rank": 3}
    assert hist["context"].iloc[1] is None
    assert hist["id"].is_monotonic_increasing and hist["id"].is_unique
    stamps = [datetime.fromisoformat(t) for t in hist["created_at"]]
    assert all(t.utcoffset().total_seconds() == 0 for t in stamps)
    assert all(len(t.split(".")[1].split("+")[0]) == 6 for t in hist["created_at"])  # microseconds
    assert stamps == sorted(stamps)

    cur = store.current("ds")
    assert list(cur.columns) == ["dataset", "image_id", "annotator", "label", "note", "task", "updated_at"]
    assert (cur.dtypes == "str").all()
    got = {(r.image_id, r.annotator): (r.label, r.note if pd.notna(r.note) else None, r.task)
           for r in cur.itertuples()}
    assert got == {
        (img(1), "ann"): ("Ok", "changed my mind", "review"),
        (img(1), "bob"): ("Blur", None, "label"),
        (img(2), "ann"): ("Blur", None, "label"),
    }
    assert set(store.current("ds", "bob")["image_id"]) == {img(1)}
    assert store.current("other").empty and store.history("other").empty
    assert store.annotators("ds") == ["ann", "bob"]
    assert store.datasets() == ["ds"]
    assert len(store.history("ds")) == 5


def test_clear_removes_current_and_keeps_history(store):
    store.set_label("ds", img(1), "ann", "Blur")
    store.set_label("ds", img(2), "ann", "Ok")
    assert store.clear("ds", img(1), "ann", note="mislabelled") is True
    assert store.clear("ds", img(1), "ann") is False  # nothing left to clear, still recorded
    assert list(store.current("ds")["image_id"]) == [img(2)]
    hist = store.history("ds", image_id=img(1))
    assert hist["label"].iloc[0] == "Blur" and hist["label"].iloc[1:].isna().all()
    assert list(hist["task"]) == ["label", "clear", "clear"]
    store.set_label("ds", img(1), "ann", "Maybe")
    assert store.current("ds", "ann").set_index("image_id")["label"].to_dict() == {img(1): "Maybe", img(2): "Ok"}


def test_unknown_label_names_label_and_set_and_writes_nothing(store):
    with pytest.raises(UnknownLabel) as e:
        store.set_label("ds", img(1), "ann", "Blurry")
    assert "'Blurry'" in str(e.value) and "'Blur', 'Maybe', 'Ok'" in str(e.value)
    assert e.value.allowed == LABELS and e.value.labels == {"Blurry": 1}
    rows = [dict(dataset="ds", image_id=img(i), annotator="ann", label=lab)
            for i, lab in enumerate(["Ok", "Nope", "Blur", "Nope", "bad"])]
    with pytest.raises(UnknownLabel) as e:
        store.set_labels(rows)
    assert e.value.labels == {"Nope": 2, "bad": 1}
    assert store.history("ds").empty  # the batch is all or nothing
    with pytest.raises(AnnotationError, match="clear"):
        store.set_label("ds", img(1), "ann", "  ")
    # spelling is normalised to the set's
    store.set_label("ds", img(1), "ann", " ok ")
    assert store.current("ds")["label"].tolist() == ["Ok"]


def test_batch_from_a_dataframe(store):
    df = pd.DataFrame({"dataset": "ds", "image_id": [img(i) for i in range(4)], "annotator": "ann",
                       "label": ["Blur", "ok", "Maybe", "Ok"], "note": ["a", None, None, "d"],
                       "task": "review", "context": [{"rank": i} for i in range(4)]})
    ids = store.set_labels(df)
    hist = store.history("ds")
    assert hist["id"].tolist() == ids and len(set(ids)) == 4
    assert hist["label"].tolist() == ["Blur", "Ok", "Maybe", "Ok"]
    assert hist["note"].fillna("-").tolist() == ["a", "-", "-", "d"]
    assert hist["context"].tolist() == [{"rank": i} for i in range(4)]
    with pytest.raises(AnnotationError, match="empty"):
        store.set_labels(df.assign(label=["Ok", None, "Ok", "Ok"]))
    with pytest.raises(AnnotationError, match="updated_at"):
        store.set_labels(store.current("ds"))  # current() rows carry fields an annotation has not
    assert len(store.history("ds")) == 4


def test_label_set_per_dataset(store):
    assert store.label_set("ds") == LABELS
    assert store.set_label_set("xr", ["Normal", " Wound "]) == ("Normal", "Wound")
    assert store.label_set("xr") == ("Normal", "Wound") and store.label_set("ds") == LABELS
    store.set_label("xr", img(1), "ann", "Wound")
    with pytest.raises(UnknownLabel, match="'Normal', 'Wound'"):
        store.set_label("xr", img(1), "ann", "Ok")
    with pytest.raises(AnnotationError, match="'Wound' \\(1\\)"):
        store.set_label_set("xr", ["Normal", "Other"])  # would orphan a current label
    assert store.label_set("xr") == ("Normal", "Wound")
    for bad in ([], ["A", "a"], ["A", ""], "AB"):
        with pytest.raises(AnnotationError):
            store.set_label_set("xr", bad)
    store.clear("xr", img(1), "ann")
    store.set_label_set("xr", ["Normal", "Other"])  # nothing current uses 'Wound' any more
    assert store.label_set("xr") == ("Normal", "Other")


def test_annotator_names(store):
    store.set_label("ds", img(1), "  Ann  ", "Ok")
    assert store.annotators("ds") == ["Ann"]
    for bad in ["", "   ", None, "x" * 65, "a\nb", "consensus", "Consensus"]:
        with pytest.raises(AnnotationError):
            store.set_label("ds", img(1), bad, "Ok")
    store.set_label("ds", img(1), "x" * 64, "Ok")
    assert len(store.history("ds")) == 2


def test_events_are_append_only(store):
    store.set_label("ds", img(1), "ann", "Ok")
    with sqlite3.connect(store.path) as raw:
        for sql in ("UPDATE events SET label = 'Blur'", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(sql)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.history("ds")["label"].tolist() == ["Ok"]


def test_current_matches_a_replayed_reference(store):
    """Random labels and clears; the current labels equal a dict replay of the operations."""
    rng = random.Random(0)
    model: dict[tuple[str, str], str] = {}
    for _ in range(400):
        key = (img(rng.randrange(30)), rng.choice(["a", "b", "c"]))
        if rng.random() < 0.2:
            store.clear("ds", *key)
            model.pop(key, None)
        else:
            label = rng.choice(LABELS)
            store.set_label("ds", *key, label)
            model[key] = label
    cur = store.current("ds")
    assert {(r.image_id, r.annotator): r.label for r in cur.itertuples()} == model
    assert len(store.history("ds")) == 400

    ids = [img(i) for i in range(40)] + [img(0)]  # 40 distinct, one repeated
    done = {i for i, a in model if a == "b"}
    assert store.progress("ds", "b", ids) == (len(done), 40 - len(done))
    assert store.unlabelled("ds", "b", ids) == [img(i) for i in range(40) if img(i) not in done]

    pairs = store.pairs("ds", "a", "c")
    both = sorted(i for i, a in model if a == "a" and (i, "c") in model)
    assert pairs["image_id"].tolist() == both
    assert pairs["label_a"].tolist() == [model[i, "a"] for i in both]
    assert pairs["label_b"].tolist() == [model[i, "c"] for i in both]
    dis = store.disagreements("ds", "a", "c")
    assert dis["image_id"].tolist() == [i for i in both if model[i, "a"] != model[i, "c"]]
    hard = store.disagreements("ds", "a", "c", include_maybe=False)
    assert hard["image_id"].tolist() == [
        i for i in both if model[i, "a"] != model[i, "c"] and "Maybe" not in (model[i, "a"], model[i, "c"])
    ]
    assert len(hard) < len(dis)  # with 30 images and 3 labels both kinds occur


def test_disagreements_and_resolve(store):
    labels = {  # image: (ann, bob)
        1: ("Blur", "Blur"), 2: ("Blur", "Ok"), 3: ("Maybe", "Ok"), 4: ("Ok", "Blur"), 5: ("Ok", None),
    }
    for i, (a, b) in labels.items():
        store.set_label("ds", img(i), "ann", a)
        if b:
            store.set_label("ds", img(i), "bob", b)
    dis = store.disagreements("ds", "ann", "bob")
    assert dis["image_id"].tolist() == [img(2), img(3), img(4)]
    assert dis["consensus"].isna().all()
    assert store.disagreements("ds", "ann", "bob", include_maybe=False)["image_id"].tolist() == [img(2), img(4)]
    with pytest.raises(AnnotationError, match="reserved"):
        store.set_label("ds", img(2), CONSENSUS, "Ok")
    with pytest.raises(AnnotationError):
        store.pairs("ds", "ann", "ann")

    store.resolve("ds", img(2), "Ok", by="carol", note="visible bone")
    store.resolve("ds", img(4), "blur", by="carol")
    cons = store.current("ds", CONSENSUS)
    assert cons.set_index("image_id")["label"].to_dict() == {img(2): "Ok", img(4): "Blur"}
    assert set(cons["task"]) == {"consensus"}
    ev = store.history("ds", image_id=img(2), annotator=CONSENSUS).iloc[0]
    assert ev["context"] == {"by": "carol", "labels": {"ann": "Blur", "bob": "Ok"}}
    assert ev["note"] == "visible bone"
    dis = store.disagreements("ds", "ann", "bob")
    assert dis["consensus"].fillna("-").tolist() == ["Ok", "-", "Blur"]
    # the annotators' own labels are untouched; comparing against consensus works
    assert store.current("ds", "bob").set_index("image_id").loc[img(4), "label"] == "Blur"
    assert store.disagreements("ds", "ann", CONSENSUS)["image_id"].tolist() == [img(2), img(4)]
    assert store.disagreements("ds", "bob", CONSENSUS).empty
    with pytest.raises(UnknownLabel):
        store.resolve("ds", img(3), "Whatever", by="carol")
    with pytest.raises(AnnotationError, match="reserved"):
        store.resolve("ds", img(3), "Ok", by=CONSENSUS)
    assert store.clear("ds", img(4), CONSENSUS)  # undo a resolution
    assert store.current("ds", CONSENSUS)["image_id"].tolist() == [img(2)]


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_export_import_round_trip(store, tmp_path, ext):
    rows = [dict(dataset="ds", image_id=img(i), annotator=a, label=LABELS[(i + k) % 3],
                 note=f"n{i}" if i % 4 == 0 else None)
            for i in range(25) for k, a in enumerate(["ann", "bob"])]
    store.set_labels(rows)
    store.set_labels([dict(dataset="ds", image_id="0012", annotator="ann", label="Ok", note="NA")])
    store.resolve("ds", img(3), "Maybe", by="ann")
    store.clear("ds", img(5), "bob")
    path = tmp_path / f"labels.{ext}"
    assert store.export("ds", path) == 50 + 1 + 1 - 1

    other = AnnotationStore(tmp_path / "b.sqlite")
    counts = other.import_labels("copy", path)
    assert counts == {"rows": 51, "written": 51, "unchanged": 0, "blank": 0}
    cols = ["image_id", "annotator", "label", "note"]
    want = store.current("ds")[cols].fillna("<none>")
    got = other.current("copy")[cols].fillna("<none>")
    assert want.to_dict("records") == got.to_dict("records")
    assert (want["note"] == "<none>").sum() == 51 - 2 * 7 - 1  # notes: ids 0, 4, .., 24 by both, and "NA"
    assert "0012" in set(got["image_id"])  # ids are kept as text
    assert other.import_labels("copy", path) == {"rows": 51, "written": 0, "unchanged": 51, "blank": 0}
    assert len(other.history("copy")) == 51
    hist = tmp_path / f"history.{ext}"
    assert store.export("ds", hist, what="history") == len(store.history("ds"))


def test_import_options_and_unknown_labels(store, tmp_path):
    df = pd.DataFrame({"id": [img(1), img(2), img(3), img(4), img(5)],
                       "grade": ["blur", "OK", "", "Ok", "Maybe"]})
    assert store.import_labels("ds", df, annotator="ann", label_col="grade") == {
        "rows": 5, "written": 4, "unchanged": 0, "blank": 1}
    assert store.current("ds")["label"].tolist() == ["Blur", "Ok", "Ok", "Maybe"]
    assert set(store.history("ds")["task"]) == {"import"}

    path = tmp_path / "bad.csv"
    pd.DataFrame({"image_id": [img(i) for i in range(6)], "label": ["Ok", "Gore", "Wound", "Gore", "Ok", "Blur"],
                  "annotator": "bob"}).to_csv(path, index=False)
    with pytest.raises(UnknownLabel) as e:
        store.import_labels("ds", path)
    assert e.value.labels == {"Gore": 2, "Wound": 1}
    assert "'Gore' (2 rows)" in str(e.value) and "'Wound' (1 row)" in str(e.value)
    assert "bob" not in store.annotators("ds")  # nothing written

    with pytest.raises(AnnotationError, match="annotator"):
        store.import_labels("ds", df.rename(columns={"grade": "label"}))
    with pytest.raises(AnnotationError, match="'image_id' or 'id'"):
        store.import_labels("ds", df.rename(columns={"id": "x"}), annotator="ann", label_col="grade")
    with pytest.raises(AnnotationError, match="two different labels"):
        store.import_labels("ds", pd.DataFrame({"id": [img(1), img(1)], "label": ["Ok", "Blur"]}), annotator="z")
    with pytest.raises(AnnotationError, match=r"\.csv"):
        store.export("ds", tmp_path / "labels.xlsx")


def test_default_path_follows_workbench_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    s = AnnotationStore()
    assert s.path == (tmp_path / "home" / "annotations.sqlite").resolve()
    s.set_label("ds", img(1), "ann", "Ok")
    assert s.path.is_file()
    assert annotations.default_path() == s.path


def test_threads_share_one_store(store):
    """Streamlit shares one store across session threads: each thread gets its own connection."""
    errors = []

    def work(t):
        try:
            for i in range(100):
                store.set_label("ds", img(i), f"t{t}", LABELS[(i + t) % 3])
                store.current("ds", f"t{t}")
        except Exception as e:  # collected: pytest does not see exceptions in threads
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.history("ds")) == 400
    assert store.current("ds").groupby("annotator").size().to_dict() == {f"t{t}": 100 for t in range(4)}


# -- several processes ---------------------------------------------------------------------

WRITER = """
import json, os, sys, time
from lib.annotations import AnnotationStore
db, folder, k, annotator = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
labels = ("Blur", "Maybe", "Ok")
store = AnnotationStore(db)  # both writers may create the file at the same moment
open(os.path.join(folder, f"ready{k}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.0005)
out = []
for seq in range(1000):
    image_id = f"{seq:064x}"
    label = labels[(seq + k) % 3]
    eid = store.set_label("ds", image_id, annotator, label, note=f"{k}:{image_id}:{label}", task="seed",
                          context={"proc": k, "seq": seq})
    out.append([eid, image_id, label])
print(json.dumps(out))
"""


def _untorn(df: pd.DataFrame) -> bool:
    """Every row's fields come from one write: the note repeats the row's image id and label."""
    return all(r.note.split(":")[1:] == [r.image_id, r.label] for r in df.itertuples())


@pytest.fixture
def spawn():
    """Start processes; whatever is still running when the test ends is killed."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", *args], cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


@pytest.mark.parametrize("annotators", [("ann", "bob"), ("shared", "shared")], ids=["two", "same"])
def test_two_processes_lose_no_write(tmp_path, spawn, annotators):
    """Two processes write 1000 labels each on the same 1000 images while this process reads."""
    db = tmp_path / "a.sqlite"
    procs = [spawn(WRITER, str(db), str(tmp_path), str(k), name) for k, name in enumerate(annotators)]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        failed = [p.stderr.read() for p in procs if p.poll() not in (None, 0)]
        assert not failed, failed
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.005)
    store = AnnotationStore(db)

    snapshots, errors = [], []

    def read():
        try:
            while any(p.poll() is None for p in procs):
                snapshots.append(store.current("ds"))
        except Exception as e:  # collected: pytest does not see exceptions in threads
            errors.append(e)

    reader = threading.Thread(target=read)
    (tmp_path / "go").touch()
    reader.start()
    outs = [p.communicate(timeout=60) for p in procs]
    reader.join()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    logs = [json.loads(out) for out, _ in outs]

    assert errors == []
    assert len(snapshots) > 1
    sizes = [len(s) for s in snapshots]
    assert sizes == sorted(sizes)  # nothing is cleared, so a later snapshot never has fewer rows
    assert all(_untorn(s) for s in snapshots)

    hist = store.history("ds")
    assert len(hist) == 2000
    written = {eid: (k, seq, image_id, label) for k, log in enumerate(logs) for seq, (eid, image_id, label) in
               enumerate(log)}
    assert set(hist["id"]) == set(written)  # every acknowledged write is there, and nothing else
    for row in hist.itertuples():
        k, seq, image_id, label = written[row.id]
        assert (row.context, row.image_id, row.label, row.annotator) == (
            {"proc": k, "seq": seq}, image_id, label, annotators[k])
    for k in range(2):  # each writer's events appear in the order it wrote them
        mine = hist[[c["proc"] == k for c in hist["context"]]]
        assert [c["seq"] for c in mine["context"]] == list(range(1000))
    if annotators[0] != annotators[1]:
        for name in annotators:
            assert len(store.history("ds", annotator=name)) == 1000
    procs_in_order = [c["proc"] for c in hist["context"]]
    switches = sum(a != b for a, b in zip(procs_in_order, procs_in_order[1:], strict=False))
    assert switches > 1, "the writers did not overlap in time; the test proved nothing"

    # the current label of each key is the one whose write committed last (highest event id)
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for eid, (k, _, image_id, label) in written.items():
        key = (image_id, annotators[k])
        if key not in last or eid > last[key][0]:
            last[key] = (eid, label)
    cur = store.current("ds")
    assert _untorn(cur)
    assert {(r.image_id, r.annotator): r.label for r in cur.itertuples()} == {k: v[1] for k, v in last.items()}
    assert len(cur) == (2000 if annotators[0] != annotators[1] else 1000)
    store.close()



def test_wal_switch_waits_for_a_writer_in_rollback_mode(tmp_path):
    """SQLite refuses the switch to WAL at once, without its busy wait, while another connection
    holds a write lock on a rollback-journal file (as when two processes create the store together)."""
    path = tmp_path / "a.sqlite"
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("CREATE TABLE other (x)")
    release = threading.Timer(0.3, lambda: raw.execute("COMMIT"))
    t0 = time.monotonic()
    release.start()
    store = AnnotationStore(path, timeout=10)
    assert time.monotonic() - t0 >= 0.25  # it did wait for the lock
    release.join()
    raw.close()
    store.set_label("ds", img(1), "ann", "Ok")
    assert store.current("ds")["label"].tolist() == ["Ok"]
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_images_by_label_and_counts_use_the_label_index(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite")
    store.bulk_label("ds", [img(i) for i in range(10)], "ann", "Blur")
    store.bulk_label("ds", [img(i) for i in range(5, 8)], "bob", "Blur")
    store.bulk_label("ds", [img(i) for i in range(8, 12)], "bob", "Ok")
    assert store.ids_with_label("ds", "Blur") == [img(i) for i in range(10)]
    assert store.ids_with_label("ds", "Blur", annotator="bob") == [img(i) for i in range(5, 8)]
    assert store.ids_with_label("ds", "Maybe") == []
    assert store.label_counts("ds") == {"Blur": 13, "Ok": 4}
    assert store.label_counts("ds", "bob") == {"Blur": 3, "Ok": 4}
    with sqlite3.connect(store.path) as conn:
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT DISTINCT image_id FROM current INDEXED BY current_label "
            "WHERE dataset = ? AND label = ?", ("ds", "Blur")))
    assert "USING COVERING INDEX current_label" in plan  # an index range, not a scan of the dataset
    with pytest.raises(AnnotationError, match="label must be a non-empty string"):
        store.ids_with_label("ds", " ")


def test_a_version_2_store_gains_the_label_index(tmp_path):
    path = tmp_path / "old.sqlite"
    store = AnnotationStore(path)
    store.bulk_label("ds", [img(1), img(2)], "ann", "Ok")
    store.close()
    with sqlite3.connect(path) as conn:  # what a store written before version 3 looks like
        conn.execute("DROP INDEX current_label")
        conn.execute("PRAGMA user_version = 2")
    with sqlite3.connect(path) as conn:  # ... and without the counts table
        for t in ("current_count_insert", "current_count_update", "current_count_delete"):
            conn.execute(f"DROP TRIGGER {t}")
        conn.execute("DROP TABLE current_counts")
    reopened = AnnotationStore(path)
    assert reopened.ids_with_label("ds", "Ok") == [img(1), img(2)]  # the labels are kept
    assert reopened.label_counts("ds") == {"Ok": 2}  # counted at the migration
    reopened.set_label("ds", img(3), "ann", "Blur")
    assert reopened.label_counts("ds") == {"Blur": 1, "Ok": 2}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == annotations.SCHEMA_VERSION == 4
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "current_label" in names


def test_last_event_is_kept_per_scope_and_migrated_from_a_version_3_store(tmp_path):
    path = tmp_path / "v3.sqlite"
    store = AnnotationStore(path)
    store.bulk_label("ds", [img(1), img(2)], "ann", "Ok")
    store.bulk_label("ds_2", [img(1)], "ann", "Blur")  # '_' is a LIKE wildcard: ds_2 is not ds's
    store.bulk_label("other", [img(i) for i in range(50)], "ann", "Blur")  # written last
    store.close()
    with sqlite3.connect(path) as conn:  # what a store written before version 4 looks like
        conn.execute("DROP TRIGGER last_event_insert")
        conn.execute("DROP TABLE last_events")
        conn.execute("PRAGMA user_version = 3")
        want = {d: conn.execute("SELECT MAX(id) FROM events WHERE dataset = ?", (d,)).fetchone()[0]
                for d in ("ds", "ds_2", "other")}
    store = AnnotationStore(path)
    assert {d: store.last_event(d) for d in want} == want  # taken from the events at the migration
    assert store.last_event("nothing") == 0 and store.last_event("d") == 0
    store.set_label("other", img(1), "bob", "Ok")
    assert store.last_event("ds") == want["ds"]  # another dataset's label leaves it alone
    store.set_label("ds", img(3), "ann", "Blur")
    assert store.last_event("ds") == max(store.history("ds")["id"]) > want["other"]
    assert store.last_event("ds_2") == want["ds_2"]
    with sqlite3.connect(path) as conn:
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT MAX(id) FROM last_events WHERE dataset = ? OR (dataset >= ? AND dataset < ?)",
            ("ds", "ds/", "ds0")))
    assert "events" not in plan.replace("last_events", "")  # never the events table


def test_label_counts_follow_every_kind_of_change(store):
    def counted(annotator=None):
        cur = store.current("ds", annotator)
        return cur["label"].value_counts().sort_index().to_dict() if len(cur) else {}

    store.bulk_label("ds", [img(i) for i in range(6)], "ann", "Blur")
    store.set_label("ds", img(1), "ann", "Ok")  # a change of label
    store.set_label("ds", img(1), "ann", "Ok", note="same label, new note")
    prev = store.bulk_label("ds", [img(i) for i in range(3, 9)], "ann", "Maybe")
    store.clear("ds", img(0), "ann")
    store.set_label("ds", img(2), "bob", "Ok")
    store.set_label("other", img(2), "bob", "Blur")
    assert store.label_counts("ds") == counted() == {"Blur": 1, "Maybe": 6, "Ok": 2}
    assert store.label_counts("ds", "ann") == counted("ann")
    store.restore("ds", "ann", prev)  # the undo of the bulk action: labels back, added ones cleared
    assert store.label_counts("ds") == counted()
    assert store.label_counts("other") == {"Blur": 1}


def test_current_of_some_images_and_columns_and_what_changed_since(store):
    ids = [f"img{k:04d}" for k in range(1200)]  # more than one chunk of parameters
    store.bulk_label("ds", ids, "ann", "Ok")
    store.bulk_label("ds", ids[::3], "bob", "Blur")
    mark = store.last_event("ds")
    everything = store.current("ds")
    some = ids[::7] + ["not-there"]
    got = store.current("ds", image_ids=reversed(some))
    want = everything[everything["image_id"].isin(some)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    narrow = store.current("ds", annotator="bob", columns=["image_id", "label"], image_ids=some)
    assert list(narrow.columns) == ["image_id", "label"] and set(narrow["label"]) == {"Blur"}
    assert narrow["image_id"].tolist() == sorted(i for i in some[:-1] if i in ids[::3])
    with pytest.raises(ValueError, match="columns must be some of"):
        store.current("ds", columns=["image_id", "secret"])

    assert store.labelled_since("ds", mark, 10) == []
    store.set_label("ds", ids[5], "ann", "Blur")
    store.clear("ds", ids[6], "ann")
    store.set_label("ds/other", ids[7], "ann", "Ok")  # a label set of the dataset counts
    store.set_label("ds2", ids[8], "ann", "Ok")  # another dataset does not
    assert sorted(store.labelled_since("ds", mark, 10)) == [ids[5], ids[6], ids[7]]
    assert store.labelled_since("ds", mark, 2) is None


def test_progress_and_unlabelled_by_key_or_by_scan_agree(store, monkeypatch):
    ids = [f"img{k:04d}" for k in range(1500)]
    store.bulk_label("ds", ids[::2], "ann", "Ok")
    queue = ids[100:1300:3] + ids[100:110] + ["never-seen"]  # repeats and an unknown id
    by_key = (store.progress("ds", "ann", queue), store.unlabelled("ds", "ann", queue))
    monkeypatch.setattr(annotations, "LOOKUP_MAX", 10)  # the same questions through one scan
    by_scan = (store.progress("ds", "ann", queue), store.unlabelled("ds", "ann", queue))
    assert by_key == by_scan
    distinct = list(dict.fromkeys(queue))
    want = [i for i in distinct if i not in set(ids[::2])]
    assert by_key[1] == want and by_key[0] == annotations.Progress(len(distinct) - len(want), len(want))
