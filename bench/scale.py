"""A million-image collection (opt-in: ``--only scale``): ingest speed, loading, the annotation store, the app.

The 1M-row dataset reuses files: ``FILES`` distinct tiny PNGs are ingested for real (that
gives ingest's rows/s: every row is hashed and fully decoded), then each row is repeated
``n / FILES`` times with a distinct synthetic content id ``sha256(<file's id>:<copy>)``
and the copy number in a metadata column ``copy`` (written as ingest writes a dataset:
images.parquet, errors, duplicates, dataset.json through :mod:`lib.files`). So every cache
and the annotation store see 1M distinct images, while the disk holds ``FILES`` files.

Measured at 100k and 1M rows, side by side in one run:

- ``dataset.load`` (parquet -> DataFrame) and the process's RSS after it;
- labelling every image (bulk labels in transactions of 20k) in rows/s;
- the annotation store's queries by status: the images with a label (``ids_with_label``,
  through the v3 ``current_label`` index; a large answer, 10% of the rows, and an empty
  one), the counts per label (v3 ``current_counts``, kept by triggers), an annotator's
  unlabelled images; beside each, the store before v3 (the index dropped in a transaction
  that is rolled back, counts by ``COUNT(*)``);
- the app on each dataset (after its labelling: the safe view reads those reviews), as a
  user's earlier runs leave it (:func:`_app_data`: synthetic clustered 512-d ViT-B-32 vectors
  per synthetic id, each row's EB fractions copied from its file's, the IVF index and PCA map
  built and saved): Gallery, Neighbours and Map painted by Chromium (Playwright), cold on a
  fresh server per page and warm in new tabs (goals at 1M: < 10 s and < 2 s), the server's
  RSS after the three pages (< 3 GiB), the map's drawn sample and its exact counts, and a
  lasso drawn with the mouse whose selection must be the points inside its polygon.
  ``WB_SCALE_BEFORE=<checkout>`` paints an older commit's app first, on the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

import numpy as np

from .common import RESULTS, Recorder, clustered_vectors, fresh_home, tiny_image_folder, vitb32_spec

FILES = 20_000
LABELS = ("Ok", "Blur", "Maybe")


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _best(fn, reps: int = 5) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def _replicate(base: str, name: str, n: int) -> None:
    """Dataset ``name``: the rows of ``base`` repeated to ``n`` rows with distinct synthetic ids."""
    import pandas as pd

    from lib import config, dataset
    from lib.files import write_table, write_text

    src = dataset.load(base)
    rows = src.images
    copies = -(-n // len(rows))
    big = pd.concat([rows] * copies, ignore_index=True).iloc[:n].copy()
    copy = np.repeat(np.arange(copies), len(rows))[:n]
    big["id"] = pd.array([hashlib.sha256(f"{i}:{c}".encode()).hexdigest()
                          for i, c in zip(big["id"].tolist(), copy.tolist(), strict=True)], dtype="string")
    big["copy"] = copy
    out = config.datasets_dir() / name
    config.ensure(out)
    write_table(out / "images.parquet", big)
    write_table(out / "errors.parquet", src.errors)
    write_table(out / "duplicates.parquet", src.duplicates)
    info = {**json.loads((config.datasets_dir() / base / "dataset.json").read_text()), "name": name,
            "images": len(big), "metadata_columns": ["copy"],
            "synthetic": f"rows of {base!r} repeated {copies}x, id = sha256(<id>:<copy>)"}
    write_text(out / "dataset.json", json.dumps(info, indent=2))


def _app_data(name: str, spec: str, fingerprint: str, info: dict) -> dict[str, float]:
    """What the app pages read for dataset ``name`` (built by :func:`_replicate`), as a user's
    earlier runs would have left it: synthetic vectors in the model's cache (clustered 512-d
    unit vectors, :func:`bench.common.clustered_vectors`, one per synthetic id), the EB
    fractions of every row (its file's own, computed once on the ``files`` dataset and
    copied to every synthetic id: the copies are the same pixels), the vector index built
    and saved, and the PCA map computed and cached. Returns seconds per step."""
    from lib import dataset, gallery
    from lib.colorscore import FractionCache
    from lib.embeddings import EmbeddingStore, load_embeddings
    from lib.neighbors import open_space
    from lib.projection import project

    out = {}
    t = time.perf_counter()
    ds = dataset.load(name)
    ids = ds.images["id"].astype(str).tolist()  # distinct: one row per synthetic id
    store = EmbeddingStore(fingerprint)
    store.write_info({**info, "synthetic": True})  # the model's fingerprint_info, spec and dim
    vecs = clustered_vectors(len(ids), int(info["dim"]), seed=1)
    missing = set(store.missing(ids))  # a smaller size's rows are the first copies: their ids are cached
    rows = np.array([r for r, i in enumerate(ids) if i in missing], np.int64)
    for s in range(0, len(rows), 4096):
        part = rows[s:s + 4096]
        store.write_shard([ids[r] for r in part], np.asarray(vecs[part]))
    del vecs
    out["vectors"] = time.perf_counter() - t
    t = time.perf_counter()
    src = dataset.load("files").images["id"].astype(str).to_numpy()
    gallery.eb_scores(dataset.load("files"))  # the files' own fractions (cached after the first size)
    frac = FractionCache().read().set_index("id")
    base = frac.reindex(np.resize(src, len(ids)))  # row r is a copy of file row r % len(files) (_replicate)
    FractionCache().add(ids, base["blood"].to_numpy(), base["skin"].to_numpy())
    out["eb"] = time.perf_counter() - t
    t = time.perf_counter()
    space = open_space(name, spec)
    space.index  # noqa: B018 - built and saved
    out["index"] = time.perf_counter() - t
    t = time.perf_counter()
    project(load_embeddings(name, spec), "pca")
    out["pca"] = time.perf_counter() - t
    return out


def _label_loop(name: str, labels: int = 3) -> dict:
    """The safe view's decision after each of ``labels`` single labels (what the next page run
    waits for while a moderator reviews), against deciding the whole dataset once more; and
    whether the two tables agree. Run after the app's data, on its EB scores."""
    from lib import dataset, evidence, sensitivity
    from lib.annotations import AnnotationStore

    store = AnnotationStore()
    ds = dataset.load(name)
    inputs = evidence.dataset_evidence(ds, nudity=False)

    def decision() -> object:
        return evidence.stored_decision(name, ds.images, ("bench",), lambda: inputs, event=store.last_event(name),
                                        store=store)

    decision()  # the decision as a page left it (decided here or read back)
    after = []
    for k in range(labels):
        store.set_label(name, ds.images["id"].iat[7 + k], "ann", "Ok")
        t = time.perf_counter()
        got = decision()
        after.append(time.perf_counter() - t)
    t = time.perf_counter()
    whole = sensitivity.decide(ds.images, reviews=evidence.reviews(name, store), **inputs)
    whole_s = time.perf_counter() - t
    same = bool((whole["reason"].to_numpy() == got["reason"].to_numpy()).all()
                and (whole["censored"].to_numpy() == got["censored"].to_numpy()).all())
    return {"after": after, "whole": whole_s, "same": same}


#: The pages measured at scale, and the images each shows when painted (Neighbours: the
#: query and its 12 neighbours; Gallery: its first page of 24; Map: the plot).
APP_PAGES = {"Gallery": 24, "Neighbours": 13, "Map": 0}


def _rss_tree(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**30


def _url(base: str, page: str, name: str, spec: str, qid: str) -> str:
    from urllib.parse import urlencode

    params = {"dataset": name, "model": spec, **({"id": qid} if page == "Neighbours" else {})}
    return f"{base}/{page}?" + urlencode(params)


def _drawn(page, images: int, where: str) -> None:
    """Wait until the page's content is on screen (its first ``images`` images, or the map:
    the figure whose layout.meta counts the points, not another plotly chart such as the
    Home page's) and its script run has finished; raise if it shows a traceback."""
    if images:
        page.locator('[data-testid="stMain"] img[alt^="image "]').nth(images - 1).wait_for()
    else:
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMain\"] .js-plotly-plot')]"
                               ".some(gd => gd.data && gd.data.length > 0 && gd._fullLayout && gd.layout.meta"
                               " && gd.layout.meta.points > 0)")
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError(f"{where} raised: " + page.locator('[data-testid="stException"]').first.inner_text()[:500])


def _paint(page, url: str, images: int) -> float:
    """Seconds from navigation until the page's content is on screen and its run finished."""
    t = time.perf_counter()
    page.goto(url)
    _drawn(page, images, url)
    return time.perf_counter() - t


def _navigate(page, page_name: str, images: int, reps: int = 3) -> list[float]:
    """Seconds from a click on the sidebar's link to ``page_name`` (the app's own navigation:
    no page load, plotly.js stays loaded) until its content is drawn and the run finished;
    ``reps`` times, back to the Home page in between. The page's heading is its name."""
    times = []
    nav = page.locator('[data-testid="stSidebarNav"]')
    for _ in range(reps):
        nav.get_by_role("link", name="Home", exact=True).click()
        page.get_by_role("heading", name="Sensitive image workbench").first.wait_for()
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
        link = nav.get_by_role("link", name=page_name, exact=True)
        if not link.is_visible():  # the sidebar lists the first pages until "View more" is pressed
            nav.locator('[data-testid="stSidebarNavViewButton"]').click()
            link.wait_for()
        t = time.perf_counter()
        link.click()
        page.get_by_role("heading", name=page_name).first.wait_for()  # the new page's, not the Home page's content
        _drawn(page, images, page_name)
        times.append(time.perf_counter() - t)
    return times


def _convex_inside(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Inside a convex polygon: on the inner side of every edge (independent of lib.charts' test)."""
    sign = np.sign(np.sum(px * np.roll(py, -1) - np.roll(px, -1) * py))  # counter-clockwise: +
    ok = np.ones(len(x), bool)
    for i in range(len(px)):
        j = (i + 1) % len(px)
        ok &= sign * ((px[j] - px[i]) * (y - py[i]) - (py[j] - py[i]) * (x - px[i])) > 0
    return ok


def _lasso(page, xy: np.ndarray, ids: np.ndarray) -> dict:
    """Draw a hexagon lasso on the open Map page; returns what the page selected and what
    lies inside the lasso's polygon (the one plotly reports, in data coordinates), computed
    here from the projection's coordinates."""
    import re

    # centred on the densest cell of a 40 x 40 histogram of every point, so it holds many
    counts, ex, ey = np.histogram2d(xy[:, 0], xy[:, 1], bins=40)
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    box = page.evaluate("""([dx, dy]) => { const gd = document.querySelector('.js-plotly-plot');
        const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return {left: r.left + xa._offset, top: r.top + ya._offset, w: xa._length, h: ya._length,
                cx: r.left + xa._offset + xa.d2p(dx), cy: r.top + ya._offset + ya.d2p(dy)}; }""",
                        [float((ex[i] + ex[i + 1]) / 2), float((ey[j] + ey[j + 1]) / 2)])
    cx, cy = box["cx"], box["cy"]
    page.mouse.move(cx, cy)  # the modebar shows on hover
    page.locator('.modebar-btn[data-title="Lasso Select"]').first.click()
    ang = np.linspace(0, 2 * np.pi, 7)[:-1]
    verts = [(round(cx + box["w"] * 0.06 * np.cos(a)), round(cy + box["h"] * 0.08 * np.sin(a))) for a in ang]
    page.evaluate("() => { window.__lasso = null; const gd = document.querySelector('.js-plotly-plot');"
                  " gd.on('plotly_selected', e => { window.__lasso = JSON.stringify(gd.layout.selections || []); }); }")
    page.mouse.move(*verts[0])
    page.mouse.down()
    for v in [*verts[1:], verts[0]]:  # one move per vertex: the lasso's path is exactly the hexagon
        page.mouse.move(*v)
    t = time.perf_counter()
    page.mouse.up()
    sels = json.loads(page.wait_for_function("() => window.__lasso").json_value())
    path = next(s_["path"] for s_ in sels if s_.get("type") == "path")
    pts = [tuple(map(float, v.split(","))) for v in path.replace("M", "").replace("Z", "").split("L")]
    px, py = np.array([p_[0] for p_ in pts]), np.array([p_[1] for p_ in pts])
    keep = np.r_[True, np.hypot(np.diff(px), np.diff(py)) > 0]  # the closing vertex repeats the first
    px, py = px[keep], py[keep]
    if np.hypot(px[-1] - px[0], py[-1] - py[0]) == 0:
        px, py = px[:-1], py[:-1]
    page.get_by_text("selected** with the lasso", exact=False).or_(page.get_by_text("selected with the lasso")) \
        .first.wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    seconds = time.perf_counter() - t
    text = page.locator('[data-testid="stMain"]').inner_text()
    shown = int(re.search(r"([\d,]+) images? selected", text).group(1).replace(",", ""))
    inside = _convex_inside(xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64), px, py)
    return {"shown": shown, "want": set(ids[inside].tolist()), "seconds": seconds, "vertices": len(px)}


def _measure(n: int, spec: str, log_dir, repo=None, *, warm_reps: int = 3, checks: bool = True,
             timeout_s: float = 300) -> dict:
    """Paint Gallery, Neighbours and Map of dataset ``big<n>`` in Chromium, each on a fresh
    server (cold), then in new tabs (warm); with ``checks``, the map's counts and a lasso;
    then RSS after a fresh server served the three pages. ``repo``: the checkout whose app
    runs (an older commit, side by side). A page that fails or times out is NaN, with why."""
    from playwright.sync_api import sync_playwright

    from lib import dataset
    from lib.embeddings import load_embeddings
    from lib.projection import project

    from .app_page import CHROMIUM
    from .server import Server

    tag = _tag(n)
    name = f"big{tag}"
    images = dataset.load(name).images
    ids = images["id"].astype(str).to_numpy()
    qid = str(ids[len(ids) // 3])
    got: dict = {"labels": images["label"].astype("string").fillna("(none)").value_counts().to_dict(), "errors": []}
    xy = project(load_embeddings(name, spec), "pca") if checks else None  # cached by _app_data: what the page reads
    suffix = "" if repo is None else "-before"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            got["first"] = float("nan")
            with Server(log_dir / f"streamlit-{name}-first{suffix}.log", cwd=repo) as server:
                # the first server after the data is built derives the safe view's decision and the
                # EB scores and stores them (lib.files.stored_table); later servers read them back
                ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                try:
                    page = ctx.new_page()
                    page.set_default_timeout(timeout_s * 1000)
                    got["first"] = _paint(page, _url(server.base, "Gallery", name, spec, qid), APP_PAGES["Gallery"])
                except Exception as e:
                    got["errors"].append(f"first: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                finally:
                    ctx.close()
            for page_name, want in APP_PAGES.items():  # one fresh server per page: its cold paint
                got[f"{page_name} cold"] = got[f"{page_name} warm"] = float("nan")
                with Server(log_dir / f"streamlit-{name}-{page_name}{suffix}.log", cwd=repo) as server:
                    got.setdefault("started", []).append(server.started_s)
                    ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                    try:
                        page = ctx.new_page()
                        page.set_default_timeout(timeout_s * 1000)
                        url = _url(server.base, page_name, name, spec, qid)
                        got[f"{page_name} cold"] = _paint(page, url, want)
                        page.close()
                        warm = []
                        for k in range(warm_reps):  # new tabs: the server's caches are warm
                            page = ctx.new_page()
                            page.set_default_timeout(timeout_s * 1000)
                            warm.append(_paint(page, url, want))
                            if checks and page_name == "Map" and k == warm_reps - 1:
                                _map_checks(page, got, xy, ids)
                            page.close()
                        got[f"{page_name} warm"] = min(warm)
                        got[f"{page_name} warm all"] = warm
                        if page_name == "Gallery" and checks:  # a moderator's label, then the next page
                            from lib.annotations import AnnotationStore

                            AnnotationStore().set_label(name, str(ids[11]), "ann", "Blur")
                            page = ctx.new_page()
                            page.set_default_timeout(timeout_s * 1000)
                            got["Gallery after a label"] = _paint(page, url, want)
                            page.close()
                    except Exception as e:  # a timeout: the figure is missing, the run goes on
                        got["errors"].append(f"{page_name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                    finally:
                        got[f"{page_name} rss"] = _rss_tree(server.proc.pid)
                        ctx.close()
            got["rss"] = float("nan")
            with Server(log_dir / f"streamlit-{name}-all{suffix}.log", cwd=repo) as server:  # a user's tour
                ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                try:
                    page = ctx.new_page()
                    page.set_default_timeout(timeout_s * 1000)
                    for page_name, want in APP_PAGES.items():
                        _paint(page, _url(server.base, page_name, name, spec, qid), want)
                    got["rss"] = _rss_tree(server.proc.pid)
                    for page_name, want in APP_PAGES.items():  # then as a user moves on: the sidebar
                        if page_name != "Neighbours":  # it needs an image id (its link carries none)
                            got[f"{page_name} nav all"] = _navigate(page, page_name, want)
                            got[f"{page_name} nav"] = min(got[f"{page_name} nav all"])
                except Exception as e:
                    got["errors"].append(f"tour: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                finally:
                    ctx.close()
        finally:
            browser.close()
    return got


#: The floor of any Streamlit page on this host: a sidebar, a title and 24 images, nothing else.
BARE_APP = """import numpy as np
import streamlit as st
st.set_page_config(layout="wide")
with st.sidebar:
    st.selectbox("Dataset", ["a"])
st.title("Bare page")
if st.query_params.get("plot"):  # the floor of a page with a plotly chart: plotly.js loads with it
    import plotly.graph_objects as go
    xy = np.random.default_rng(0).random((2, 1000))
    st.plotly_chart(go.Figure(go.Scattergl(x=xy[0], y=xy[1], mode="markers")), on_select="rerun", key="m")
else:
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    for r in range(4):
        for c in st.columns(6):
            with c:
                st.image(img, alt="image bare", width="stretch")
                st.caption("caption")
"""


def _floor(log_dir, warm_reps: int = 3) -> dict:
    """Cold and warm first paint of :data:`BARE_APP` (the same Chromium, the same server
    launch): what this host's Streamlit costs before any page of ours draws anything; then
    ``plot warm``: the same page with one small plotly chart instead of its images."""
    import sys

    from playwright.sync_api import sync_playwright

    from .app_page import CHROMIUM
    from .common import WORK
    from .server import Server, free_port

    folder = WORK / "bare-app"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless",
           "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    got = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            with Server(log_dir / "streamlit-bare.log", port=port, command=cmd, cwd=folder) as server:
                ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                times = []
                for _ in range(warm_reps + 1):
                    page = ctx.new_page()
                    t = time.perf_counter()
                    page.goto(server.base + "/")
                    page.locator('img[alt="image bare"]').nth(23).wait_for()
                    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
                    times.append(time.perf_counter() - t)
                    page.close()
                got = {"cold": times[0], "warm": min(times[1:]), "warm all": times[1:]}
                plot = []
                for _ in range(warm_reps + 1):  # the first loads plotly.js into this browser's cache
                    page = ctx.new_page()
                    t = time.perf_counter()
                    page.goto(server.base + "/?plot=1")
                    page.wait_for_function("() => { const gd = document.querySelector('.js-plotly-plot');"
                                           " return gd && gd.data && gd.data.length > 0 && gd._fullLayout; }")
                    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
                    plot.append(time.perf_counter() - t)
                    page.close()
                got.update({"plot warm": min(plot[1:]), "plot warm all": plot[1:]})
                ctx.close()
        finally:
            browser.close()
    return got


def _map_checks(page, got: dict, xy: np.ndarray, ids: np.ndarray) -> None:
    """The map's counts (its layout.meta) and a lasso, then the selection's first Gallery page."""
    from lib import gallery

    got["meta"] = page.evaluate("() => document.querySelector('.js-plotly-plot').layout.meta")
    lasso = _lasso(page, xy, ids)
    page.get_by_role("link", name="Open selection in Gallery").click()
    page.get_by_text(f"Only the {gallery.plural(lasso['shown'], 'image')} selected").first.wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.get_by_role("heading", name="Gallery").first.wait_for()
    page.locator('[data-testid="stMain"] img[alt^="image "]').nth(min(lasso["shown"], 24) - 1).wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    alts = page.locator('[data-testid="stMain"] img[alt^="image "]').evaluate_all("els => els.map(e => e.alt.slice(6))")
    prefixes = {i[:16] for i in lasso["want"]}
    lasso["outside"] = [a for a in alts if a not in prefixes]
    lasso["gallery_ok"] = bool(alts) and not lasso["outside"]
    lasso["want"] = len(lasso["want"])
    got["lasso"] = lasso


def _record(rec: Recorder, sizes: list[int], figs: dict, before: dict | None, before_name: str) -> None:
    """Rows: each size's paints, RSS and checks, the first size's figure beside the largest's,
    and with ``before`` the older commit's figure beside each (measured in this run)."""
    first = _tag(sizes[0])
    for n in sizes:
        tag, got = _tag(n), figs[_tag(n)]
        one_m = n >= 1_000_000
        old = (before or {}).get(tag)

        def beside(key: str, tag=tag, old=old) -> str:
            out = f"; {first}: {figs[first][key]:.2f}" if tag != first and key in figs[first] else ""
            if old is not None and key in old:
                out += f"; before ({before_name}): {old[key]:.2f}"
            return out

        rec.add(f"{tag}: Gallery first paint, the first server after the data is built", got["first"], "s",
                note="derives and stores the safe view's decision and the EB scores" + beside("first"))
        for page_name in APP_PAGES:
            rec.add(f"{tag}: {page_name} first paint, cold server", got[f"{page_name} cold"], "s",
                    ("<", 10.0) if one_m else None, note="first visit after the server starts" +
                    beside(f"{page_name} cold"))
            rec.add(f"{tag}: {page_name} first paint, warm server", got[f"{page_name} warm"], "s",
                    ("<", 2.0) if one_m else None, note="new tab, best of 3: " + ", ".join(
                        f"{w:.2f}" for w in got.get(f"{page_name} warm all", [])) + beside(f"{page_name} warm"))
        for page_name in APP_PAGES:
            if f"{page_name} nav" in got:
                rec.add(f"{tag}: {page_name}, reached from the sidebar (the app's navigation, one tab)",
                        got[f"{page_name} nav"], "s", note="click to content drawn, best of 3: " + ", ".join(
                            f"{w:.2f}" for w in got[f"{page_name} nav all"]) + "; no page load, so plotly.js is not "
                        "evaluated again (the goal rows above are full page loads)" + beside(f"{page_name} nav"))
        if "Gallery after a label" in got:
            rec.add(f"{tag}: Gallery first paint after one new label, warm server", got["Gallery after a label"], "s",
                    note="the safe view decides that image's rows again, not the dataset" + beside("Gallery after a label"))
        if got.get("started"):
            rec.add(f"{tag}: server ready after launch", float(np.median(got["started"])), "s",
                    note="median of the fresh servers above (launch to /_stcore/health; `python -m lib app` imports "
                         "the pages' modules before it listens)")
        rec.add(f"{tag}: server RSS after Gallery, Neighbours and Map", got["rss"], "GiB", ("<", 3.0) if one_m else None,
                note=f"max after one page: {max(got[f'{p_} rss'] for p_ in APP_PAGES):.2f}" + beside("rss"))
        meta, lasso = got.get("meta"), got.get("lasso")
        if meta:
            exact = meta["points"] == n and meta["counts"] == got["labels"]
            rec.add(f"{tag}: map points drawn (WebGL, a seeded sample)", meta["drawn"], "points",
                    note=f"of {meta['points']:,}; legend counts {'equal' if exact else 'DIFFER from'} the dataset's "
                         f"label counts {got['labels']}")
            rec.add(f"{tag}: map counts exact (1 = yes)", float(exact), "", (">=", 1))
        if lasso:
            ok = lasso["shown"] == lasso["want"] and lasso["gallery_ok"]
            rec.add(f"{tag}: lasso selects exactly the points inside (1 = yes)", float(ok), "", (">=", 1),
                    note=f"page: {lasso['shown']:,} selected; inside the {lasso['vertices']}-vertex polygon plotly "
                         f"reported (half-plane test on the projection): {lasso['want']:,}; the Gallery's first page "
                         f"{'all inside' if lasso['gallery_ok'] else 'NOT all inside'}; lasso to rerun done "
                         f"{lasso['seconds']:.2f} s")
        for err in got["errors"]:
            rec.explain(f"{tag}: {err}")
        if old is not None:
            for err in old["errors"]:
                rec.explain(f"{tag}, before ({before_name}): {err}")


def _tag(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"


def run(rec: Recorder) -> None:
    from lib import dataset
    from lib.annotations import AnnotationStore

    sizes = [20_000, 100_000] if rec.quick else [100_000, 1_000_000]
    fresh_home("scale")
    files = tiny_image_folder(FILES)
    t = time.perf_counter()
    dataset.ingest(files, "files", workers=os.cpu_count())
    dt = time.perf_counter() - t
    rec.add(f"ingest: {FILES} tiny PNGs (hash + full decode per row)", FILES / dt, "rows/s",
            note=f"{dt:.1f} s; at this rate 1M rows take {1e6 / (FILES / dt) / 60:.1f} min")
    store = AnnotationStore()
    for n in sizes:
        tag = _tag(n)
        name = f"big{tag}"
        t = time.perf_counter()
        _replicate("files", name, n)
        rec.add(f"{tag}: build the synthetic dataset", time.perf_counter() - t, "s")
        rss0 = _rss_gib()
        load_s = _best(lambda name=name: dataset.load(name), reps=3)
        ds = dataset.load(name)
        rec.add(f"{tag}: dataset.load", load_s * 1e3, "ms", note=f"RSS {_rss_gib():.2f} GiB after (was {rss0:.2f})")
        ids = ds.images["id"].tolist()
        rng = np.random.default_rng(0)
        which = rng.choice(len(LABELS), size=len(ids), p=[0.6, 0.3, 0.1])
        t = time.perf_counter()
        for k, label in enumerate(LABELS):
            chosen = [i for i, w in zip(ids, which.tolist(), strict=True) if w == k]
            for s in range(0, len(chosen), 20_000):
                store.bulk_label(name, chosen[s:s + 20_000], "ann", label)
        dt = time.perf_counter() - t
        rec.add(f"{tag}: label every image (bulk, 20k per transaction)", len(ids) / dt, "rows/s", note=f"{dt:.1f} s")
        # A second annotator on a tenth: the by-anyone query must deduplicate.
        for s in range(0, len(ids) // 10, 20_000):
            store.bulk_label(name, ids[s:min(s + 20_000, len(ids) // 10)], "bob", "Blur")
        n_blur = len(store.ids_with_label(name, "Blur"))
        goal = ("<", 100) if n == 1_000_000 else None
        q = _best(lambda name=name: store.ids_with_label(name, "Maybe", annotator="ann"))
        q1 = _best(lambda name=name: store.ids_with_label(name, "Maybe", annotator="bob"))  # none: the lookup alone
        qc = _best(lambda name=name: store.label_counts(name))
        # The store before v3, side by side: the same queries with the v3 index dropped inside a
        # transaction that is rolled back (v2 plans: the primary key, current_annotator; COUNT(*)).
        with sqlite3.connect(store.path, isolation_level=None) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DROP INDEX current_label")
            sql = "SELECT DISTINCT image_id FROM current WHERE dataset = ? AND label = ? AND annotator = ? ORDER BY image_id"
            counts = "SELECT label, COUNT(*) FROM current WHERE dataset = ? GROUP BY label"
            v2 = _best(lambda c=conn, q=sql, a=(name, "Maybe", "ann"): c.execute(q, a).fetchall(), reps=3)
            v2_1 = _best(lambda c=conn, q=sql, a=(name, "Maybe", "bob"): c.execute(q, a).fetchall(), reps=3)
            v2_c = _best(lambda c=conn, q=counts, a=(name,): c.execute(q, a).fetchall(), reps=3)
            conn.execute("ROLLBACK")
        rec.add(f"{tag}: ids_with_label(Maybe, ann): 10% of the rows", q * 1e3, "ms", goal,
                note=f"{int((which == 2).sum())} ids; before v3 {v2 * 1e3:.1f} ms (x{v2 / q:.1f})")
        rec.add(f"{tag}: ids_with_label(Maybe, bob): none", q1 * 1e3, "ms", goal,
                note=f"before v3 {v2_1 * 1e3:.2f} ms (x{v2_1 / max(q1, 1e-9):.1f})")
        rec.add(f"{tag}: label_counts", qc * 1e3, "ms", goal, note=f"before v3 (COUNT(*) GROUP BY) {v2_c * 1e3:.1f} ms "
                f"(x{v2_c / max(qc, 1e-9):.0f})")
        rec.add(f"{tag}: ids_with_label(Blur), any annotator", _best(
            lambda name=name: store.ids_with_label(name, "Blur")) * 1e3, "ms", note=f"{n_blur} distinct ids")
        sample = ids[: len(ids) // 2]
        rec.add(f"{tag}: unlabelled(bob) of half the images", _best(
            lambda name=name, sample=sample: store.unlabelled(name, "bob", sample), reps=3) * 1e3, "ms")
        queue = ids[5000:5500]  # an Annotate queue: its page reads the annotator's labels of it on every run
        by_key = _best(lambda name=name, q=queue: (store.current(name, "ann", columns=("image_id", "label"), image_ids=q),
                                                  store.progress(name, "ann", q)), reps=3)
        by_scan = _best(lambda name=name, q=queue: (store.current(name, "ann"), store._labelled(name, "ann")), reps=3)
        rec.add(f"{tag}: Annotate page's label reads per run (a queue of 500)", by_key * 1e3, "ms",
                note=f"by key; before, all of the annotator's labels, read and scanned on each run: {by_scan * 1e3:.0f} ms "
                     f"(x{by_scan / max(by_key, 1e-9):.0f})")
        del ds, ids, which
    rec.explain(f"The {sizes[-1]:,}-row dataset reuses {FILES} real files: rows repeated with synthetic content ids "
                "sha256(<file id>:<copy>) and the copy in a metadata column; ingest's rows/s is measured on the "
                "files themselves (it hashes and decodes every row, so it is linear in rows). Query times are the best "
                "of 5 (3 for the scans), on a WAL SQLite file.")
    if os.environ.get("WB_SCALE_APP", "1") == "0":
        rec.explain("The app pages were left out (WB_SCALE_APP=0).")
        return
    _app_part(rec, sizes)


def _app_part(rec: Recorder, sizes: list[int]) -> None:
    from lib.models import load_model

    spec = vitb32_spec()
    backend = load_model(spec)  # its fingerprint and info: the vectors are synthetic
    fingerprint, info = backend.fingerprint, {**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim}
    del backend
    for n in sizes:
        tag = _tag(n)
        steps = _app_data(f"big{tag}", spec, fingerprint, info)
        rec.add(f"{tag}: app setup (vectors, EB fractions, index, PCA map)", sum(steps.values()), "s",
                note=", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
        loop = _label_loop(f"big{tag}")
        rec.add(f"{tag}: safe view after one label (its image's rows decided again)", float(np.median(loop["after"])),
                "s", note=f"median of {len(loop['after'])}: " + ", ".join(f"{a:.2f}" for a in loop["after"])
                + f"; the whole decision again (every review read, every row decided): {loop['whole']:.2f} s "
                  f"(x{loop['whole'] / max(float(np.median(loop['after'])), 1e-9):.0f}); tables "
                + ("equal" if loop["same"] else "DIFFER"))
        rec.add(f"{tag}: incremental decision equals the whole one (1 = yes)", float(loop["same"]), "", (">=", 1))
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    before, before_name = None, ""
    repo = os.environ.get("WB_SCALE_BEFORE")  # a checkout of an older commit: its app measured first, same data
    if repo:
        import subprocess

        before_name = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or repo
        before = {_tag(n): _measure(n, spec, logs, repo, warm_reps=1, checks=False) for n in sizes}
    floor = _floor(logs)
    figs = {_tag(n): _measure(n, spec, logs) for n in sizes}
    _record(rec, sizes, figs, before, before_name)
    rec.add("floor: a bare Streamlit page (sidebar, title, 24 images), first paint, cold server", floor["cold"], "s")
    rec.add("floor: the bare page, warm server", floor["warm"], "s",
            note="new tab, best of 3: " + ", ".join(f"{w:.2f}" for w in floor["warm all"]) + "; what any Streamlit "
                 "page costs on this host and browser before a page of ours draws anything")
    rec.add("floor: the bare page with one plotly chart (1,000 WebGL points) instead of its images, warm",
            floor["plot warm"], "s", note="new tab, best of 3: " + ", ".join(f"{w:.2f}" for w in floor["plot warm all"])
            + "; plotly.js (4.7 MB) is evaluated on every page load (~1 s on this host's Chromium): the floor of any "
              "page with a plotly chart, the Map's included")
    top = figs[_tag(sizes[-1])]
    for page_name in APP_PAGES:
        rec.add(f"{_tag(sizes[-1])}: {page_name} warm / bare page warm", top[f"{page_name} warm"] / floor["warm"], "ratio",
                note="the page's own cost above this host's Streamlit floor, measured in this run")
    rec.add(f"{_tag(sizes[-1])}: Map warm / bare plotly page warm", top["Map warm"] / floor["plot warm"], "ratio",
            note="the Map's own cost above the floor of a page with a plotly chart, measured in this run")
    rec.explain("App pages: the datasets above, after their labelling (every image labelled by one annotator, a "
                "tenth by a second: the safe view reads those reviews), with synthetic clustered 512-d ViT-B-32 "
                "vectors per synthetic id, each row's EB fractions copied from its file's, the IVF index and the PCA "
                "map computed and saved beforehand (as a user's earlier runs leave them). Each page is painted by "
                "Chromium through Playwright: first = the Gallery on the first server after the data is built (it "
                "derives and stores the decision and EB table); cold = the first visit after a fresh server starts "
                "(one server per page; it reads those back), warm = a new tab on that server, best of 3. RSS = the Streamlit process tree after a fresh "
                "server served Gallery, Neighbours and Map once each. The map check reads the figure's layout.meta "
                "(points, drawn, per-trace counts) and compares the counts with the dataset's labels; the lasso is a "
                "hexagon drawn with the mouse; the polygon plotly reports is tested against every point of the "
                "projection (half-planes, independent of the app's even-odd test) and the page's count compared, "
                "then the Gallery's first page of the selection is checked to be inside it.")
