"""The annotation workflow pages (7 Annotate, 8 Expand, 9 Agreement) under Streamlit's AppTest.

Each test drives a page as a user would (inputs, clicks) and checks what reached the
SQLite annotation store, the results folder or a re-ingested dataset.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from lib import dataset as ds_mod
from lib import expansion as ex
from lib import workflow as wf
from lib.annotations import CONSENSUS, AnnotationStore
from lib.expansion import seeds_from_labels
from lib.neighbors import open_space

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def page(name: str) -> AppTest:
    """Page ``name`` of the app (run from app.py so links and page switches resolve)."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.query_params["dataset"] = "corpus"
    at.query_params["model"] = "color"
    at.switch_page(f"views/{name}")
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def workflow_corpus(corpus_color):
    """The corpus embedded with color, EB scores computed (the safe view needs them) and one expansion saved."""
    from lib import gallery

    gallery.eb_scores(corpus_color)
    space = open_space("corpus", "color")
    saved = ex.run_expansion(space, seeds_from_labels(space.dataset, 5, seed=11), k=40, origin="apptest")
    return saved


def assert_queue_reads_as_names_and_safe_thumbnails(at: AppTest, queue: pd.DataFrame) -> None:
    """The Annotate queue's table: file names (no ids) and, for labelled-sensitive images, the
    blurred thumbnail an independent rendering of the file gives."""
    import base64

    from lib.gallery import file_name
    from lib.safety import thumbnail_rendering_bytes

    ds = ds_mod.load("corpus")
    assert any(e.label.startswith(f"The queue ({len(queue)} images)") for e in at.expander)
    table = next(d.value for d in at.dataframe if "file" in d.value.columns)
    rows = queue["row"].to_numpy()
    paths = ds.images["path"].to_numpy()[rows]
    assert table["file"].tolist() == [file_name(p, 60) for p in paths]
    assert "id" not in table and not table.astype(str).apply(lambda c: c.str.contains(queue["id"].iat[0][:8])).any().any()
    sensitive = ds.images["label"].to_numpy()[rows] == "sensitive"
    assert sensitive.sum() >= 3
    for uri, path, sens in zip(table["image"], paths, sensitive, strict=True):
        assert uri.startswith("data:image/jpeg;base64,")
        if sens:
            data = base64.b64decode(uri.split(",", 1)[1])
            assert data == thumbnail_rendering_bytes(ds.abspath(path), "blur", side=96), path


def test_annotate_labels_go_to_the_store(workflow_corpus):
    store = AnnotationStore()
    at = page("7_Annotate.py")
    at.run()
    no_errors(at)
    assert any("annotator name" in i.value for i in at.info)  # asks for a name first
    assert not at.button

    at.sidebar.text_input(key="w:annotator").input("at-alice").run()
    no_errors(at)
    at.selectbox(key="an-order").set_value("dataset").run()
    queue = at.session_state["an-queue"]
    assert len(queue) == 50 and queue["row"].is_monotonic_increasing
    assert_queue_reads_as_names_and_safe_thumbnails(at, queue)
    details = [link.proto.query_string for link in at.page_link if link.value == "Details"]
    assert details == [f"dataset=corpus&model=color&id={queue['id'].iat[0]}"]  # the open image's detail view
    labels = ["Blur", "Ok", "Maybe"]
    for i, lab in enumerate(labels):
        assert at.session_state["an-pos"] == i
        at.button(key=f"an-lab-{['Blur', 'Maybe', 'Ok'].index(lab)}").click().run()
        no_errors(at)
    cur = store.current("corpus", "at-alice").set_index("image_id")
    assert cur.loc[queue["id"].iloc[:3], "label"].tolist() == labels
    assert (cur["task"] == "seed").all()
    assert at.session_state["an-pos"] == 3
    assert "3 done" in at.get("progress")[0].proto.text

    at.button(key="an-prev").click().run()
    assert at.session_state["an-pos"] == 2
    at.button(key="an-lab-0").click().run()  # relabel #3: Maybe -> Blur, then jump to the next unlabelled
    assert store.current("corpus", "at-alice").set_index("image_id").loc[queue["id"].iloc[2], "label"] == "Blur"
    assert at.session_state["an-pos"] == 3
    assert len(store.history("corpus", queue["id"].iloc[2], "at-alice")) == 2  # history keeps both

    # the current image starts censored when sensitive, with its reason; Reveal asks first (a warning
    # naming the reason), V again shows it for this session only, V once more re-blurs it
    rec_id = queue["id"].iloc[3]
    assert ds_mod.load("corpus").images.set_index("id").loc[[rec_id], "label"].iloc[0] == "sensitive"
    assert at.image[0].captions[0].endswith("censored")
    assert any("label sensitive → sensitive" in c.value for c in at.caption)
    at.button(key="an-reveal").click().run()
    assert rec_id not in at.session_state["wb:revealed"] and at.image[0].captions[0].endswith("censored")
    assert any("label sensitive → sensitive" in w.value for w in at.warning)
    at.button(key="an-reveal").click().run()
    assert at.session_state["wb:revealed"].get(rec_id) == "full"
    assert not at.image[0].captions[0].endswith("censored")
    at.button(key="an-reveal").click().run()  # V again re-blurs it
    assert rec_id not in at.session_state["wb:revealed"] and at.image[0].captions[0].endswith("censored")


def test_annotate_review_queue_sent_from_expand(workflow_corpus):
    saved = workflow_corpus
    ds = ds_mod.load("corpus")
    sample = ex.review_sample(saved, ds, per_rank=None, per_band=3, seed=2)
    name = wf.sample_file_name(20, None, 3, None, 2)
    wf.save_review_sample(saved, sample, name)

    at = page("7_Annotate.py")
    at.session_state["wb:annotator"] = "at-rev"
    at.session_state["wb:review-queue"] = {"dataset": "corpus", "expansion": saved.name, "file": name}
    at.run()
    no_errors(at)
    assert at.radio(key="an-kind").value == "Review sample"
    queue = at.session_state["an-queue"]
    assert set(queue["id"]) == set(sample["id"])
    assert not [link for link in at.page_link if link.value == "Details"]  # blind: others' labels stay unseen
    at.button(key="an-lab-2").click().run()
    cur = AnnotationStore().history("corpus", annotator="at-rev")
    assert len(cur) == 1 and cur["task"].iloc[0] == "review"
    ctx = cur["context"].iloc[0]
    assert ctx["queue"] == f"review:{saved.name}/{name}" and ctx["seed_id"] == queue["seed_id"].iloc[0]


def test_expand_page_runs_samples_and_exports(workflow_corpus, tmp_path):
    at = page("8_Expand.py")
    at.run()
    no_errors(at)
    at.radio(key="ex-src").set_value("Dataset labels").run()
    at.number_input(key="ex-nper").set_value(4).run()
    at.slider(key="ex-k").set_value(30).run()
    at.button(key="ex-run").click().run()
    no_errors(at)
    name = at.session_state["ex-name"]
    saved = ex.load_expansion("corpus", name)
    assert saved.result.k == 30 and saved.meta["seeds"] == {"non_sensitive": 4, "sensitive": 4}
    assert any(name in s.value for s in at.success)

    at.number_input(key="rv-n").set_value(2).run()
    at.selectbox(key="rv-strat").set_value("source").run()
    at.button(key="rv-build").click().run()
    no_errors(at)
    assert at.session_state["rv-file"] == "review-b20-r2-source-s0.parquet"
    assert (saved.path / "review-b20-r2-source-s0.parquet").exists()
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # score per band and homogeneity

    out = tmp_path / "export.csv"
    at.text_input(key=f"xp-out-{name}-all-3").input(str(out)).run()
    at.text_input(key="xp-name").input("corpus-apptest").run()
    at.button(key="xp-write").click().run()
    no_errors(at)
    assert out.exists()
    assert any("--root" in c.value for c in at.code)
    at.button(key="xp-ingest").click().run()
    no_errors(at)
    back = ds_mod.load("corpus-apptest")
    m = pd.read_csv(out)
    assert back.images["path"].tolist() == m["path"].tolist()
    assert back.images["label"].tolist() == m["label"].tolist()


def test_expand_send_switches_to_annotate(workflow_corpus):
    ds = ds_mod.load("corpus")
    name = wf.sample_file_name(20, None, 2, None, 5)
    wf.save_review_sample(workflow_corpus, ex.review_sample(workflow_corpus, ds, per_rank=None, per_band=2,
                                                            seed=5), name)
    at = page("8_Expand.py")
    at.run()
    no_errors(at)
    at.selectbox(key="ex-name").set_value(workflow_corpus.name).run()
    at.selectbox(key="rv-file").set_value(name).run()
    at.button(key="rv-send").click().run()
    no_errors(at)
    assert at.session_state["wb:review-queue"] == {"dataset": "corpus", "expansion": workflow_corpus.name,
                                                   "file": name}
    assert at.title[0].value == "Annotate"


def test_agreement_page_metrics_and_resolution(workflow_corpus):
    store = AnnotationStore()
    ids = ds_mod.load("corpus").unique_ids[100:120]
    a = ["Blur"] * 10 + ["Ok"] * 10
    b = ["Blur"] * 8 + ["Ok", "Maybe"] + ["Ok"] * 9 + ["Blur"]
    store.set_labels([{"dataset": "corpus", "image_id": i, "annotator": who, "label": lab}
                      for who, labs in (("ag-ann", a), ("ag-bob", b)) for i, lab in zip(ids, labs, strict=True)])
    at = page("9_Agreement.py")
    at.session_state["wb:annotator"] = "ag-carol"
    at.run()
    at.selectbox(key="ag-a").set_value("ag-ann").run()
    at.selectbox(key="ag-b").set_value("ag-bob").run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images both labelled"] == "20"
    assert metrics["Agreement"] == f"{17 / 20:.1%}"
    from sklearn.metrics import cohen_kappa_score

    assert metrics["Cohen κ"] == f"{cohen_kappa_score(a, b):.3f}"
    todo = wf.to_resolve(store, "corpus", "ag-ann", "ag-bob", unresolved_only=True)
    assert len(todo) == 3
    target = todo["image_id"].iloc[0]
    from lib.gallery import rows_of_ids

    key = f"ag-0-{rows_of_ids(ds_mod.load('corpus').images, [target])[0]}-res-Ok"
    at.button(key=key).click().run()
    no_errors(at)
    cons = store.history("corpus", annotator=CONSENSUS)
    assert cons["image_id"].tolist() == [target] and cons["label"].tolist() == ["Ok"]
    assert cons["context"].iloc[0]["by"] == "ag-carol"
    assert len(wf.to_resolve(store, "corpus", "ag-ann", "ag-bob", unresolved_only=True)) == 2
