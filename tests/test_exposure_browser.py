"""Exposure, in Chromium: with safe view on (the default), no image that is sensitive by label,
by EB score or by a prediction ever reaches the browser unblurred, on any page.

Every ``<img>`` of each page is fetched again from its ``src`` and checked: a dataset image
(alt ``image <id>``) must be byte-identical to the rendering :mod:`lib.safety` makes of its
file (censored when an independent computation of the safe view's rule says sensitive, sharp
otherwise); any other image (colour-mask overlays, ground-truth masks, uploads) of a censored
image must carry no more high-frequency detail than a censored thumbnail. Plotly figures must
carry image ids only, never image data. Three datasets: labelled (label or EB), unlabelled
(EB only) and unlabelled with a prediction table (predictions only: the EB threshold is set to
5, above any z-score of 16 images, sqrt(15) = 3.9).

Last, a light load test: two sessions browse Neighbours at once (``bench/load.py`` runs the
same with 8 sessions on 100k items).
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path
from urllib.parse import urlencode, urljoin

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_app_browser import (  # noqa: F401  (browser, chromium, page are fixtures)
    REPO,
    band_energy,
    browser,
    chromium,
    page,
    settle,
    shot,
)

from lib import dataset

pytestmark = pytest.mark.browser

TINY = "open_clip:WB-Tiny-ViT"
TINY_KEY = f"{TINY}@@random"
N_EACH = 8  # sensitive-labelled and non-sensitive-labelled corpus images per dataset


# ----------------------------------------------------------------------------- data


def _truth(ds, threshold: float = 1.0, preds: pd.DataFrame | None = None, labels: bool = True) -> dict:
    """{id[:16]: {sensitive, path}} by the safe view's rule, computed here: label in the
    sensitive set, or EB (z-scored by hand over the dataset) above ``threshold`` or unknown,
    or prediction score >= 0.5."""
    from lib.colorscore import score_paths

    f = score_paths([str(ds.abspath(p)) for p in ds.images["path"]], workers=1, cache=False)
    z = [(f[c] - f[c].mean()) / f[c].std(ddof=0) for c in ("blood", "skin")]
    eb = np.maximum(z[0], z[1]).to_numpy()
    sens = ~(eb <= threshold)
    if labels:
        sens |= (ds.images["label"] == "sensitive").fillna(False).to_numpy(bool)
    if preds is not None:
        p = preds.set_index("id")["score"].reindex(ds.images["id"]).to_numpy()
        sens |= np.nan_to_num(p, nan=0) >= 0.5
    return {cid[:16]: {"sensitive": bool(s), "path": ds.abspath(p), "id": cid}
            for cid, p, s in zip(ds.images["id"], ds.images["path"], sens, strict=True)}


@pytest.fixture(scope="module")
def expo(corpus_dir, tiny_model, tmp_path_factory):
    """Three datasets of 16 corpus images each, embedded, with annotations and an expansion."""
    from lib import workflow as wf
    from lib.annotations import AnnotationStore
    from lib.embeddings import embed
    from lib.neighbors import open_space, seeds_from_labels

    work = tmp_path_factory.mktemp("expo")
    m = pd.read_csv(corpus_dir / "manifest.csv")
    sens, non = m[m["label"] == "sensitive"], m[m["label"] == "non_sensitive"]
    picks = {"expo-label": (0, True), "expo-eb": (20, False), "expo-pred": (40, False)}
    for name, (off, labelled) in picks.items():
        rows = pd.concat([sens.iloc[off:off + N_EACH], non.iloc[off:off + N_EACH]])
        if not labelled:
            rows = rows.drop(columns=["label"])
        rows.to_csv(work / f"{name}.csv", index=False)
        dataset.ingest(work / f"{name}.csv", name, root=corpus_dir)
        embed(name, "color", workers=0)
    embed("expo-label", TINY, random_weights=True, backend=tiny_model)

    # a prediction table that flags half of each kind of image
    ds_pred = dataset.load("expo-pred")
    flag = np.zeros(len(ds_pred), bool)
    flag[::2] = True
    preds = pd.DataFrame({"id": ds_pred.images["id"], "score": np.where(flag, 0.9, 0.1),
                          "pred": np.where(flag, "sensitive", "non_sensitive")})
    out = Path(os.environ["WORKBENCH_HOME"]) / "results" / "expo-pred" / "probe-fake.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(out, index=False)

    # two annotators who disagree on half the images, and a saved expansion with conflicts
    ds_lab = dataset.load("expo-label")
    store = AnnotationStore()
    for i, cid in enumerate(ds_lab.unique_ids):
        store.set_label("expo-label", cid, "ann", "Blur" if i % 2 else "Ok")
        store.set_label("expo-label", cid, "bob", "Blur" if i % 4 < 2 else "Ok")
    space = open_space("expo-label", "color")
    wf.run_expansion(space, seeds_from_labels(ds_lab, 4, seed=0), 15, "best_rank", origin="labels:4")
    return {
        "expo-label": _truth(ds_lab),
        "expo-eb": _truth(dataset.load("expo-eb"), labels=False),
        "expo-pred": _truth(ds_pred, threshold=5.0, preds=preds, labels=False),
    }


@pytest.fixture(scope="module")
def server(expo, chromium):  # noqa: F811
    from bench.server import Server

    home = Path(os.environ["WORKBENCH_HOME"])
    with Server(home / "exposure-streamlit.log", home) as srv:
        yield srv


# ----------------------------------------------------------------------------- checks


def expected(rec: dict, censored: bool, side: int) -> bytes:
    from lib.safety import safe_thumbnail_bytes

    return safe_thumbnail_bytes(rec["path"], sensitive=censored, mode="blur", side=side)


def fetch_images(page, base: str) -> list[dict]:  # noqa: F811
    """Every <img> of the main area: alt, src and the bytes the browser gets for it."""
    imgs = page.locator('[data-testid="stMain"] img')
    out = []
    for i in range(imgs.count()):
        el = imgs.nth(i)
        src = el.get_attribute("src") or ""
        if src.startswith("data:"):
            data = base64.b64decode(src.split(",", 1)[1])
        else:
            resp = page.request.get(urljoin(base + "/", src))
            assert resp.ok, src
            data = resp.body()
        out.append({"alt": el.get_attribute("alt") or "", "src": src, "data": data})
    return out


def check_images(page, base: str, truth: dict, *, revealed=(), selected: str | None = None,  # noqa: F811
                 where: str = "") -> dict:
    """Assert the safe view on every image of the page; returns counts.

    ``selected``: id prefix of the image other (non-dataset) images are derived from.
    """
    counts = {"censored": 0, "sharp": 0, "other": 0}
    for im in fetch_images(page, base):
        if im["alt"].startswith("image "):
            key = im["alt"][len("image "):]
            rec = truth[key]
            censor = rec["sensitive"] and key not in revealed
            side = 512 if max(Image.open(io.BytesIO(im["data"])).size) > 256 else 256
            assert im["data"] == expected(rec, censor, side), (where, key, rec["path"], "censored" if censor else "sharp")
            if censor:
                sharp = expected(rec, False, side)
                assert band_energy(im["data"]) < 0.1 * band_energy(sharp) + 0.5, (where, rec["path"])
            counts["censored" if censor else "sharp"] += 1
        else:
            assert selected is not None, (where, f"an image that is not a dataset image: {im['alt']!r}")
            rec = truth[selected]
            if rec["sensitive"] and selected not in revealed:
                # no more detail than the censored thumbnail itself (a sharp mask outline, a
                # silhouette, carries 5-50x more)
                censored = expected(rec, True, 256)
                assert band_energy(im["data"]) < 2 * band_energy(censored) + 0.5, (where, im["alt"], rec["path"])
            counts["other"] += 1
    return counts


def check_plotly(page, where: str = "") -> int:  # noqa: F811
    """Plotly figures hold ids and numbers, never image data (in data, layout, hover)."""
    figs = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
        const ids = [];
        for (const tr of (gd._fullData || [])) {
            if (!tr.customdata) continue;
            for (const c of tr.customdata) ids.push(String(Array.isArray(c) ? c[0] : c));
        }
        return {json: JSON.stringify({data: gd.data, layout: gd.layout}), ids: ids,
                images: ((gd.layout || {}).images || []).length};
    })""")
    for f in figs:
        assert "data:image" not in f["json"] and "<img" not in f["json"].lower(), where
        assert f["images"] == 0, where
        assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in f["ids"]), (where, f["ids"][:3])
    return len(figs)


def assert_no_exception(page) -> None:  # noqa: F811
    assert page.locator('[data-testid="stException"]').count() == 0, \
        page.locator('[data-testid="stException"]').first.inner_text()[:1000]


def visit(page, base: str, path: str, title: str, **params) -> None:  # noqa: F811
    page.goto(f"{base}/{path}?{urlencode(params)}")
    page.get_by_role("heading", name=title).first.wait_for()
    settle(page)
    assert_no_exception(page)


def wait_images(page, n: int) -> None:  # noqa: F811
    page.locator('[data-testid="stMain"] img[alt^="image "]').nth(n - 1).wait_for()
    settle(page)


def point_xy(page, cid: str | None = None):  # noqa: F811
    """Screen coordinates of the (first visible) plotly point whose customdata is ``cid``
    (or of the first point), and its id."""
    return page.evaluate("""(cid) => {
        for (const gd of document.querySelectorAll('.js-plotly-plot')) {
            const r = gd.getBoundingClientRect();
            if (!r.width) continue;
            for (const tr of (gd._fullData || [])) {
                if (!tr.customdata || tr.type !== 'scatter' && tr.type !== 'scattergl') continue;
                for (let i = 0; i < tr.customdata.length; i++) {
                    const c = tr.customdata[i], v = String(Array.isArray(c) ? c[0] : c);
                    if (cid && v !== cid) continue;
                    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                    return {x: r.left + xa._offset + xa.d2p(tr.x[i]), y: r.top + ya._offset + ya.d2p(tr.y[i]), id: v};
                }
            }
        }
        return null; }""", cid)


# ----------------------------------------------------------------------------- the labelled dataset

LABEL = {"dataset": "expo-label", "model": "color"}


def test_gallery_and_neighbours_reveal_one_image_at_a_time(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    visit(page, server.base, "Gallery", "Gallery", **LABEL)
    wait_images(page, 16)
    c = check_images(page, server.base, truth, where="gallery")
    assert c["censored"] >= N_EACH and c["sharp"] >= 1, c
    sens = [k for k, r in truth.items() if r["sensitive"]]
    visit(page, server.base, "Neighbours", "Neighbours", **LABEL, id=truth[sens[0]]["id"])
    wait_images(page, 13)
    check_images(page, server.base, truth, where="neighbours")
    # Reveal one sensitive result: it alone turns sharp, here and on every page.
    alts = [a[len("image "):] for a in page.locator('[data-testid="stMain"] img[alt^="image "]').evaluate_all(
        "els => els.map(e => e.alt)")]
    target = next(k for k in alts[1:] if truth[k]["sensitive"])
    cell = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {target}"]')).last
    old = cell.locator("img").first.get_attribute("src")
    cell.get_by_role("button", name="Reveal").click()
    page.wait_for_function("([alt, old]) => { const i = document.querySelector(`img[alt='${alt}']`); "
                           "return i && !i.src.endsWith(old); }", arg=[f"image {target}", old])
    settle(page)
    c = check_images(page, server.base, truth, revealed={target}, where="neighbours, one revealed")
    assert c["censored"] >= 1
    # the same session on another page (the app's own link): still that one image only
    page.locator('[data-testid="stMain"]').get_by_role("link", name="Gallery").first.click()
    page.get_by_role("heading", name="Gallery").first.wait_for()
    wait_images(page, 16)
    check_images(page, server.base, truth, revealed={target}, where="gallery, one revealed")
    shot(page, "exposure-gallery-one-revealed")
    # a reload is a new session: nothing revealed any more
    visit(page, server.base, "Gallery", "Gallery", **LABEL)
    wait_images(page, 16)
    check_images(page, server.base, truth, where="gallery, reloaded")


def test_zero_shot_mistakes_and_retrieval_results(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    params = {"dataset": "expo-label", "model": TINY_KEY, "random": "1"}
    visit(page, server.base, "Zero-shot", "Zero-shot classification", **params)
    page.get_by_role("button", name="Run zero-shot").click()
    page.get_by_text("Mistakes at this threshold").wait_for()
    settle(page)
    assert_no_exception(page)
    c = check_images(page, server.base, truth, where="zero-shot mistakes")
    assert c["censored"] + c["sharp"] >= 1, "no mistake shown: nothing was checked"
    check_plotly(page, "zero-shot")

    visit(page, server.base, "Retrieval", "Retrieval", **params)
    page.get_by_label("Text query").fill("a photo of an open wound")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("results for").wait_for()
    wait_images(page, 16)
    check_images(page, server.base, truth, where="retrieval, text")
    page.get_by_role("tab", name="Image → image").click()
    sens = next(r for r in truth.values() if r["sensitive"])
    page.get_by_label("Image id (or a unique prefix)").fill(sens["id"][:12])
    page.keyboard.press("Enter")
    page.locator(f'[data-testid="stMain"] img[alt="image {sens["id"][:16]}"]:visible').first.wait_for()
    page.locator('[data-testid="stMain"] img[alt^="image "]:visible').nth(10).wait_for()  # query + results
    settle(page)
    assert_no_exception(page)
    c = check_images(page, server.base, truth, where="retrieval, image")
    assert c["censored"] >= 1


def test_blur_scores_one_image_masks_and_scatter(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    sens = [k for k, r in truth.items() if r["sensitive"]]
    visit(page, server.base, "Blur_scores", "Blur scores (EB)", **LABEL, id=truth[sens[0]]["id"])
    page.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    c = check_images(page, server.base, truth, selected=sens[0], where="blur scores")
    assert c["censored"] >= 1 and c["other"] >= 1, c  # the image and its colour-mask overlay
    check_plotly(page, "blur scores")
    # hover a sensitive point: the label holds numbers, no image
    target = next(k for k in sens[1:])
    page.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
    xy = point_xy(page, truth[target]["id"])
    assert xy is not None
    page.mouse.move(xy["x"], xy["y"])
    page.locator(".hoverlayer .hovertext").first.wait_for()
    hover = " ".join(page.locator(".hoverlayer .hovertext").evaluate_all("els => els.map(e => e.outerHTML)"))
    assert "<img" not in hover and "data:" not in hover and "blood" in hover, hover[:500]
    # click it: the page selects that image (or one drawn on the same spot) and shows it censored
    page.mouse.click(xy["x"], xy["y"])
    page.wait_for_url(lambda url: "id=" in url and truth[sens[0]]["id"] not in url)
    settle(page)
    assert_no_exception(page)
    picked = re.search(r"id=([0-9a-f]{64})", page.url).group(1)[:16]
    check_images(page, server.base, truth, selected=picked, where="blur scores, clicked")
    check_plotly(page, "blur scores, clicked")
    shot(page, "exposure-blur-scores-clicked")


def test_compare_models_map_selection(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    visit(page, server.base, "Compare_models", "Compare models", dataset="expo-label", model="color", random="1")
    page.get_by_role("tab", name="Maps").click()
    page.get_by_text("PCA", exact=True).first.click()  # the instant map (UMAP would be the same points)
    settle(page)
    maps = page.locator('[data-testid="stTabPanel"]:visible .js-plotly-plot')
    maps.first.wait_for()
    maps.first.scroll_into_view_if_needed()
    box = page.evaluate("""() => { const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
        .find(g => g.getBoundingClientRect().width && g._fullData && g._fullData.some(t => t.customdata));
        const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return {x0: r.left + xa._offset + 2, y0: r.top + ya._offset + 2,
                x1: r.left + xa._offset + xa._length - 2, y1: r.top + ya._offset + ya._length - 2}; }""")
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    page.mouse.move((box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2, steps=5)
    page.mouse.move(box["x1"], box["y1"], steps=5)
    page.mouse.up()
    page.get_by_text("image(s) selected").wait_for()
    wait_images(page, 12)
    c = check_images(page, server.base, truth, where="compare, map selection")
    assert c["censored"] >= 1 and c["censored"] + c["sharp"] >= 12, c  # the selection (+ the disagreements tab)
    check_plotly(page, "compare")
    shot(page, "exposure-compare-selection")


def test_annotate_expand_agreement(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    visit(page, server.base, "Annotate", "Annotate", **LABEL)
    page.get_by_placeholder("your name").fill("carol")
    page.keyboard.press("Enter")
    page.locator('[data-testid="stMain"] img[alt^="image "]').first.wait_for()
    settle(page)
    seen = set()
    for _ in range(4):  # several queue positions
        check_images(page, server.base, truth, where="annotate")
        seen.add(page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt"))
        page.get_by_role("button", name="Next").click()
        settle(page)
    assert len(seen) == 4

    visit(page, server.base, "Expand", "Seed expansion", **LABEL)
    page.get_by_text("Conflicts (").first.click()
    wait_images(page, 6)
    c = check_images(page, server.base, truth, where="expand, conflicts")
    assert c["censored"] + c["sharp"] >= 6

    visit(page, server.base, "Agreement", "Annotator agreement", **LABEL)
    wait_images(page, 8)
    c = check_images(page, server.base, truth, where="agreement")
    assert c["censored"] >= 1, c
    check_plotly(page, "agreement")


def test_uploads_bomb_hostile_name_and_html(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    sens = next(r for r in truth.values() if r["sensitive"])
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    visit(page, server.base, "Neighbours", "Neighbours", **LABEL)
    dropzone = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    dropzone.set_input_files(files=[{"name": "bomb.png", "mimeType": "image/png", "buffer": bomb.getvalue()}])
    page.get_by_text("decompression bomb").wait_for()
    settle(page)
    assert_no_exception(page)

    visit(page, server.base, "Neighbours", "Neighbours", **LABEL)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files=[{
        "name": "../../../../etc/passwd.png", "mimeType": "image/png", "buffer": Path(sens["path"]).read_bytes()}])
    page.locator('img[alt="uploaded image"]').wait_for()
    wait_images(page, 12)
    assert_no_exception(page)
    up = page.locator('img[alt="uploaded image"]')
    data = page.request.get(urljoin(server.base + "/", up.get_attribute("src"))).body()
    # an outside image has no known sensitivity: censored until revealed
    assert band_energy(data) < 0.1 * band_energy(expected(sens, False, 256)) + 0.5
    assert page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt") == \
        f"image {sens['id'][:16]}"  # its own dataset copy ranks first
    check_images_without_upload(page, server.base, truth)

    visit(page, server.base, "Neighbours", "Neighbours", **LABEL)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files=[{
        "name": "page.png", "mimeType": "image/png", "buffer": b"<!DOCTYPE html><script>alert(1)</script>"}])
    page.get_by_text("HTML").first.wait_for()
    settle(page)
    assert_no_exception(page)


def check_images_without_upload(page, base: str, truth: dict) -> None:  # noqa: F811
    for im in fetch_images(page, base):
        if im["alt"] == "uploaded image":
            continue
        key = im["alt"][len("image "):]
        rec = truth[key]
        assert im["data"] == expected(rec, rec["sensitive"], 256), key


# ----------------------------------------------------------------------------- EB only, predictions only


def test_sensitive_by_eb_only(page, server, expo):  # noqa: F811
    truth = expo["expo-eb"]
    n_sens = sum(r["sensitive"] for r in truth.values())
    assert 0 < n_sens < len(truth)
    visit(page, server.base, "Gallery", "Gallery", dataset="expo-eb", model="color")
    wait_images(page, 16)
    assert page.get_by_text(f"{n_sens} sensitive").count() >= 1
    c = check_images(page, server.base, truth, where="eb gallery")
    assert c["censored"] == n_sens
    sens = [k for k, r in truth.items() if r["sensitive"]]
    visit(page, server.base, "Neighbours", "Neighbours", dataset="expo-eb", model="color", id=truth[sens[0]]["id"])
    wait_images(page, 13)
    check_images(page, server.base, truth, where="eb neighbours")
    visit(page, server.base, "Blur_scores", "Blur scores (EB)", dataset="expo-eb", model="color",
          id=truth[sens[0]]["id"])
    page.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    check_images(page, server.base, truth, selected=sens[0], where="eb blur scores")


def test_sensitive_by_predictions_only(page, server, expo):  # noqa: F811
    truth = expo["expo-pred"]
    visit(page, server.base, "Gallery", "Gallery", dataset="expo-pred", model="color")
    sidebar = page.locator('[data-testid="stSidebar"]')
    thumb = sidebar.locator('[data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    page.keyboard.press("End")  # EB threshold 5.0: no z-score of 16 images reaches it
    settle(page)
    sidebar.get_by_role("combobox", name=re.compile("Predictions that flag")).click()
    page.get_by_role("option", name="probe-fake.parquet").click()
    settle(page)
    wait_images(page, 16)
    n_sens = sum(r["sensitive"] for r in truth.values())
    assert n_sens == N_EACH  # exactly the flagged half
    page.get_by_text(f"{n_sens} sensitive").first.wait_for()
    c = check_images(page, server.base, truth, where="pred gallery")
    assert c["censored"] == n_sens and c["sharp"] == 16 - n_sens, c
    # on to Neighbours in the same session (sidebar settings are per session, never in the URL)
    sens = [k for k, r in truth.items() if r["sensitive"]]
    cell = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {sens[0]}"]')).last
    cell.get_by_role("link", name="Neighbours").click()
    page.get_by_role("heading", name="Neighbours").first.wait_for()
    page.wait_for_function("(alt) => { const i = document.querySelector('[data-testid=\"stMain\"] img[alt^=\"image \"]');"
                           " return i && i.alt === alt; }", arg=f"image {sens[0]}")
    wait_images(page, 13)
    check_images(page, server.base, truth, where="pred neighbours")
    shot(page, "exposure-predictions-only")


# ----------------------------------------------------------------------------- load, light


def test_two_sessions_browse_neighbours_at_once(server, expo):
    from bench.load import browse, tree_rss

    ids = [r["id"] for r in expo["expo-label"].values()]
    warm = browse(server.base, "expo-label", "color", ids, sessions=1, seconds=5, seed=1, server_pid=server.proc.pid)
    before = tree_rss(server.proc.pid)
    res = browse(server.base, "expo-label", "color", ids, sessions=2, seconds=15, seed=2, server_pid=server.proc.pid)
    print(f"\nload, light: {res.summary()}; RSS before {before / 2**20:.0f} MiB")
    assert not warm.errors and not res.errors, (warm.errors + res.errors)[:3]
    assert all(n >= 2 for n in res.per_session), res.per_session
    assert res.rss_peak - before < 200 * 2**20, "two more sessions took over 200 MiB"
