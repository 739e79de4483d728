"""End to end: the real app (``streamlit run app.py``) in Debian's Chromium, driven by Playwright.

The safe view is checked on the bytes the browser actually receives: every rendered image
is fetched again from its ``src`` and compared with an independent rendering of the file
(the censored thumbnail for sensitive images, the sharp one otherwise), and its
high-frequency energy is compared with the sharp thumbnail's.

Screenshots of every page go to ``test-artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from urllib.parse import urlencode, urljoin

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "screenshots"
TINY_KEY = "open_clip:WB-Tiny-ViT@@random"


def band_energy(data: bytes) -> float:
    """Mean squared difference-of-Gaussians (sigma 1 vs 4 px): edges and textures."""
    g = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    return float(np.mean((ndimage.gaussian_filter(g, 1) - ndimage.gaussian_filter(g, 4)) ** 2))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (make browser)")
        pytest.skip(f"{CHROMIUM} is missing (install it with `make browser`)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(chromium, corpus_color, corpus_tiny, tmp_path_factory):
    """``streamlit run app.py`` on a free port over this session's data home."""
    from bench.server import Server

    with Server(tmp_path_factory.mktemp("streamlit") / "server.log") as srv:
        yield srv.base


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1800})
    pg = context.new_page()
    pg.set_default_timeout(120_000)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def truth(corpus_color):
    """Per dataset row: sensitive by label or by an independently computed EB > 1.0 (the
    default threshold), and the path; keyed by the 16-hex-digit id prefix the app puts in
    each image's alt text."""
    from lib.colorscore import score_paths

    ds = corpus_color
    f = score_paths([str(ds.abspath(p)) for p in ds.images["path"]], workers=1)
    z = [(f[c] - f[c].mean()) / f[c].std(ddof=0) for c in ("blood", "skin")]
    eb = np.maximum(z[0], z[1]).to_numpy()
    sensitive = (ds.images["label"] == "sensitive").to_numpy() | ~(eb <= 1.0)
    out = {}
    for row, cid in enumerate(ds.images["id"]):
        out.setdefault(cid[:16], {"row": row, "sensitive": bool(sensitive[row]),
                                  "path": ds.abspath(ds.images["path"].iat[row])})
    return out


def expected(rec: dict, censored: bool) -> bytes:
    """The thumbnail rendered independently of the app's cache (lib.safety on the file)."""
    from lib.safety import safe_thumbnail_bytes

    return safe_thumbnail_bytes(rec["path"], sensitive=censored, mode="blur", side=256)


# ----------------------------------------------------------------------------- helpers


def settle(page) -> None:
    """Wait until the script run the last action started has finished."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # the run may have started and ended already
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=1500)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the multiselect ``label`` and wait for the rerun; the widget must
    then hold exactly that option (on a loaded machine a list redrawn under the mouse can
    take the click on another one: say so, not time out later)."""
    box = page.get_by_role("combobox", name=label)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    settle(page)
    widget = page.locator('[data-testid="stMultiSelect"]').filter(has=box)
    chosen = widget.locator("[data-tag]").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    assert chosen == [option], (label, chosen)


def slide(page, slider, value: float, rounds: int = 5) -> None:
    """Move ``slider`` (a role=slider locator: Streamlit's is an input range) to ``value`` with the arrow keys and wait for
    the rerun; it must then read ``value``. A key press that lands during a rerun can be
    lost on a loaded machine: the missing steps are pressed again, not tested as set."""
    for _ in range(rounds):
        now, step = float(slider.input_value()), float(slider.get_attribute("step") or 1)
        if now == value:
            return
        slider.focus()
        for _ in range(max(1, round(abs(value - now) / step))):
            page.keyboard.press("ArrowRight" if now < value else "ArrowLeft")
        settle(page)
    raise AssertionError(f"slider reads {slider.input_value()}, not {value}")


def visit(page, base: str, path: str, title: str, **params) -> None:
    page.goto(f"{base}/{path}?{urlencode(params)}")
    page.get_by_role("heading", name=title).first.wait_for()
    settle(page)


def assert_no_exception(page) -> None:
    """No traceback and no error box on the page; a failure says what the page showed (a CI
    log keeps only pytest's output, not the server's)."""
    for testid in ("stException", "stAlertContentError"):
        shown = page.locator(f'[data-testid="{testid}"]')
        assert shown.count() == 0, f"{testid} on {page.url}: " + "\n".join(shown.all_inner_texts())[:4000]


def served(page, base: str) -> dict[str, tuple[str, bytes]]:
    """{id prefix: (src, bytes fetched from src)} of the dataset images in the main area."""
    imgs = page.locator('[data-testid="stMain"] img[alt^="image "]')
    out = {}
    for i in range(imgs.count()):
        el = imgs.nth(i)
        src = el.get_attribute("src")
        resp = page.request.get(urljoin(base + "/", src))
        assert resp.ok, src
        out[el.get_attribute("alt")[len("image "):]] = (src, resp.body())
    return out


def cell_of(page, id16: str):
    """The innermost column holding the image with this id prefix."""
    return page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {id16}"]')).last


def shot(page, name: str) -> None:
    """Screenshot of the whole page: the app scrolls inside its main block, so the viewport is
    made as tall as the content first."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 40, 8000))})
    page.wait_for_timeout(600)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size(size)


# ----------------------------------------------------------------------------- tests

PAGES = [
    ("", "Sensitive image workbench", "home"),
    ("Gallery", "Gallery", "gallery"),
    ("Neighbours", "Neighbours", "neighbours"),
    ("Zero-shot", "Zero-shot classification", "zero-shot"),
    ("Retrieval", "Retrieval", "retrieval"),
    ("Blur_scores", "Blur scores (EB)", "blur-scores"),
    ("Compare_models", "Compare models", "compare-models"),
]


@pytest.mark.parametrize("path,title,name", PAGES, ids=[p[2] for p in PAGES])
def test_every_page_renders(page, server, path, title, name):
    visit(page, server, path, title, dataset="corpus", model="color", random="1")
    assert_no_exception(page)
    main = page.locator('[data-testid="stMain"]')
    # Each page's main content (waited for: a slow first run may still be drawing).
    if name == "home":
        main.get_by_role("heading", name="Models").wait_for()
        main.locator('[data-testid="stMetric"]').nth(4).wait_for()
    elif name in ("gallery", "neighbours"):
        main.locator('img[alt^="image "]').nth(11).wait_for()
    elif name == "zero-shot":
        main.get_by_role("button", name="Run zero-shot").wait_for()
    elif name == "retrieval":
        main.get_by_role("tab").nth(2).wait_for()
    elif name in ("blur-scores", "compare-models"):
        main.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    assert_no_exception(page)
    shot(page, name)


def test_safe_view_serves_blurred_bytes_and_reveal_shows_one(page, server, truth):
    visit(page, server, "Gallery", "Gallery", dataset="corpus", model="color")
    page.locator('[data-testid="stMain"] img[alt^="image "]').nth(23).wait_for()
    assert_no_exception(page)
    images = served(page, server)
    assert len(images) == 24
    sens = [k for k in images if truth[k]["sensitive"]]
    plain = [k for k in images if not truth[k]["sensitive"]]
    assert sens, "the first page of the corpus holds wound photos"
    for k, (_, data) in images.items():
        rec = truth[k]
        assert data == expected(rec, rec["sensitive"]), (k, rec["path"])
    for k in sens:
        sharp = expected(truth[k], False)
        assert band_energy(images[k][1]) < 0.1 * band_energy(sharp) + 0.5, truth[k]["path"]
    for k in plain:
        assert images[k][1] == expected(truth[k], False)

    # Reveal the first sensitive image (behind its warning): only it turns sharp.
    target = sens[0]
    old_src = images[target][0]
    cell_of(page, target).get_by_role("button", name="Reveal").click()
    page.locator('[data-testid="stPopoverBody"]').get_by_role("button", name="Show the full image").click()
    page.wait_for_function(
        "([alt, old]) => { const i = document.querySelector(`img[alt='${alt}']`); return i && i.src && !i.src.endsWith(old); }",
        arg=[f"image {target}", old_src])
    settle(page)
    assert_no_exception(page)
    after = served(page, server)
    assert after[target][1] == expected(truth[target], False)
    assert band_energy(after[target][1]) > 5 * band_energy(images[target][1])
    for k in sens[1:]:
        assert after[k][1] == expected(truth[k], True), truth[k]["path"]
    cell_of(page, target).get_by_role("button", name="Re-blur").wait_for()
    shot(page, "gallery-revealed")


def test_neighbours_recentre_on_open(page, server, truth, corpus_color):
    ds = corpus_color
    start = ds.images["id"].iat[5]
    visit(page, server, "Neighbours", "Neighbours", dataset="corpus", model="color", id=start)
    assert_no_exception(page)
    alts = page.locator('[data-testid="stMain"] img[alt^="image "]')
    alts.nth(12).wait_for()
    assert alts.first.get_attribute("alt") == f"image {start[:16]}"  # the query comes first
    first_neighbour = alts.nth(1).get_attribute("alt")[len("image "):]
    assert first_neighbour != start[:16]
    cell_of(page, first_neighbour).get_by_role("button", name="Open").click()
    page.wait_for_url(lambda url: f"id={first_neighbour}" in url)
    settle(page)
    page.wait_for_function(
        "(alt) => document.querySelector('[data-testid=\"stMain\"] img[alt^=\"image \"]').alt === alt",
        arg=f"image {first_neighbour}")
    assert_no_exception(page)
    # The query image is still served censored when sensitive.
    images = served(page, server)
    rec = truth[first_neighbour]
    assert images[first_neighbour][1] == expected(rec, rec["sensitive"])


def test_zero_shot_run_with_the_tiny_model(page, server):
    visit(page, server, "Zero-shot", "Zero-shot classification", dataset="corpus", model=TINY_KEY, random="1")
    page.get_by_role("button", name="Run zero-shot").click()
    page.get_by_text("Metrics on", exact=False).first.wait_for()
    main = page.locator('[data-testid="stMain"]')
    for label in ("Precision", "Recall", "F1", "Double F1"):
        main.locator('[data-testid="stMetricLabel"]', has_text=label).first.wait_for()
    main.locator(".js-plotly-plot").nth(2).wait_for()  # confusion matrix, ROC, PR
    settle(page)
    assert_no_exception(page)
    shot(page, "zero-shot-run")


def test_upload_query_is_censored_and_finds_itself(page, server, corpus_color):
    ds = corpus_color
    row = int(np.flatnonzero((ds.images["label"] == "sensitive").to_numpy())[10])
    path = ds.abspath(ds.images["path"].iat[row])
    visit(page, server, "Neighbours", "Neighbours", dataset="corpus", model="color")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    page.locator('img[alt="uploaded image"]').wait_for()
    settle(page)
    assert_no_exception(page)
    up = page.locator('img[alt="uploaded image"]')
    data = page.request.get(urljoin(server + "/", up.get_attribute("src"))).body()
    # An outside image has no known sensitivity: it is censored until revealed.
    assert band_energy(data) < 0.1 * band_energy(expected({"path": path}, False)) + 0.5
    first = page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt")
    assert first == f"image {ds.images['id'].iat[row][:16]}"  # its own dataset copy ranks first


def test_a_first_visit_straight_to_a_page_gets_the_one_menu(browser, corpus_color, tmp_path):  # noqa: F811
    """A fresh server whose first visitor follows a link to a page (not the home page) shows
    the app's own menu: Home first, no second menu with an "app" entry (Streamlit's older
    folder-based navigation runs when a ``pages/`` folder sits beside app.py)."""
    from bench.server import Server

    assert not (REPO / "pages").exists()
    with Server(tmp_path / "server.log", Path(os.environ["WORKBENCH_HOME"])) as srv:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(120_000)
        try:
            pg.goto(f"{srv.base}/Gallery?{urlencode({'dataset': 'corpus', 'model': 'color'})}")
            pg.get_by_role("heading", name="Gallery").first.wait_for()
            nav = pg.locator('[data-testid="stSidebarNav"]')
            nav.wait_for()
            links = [t.strip() for t in nav.get_by_role("link").all_inner_texts()]
            names = [t.split("\n")[-1].strip() for t in links]
            assert "app" not in names and names[0].endswith("Home"), names
            assert "Gallery" in names
        finally:
            context.close()
