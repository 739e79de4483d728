"""Exposure, in Chromium: with safe view on (the default), no image without positive evidence
that it is safe ever reaches the browser unblurred, on any page; images with such evidence are
served sharp (blurring everything cannot pass).

Every ``<img>`` of each page is fetched again from its ``src`` and checked: a dataset image
(alt ``image <id>``) must be byte-identical to the rendering :mod:`lib.safety` makes of its
file (censored when an independent computation of the fail-closed rule says so, sharp
otherwise); any other image (colour-mask overlays, ground-truth masks, uploads) of a censored
image must carry no more high-frequency detail than a censored thumbnail. Plotly figures must
carry image ids only, never image data.

The datasets are built here from real corpus images, with labels that are *not* the words the
code knows (the expected decision below is written out per dataset, not read from the
vocabulary):

* ``expo-wild``: a folder of wounds and photos in category subfolders (``venous/``,
  ``dfu-clinic/``, ``stage-iii/``, ``healthy-skin/``, ``background/``), 30 images
  (two Gallery pages), the two photo folders made safe with ``--safe-labels``;
* ``expo-one``: a single wound image;
* ``expo-bare``: an unlabelled folder, two of its photos reviewed Ok;
* ``expo-label``: a labelled mixed dataset (sensitive / non_sensitive), reviewed by two annotators;
* ``expo-safe``: chest X-rays and blood smears marked known-safe;
* ``expo-pred``: unlabelled, with a prediction table that flags, clears (familiar) and marks unfamiliar.

Last, a light load test: two sessions browse Neighbours at once (``bench/load.py`` runs the
same with 8 sessions on 100k items).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
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
    choose,
    chromium,
    page,
    settle,
    shot,
    slide,
)

from lib import dataset

pytestmark = pytest.mark.browser

TINY = "open_clip:WB-Tiny-ViT"
TINY_KEY = f"{TINY}@@random"
N_EACH = 8  # sensitive-labelled and non-sensitive-labelled corpus images in expo-label
T_REVIEW = "2026-06-01T00:00:00+00:00"


# ----------------------------------------------------------------------------- data


def independent_eb(ds) -> np.ndarray:
    """EB of every row from freshly computed fractions, z-scored by hand (population sd)."""
    from lib.colorscore import score_paths

    f = score_paths([str(ds.abspath(p)) for p in ds.images["path"]], workers=1, cache=False)
    z = []
    for c in ("blood", "skin"):
        sd = f[c].std(ddof=0)
        z.append((f[c] - f[c].mean()) / sd if sd > 0 else f[c] * 0.0)
    return np.maximum(z[0], z[1]).to_numpy()


def _truth(ds, *, safe=(), sensitive=(), reviews=None, eb_threshold: float = 1.0, known_safe: bool = False,
           preds: pd.DataFrame | None = None, pred_threshold: float = 0.5) -> dict:
    """{id[:16]: {censored, path, id}} by the fail-closed rule, written out here: flagged by a
    label in ``sensitive``, an EB above the cut, a Blur/Maybe review or p >= the threshold;
    cleared by a label in ``safe``, an Ok review (which beats the label and EB flags), a
    familiar p below the threshold, or the known-safe mark; everything else censored.
    NudeNet scores already in the data home flag too: another test file on the same worker
    may have checked corpus images whose copies are here (V_51_1 scores 0.53)."""
    from lib import nudity
    from lib.sensitivity import NUDITY_THRESHOLD

    eb = independent_eb(ds)
    scored = nudity.cached(ds.images["id"])
    nude = set(scored["id"][scored["nudity"].astype(float) >= NUDITY_THRESHOLD])
    reviews = reviews or {}
    p = preds.set_index("id") if preds is not None else None
    out = {}
    for row, (cid, rel, lab) in enumerate(zip(ds.images["id"], ds.images["path"], ds.images["label"], strict=True)):
        lab = None if pd.isna(lab) else str(lab)
        flags = (lab in sensitive or not eb[row] <= eb_threshold or reviews.get(cid) in ("Blur", "Maybe")
                 or cid in nude)
        clears = lab in safe or known_safe
        if p is not None and cid in p.index:
            flags |= p.loc[cid, "p"] >= pred_threshold
            clears |= p.loc[cid, "p"] < pred_threshold and not p.loc[cid, "unfamiliar"]
        censored = not (reviews.get(cid) == "Ok" or (clears and not flags))
        out[cid[:16]] = {"censored": censored, "path": ds.abspath(rel), "id": cid}
    return out


def _copy(corpus_dir: Path, rows: pd.DataFrame, dest: Path, folder_of=lambda r: None) -> None:
    for _, r in rows.iterrows():
        sub = folder_of(r)
        out = dest / sub if sub else dest
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / r["path"], out / r["path"].replace("/", "_"))


@pytest.fixture(scope="module")
def expo(corpus_dir, tiny_model, tmp_path_factory):
    """The six datasets, embedded, with reviews, a policy, a known-safe mark, a prediction
    table and an expansion; returns each one's expected decision."""
    from lib import expansion as ex
    from lib import sensitivity
    from lib.annotations import AnnotationStore
    from lib.cli import main
    from lib.embeddings import embed
    from lib.expansion import seeds_from_labels
    from lib.neighbors import open_space

    work = tmp_path_factory.mktemp("expo")
    m = pd.read_csv(corpus_dir / "manifest.csv")
    store = AnnotationStore()
    out = {}

    # a folder in category subfolders whose names the vocabulary does not know
    folders = {"venous": m[m.subclass == "venous_wound"], "dfu-clinic": m[m.subclass == "diabetic_wound"],
               "stage-iii": m[m.subclass == "pressure_wound"], "healthy-skin": m[m.subclass == "normal_skin"],
               "background": m[m.subclass == "background"]}
    for folder, rows in folders.items():
        _copy(corpus_dir, rows.iloc[:6], work / "wild", lambda r, f=folder: f)
    assert main(["ingest", str(work / "wild"), "--name", "expo-wild", "--safe-labels", "healthy-skin,background"]) == 0
    out["expo-wild"] = _truth(dataset.load("expo-wild"), safe={"healthy-skin", "background"})

    # one wound image
    _copy(corpus_dir, m[m.subclass == "surgical_wound"].iloc[:1], work / "one")
    dataset.ingest(work / "one", "expo-one")
    out["expo-one"] = _truth(dataset.load("expo-one"))

    # an unlabelled folder; two of its photos reviewed Ok
    _copy(corpus_dir, pd.concat([m[m.label == "sensitive"].iloc[20:28], m[m.label == "non_sensitive"].iloc[20:28]]),
          work / "bare")
    dataset.ingest(work / "bare", "expo-bare")
    bare = dataset.load("expo-bare")
    ok = [cid for cid, p in zip(bare.images["id"], bare.images["path"], strict=True) if "azh" in p][:2]
    for cid in ok:
        store.set_label("expo-bare", cid, "ann", "Ok")
    out["expo-bare"] = _truth(bare, reviews={cid: "Ok" for cid in ok})

    # a labelled mixed dataset, two annotators who disagree on half the images
    rows = pd.concat([m[m.label == "sensitive"].iloc[:N_EACH], m[m.label == "non_sensitive"].iloc[:N_EACH]])
    rows.to_csv(work / "expo-label.csv", index=False)
    dataset.ingest(work / "expo-label.csv", "expo-label", root=corpus_dir)
    ds_lab = dataset.load("expo-label")
    latest = {}
    for i, cid in enumerate(ds_lab.unique_ids):
        store.set_label("expo-label", cid, "ann", "Blur" if i % 2 else "Ok")
    for i, cid in enumerate(ds_lab.unique_ids):  # bob's come later: they are the latest reviews
        latest[cid] = "Blur" if i % 4 < 2 else "Ok"
        store.set_label("expo-label", cid, "bob", latest[cid])
    out["expo-label"] = _truth(ds_lab, safe={"non_sensitive"}, sensitive={"sensitive"}, reviews=latest)

    # X-rays and blood smears, unlabelled, marked known-safe
    _copy(corpus_dir, pd.concat([m[m.source == "figure1_cxr"].iloc[:6], m[m.source == "bccd"].iloc[:6]]), work / "safe")
    dataset.ingest(work / "safe", "expo-safe")
    sensitivity.set_policy("expo-safe", known_safe=True, by="curator")
    out["expo-safe"] = _truth(dataset.load("expo-safe"), known_safe=True)

    # unlabelled, with a prediction table: flagged, cleared and familiar, unfamiliar
    rows = pd.concat([m[m.label == "sensitive"].iloc[40:48], m[m.label == "non_sensitive"].iloc[40:48]])
    rows.drop(columns=["label"]).to_csv(work / "expo-pred.csv", index=False)
    dataset.ingest(work / "expo-pred.csv", "expo-pred", root=corpus_dir)
    ds_pred = dataset.load("expo-pred")
    n = len(ds_pred)
    p = np.where(np.arange(n) % 3 == 0, 0.9, 0.05)
    preds = pd.DataFrame({"id": ds_pred.images["id"], "p": p, "unfamiliar": np.arange(n) % 4 == 1,
                          "uncertain": False, "threshold": 0.5})
    path = Path(os.environ["WORKBENCH_HOME"]) / "results" / "expo-pred" / "detect-fake.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(path, index=False)
    out["expo-pred"] = _truth(ds_pred, preds=preds)

    for name in out:
        embed(name, "color", workers=0)
    embed("expo-label", TINY, random_weights=True, backend=tiny_model)
    embed("expo-wild", TINY, random_weights=True, backend=tiny_model)
    space = open_space("expo-label", "color")
    ex.run_expansion(space, seeds_from_labels(ds_lab, 4, seed=0), 15, "best_rank", origin="labels:4")
    for name, truth in out.items():  # each dataset must test both sides where it can
        n_raw = sum(not r["censored"] for r in truth.values())
        print(f"{name}: {len(truth)} images, {len(truth) - n_raw} censored, {n_raw} raw")
    return out


@pytest.fixture(scope="module")
def server(expo, chromium):  # noqa: F811
    from bench.server import Server

    home = Path(os.environ["WORKBENCH_HOME"])
    with Server(home / "exposure-streamlit.log", home) as srv:
        yield srv


# ----------------------------------------------------------------------------- checks


def expected(rec: dict, censored: bool, side: int, mode: str | None = None) -> bytes:
    from lib.safety import thumbnail_rendering_bytes

    return thumbnail_rendering_bytes(rec["path"], mode or ("blur" if censored else "raw"), side=side)


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


def check_images(page, base: str, truth: dict, *, revealed=None, selected: str | None = None,  # noqa: F811
                 where: str = "") -> dict:
    """Assert the safe view on every image of the page; returns counts.

    ``revealed``: {id prefix: "regions" | "full"} revealed in this session.
    ``selected``: id prefix of the image other (non-dataset) images are derived from.
    """
    revealed = dict(revealed or {})
    counts = {"censored": 0, "sharp": 0, "regions": 0, "other": 0}
    for im in fetch_images(page, base):
        if im["alt"].startswith("image "):
            key = im["alt"][len("image "):]
            rec = truth[key]
            level = revealed.get(key) if rec["censored"] else None
            mode = "raw" if not rec["censored"] or level == "full" else "regions" if level else "blur"
            side = 512 if max(Image.open(io.BytesIO(im["data"])).size) > 256 else 256
            assert im["data"] == expected(rec, mode == "blur", side, mode), (where, key, rec["path"], mode)
            if mode == "blur":
                sharp = expected(rec, False, side)
                assert band_energy(im["data"]) < 0.1 * band_energy(sharp) + 0.5, (where, rec["path"])
            counts["censored" if mode == "blur" else "sharp" if mode == "raw" else "regions"] += 1
        else:
            assert selected is not None, (where, f"an image that is not a dataset image: {im['alt']!r}")
            rec = truth[selected]
            if rec["censored"] and revealed.get(selected) != "full":
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
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    imgs = page.locator('[data-testid="stMain"] img[alt^="image "]')
    try:
        imgs.nth(n - 1).wait_for()
    except PlaywrightTimeout:
        raise AssertionError(f"waited for {n} images, the page shows {imgs.count()}: "
                             + page.locator('[data-testid="stMain"]').inner_text()[:800]) from None
    settle(page)


def reveal(page, id16: str, level: str = "full") -> None:  # noqa: F811
    """Open the image's Reveal warning and confirm one level; wait for its new bytes."""
    cell = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {id16}"]')).last
    old = cell.locator("img").first.get_attribute("src")
    cell.get_by_role("button", name="Reveal").click()
    pop = page.locator('[data-testid="stPopoverBody"]').last
    pop.get_by_text("This image is censored").wait_for()
    pop.get_by_role("button", name="Show the full image" if level == "full" else
                    "Show with wound colours blacked out").click()
    page.wait_for_function("([alt, old]) => { const i = document.querySelector(`img[alt='${alt}']`); "
                           "return i && !i.src.endsWith(old); }", arg=[f"image {id16}", old])
    settle(page)
    if page.locator('[data-testid="stPopoverBody"]:visible').count():
        page.keyboard.press("Escape")  # a popover may stay open after its button ran
        page.locator('[data-testid="stPopoverBody"]:visible').first.wait_for(state="hidden")


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


# ----------------------------------------------------------------------------- every dataset kind

LABEL = {"dataset": "expo-label", "model": "color"}


def _both_sides(counts: dict, where: str) -> None:
    assert counts["censored"] >= 1 and counts["sharp"] >= 1, (where, counts)


@pytest.mark.parametrize("name", ["expo-wild", "expo-one", "expo-bare", "expo-label", "expo-safe", "expo-pred"])
def test_gallery_neighbours_and_blur_scores_of_every_kind_of_dataset(page, server, expo, name):  # noqa: F811
    """0 images without safe evidence served raw; those with it served sharp."""
    truth = expo[name]
    n, n_cens = len(truth), sum(r["censored"] for r in truth.values())
    params = {"dataset": name, "model": "color"}
    visit(page, server.base, "Gallery", "Gallery", **params)
    wait_images(page, min(n, 24))
    page.get_by_text(f"{n_cens} censored").first.wait_for()
    c = check_images(page, server.base, truth, where=f"{name} gallery")
    seen = c["censored"] + c["sharp"]
    if n > 24:  # the second page of results through the page control
        page.get_by_label(re.compile(r"Page \(of 2\)")).fill("2")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "page=2" in url)
        wait_images(page, n - 24)
        c2 = check_images(page, server.base, truth, where=f"{name} gallery page 2")
        seen += c2["censored"] + c2["sharp"]
        c = {k: c[k] + c2[k] for k in c}
    assert seen == n
    assert c["censored"] == n_cens, (name, c)
    if name == "expo-one":
        assert c == {"censored": 1, "sharp": 0, "regions": 0, "other": 0}
    else:
        _both_sides(c, name)
    first = next(r for r in truth.values() if r["censored"])
    visit(page, server.base, "Neighbours", "Neighbours", **params, id=first["id"])
    wait_images(page, min(n, 13))
    check_images(page, server.base, truth, where=f"{name} neighbours")
    key = first["id"][:16]
    visit(page, server.base, "Blur_scores", "Blur scores (EB)", **params, id=first["id"])
    page.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    c = check_images(page, server.base, truth, selected=key, where=f"{name} blur scores")
    assert c["censored"] >= 1 and c["other"] >= 1, c
    check_plotly(page, f"{name} blur scores")
    shot(page, f"exposure-{name}-blur-scores")


def test_gallery_and_neighbours_reveal_one_image_at_a_time(page, server, expo):  # noqa: F811
    truth = expo["expo-wild"]
    params = {"dataset": "expo-wild", "model": "color"}
    visit(page, server.base, "Gallery", "Gallery", **params)
    wait_images(page, 24)
    c = check_images(page, server.base, truth, where="gallery")
    _both_sides(c, "gallery")
    # every image carries its one-line reason
    reasons = page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').all_inner_texts()
    assert sum("not yet screened" in r for r in reasons) >= 1 and sum("→ safe" in r for r in reasons) >= 1
    sens = [k for k, r in truth.items() if r["censored"]]
    visit(page, server.base, "Neighbours", "Neighbours", **params, id=truth[sens[0]]["id"])
    wait_images(page, 13)
    check_images(page, server.base, truth, where="neighbours")
    # Reveal one censored result behind its warning: first its colour regions, then all of it.
    alts = [a[len("image "):] for a in page.locator('[data-testid="stMain"] img[alt^="image "]').evaluate_all(
        "els => els.map(e => e.alt)")]
    target = next(k for k in alts[1:] if truth[k]["censored"])
    reveal(page, target, "regions")
    c = check_images(page, server.base, truth, revealed={target: "regions"}, where="neighbours, regions")
    assert c["regions"] == alts.count(target)
    reveal(page, target, "full")
    c = check_images(page, server.base, truth, revealed={target: "full"}, where="neighbours, one revealed")
    assert c["censored"] >= 1
    # the same session on another page (the app's own link): still that one image only
    page.locator('[data-testid="stMain"]').get_by_role("link", name="Gallery").first.click()
    page.get_by_role("heading", name="Gallery").first.wait_for()
    wait_images(page, 24)
    check_images(page, server.base, truth, revealed={target: "full"}, where="gallery, one revealed")
    shot(page, "exposure-gallery-one-revealed")
    # re-blur all from the sidebar
    page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Re-blur all").click()
    settle(page)
    check_images(page, server.base, truth, where="gallery, re-blurred")
    # a reload is a new session: nothing revealed any more
    shown = [a[len("image "):] for a in page.locator('[data-testid="stMain"] img[alt^="image "]').evaluate_all(
        "els => els.map(e => e.alt)")]
    reveal(page, next(k for k in shown if truth[k]["censored"]), "full")
    visit(page, server.base, "Gallery", "Gallery", **params)
    wait_images(page, 24)
    check_images(page, server.base, truth, where="gallery, reloaded")


def test_moderator_settings_blur_strength_and_grey_reveals(page, server, expo):  # noqa: F811
    """The sidebar's blur strength changes every censored image's bytes (a stronger blur keeps
    less detail); with greyscale on, a revealed image is served without colour while images
    the decision clears stay in colour."""
    from lib.safety import thumbnail_rendering_bytes

    truth = expo["expo-wild"]
    visit(page, server.base, "Gallery", "Gallery", dataset="expo-wild", model="color")
    wait_images(page, 24)
    sidebar = page.locator('[data-testid="stSidebar"]')
    slider = sidebar.get_by_role("slider", name="Blur strength (% of the image)")
    slide(page, slider, 16)  # 8% -> 16%
    sidebar.get_by_text("Revealed images in greyscale").click()
    settle(page)
    wait_images(page, 24)
    by_alt = {im["alt"][len("image "):]: im["data"] for im in fetch_images(page, server.base)
              if im["alt"].startswith("image ")}
    censored = [k for k in by_alt if truth[k]["censored"]]
    sharp = [k for k in by_alt if not truth[k]["censored"]]
    assert censored and sharp
    for k in censored:
        side = 512 if max(Image.open(io.BytesIO(by_alt[k])).size) > 256 else 256
        want = thumbnail_rendering_bytes(truth[k]["path"], "blur", side=side, strength=0.16)
        assert by_alt[k] == want, k
        assert by_alt[k] != expected(truth[k], True, side)  # not the default 8% blur
        default = expected(truth[k], True, side)
        assert band_energy(by_alt[k]) <= band_energy(default) + 0.5, k  # stronger keeps no more detail
    for k in sharp:  # cleared images: raw and in colour (greyscale is for revealed images only)
        assert by_alt[k] == expected(truth[k], False, 256), k
    target = censored[0]
    reveal(page, target, "full")
    im = next(i for i in fetch_images(page, server.base) if i["alt"] == f"image {target}")
    assert im["data"] == thumbnail_rendering_bytes(truth[target]["path"], "raw", side=256, grey=True)
    rgb = np.asarray(Image.open(io.BytesIO(im["data"])).convert("RGB"), np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 3 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 3
    shot(page, "exposure-moderator-settings")


def test_policy_changed_in_the_app_changes_what_is_served(page, server, expo):  # noqa: F811
    """The Home page's policy table: a label set to safe is served sharp at once, no re-ingest."""
    from lib import sensitivity

    truth = expo["expo-wild"]
    visit(page, server.base, "", "Sensitive image workbench", dataset="expo-wild", model="color")
    page.get_by_text("Label policy").first.wait_for()
    shot(page, "exposure-home-policy")
    sensitivity.set_policy("expo-wild", safe=["venous"], by="test")  # as the table's Save does
    try:
        ds = dataset.load("expo-wild")
        now = _truth(ds, safe={"healthy-skin", "background", "venous"})
        assert sum(not r["censored"] for r in now.values()) > sum(not r["censored"] for r in truth.values())
        visit(page, server.base, "Gallery", "Gallery", dataset="expo-wild", model="color")
        choose(page, "Safe-view evidence", "cleared by label")
        n = sum(not r["censored"] for r in now.values())
        wait_images(page, min(n, 24))
        c = check_images(page, server.base, now, where="gallery, venous now safe")
        assert c["sharp"] == min(n, 24) and c["censored"] == 0
    finally:
        sensitivity.set_policy("expo-wild", unknown=["venous"], by="test")


def test_zero_shot_mistakes_and_retrieval_results(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    params = {"dataset": "expo-label", "model": TINY_KEY, "random": "1"}
    visit(page, server.base, "Zero-shot", "Zero-shot classification", **params)
    page.get_by_role("button", name="Run zero-shot").click()
    page.get_by_text("Mistakes at this threshold").wait_for()
    settle(page)
    assert_no_exception(page)
    wait_images(page, 1)  # the mistakes' thumbnails can arrive after the heading (seen on a loaded machine)
    c = check_images(page, server.base, truth, where="zero-shot mistakes")
    assert c["censored"] + c["sharp"] >= 1, "no mistake shown: nothing was checked"
    check_plotly(page, "zero-shot")

    visit(page, server.base, "Retrieval", "Retrieval", **params)
    page.get_by_label("Text query").fill("a photo of an open wound")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("results for").wait_for()
    wait_images(page, 16)
    _both_sides(check_images(page, server.base, truth, where="retrieval, text"), "retrieval, text")
    page.get_by_role("tab", name="Image → image").click()
    sens = next(r for r in truth.values() if r["censored"])
    page.get_by_label("Image id (or a unique prefix)").fill(sens["id"][:12])
    page.keyboard.press("Enter")
    page.locator(f'[data-testid="stMain"] img[alt="image {sens["id"][:16]}"]:visible').first.wait_for()
    page.locator('[data-testid="stMain"] img[alt^="image "]:visible').nth(10).wait_for()  # query + results
    settle(page)
    assert_no_exception(page)
    c = check_images(page, server.base, truth, where="retrieval, image")
    assert c["censored"] >= 1
    # the wound folder, whose labels the vocabulary mostly does not know
    visit(page, server.base, "Retrieval", "Retrieval", dataset="expo-wild", model=TINY_KEY, random="1")
    page.get_by_label("Text query").fill("a photo of an open wound")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("results for").wait_for()
    wait_images(page, 16)
    check_images(page, server.base, expo["expo-wild"], where="retrieval, wild")


def test_blur_scores_one_image_masks_and_scatter(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    sens = [k for k, r in truth.items() if r["censored"]]
    visit(page, server.base, "Blur_scores", "Blur scores (EB)", **LABEL, id=truth[sens[0]]["id"])
    page.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    c = check_images(page, server.base, truth, selected=sens[0], where="blur scores")
    assert c["censored"] >= 1 and c["other"] >= 1, c  # the image and its colour-mask overlay
    check_plotly(page, "blur scores")
    # hover a censored point: the label holds numbers, no image
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
    page.get_by_text(re.compile(r"\d+ images? selected")).first.wait_for()
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


def test_annotate_not_yet_screened_queue_of_the_wound_folder(page, server, expo):  # noqa: F811
    truth = expo["expo-wild"]
    visit(page, server.base, "Annotate", "Annotate", dataset="expo-wild", model="color")
    page.get_by_placeholder("your name").fill("dora")
    page.keyboard.press("Enter")
    page.get_by_text("Not yet screened", exact=True).click()
    settle(page)
    page.locator('[data-testid="stMain"] img[alt^="image "]').first.wait_for()
    for _ in range(3):
        alt = page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt")[len("image "):]
        assert truth[alt]["censored"]
        check_images(page, server.base, truth, where="annotate, not yet screened")
        page.get_by_role("button", name="Next").click()
        settle(page)
    shot(page, "exposure-annotate-not-yet-screened")


def test_uploads_bomb_hostile_name_and_html(page, server, expo):  # noqa: F811
    truth = expo["expo-label"]
    sens = next(r for r in truth.values() if r["censored"])
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
        assert im["data"] == expected(rec, rec["censored"], 256), key


def test_prediction_table_flags_and_clears_only_familiar_images(page, server, expo):  # noqa: F811
    """A detector-style table (p, unfamiliar) is preselected: p >= 0.5 flags; p below clears
    only familiar images; the threshold slider moves the line."""
    truth = expo["expo-pred"]
    visit(page, server.base, "Gallery", "Gallery", dataset="expo-pred", model="color")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Flag at p ≥").wait_for()  # a table is chosen: the detect- one, by default
    wait_images(page, 16)
    c = check_images(page, server.base, truth, where="pred gallery")
    _both_sides(c, "pred gallery")
    reasons = " ".join(page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').all_inner_texts())
    assert "fake: p 0.90 ≥ 0.50" in reasons and "fake: p 0.05 < 0.50, familiar" in reasons
    assert "unfamiliar image" in reasons
    # on to Neighbours in the same session (sidebar settings are per session, never in the URL)
    sens = [k for k, r in truth.items() if r["censored"]]
    cell = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {sens[0]}"]')).last
    cell.get_by_role("link", name="Neighbours").click()
    page.get_by_role("heading", name="Neighbours").first.wait_for()
    page.wait_for_function("(alt) => { const i = document.querySelector('[data-testid=\"stMain\"] img[alt^=\"image \"]');"
                           " return i && i.alt === alt; }", arg=f"image {sens[0]}")
    wait_images(page, 13)
    check_images(page, server.base, truth, where="pred neighbours")
    shot(page, "exposure-predictions")


# ----------------------------------------------------------------------------- load, light


def test_two_sessions_browse_neighbours_at_once(server, expo):
    from bench.load import browse, tree_rss

    ids = [r["id"] for r in expo["expo-label"].values()]
    warm = browse(server.base, "expo-label", "color", ids, sessions=1, seconds=5, seed=1, server_pid=server.proc.pid)
    before = tree_rss(server.proc.pid)
    res = browse(server.base, "expo-label", "color", ids, sessions=2, seconds=15, seed=2, server_pid=server.proc.pid)
    print(f"\nload, light: {res.summary()}; RSS before {before / 2**20:.0f} MiB")
    assert not warm.errors and not res.errors, (warm.errors + res.errors)[:3]
    assert all(n >= 1 for n in res.per_session), res.per_session  # every session rendered (rates: bench/load.py)
    assert res.rss_peak - before < 200 * 2**20, "two more sessions took over 200 MiB"
