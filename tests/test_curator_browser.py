"""The curator's day, in Chromium: a label set labelled with its keys, a lasso on the map
labelled in bulk (and undone), the detail view opened from the Gallery and Neighbours, an image
found by name, an export read back, a map point clicked open, the annotator remembered by the
browser, and no label the user needs cut by an ellipsis. Every image these pages serve is
checked against the fail-closed rule (``test_exposure_browser.check_images``)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_app_browser import (  # noqa: F401  (browser, chromium, page are fixtures)
    browser,
    chromium,
    page,
    settle,
    shot,
)
from test_exposure_browser import (
    _truth,
    assert_no_exception,
    band_energy,
    check_images,
    expected,
    point_xy,
    visit,
    wait_images,
)

from lib import dataset
from lib.annotations import AnnotationStore, scope
from lib.gallery import plural

pytestmark = pytest.mark.browser
CUR = {"dataset": "cur", "model": "color"}

#: Leaf texts cut by their own or an ancestor's overflow (an ellipsis hides part of them).
CUT_TEXT = """() => {
  const out = [];
  for (const el of document.querySelectorAll('[data-testid="stMain"] *, [data-testid="stSidebar"] *')) {
    if (el.childElementCount || !el.textContent.trim() || el.offsetParent === null) continue;
    if (el.closest('[data-testid="stFileUploaderDropzoneInstructions"], .js-plotly-plot, [data-testid="stDataFrame"]'))
      continue;  // the uploader's fixed hint; charts and grids scroll or have tooltips
    let a = el;
    for (let i = 0; i < 5 && a; i++, a = a.parentElement) {
      const cs = getComputedStyle(a);
      if ((cs.textOverflow === 'ellipsis' || cs.overflowX === 'hidden') && a.clientWidth > 0
          && el.scrollWidth > a.clientWidth + 2) { out.push(el.textContent.trim().slice(0, 80)); break; }
    }
  }
  return out; }"""


@pytest.fixture(scope="module")
def cur(corpus_dir, tmp_path_factory):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path_factory.mktemp("cur")
    for folder, rows in (("wounds", m[m.label == "sensitive"].iloc[60:72]),
                         ("non-sensitive", m[m.label == "non_sensitive"].iloc[60:72])):
        (root / folder).mkdir()
        for p in rows.path:
            shutil.copy(corpus_dir / p, root / folder / p.replace("/", "_"))
    dataset.ingest(root, "cur")
    from lib.embeddings import embed

    embed("cur", "color", workers=0)
    return _truth(dataset.load("cur"), safe={"non-sensitive"}, sensitive={"wounds"})


@pytest.fixture(scope="module")
def server(cur, chromium):  # noqa: F811
    from bench.server import Server

    home = Path(os.environ["WORKBENCH_HOME"])
    with Server(home / "curator-streamlit.log", home) as srv:
        yield srv


def sign_in(page, name: str) -> None:  # noqa: F811
    box = page.locator('[data-testid="stSidebar"]').get_by_label("Annotator name", exact=True)
    box.fill(name)
    box.press("Enter")
    settle(page)


def test_define_a_label_set_and_label_five_images_with_its_keys(page, server, cur):  # noqa: F811
    visit(page, server.base, "Annotate", "Annotate", **CUR)
    sign_in(page, "eve")
    store = AnnotationStore()
    for expect in ("tags", "wound-type"):  # the examples, in the order offered
        add = page.get_by_role("button", name="Add", exact=True)
        if not add.is_visible():
            page.get_by_text("Add a label set").click()
        add.click()
        settle(page)
        assert expect in {s.name for s in store.schemas("cur")}
    assert {"tags", "wound-type"} <= {s.name for s in store.schemas("cur")}
    page.get_by_role("combobox", name="Label set").click()
    page.get_by_role("option", name="wound-type").click()
    settle(page)
    page.get_by_role("heading", name="Annotate").click()  # keys go to the page
    values = store.schema("cur", "wound-type").values
    for key in "13215":
        before = len(store.current(scope("cur", "wound-type"), "eve"))
        page.keyboard.press(key)
        page.wait_for_function("() => true")
        settle(page)
        for _ in range(50):
            if len(store.current(scope("cur", "wound-type"), "eve")) > before:
                break
            page.wait_for_timeout(100)
    got = store.history(scope("cur", "wound-type"), annotator="eve")["label"].tolist()
    assert got == [values[int(k) - 1] for k in "13215"]
    assert store.current("cur", "eve").empty  # the Blur/Ok set is untouched
    check_images(page, server.base, cur, where="annotate, wound-type")
    # the queue reads as file names beside safe-viewed thumbnails; a click on a row opens that image
    page.get_by_text(re.compile(r"The queue \(\d+ images\)")).click()
    grid = page.locator('[data-testid="stDataFrame"]').last
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 52 + 26)  # the second row's selection marker
    settle(page)
    page.locator('[data-testid="stImageCaption"]').filter(has_text=re.compile(r"^#2 of \d+ · ")).wait_for()
    shot(page, "curator-annotate-label-set")


def test_lasso_on_the_map_then_bulk_label_and_undo(page, server, cur):  # noqa: F811
    visit(page, server.base, "Map", "Map", **CUR)
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    box = page.evaluate("""() => { const gd = document.querySelector('.js-plotly-plot');
        const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return {x0: r.left + xa._offset + 2, y0: r.top + ya._offset + 2,
                x1: r.left + xa._offset + xa._length - 2, y1: r.top + ya._offset + ya._length - 2}; }""")
    page.mouse.move((box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2)  # the modebar shows on hover
    page.locator('.modebar-btn[data-title="Lasso Select"]').first.click()
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    for x, y in ((box["x1"], box["y0"]), (box["x1"], box["y1"]), (box["x0"], box["y1"]), (box["x0"], box["y0"] + 1)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.get_by_text("selected** with the lasso", exact=False).or_(page.get_by_text("selected with the lasso")) \
        .first.wait_for()
    n = int(re.search(r"(\d+) images? selected", page.locator('[data-testid="stMain"]').inner_text()).group(1))
    assert n >= 20
    page.get_by_role("link", name="Open selection in Gallery").click()
    page.get_by_role("heading", name="Gallery").first.wait_for()
    settle(page)
    sign_in(page, "fay")
    page.get_by_role("button", name=re.compile(r"Select all \d+ filtered")).click()
    settle(page)
    page.get_by_text(f"{n} selected").first.wait_for()
    page.get_by_role("button", name=f"Label {plural(n, 'image')}").click()
    page.get_by_text(f"Labelled {plural(n, 'image')}").wait_for()
    settle(page)
    store = AnnotationStore()
    mine = store.current("cur", "fay")
    assert len(mine) == n and set(mine["label"]) == {"Blur"}
    check_images(page, server.base, cur | {k: {**v, "censored": True} for k, v in cur.items()
                                           if v["id"] in set(mine["image_id"])}, where="gallery after bulk Blur")
    shot(page, "curator-gallery-bulk")
    page.get_by_role("button", name="Undo").click()
    settle(page)
    assert store.current("cur", "fay").empty


def test_detail_view_from_gallery_and_neighbours_and_find_by_name(page, server, cur):  # noqa: F811
    ds = dataset.load("cur")
    visit(page, server.base, "Gallery", "Gallery", **CUR)
    wait_images(page, 24)
    first = page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt")[6:]
    page.locator('[data-testid="stMain"]').get_by_role("link", name="Details").first.click()
    page.get_by_role("heading", name="Image").first.wait_for()
    settle(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt") == f"image {first}"
    page.get_by_text("label policy").first.wait_for(state="attached")  # the evidence table (a canvas grid)
    check_images(page, server.base, cur, where="detail from gallery")
    shot(page, "curator-detail")
    # from Neighbours
    visit(page, server.base, "Neighbours", "Neighbours", **CUR, id=cur[first]["id"])
    wait_images(page, 13)
    second = page.locator('[data-testid="stMain"] img[alt^="image "]').nth(1).get_attribute("alt")[6:]
    cell = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'img[alt="image {second}"]')).last
    cell.get_by_role("link", name="Details").click()
    page.wait_for_url(lambda url: "/Image" in url and f"id={cur[second]['id']}" in url)
    settle(page)
    assert page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt") == f"image {second}"
    # find by name, on the Image page and in the Gallery
    target = ds.images.iloc[17]
    name = target["path"].rsplit("/", 1)[-1]
    page.get_by_label("Image id prefix, or part of its file name or path").fill(name)
    page.get_by_test_id("stBaseButton-secondaryFormSubmit").filter(has_text="Open").click()
    settle(page)
    assert_no_exception(page)
    page.locator(f'[data-testid="stMain"] img[alt="image {target["id"][:16]}"]').wait_for(timeout=30_000)
    assert f"id={target['id']}" in page.url
    visit(page, server.base, "Gallery", "Gallery", **CUR)
    page.get_by_label("Find: file name or path contains").fill(name[:-4])
    page.keyboard.press("Enter")
    settle(page)
    page.get_by_text("**1** of 24").or_(page.get_by_text("1 of 24 images")).first.wait_for()
    imgs = page.locator('[data-testid="stMain"] img[alt^="image "]')
    assert imgs.count() == 1 and imgs.first.get_attribute("alt") == f"image {target['id'][:16]}"


def test_click_a_map_point_to_open_its_image(page, server, cur):  # noqa: F811
    visit(page, server.base, "Map", "Map", **CUR)
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    xy = point_xy(page)
    page.mouse.click(xy["x"], xy["y"])
    picked = xy["id"]
    page.locator(f'[data-testid="stMain"] img[alt="image {picked[:16]}"]').wait_for()
    settle(page)
    check_images(page, server.base, cur, where="map, clicked")
    shot(page, "curator-map")  # the map with the clicked point highlighted and its image below
    page.get_by_role("link", name="Open its detail view").click()
    page.get_by_role("heading", name="Image").first.wait_for()
    settle(page)
    assert page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt") == \
        f"image {picked[:16]}"


def test_map_thumbnails_on_hover_go_through_the_safe_view(page, server, cur):  # noqa: F811
    """Hover every point of the map with thumbnails on: each shows its image beside the cursor,
    byte-identical to the safe view's rendering (blurred when censored, raw when cleared)."""
    import base64

    visit(page, server.base, "Map", "Map", **CUR)
    page.get_by_text("Thumbnails on hover").click()
    settle(page)
    page.get_by_text(f"Thumbnails for {len(cur)} of {len(cur)} points").wait_for()
    frame = page.frame_locator('iframe[title="st.iframe"]').first
    frame.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()
    points = frame.locator(".js-plotly-plot .scatterlayer .point")
    tip = frame.locator("#tip")
    seen = {"blur": 0, "raw": 0}
    for i in range(points.count()):
        points.nth(i).hover(force=True)
        try:
            tip.wait_for(state="visible", timeout=3000)
        except Exception:
            continue  # a point under another one: plotly hovers the upper one
        img = frame.locator("#tip-img")
        key = img.get_attribute("alt").removeprefix("image ")
        rec = cur[key]
        data = base64.b64decode(img.get_attribute("src").split(",", 1)[1])
        mode = "blur" if rec["censored"] else "raw"
        assert data == expected(rec, rec["censored"], 128, mode), (key, rec["path"], mode)
        if mode == "blur":
            assert band_energy(data) < 0.1 * band_energy(expected(rec, False, 128)) + 0.5
        caption = frame.locator("#tip-cap").inner_text()
        assert caption.startswith("censored: " if rec["censored"] else "shown: "), caption
        seen[mode] += 1
    assert seen["blur"] >= 5 and seen["raw"] >= 5, seen  # both sides of the safe view, seen by hovering
    shot(page, "curator-map-hover")
    page.get_by_text("Thumbnails on hover").click()  # back to the clickable map for the next tests
    settle(page)


def test_export_from_the_page_reads_back(page, server, cur):  # noqa: F811
    """Each format produced through the Export page and read back with the tool that defines it
    (pandas, json, Hugging Face datasets, FiftyOne's documented labels.json schema, ingest)."""
    import json

    from lib.cli import main

    visit(page, server.base, "Export", "Export", **CUR)
    base = Path(os.environ["WORKBENCH_HOME"]) / "results" / "cur" / "export-from-page"
    folders = {}
    for fmt in ("csv", "jsonl", "imagefolder", "fiftyone", "manifest"):
        page.locator('[data-testid="stRadio"]').get_by_text(fmt, exact=True).click()
        settle(page)
        folders[fmt] = base / fmt
        page.get_by_role("textbox", name="Folder").fill(str(folders[fmt]))
        page.get_by_role("textbox", name="Folder").press("Enter")
        settle(page)
        page.get_by_role("button", name="Export", exact=True).click()
        page.locator('[data-testid="stMain"] code').filter(has_text=str(folders[fmt])).first.wait_for()
        assert_no_exception(page)
        assert (folders[fmt] / "README.md").read_text().startswith(f"# Export of dataset `cur` ({fmt})")
    assert not page.locator('[data-testid="stMain"] img').count()  # nothing is displayed

    truth = pd.read_csv(folders["csv"] / "annotations.csv")
    assert len(truth) == 24 and set(truth["label"]) == {"wounds", "non-sensitive"}
    assert set(truth["id"]) == {v["id"] for v in cur.values()} and all(p.startswith("/") for p in truth["path"])
    labels = dict(zip(truth["id"], truth["label"], strict=True))
    back = [json.loads(line) for line in (folders["jsonl"] / "annotations.jsonl").read_text().splitlines()]
    assert {r["id"]: r["label"] for r in back} == labels
    import datasets

    hf = datasets.load_dataset("imagefolder", data_dir=str(folders["imagefolder"]), split="train")
    assert len(hf) == 24 and {r["id"]: r["label"] for r in hf} == labels
    fo = json.loads((folders["fiftyone"] / "labels.json").read_text())  # FiftyOneImageClassificationDataset
    assert set(fo) == {"classes", "labels"} and fo["classes"] == sorted(set(labels.values()))
    assert {p.stem for p in (folders["fiftyone"] / "data").iterdir()} == set(fo["labels"])
    assert sorted(fo["classes"][i] for i in fo["labels"].values()) == sorted(labels.values())
    assert main(["ingest", str(folders["manifest"] / "manifest.csv"), "--name", "cur-back"]) == 0
    again = dataset.load("cur-back").images
    assert dict(zip(again["id"], again["label"], strict=True)) == labels


def test_the_browser_remembers_the_annotator(browser, server, cur):  # noqa: F811
    context = browser.new_context(viewport={"width": 1440, "height": 1600})
    try:
        p1 = context.new_page()
        p1.set_default_timeout(120_000)
        visit(p1, server.base, "Annotate", "Annotate", **CUR)
        sign_in(p1, "gus")
        p1.wait_for_timeout(500)
        assert any(c["name"] == "wb_annotator" and c["value"] == "gus" for c in context.cookies())
        p2 = context.new_page()  # a new session of the same browser
        p2.set_default_timeout(120_000)
        visit(p2, server.base, "Agreement", "Annotator agreement", **CUR)
        box = p2.locator('[data-testid="stSidebar"]').get_by_label("Annotator name", exact=True)
        assert box.input_value() == "gus"
        # the cookie holds the name only: safe view stays on
        assert p2.locator('[data-testid="stSidebar"]').get_by_role("switch").first.is_checked()
    finally:
        context.close()


@pytest.mark.parametrize("path,title", [
    ("", "Sensitive image workbench"), ("Gallery", "Gallery"), ("Neighbours", "Neighbours"),
    ("Blur_scores", "Blur scores (EB)"), ("Annotate", "Annotate"), ("Agreement", "Annotator agreement"),
    ("Compare_models", "Compare models"), ("Image", "Image"), ("Map", "Map"), ("Export", "Export"),
    ("Quality", "Data quality"), ("Screen", "Screen a collection"), ("Zero-shot", "Zero-shot classification"),
    ("Retrieval", "Retrieval"), ("Expand", "Seed expansion"),
])
def test_no_text_the_user_needs_is_cut(page, server, cur, path, title):  # noqa: F811
    visit(page, server.base, path, title, **CUR, id=next(iter(cur.values()))["id"])
    if path == "Annotate":
        sign_in(page, "hal")
    if path == "Expand" and page.get_by_text("No expansion yet").count():  # its tables and figures too
        page.get_by_text("Dataset labels", exact=True).click()  # seeds from the folders
        settle(page)
        page.get_by_role("button", name="Run expansion").click()
        page.get_by_text("saved in").wait_for()
        settle(page)
    page.wait_for_timeout(800)
    cut = page.evaluate(CUT_TEXT)
    assert not cut, (path, cut)
