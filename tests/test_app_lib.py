"""The non-Streamlit modules behind the app: thumbnails, the safe view's decision, the model
catalog, gallery filters and tables, chart helpers."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from lib import catalog, charts, gallery, safety, thumbs
from lib.catalog import ModelChoice
from lib.errors import ImageError, UnsafePath
from lib.images import open_image, thumbnail

TINY = "open_clip:WB-Tiny-ViT"


def band_energy(img: Image.Image) -> float:
    """Mean squared difference-of-Gaussians (sigma 1 vs 4 px): edges and textures."""
    g = np.asarray(img.convert("L"), dtype=np.float64)
    return float(np.mean((ndimage.gaussian_filter(g, 1) - ndimage.gaussian_filter(g, 4)) ** 2))


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def small(home, corpus_dir, tmp_path):
    """A 6-image dataset (3 wound photos labelled sensitive, 3 others) in a private home."""
    from lib import dataset

    m = pd.read_csv(corpus_dir / "manifest.csv")
    src = tmp_path / "src"
    picks = list(m[m.label == "sensitive"].path[:3]) + list(m[m.label == "non_sensitive"].path[:3])
    for p in picks:
        label = m.set_index("path").loc[p, "label"]
        dest = src / label / Path(p).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / p, dest)
    dataset.ingest(src, "small")
    return dataset.load("small")


# ----------------------------------------------------------------------------- thumbs


def test_thumbnail_bytes_are_cached_safe_renderings(small):
    row = int(np.flatnonzero(small.images["label"].to_numpy() == "sensitive")[0])
    rec = small.images.iloc[row]
    img = open_image(small.abspath(rec["path"]))
    raw = thumbs.thumbnail_bytes(small, row, 128, "raw")
    blur = thumbs.thumbnail_bytes(small, row, 128, "blur")
    pix = thumbs.thumbnail_bytes(small, rec, 128, "pixelate")
    # Independent reference: the library's own safe thumbnail of the decoded file.
    assert raw == safety.safe_thumbnail_bytes(img, sensitive=False, side=128)
    assert blur == safety.safe_thumbnail_bytes(img, sensitive=True, mode="blur", side=128)
    assert pix == safety.safe_thumbnail_bytes(img, sensitive=True, mode="pixelate", side=128)
    raw_img, blur_img = Image.open(io.BytesIO(raw)), Image.open(io.BytesIO(blur))
    assert raw_img.size == blur_img.size == thumbnail(img, 128).size
    assert band_energy(raw_img) > 20 * band_energy(blur_img)
    # One file per (content id, side, mode); the next call reads it rather than re-rendering.
    path = thumbs.thumb_path(rec["id"], 128, "blur")
    assert path.read_bytes() == blur
    assert not list(path.parent.glob("*.tmp"))
    path.write_bytes(b"sentinel")
    assert thumbs.thumbnail_bytes(small, row, 128, "blur") == b"sentinel"
    assert thumbs.thumb_path(rec["id"], 256, "blur") != path != thumbs.thumb_path(rec["id"], 128, "raw")


def test_thumbnail_refuses_bad_input_and_escaping_paths(small, tmp_path):
    with pytest.raises(ValueError):
        thumbs.thumbnail_bytes(small, 0, 128, "sharpen")
    with pytest.raises(ValueError):
        thumbs.thumb_path("../../etc/passwd", 128, "raw")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (40, 40), "red").save(outside)
    escaping = {"id": "ab" * 32, "path": os.path.relpath(outside, small.root)}
    assert escaping["path"].startswith("..")
    with pytest.raises(UnsafePath):
        thumbs.thumbnail_bytes(small, escaping, 64, "raw")


# ----------------------------------------------------------------------------- safe view


def test_mode_for_is_fail_safe():
    assert thumbs.mode_for(True) == "blur"
    assert thumbs.mode_for(None, censor="pixelate") == "pixelate"  # unknown -> censored
    assert thumbs.mode_for(np.nan) == "blur"
    assert thumbs.mode_for(False) == "raw"
    assert thumbs.mode_for(True, revealed="full") == "raw"
    assert thumbs.mode_for(True, revealed="regions") == "regions"
    assert thumbs.mode_for(False, revealed="regions") == "raw"
    assert thumbs.mode_for(True, safe_view=False) == "raw"
    with pytest.raises(ValueError):
        thumbs.mode_for(True, censor="none")
    with pytest.raises(ValueError):
        thumbs.mode_for(True, revealed="yes")


# ----------------------------------------------------------------------------- catalog


def test_model_status_and_choices(corpus_color, corpus_tiny):
    st = catalog.model_status("corpus")
    n = len(corpus_color.unique_ids)
    full = st[(st.status == "full") & st.current]
    assert {("color", False), (TINY, True)} <= set(zip(full.spec, full.random_weights, strict=True))
    assert (full.vectors == n).all() and (full.total == n).all()
    assert full.set_index("spec").loc["color", "text"] == False  # noqa: E712 (numpy bool)
    plain = catalog.usable_models("corpus", status=st)
    assert plain[0] == ModelChoice("color") and ModelChoice(TINY, True) not in plain
    assert ModelChoice(TINY, True) in catalog.usable_models("corpus", random_weights=True, status=st)
    text = catalog.text_models("corpus", random_weights=True, status=st)
    assert text[0] == ModelChoice(TINY, True) and all(c.has_text for c in text)
    assert ModelChoice(TINY, True) not in catalog.text_models("corpus", status=st)
    for c in (ModelChoice("color"), ModelChoice(TINY, True)):
        assert ModelChoice.from_key(c.key) == c


def test_model_status_counts_partial_caches(small):
    from lib.embeddings import EmbeddingStore, embed
    from lib.models import resolve_fingerprint

    embed("small", "color")
    st = catalog.model_status("small").set_index("spec")
    assert st.loc["color", "status"] == "full" and st.loc["color", "vectors"] == len(small.unique_ids)
    # Remove one shard's worth of ids by writing a second dataset cache with fewer images:
    # here, drop the whole shard and write back all but one vector.
    store = EmbeddingStore(resolve_fingerprint("color"))
    emb = store.open(small.unique_ids)
    vecs, ids = emb.matrix(), list(emb.ids)
    for p in store.shard_dir.iterdir():
        p.unlink()
    store.write_shard(ids[:-1], vecs[:-1])
    st = catalog.model_status("small").set_index("spec")
    assert st.loc["color", "status"] == "partial" and st.loc["color", "vectors"] == len(ids) - 1
    assert ModelChoice("color") in catalog.usable_models("small")  # always offered: needs no weights


def test_prediction_files(small):
    d = catalog.results_dir("small")
    d.mkdir(parents=True)
    ids = small.images["id"].tolist()
    pd.DataFrame({"id": ids, "score": np.linspace(0, 1, len(ids)), "pred": "x"}).to_parquet(d / "zeroshot-a.parquet")
    pd.DataFrame({"id": ids, "pred": "x"}).to_parquet(d / "zeroshot-noscore.parquet")
    (d / "probe-b.parquet").write_text("not parquet")
    assert catalog.prediction_files("small") == [d / "zeroshot-a.parquet"]
    p = catalog.read_predictions(d / "zeroshot-a.parquet")
    assert list(p.columns) == ["id", "score", "pred"] and len(p) == len(set(ids))


# ----------------------------------------------------------------------------- gallery


def test_filter_rows_matches_a_pandas_reference():
    rng = np.random.default_rng(0)
    n = 200
    images = pd.DataFrame({"id": [f"{i:064x}" for i in range(n)],
                           "label": rng.choice(["a", "b", None], n),
                           "source": rng.choice(["s1", "s2", "s3"], n)})
    eb = pd.DataFrame({"eb": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n))})
    preds = pd.DataFrame({"id": images["id"][::2], "score": rng.random(n // 2),
                          "pred": rng.choice(["x", "y"], n // 2)})
    dec = pd.DataFrame({"censored": rng.random(n) < 0.5,
                        "evidence": rng.choice(["not yet screened", "flagged by EB", "cleared by label"], n)})
    rows = gallery.filter_rows(images, equals={"label": ["a", "(none)"], "source": []}, eb=eb, eb_range=(-1, 1),
                               preds=preds, pred_values=["x"], score_range=(0.2, 0.9), decision=dec,
                               evidence=["not yet screened", "flagged by EB"], censored=True)
    ref = []
    by_id = preds.set_index("id")
    for i in range(n):
        lab, e = images.label[i], eb.eb[i]
        if not (lab == "a" or pd.isna(lab)) or not (-1 <= e <= 1) or images.id[i] not in by_id.index:
            continue
        p = by_id.loc[images.id[i]]
        if p.pred == "x" and 0.2 <= p.score <= 0.9 and dec.censored[i] and dec.evidence[i] != "cleared by label":
            ref.append(i)
    assert rows.tolist() == ref and len(ref) > 3
    assert gallery.filter_rows(images, ids=[images.id[5], "nope"]).tolist() == [5]
    assert gallery.filter_rows(images, id_prefix="0" * 62 + "1").tolist() == list(range(16, 32))
    assert gallery.filter_rows(images, id_prefix=images.id[7].upper()).tolist() == [7]


def test_filter_options():
    images = pd.DataFrame({"id": list("abcd"), "path": list("abcd"), "label": ["x", "y", None, "x"],
                           "split": [None] * 4, "source": ["s", "s", "t", "t"], "const": ["k"] * 4,
                           "width": [1, 2, 3, 4]})
    opts = gallery.filter_options(images)
    assert opts == {"label": ["(none)", "x", "y"], "source": ["s", "t"]}
    # the same as every value turned to a string first, whatever the column's type and missing values
    rng = np.random.default_rng(0)
    mixed = pd.DataFrame({"id": [str(i) for i in range(400)], "path": ["p"] * 400,
                          "label": pd.array(rng.choice(["a", "b", None], 400), dtype="string[pyarrow]"),
                          "site": pd.Categorical(rng.choice(["x", "y"], 400)),
                          "score": rng.choice([0.5, 1.0, np.nan], 400), "n": rng.integers(0, 3, 400),
                          "obj": rng.choice(np.array([1, "1", None, pd.NA, "z"], dtype=object), 400)})
    ref = {c: sorted(map(str, mixed[c].astype("string").fillna("(none)").unique()))
           for c in ("label", "site", "score", "n", "obj")}
    assert gallery.filter_options(mixed) == ref


@pytest.mark.parametrize("n,size,page,expected", [
    (0, 24, 1, (0, 0, 1, 1)), (100, 24, 1, (0, 24, 5, 1)), (100, 24, 5, (96, 100, 5, 5)),
    (100, 24, 9, (96, 100, 5, 5)), (100, 24, -3, (0, 24, 5, 1)), (48, 24, 2, (24, 48, 2, 2)),
])
def test_page_bounds(n, size, page, expected):
    assert gallery.page_bounds(n, size, page) == expected


def test_jaccard_and_rows_of_ids():
    assert gallery.jaccard("abc", "bcd") == pytest.approx(2 / 4)
    assert gallery.jaccard([], []) == 1.0 and gallery.jaccard("a", "b") == 0.0
    images = pd.DataFrame({"id": ["p", "q", "p", "r"]})
    assert gallery.rows_of_ids(images, ["r", "p", "zz", "q"]).tolist() == [3, 0, 1]


def test_mistakes_by_brute_force():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"id": [str(i) for i in range(50)], "truth": rng.choice(["Blur", "Normal", None], 50),
                       "score": rng.random(50)})
    out = gallery.mistakes(df, "Blur", 0.4)
    fp = {i for i in range(50) if df.truth[i] == "Normal" and df.score[i] >= 0.4}
    fn = {i for i in range(50) if df.truth[i] == "Blur" and df.score[i] < 0.4}
    assert set(out[out.kind == "FP"].row) == fp and set(out[out.kind == "FN"].row) == fn
    assert out[out.kind == "FP"].score.is_monotonic_decreasing and out[out.kind == "FN"].score.is_monotonic_increasing


def test_agreement_matrix_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(2)
    ids = [str(i) for i in range(80)]
    a = pd.DataFrame({"id": ids, "pred": rng.choice(["x", "y"], 80)})
    b = pd.DataFrame({"id": ids[::-1], "pred": rng.choice(["x", "y"], 80)})  # other order: aligned by id
    m = gallery.agreement_matrix({"A": a, "B": b}, "kappa")
    ref = cohen_kappa_score(a.set_index("id").pred.loc[ids], b.set_index("id").pred.loc[ids])
    assert m.loc["A", "B"] == pytest.approx(ref) == pytest.approx(m.loc["B", "A"])
    assert m.loc["A", "A"] == pytest.approx(1.0)


def test_zeroshot_predictions_shape():
    df = pd.DataFrame({"id": ["a", "b", "c"], "label": ["sensitive", "non_sensitive", "other"],
                       "truth": ["Blur", "Normal", None], "pred": ["Blur", "Blur", "Normal"],
                       "p_Blur": [0.9, 0.6, 0.2], "p_Normal": [0.1, 0.4, 0.8], "score": [0.9, 0.6, 0.2]})
    out = gallery.zeroshot_predictions(df)
    assert out.columns.tolist() == ["id", "label", "pred", "p:Blur", "p:Normal", "score"]
    assert out.label.tolist() == ["Blur", "Normal"]


def test_edited_class_set_keeps_what_applies():
    from lib.zeroshot import PromptError, load_classes

    ref = load_classes("medgore")
    assert gallery.edited_class_set("medgore", list(ref.classes)) == ref
    cs = gallery.edited_class_set("medgore", ["Blur", "Normal", "Unclear"], texts={"Unclear": ["a blurry photo"]})
    assert cs.classes == ("Blur", "Normal", "Unclear") and cs.label_map == ref.label_map
    assert cs.texts == {"Unclear": ("a blurry photo",)} and cs.positive == "Blur"
    cs = gallery.edited_class_set("medgore", ["Blur", "Other"])
    assert cs.label_map == {"sensitive": "Blur"}
    with pytest.raises(PromptError):
        gallery.edited_class_set(None, ["one", " ", "one"])


def test_mask_overlay_tints_only_masked_pixels():
    img = Image.new("RGB", (40, 20), (100, 100, 100))
    blood = np.zeros((10, 20), bool)
    blood[:, :10] = True  # left half, at half resolution
    out = np.asarray(gallery.mask_overlay(img, blood, None, alpha=0.5)).astype(int)
    assert (out[:, :20] == [178, 50, 50]).all() and (out[:, 20:] == 100).all()


def test_mask_image_is_white_inside_black_outside():
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    img = gallery.mask_image(mask)
    assert img.mode == "RGB" and img.size == (4, 3)
    arr = np.asarray(img)
    assert (arr[1, 2] == 255).all() and arr.sum() == 3 * 255


def test_decode_upload(corpus_dir):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    data = (corpus_dir / m.path[0]).read_bytes()
    img = gallery.decode_upload(data, "x.png")
    assert img.size == open_image(corpus_dir / m.path[0]).size
    with pytest.raises(ImageError, match="upload limit"):
        gallery.decode_upload(data, "x.png", max_bytes=len(data) - 1)
    with pytest.raises(ImageError):
        gallery.decode_upload(b"<html>not an image</html>", "page.jpg")
    with pytest.raises(ImageError):
        gallery.decode_upload(b"", "empty.png")


def test_eb_scores_follow_colorscore(small):
    from lib.colorscore import eb_table, score_paths

    eb = gallery.eb_scores(small, workers=1)
    assert eb["id"].tolist() == small.images["id"].tolist() and eb["row"].tolist() == list(range(len(small)))
    ref = eb_table(score_paths([str(small.abspath(p)) for p in small.images["path"]], workers=1, cache=False))
    np.testing.assert_allclose(eb["eb"], ref["eb"], atol=1e-12)


# ----------------------------------------------------------------------------- charts


def test_selected_ids_and_figures():
    event = {"selection": {"points": [{"customdata": ["a1"]}, {"customdata": ["b2", 3]}, {"customdata": ["a1"]},
                                      {"x": 1}]}}
    assert charts.selected_ids(event) == ["a1", "b2"]
    assert charts.selected_ids(None) == [] and charts.selected_ids({"selection": {"points": []}}) == []
    roc, pr = charts.roc_pr_curves(["p", "n", "p", "n"], [0.9, 0.1, 0.4, 0.6], "p", threshold=0.5)
    # Operating point at 0.5: one of two positives and one of two negatives flagged.
    point = roc.data[-1]
    assert (point.x[0], point.y[0]) == (0.5, 0.5)
    assert json.loads(roc.to_json())["data"][0]["name"].startswith("ROC (AUC 0.750")
    df = pd.DataFrame({"x": [0, 1], "y": [1, 0], "id": ["i1", "i2"], "label": ["a", None]})
    fig = charts.image_map(df, "label")
    assert sorted(str(d.customdata[0][0]) for d in fig.data) == ["i1", "i2"]


def test_distinct_colours_per_legend_group():
    import plotly.express as px

    df = pd.DataFrame({"x": range(6), "y": range(6), "label": ["a", "b", "a", "c", "b", "a"]})
    fig = charts.distinct_colours(px.scatter(df, x="x", y="y", color="label", facet_col=np.arange(6) % 2))
    colours = {tr.name: set() for tr in fig.data}
    for tr in fig.data:
        colours[tr.name].add(tr.marker.color)
    assert all(len(c) == 1 for c in colours.values())  # one colour per label across facets
    assert len({next(iter(c)) for c in colours.values()}) == 3


def test_ingest_and_embed_report_progress(home, corpus_dir, tmp_path):
    from lib import dataset
    from lib.embeddings import embed

    m = pd.read_csv(corpus_dir / "manifest.csv").head(20)
    for p in m.path:
        (tmp_path / "p" / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / p, tmp_path / "p" / p)
    (tmp_path / "p" / "images" / "broken.png").write_bytes(b"nope")
    calls: list[tuple[int, int]] = []
    report = dataset.ingest(tmp_path / "p", "prog", workers=2, progress_callback=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (21, 21) and [d for d, _ in calls] == list(range(1, 22))
    assert report.images == 20 and report.errors == 1
    calls.clear()
    embed("prog", "color", batch_size=8, workers=0, progress_callback=lambda d, t: calls.append((d, t)))
    n = len(dataset.load("prog").unique_ids)
    assert calls == [(min(k, n), n) for k in range(8, n + 8, 8)]
    calls.clear()
    embed("prog", "color", progress_callback=lambda d, t: calls.append((d, t)))
    assert calls == []  # nothing missing: nothing to report


def test_hover_preview_ids_keep_the_open_image_and_the_selection_first():
    from lib import ui

    ids = [f"id{i:04d}" for i in range(1000)]
    assert ui.hover_preview_ids(ids[:10]) == ids[:10]  # a small map: every point
    got = ui.hover_preview_ids(ids, first=["id0999", "nope", "id0500"], limit=50)
    assert len(got) == 50 == len(set(got)) and got[:2] == ["id0999", "id0500"]
    assert set(got) <= set(ids)
    assert got == ui.hover_preview_ids(ids, first=["id0999", "id0500"], limit=50)  # seeded: the same sample


def test_hover_map_html_carries_the_figure_and_the_previews():
    fig = charts.linked_map(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0], "id": ["a", "b"], "label": ["s", "t"]}),
                            "label")
    html = charts.hover_map_html(fig, {"a": ("data:image/jpeg;base64,AAAA", "censored: label s")}, "/app/static/p.js")
    assert '<script src="/app/static/p.js">' in html and '"censored: label s"' in html
    assert "plotly_hover" in html and '"customdata"' in html


def _convex_inside(x, y, px, py):
    """Independent of charts.in_polygon: inside a convex polygon (counter-clockwise) = left of every edge."""
    ok = np.ones(len(x), bool)
    for i in range(len(px)):
        j = (i + 1) % len(px)
        ok &= (px[j] - px[i]) * (y - py[i]) - (py[j] - py[i]) * (x - px[i]) > 0
    return ok


def test_lasso_and_box_select_every_point_inside_drawn_or_not():
    """A map of 200k points draws a sample; a lasso or box selects every point inside it from
    the whole frame (the expected sets computed independently: half-planes, a box)."""
    rng = np.random.default_rng(3)
    n = 200_000
    df = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n), "id": [f"i{k:06d}" for k in range(n)],
                       "label": rng.choice(["safe", "sensitive"], n)})
    ang = np.linspace(0, 2 * np.pi, 7)[:-1] + 0.1
    hx, hy = 0.3 + 1.1 * np.cos(ang), -0.2 + 0.9 * np.sin(ang)  # a hexagon, counter-clockwise
    # plotly reports the lasso through every mouse position: many collinear points per edge
    t = np.linspace(0, 1, 25)[:-1]
    lx = np.concatenate([hx[i] + t * (hx[(i + 1) % 6] - hx[i]) for i in range(6)])
    ly = np.concatenate([hy[i] + t * (hy[(i + 1) % 6] - hy[i]) for i in range(6)])
    want = df["id"][_convex_inside(df["x"].to_numpy(), df["y"].to_numpy(), hx, hy)].tolist()
    event = {"selection": {"points": [{"customdata": ["i000001"]}], "box": [],
                           "lasso": [{"xref": "x", "yref": "y", "x": lx.tolist(), "y": ly.tolist()}]}}
    got = charts.selected_ids(event, df)
    assert len(want) > 20_000 and got == want
    assert charts.selected_ids(event) == ["i000001"]  # without the frame: the drawn points the event lists
    # a non-convex lasso (an L) is the union of two boxes; a box; both together
    lx2, ly2 = [0, 2, 2, 1, 1, 0], [0, 0, 1, 1, 2, 2]
    x, y = df["x"].to_numpy(), df["y"].to_numpy()
    ell = ((x > 0) & (x < 2) & (y > 0) & (y < 1)) | ((x > 0) & (x < 1) & (y >= 1) & (y < 2))
    assert charts.selected_ids({"selection": {"lasso": [{"x": lx2, "y": ly2}]}}, df) == df["id"][ell].tolist()
    box = (x >= -1) & (x <= -0.5) & (y >= -2) & (y <= 0.25)
    assert charts.selected_ids({"selection": {"box": [{"x": [-0.5, -1], "y": [0.25, -2]}]}}, df) == \
        df["id"][box].tolist()
    both = {"selection": {"box": [{"x": [-0.5, -1], "y": [0.25, -2]}], "lasso": [{"x": lx2, "y": ly2}]}}
    assert charts.selected_ids(both, df) == df["id"][box | ell].tolist()
    # a click (no box, no lasso) is the clicked point, frame or not
    click = {"selection": {"points": [{"customdata": ["i000007", "safe"]}], "box": [], "lasso": []}}
    assert charts.selected_ids(click, df) == ["i000007"]


def test_a_large_map_draws_a_sample_with_exact_counts():
    rng = np.random.default_rng(4)
    n = 120_000
    df = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n), "id": [f"i{k:06d}" for k in range(n)],
                       "label": rng.choice(["safe", "sensitive", None], n)})
    df["EB"] = rng.normal(size=n)
    out = np.flatnonzero(~charts.draw_mask(n, 10_000))  # two ids the seeded sample leaves out
    hi, pin = df["id"][out[-1]], df["id"][out[0]]
    fig = charts.linked_map(df, "label", highlight=hi, limit=10_000, always=[pin])
    meta = fig.layout.meta
    counts = df["label"].fillna("(none)").value_counts().to_dict()
    assert meta["points"] == n and meta["counts"] == counts
    drawn = [str(c) for tr in fig.data if tr.name != "this image" for c in tr.customdata]
    assert meta["drawn"] == 10_002 and len(drawn) == len(set(drawn)) == 10_002  # the sample, the open image, a pinned one
    assert {hi, pin} <= set(drawn)
    names = sorted(tr.name for tr in fig.data if tr.name != "this image")
    assert names == sorted(f"{k} ({v:,})" for k, v in counts.items())
    assert "10,002 of 120,000 points drawn" in fig.layout.title.text
    again = charts.linked_map(df, "label", highlight=hi, limit=10_000, always=[pin])
    assert [list(tr.customdata) for tr in again.data] == [list(tr.customdata) for tr in fig.data]
    hover = next(tr for tr in fig.data if tr.name.startswith("safe"))
    row = df.set_index("id").loc[hover.customdata[0]]
    assert hover.text[0] == f"label {row['label']}" and hover.hovertemplate == "%{text}<extra></extra>"
    # a selection: every selected point drawn first (up to the limit), the rest in grey, counts exact
    chosen = df["id"][:3000].tolist()
    sel = charts.linked_map(df, "EB", selected=chosen, limit=10_000)
    by_name = {tr.name: tr for tr in sel.data}
    assert set(by_name) == {f"not selected ({n - 3000:,})", "EB (3,000)"}
    assert sorted(map(str, by_name["EB (3,000)"].customdata)) == sorted(chosen)
    assert sel.layout.meta["drawn"] == 10_000
    small = charts.linked_map(df[:500], "label")
    assert small.layout.meta["drawn"] == 500 and "drawn" not in (small.layout.title.text or "")
