"""The Streamlit app, page by page, in Streamlit's headless AppTest runner.

Every page must run without an exception on the real corpus, on an empty data home, on a
dataset without embeddings or labels, and with a model without a text tower, answering
each with an actionable message. Interactions (reveal, recentre, a zero-shot run with the
tiny random-weight model) are checked against independent computations.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_pages import assert_clean, open_page
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
TINY_KEY = "open_clip:WB-Tiny-ViT@@random"
PAGES = {
    "app.py": "Sensitive image workbench",
    "views/1_Gallery.py": "Gallery",
    "views/2_Neighbours.py": "Neighbours",
    "views/3_Zero-shot.py": "Zero-shot classification",
    "views/4_Retrieval.py": "Retrieval",
    "views/5_Blur_scores.py": "Blur scores (EB)",
    "views/6_Compare_models.py": "Compare models",
}




def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def buttons(at: AppTest, label: str) -> list:
    return [b for b in at.button if b.label == label]


def assert_thumbnails_link_to_details(at: AppTest) -> int:
    """Every dataset image on the page is followed by a *Details* link to the detail view of that
    image, and the link carries nothing but dataset, model and id (nothing that could turn safe
    view off or reveal an image). Returns the number of images."""
    from urllib.parse import parse_qs

    shown = [i.proto.imgs[0].alt.removeprefix("image ") for i in at.image
             if i.proto.imgs and i.proto.imgs[0].alt.startswith("image ")]
    links = [link for link in at.page_link if link.value == "Details"]
    assert all(link.proto.page == "Image" for link in links)
    params = [parse_qs(link.proto.query_string) for link in links]
    assert all(set(q) <= {"dataset", "model", "random", "id"} for q in params), params
    assert [q["id"][0][:16] for q in params] == shown  # one per image, in the same order
    return len(shown)


def independent_eb(ds) -> np.ndarray:
    """EB of every row from the raw fractions, z-scored by hand (population sd)."""
    from lib.colorscore import score_paths

    f = score_paths([str(ds.abspath(p)) for p in ds.images["path"]], workers=1)
    z = [(f[c] - f[c].mean()) / f[c].std(ddof=0) for c in ("blood", "skin")]
    return np.maximum(z[0], z[1]).to_numpy()


@pytest.fixture()
def private_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def copy_images(corpus_dir: Path, dest: Path, n: int = 3, labelled: bool = True) -> Path:
    """n sensitive + n non-sensitive corpus images, in class folders (or flat)."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    for label in ("sensitive", "non_sensitive"):
        for p in m[m.label == label].path[:n]:
            out = (dest / label if labelled else dest) / f"{label}-{Path(p).name}"
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus_dir / p, out)
    return dest


# ----------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_runs_on_the_corpus(page, corpus_color, corpus_tiny):
    at = open_page(page, dataset="corpus", model="color")
    assert_clean(at)
    assert at.title[0].value == PAGES[page]
    assert at.query_params["dataset"] == "corpus"
    # The safe view is on by default.
    assert at.sidebar.toggle(key="w:safe").value is True


def test_pages_run_with_the_tiny_text_model(corpus_color, corpus_tiny):
    for page in PAGES:
        at = open_page(page, dataset="corpus", model=TINY_KEY, random="1")
        assert_clean(at)
        assert at.sidebar.selectbox(key="w:model").value == TINY_KEY
    # Text search and Recall@K (the corpus has 28 captions) run with the text tower.
    at = open_page("views/4_Retrieval.py", dataset="corpus", model=TINY_KEY, random="1")
    at.text_input(key="rt-q").input("an open wound on a foot")
    at.button(key="FormSubmitter:rt-text-Search").click().run()
    assert_clean(at)
    assert "results for" in texts(at.markdown)
    at.button(key="re-go").click().run()
    assert_clean(at)
    assert "28 (image, caption) pairs" in texts(at.markdown)


REVEAL = "Show the full image"  # the confirming button inside each censored image's Reveal warning


def test_gallery_censors_exactly_the_sensitive_images(corpus_color):
    ds = corpus_color
    eb = independent_eb(ds)
    # every corpus label is known: sensitive ones are flagged, non_sensitive ones cleared unless EB flags them
    censored = (ds.images["label"] == "sensitive").to_numpy() | ~(eb <= 1.0)
    at = open_page("views/1_Gallery.py", dataset="corpus", model="color")
    assert_clean(at)
    reveal = buttons(at, REVEAL)
    # Page 1 holds rows 0..23; one Reveal warning per censored image, keyed by its row.
    rows = sorted(int(b.key.split("-")[3]) for b in reveal)
    assert rows == [r for r in range(24) if censored[r]]
    n = int(censored.sum())
    assert f"**658** of 658 images · {n} censored ({n} flagged, 0 not yet screened) · {658 - n} shown raw" \
        in texts(at.markdown)
    reasons = [c.value for c in at.caption if c.value.startswith(":material/visibility")]
    assert len(reasons) == 24 and all(len(r) > len(":material/visibility: ") for r in reasons)

    # Page 2 through the URL.
    at = open_page("views/1_Gallery.py", dataset="corpus", model="color", page="2")
    rows = sorted(int(b.key.split("-")[3]) for b in buttons(at, REVEAL))
    assert rows == [r for r in range(24, 48) if censored[r]]
    # the evidence filter: only what the labels cleared
    at.multiselect(key="g-ev").set_value(["cleared by label"]).run()
    assert f"**{658 - n}** of 658 images · 0 censored" in texts(at.markdown)
    assert not buttons(at, REVEAL)


def test_gallery_filters(corpus_color):
    ds = corpus_color
    at = open_page("views/1_Gallery.py", dataset="corpus", model="color")
    at.multiselect(key="g-f-label").set_value(["non_sensitive"]).run()
    n = int((ds.images["label"] == "non_sensitive").sum())
    assert f"**{n}** of 658 images" in texts(at.markdown)
    at.multiselect(key="g-f-source").set_value(["bccd"]).run()
    n = int(((ds.images["label"] == "non_sensitive") & (ds.images["source"] == "bccd")).sum())
    assert f"**{n}** of 658 images" in texts(at.markdown)
    assert_clean(at)


def test_reveal_one_image_then_safe_view_off(corpus_color):
    at = open_page("views/1_Gallery.py", dataset="corpus", model="color")
    before = buttons(at, REVEAL)
    first = before[0]
    row = int(first.key.split("-")[3])
    cid = corpus_color.images["id"].iat[row]
    # the middle step: colour regions blacked out, then the full image
    regions = [b for b in buttons(at, "Show with wound colours blacked out") if b.key.endswith(cid[:16])]
    regions[0].click().run()
    assert_clean(at)
    assert at.session_state["wb:revealed"] == {cid: "regions"}
    assert len(buttons(at, REVEAL)) == len(before)  # still behind its warning for the full image
    [b for b in buttons(at, REVEAL) if b.key.endswith(cid[:16])][0].click().run()
    assert at.session_state["wb:revealed"] == {cid: "full"}
    assert len(buttons(at, REVEAL)) == len(before) - 1 and len(buttons(at, "Re-blur")) == 1
    assert "1 image revealed in this session." in texts(at.sidebar.caption)
    buttons(at, "Re-blur")[0].click().run()
    assert len(buttons(at, REVEAL)) == len(before) and not at.session_state["wb:revealed"]
    # re-blur all undoes every reveal
    for b in buttons(at, REVEAL)[:3]:
        b.click().run()
    assert len(at.session_state["wb:revealed"]) == 3
    [b for b in at.sidebar.button if b.label == "Re-blur all"][0].click().run()
    assert not at.session_state["wb:revealed"] and len(buttons(at, REVEAL)) == len(before)
    at.sidebar.toggle(key="w:safe").set_value(False).run()
    assert not buttons(at, REVEAL) and "Safe view is off" in texts(at.sidebar.warning)


def test_neighbours_recentre_on_open(corpus_color):
    from lib.embeddings import load_embeddings

    ds = corpus_color
    M = load_embeddings("corpus", "color").matrix()

    def top(row: int) -> str:
        sims = M @ M[row]
        sims[row] = -np.inf
        return str(ds.images["id"].iat[int(np.argmax(sims))])

    at = open_page("views/2_Neighbours.py", dataset="corpus", model="color")
    assert_clean(at)
    assert at.query_params["id"] == ds.images["id"].iat[0]  # default query: the first image
    opens = buttons(at, "Open")
    assert len(opens) == 12
    opens[0].click().run()
    assert_clean(at)
    first = top(0)
    assert at.query_params["id"] == first
    row = int(np.flatnonzero(ds.images["id"].to_numpy() == first)[0])
    buttons(at, "Open")[0].click().run()
    assert at.query_params["id"] == top(row)


def test_neighbours_two_models_side_by_side(corpus_color, corpus_tiny):
    at = open_page("views/2_Neighbours.py", dataset="corpus", model="color", random="1")
    at.selectbox(key="nb-second").set_value(TINY_KEY).run()
    assert_clean(at)
    assert len(buttons(at, "Open")) == 24
    assert any("Jaccard" in m.label for m in at.metric)


def test_zero_shot_with_the_tiny_model(corpus_tiny):
    at = open_page("views/3_Zero-shot.py", dataset="corpus", model=TINY_KEY, random="1")
    assert at.selectbox(key="zs-model").value == TINY_KEY
    at.button(key="FormSubmitter:zs-run-Run zero-shot").click().run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    # Independent check of the live operating point from the written predictions.
    from lib import config

    files = sorted((config.home() / "results" / "corpus").glob("zeroshot-medgore-*.parquet"))
    assert files
    preds = pd.read_parquet(max(files, key=lambda p: p.stat().st_mtime))
    truth = preds["truth"].dropna()
    score = preds.loc[truth.index, "score"]

    def prf(thr: float) -> tuple[float, float]:
        flag, pos = score >= thr, truth == "Blur"
        tp = int((flag & pos).sum())
        return tp / max(int(flag.sum()), 1), tp / int(pos.sum())

    p, r = prf(0.5)
    assert metrics["Precision"] == f"{p:.3f}" and metrics["Recall"] == f"{r:.3f}"
    assert "Double F1" in metrics and metrics["Flagged"].endswith(f"/ {len(truth)}")
    at.slider(key="zs-thr").set_value(0.9).run()
    p, r = prf(0.9)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Recall"] == f"{r:.3f}"
    assert_clean(at)
    assert assert_thumbnails_link_to_details(at) > 0  # the mistakes' thumbnails


def test_compare_models_color_vs_tiny(corpus_color, corpus_tiny):
    at = open_page("views/6_Compare_models.py", dataset="corpus", model="color", random="1")
    assert_clean(at)
    assert at.multiselect(key="cm-models").value == ["color", TINY_KEY]
    metrics = at.dataframe[0].value
    assert len(metrics) == 2 and {"accuracy", "roc_auc"} <= set(metrics.columns)
    assert "Where they disagree" in texts(at.subheader)
    assert assert_thumbnails_link_to_details(at) > 0  # the disagreements' thumbnails


def test_every_thumbnail_opens_its_detail_view(corpus_color, corpus_tiny):
    at = open_page("views/5_Blur_scores.py", dataset="corpus", model="color")
    assert_clean(at)
    assert assert_thumbnails_link_to_details(at) == 1  # the one image (its masks are not a dataset image)
    at = open_page("views/4_Retrieval.py", dataset="corpus", model=TINY_KEY, random="1")
    at.text_input(key="rt-q").input("an open wound on a foot")
    at.button(key="FormSubmitter:rt-text-Search").click().run()
    assert_clean(at)
    assert assert_thumbnails_link_to_details(at) == 24
    # the detail view: its own image has no link to itself, its neighbours link to theirs
    cid = corpus_color.images["id"].iat[5]
    at = open_page("views/12_Image.py", dataset="corpus", model="color", id=cid)
    assert_clean(at)
    shown = [i.proto.imgs[0].alt for i in at.image if i.proto.imgs]
    assert shown[0] == f"image {cid[:16]}" and len(shown) == 7
    linked = [link.proto.query_string for link in at.page_link if link.value == "Details"]
    assert len(linked) == 6 and not any(f"id={cid}" in q for q in linked)


# ----------------------------------------------------------------------------- missing things


def test_empty_data_home(private_home):
    for page in list(PAGES)[1:]:
        at = open_page(page)
        assert_clean(at)
        assert "No datasets yet" in texts(at.info), page
        assert "python -m lib ingest" in texts(at.info)
    # Home builds the offline demo dataset on a fresh data home.
    at = open_page("app.py")
    assert_clean(at)
    from lib import dataset

    assert dataset.list_names() == ["demo"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == str(len(dataset.load("demo")))


def test_dataset_without_embeddings(private_home, corpus_dir, tmp_path):
    from lib import dataset

    dataset.ingest(copy_images(corpus_dir, tmp_path / "small"), "small")
    for page in ("views/2_Neighbours.py", "views/4_Retrieval.py"):
        at = open_page(page, dataset="small")
        assert_clean(at)
        assert "python -m lib embed small --model color" in texts(at.warning), page
    at = open_page("views/6_Compare_models.py", dataset="small")
    assert_clean(at)
    assert "at least two models" in texts(at.info)
    for page in ("app.py", "views/1_Gallery.py", "views/5_Blur_scores.py", "views/3_Zero-shot.py"):
        assert_clean(open_page(page, dataset="small"))
    at = open_page("views/1_Gallery.py", dataset="small")
    assert len(buttons(at, REVEAL)) >= 3  # the three wound photos at least


def test_broken_policy_file_censors_every_image_and_says_why(private_home, corpus_dir, tmp_path):
    from lib import dataset, sensitivity

    dataset.ingest(copy_images(corpus_dir, tmp_path / "small"), "small")
    for page in ("views/1_Gallery.py", "views/2_Neighbours.py", "app.py"):
        assert_clean(open_page(page, dataset="small"))
    at = open_page("views/1_Gallery.py", dataset="small")
    assert re.search(r"· [1-3] shown raw", texts(at.markdown))  # non_sensitive photos EB does not flag, before
    sensitivity.policy_path("small").write_text('{"safe": ["non_sensitive",]}')
    at = open_page("views/1_Gallery.py", dataset="small")
    assert not at.exception
    assert "every image is censored" in texts(at.error) and "policy.json, line 1" in texts(at.error)
    assert "· 0 shown raw" in texts(at.markdown) and len(buttons(at, REVEAL)) == 6


def test_model_without_text_tower(corpus_color, corpus_tiny):
    at = open_page("views/4_Retrieval.py", dataset="corpus", model="color")
    assert_clean(at)
    assert "needs a model with a text tower" in texts(at.info)
    assert "Use random weights (testing only)" in texts(at.info)
    at = open_page("views/3_Zero-shot.py", dataset="corpus", model="color")
    options = at.selectbox(key="zs-model").options
    assert "color" not in options and not any("random" in o for o in options)  # no test model unless ticked


def test_dataset_without_labels(private_home, corpus_dir, tmp_path):
    from lib import dataset
    from lib.embeddings import embed
    from lib.models import load_model

    dataset.ingest(copy_images(corpus_dir, tmp_path / "flat", labelled=False), "flat")
    embed("flat", "color")
    embed("flat", "open_clip:WB-Tiny-ViT", random_weights=True,
          backend=load_model("open_clip:WB-Tiny-ViT", random_weights=True))
    at = open_page("app.py", dataset="flat")
    assert_clean(at)
    assert "has no labels" in texts(at.info)
    at = open_page("views/6_Compare_models.py", dataset="flat", random="1")
    assert_clean(at)
    assert "has no labels" in texts(at.info)
    at = open_page("views/3_Zero-shot.py", dataset="flat", model=TINY_KEY, random="1")
    at.button(key="FormSubmitter:zs-run-Run zero-shot").click().run()
    assert_clean(at)
    assert "no metrics" in texts(at.info)
    for page in ("views/1_Gallery.py", "views/2_Neighbours.py", "views/5_Blur_scores.py"):
        assert_clean(open_page(page, dataset="flat"))


def test_missing_weights_is_a_message(corpus_color, monkeypatch):
    from lib.models.weights import hf_cached_revision

    if hf_cached_revision("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        pytest.skip("CLIP ViT-B-32 weights are cached on this machine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = open_page("views/3_Zero-shot.py", dataset="corpus", model="color")
    at.selectbox(key="zs-model").set_value("open_clip:ViT-B-32@laion2b_s34b_b79k")
    at.button(key="FormSubmitter:zs-run-Run zero-shot").click().run()
    assert not at.exception
    assert "weights are not available" in texts(at.warning).lower()


def test_blur_scores_masks_and_iou(private_home, corpus_dir, tmp_path):
    """A manifest dataset with ground-truth masks: the page's IoU for one image and over all."""
    from lib import dataset
    from lib.colorscore import color_masks
    from lib.images import open_image
    from lib.safety import clean_mask, load_mask

    m = pd.read_csv(corpus_dir / "manifest.csv")
    m = m[m["mask"].notna()].head(4)
    for col in ("path", "mask"):
        for p in m[col]:
            (tmp_path / "mk" / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus_dir / p, tmp_path / "mk" / p)
    m.to_csv(tmp_path / "mk" / "manifest.csv", index=False)
    dataset.ingest(tmp_path / "mk" / "manifest.csv", "mk")
    ds = dataset.load("mk")

    def iou(row: int) -> float:
        blood = clean_mask(color_masks(open_image(ds.abspath(ds.images["path"].iat[row])))[0])
        truth = load_mask(ds.abspath(ds.images["mask"].iat[row]), shape=blood.shape)
        return (blood & truth).sum() / max((blood | truth).sum(), 1)

    at = open_page("views/5_Blur_scores.py", dataset="mk", id=ds.images["id"].iat[2])
    assert_clean(at)
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["IoU (cleaned blood-like mask vs truth)"] == f"{iou(2):.3f}"
    assert "Region censoring leaves the rest" in texts(at.info)  # a wound photo: no sharp preview
    at.button(key="eb-iou-all").click().run()
    assert_clean(at)
    ious = [iou(r) for r in range(len(ds))]
    assert f"mean IoU **{np.mean(ious):.3f}**" in texts(at.markdown)


def test_home_forms_ingest_and_embed(private_home, corpus_dir, tmp_path):
    from lib import catalog, dataset

    dataset.ingest(copy_images(corpus_dir, tmp_path / "a", n=2), "first")
    at = open_page("app.py", dataset="first")
    assert_clean(at)
    at.text_input(key="home-source").input(str(copy_images(corpus_dir, tmp_path / "b", n=3)))
    at.text_input(key="home-new-name").input("second")
    at.button(key="FormSubmitter:ingest-Ingest").click().run()
    assert_clean(at)
    assert "dataset 'second': 6 images ingested" in texts(at.success)
    assert dataset.list_names() == ["first", "second"]
    # the new dataset is selected at once, and in the table of datasets
    assert at.sidebar.selectbox(key="w:dataset").value == "second"
    assert "second" in at.dataframe[0].value["name"].tolist()
    at.button(key="FormSubmitter:embed-Embed").click().run()  # the default spec: color
    assert_clean(at)
    assert "second x color: 6 unique images" in texts(at.success)
    status = catalog.model_status("second").set_index("spec")
    assert status.loc["color", "status"] == "full"


def test_empty_dataset(private_home, tmp_path):
    from lib import dataset

    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "broken.jpg").write_bytes(b"<html>not a picture</html>")
    dataset.ingest(tmp_path / "bad", "empty")
    for page in ("views/1_Gallery.py", "views/2_Neighbours.py", "views/5_Blur_scores.py"):
        at = open_page(page, dataset="empty")
        assert_clean(at)
        assert "has no usable images" in texts(at.warning), page
        assert "python -m lib ingest SOURCE --name empty" in texts(at.warning)
