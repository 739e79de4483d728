"""End to end in Chromium: the annotation workflow pages of the real app (``streamlit run app.py``).

Labels given with the keyboard must land in the SQLite store; an expansion run in the page
must draw its homogeneity chart; an export written from the page must ingest back with the
same paths and labels. The browser, page and helpers are those of ``test_app_browser.py``.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_app_browser import (  # noqa: F401  (browser, chromium, page are fixtures)
    REPO,
    assert_no_exception,
    browser,
    chromium,
    page,
    settle,
    shot,
    visit,
)

from lib import dataset as ds_mod
from lib.annotations import AnnotationStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def workflow_server(chromium, corpus_color, tmp_path_factory):  # noqa: F811
    """``streamlit run app.py`` over this session's data home, with the corpus embedded (color)
    and its EB scores cached (the safe view reads them)."""
    from bench.server import Server
    from lib import gallery

    gallery.eb_scores(corpus_color)
    with Server(tmp_path_factory.mktemp("streamlit-workflow") / "server.log") as srv:
        yield srv.base


def caption_text(page) -> str:  # noqa: F811
    """The caption under the image being labelled ("#i of n · id · censored"); a page that
    shows a traceback instead fails here with its text."""
    caption = page.locator('[data-testid="stMain"] [data-testid="stImageCaption"]').first
    caption.or_(page.locator('[data-testid="stException"]')).first.wait_for()
    assert_no_exception(page)
    return caption.inner_text()


def press(page, key: str) -> None:  # noqa: F811
    page.keyboard.press(key)
    settle(page)


def test_label_five_images_with_the_keyboard(page, workflow_server):  # noqa: F811
    who = "kb-alice"
    visit(page, workflow_server, "Annotate", "Annotate", dataset="corpus", model="color")
    name = page.locator('[data-testid="stSidebar"]').get_by_label("Annotator name", exact=True)
    name.fill(who)
    name.press("Enter")
    page.get_by_role("button", name="Blur").wait_for()
    settle(page)
    assert_no_exception(page)
    page.get_by_role("heading", name="Annotate").click()  # focus leaves the text box: keys go to the page

    assert caption_text(page).startswith("#1 of 50")
    assert caption_text(page).endswith("censored")  # EB high first: a sensitive image, blurred
    press(page, "v")  # reveal: a warning naming the reason comes first
    assert caption_text(page).endswith("censored")
    page.get_by_text("This image is censored").wait_for()
    press(page, "v")  # V again: shown
    assert not caption_text(page).endswith("censored")
    press(page, "v")  # and re-blurred
    assert caption_text(page).endswith("censored")

    keys = ["1", "3", "2", "1", "3"]
    names = {"1": "Blur", "2": "Maybe", "3": "Ok"}
    for i, key in enumerate(keys):
        assert caption_text(page).startswith(f"#{i + 1} of 50")
        press(page, key)
    assert caption_text(page).startswith("#6 of 50")
    page.get_by_text("5 done · 45 left", exact=False).wait_for()
    assert_no_exception(page)

    events = AnnotationStore().history("corpus", annotator=who)
    assert events["label"].tolist() == [names[k] for k in keys]
    assert events["image_id"].is_unique and (events["task"] == "seed").all()

    press(page, "p")  # previous: back to #5, which shows its label
    assert caption_text(page).startswith("#5 of 50")
    press(page, "n")
    assert caption_text(page).startswith("#6 of 50")
    shot(page, "annotate-keyboard")


def test_expand_homogeneity_then_export_and_reingest(page, workflow_server, tmp_path):  # noqa: F811
    visit(page, workflow_server, "Expand", "Seed expansion", dataset="corpus", model="color")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("Dataset labels", exact=True).click()
    settle(page)
    main.get_by_role("button", name="Run expansion").click()
    main.get_by_text("saved in", exact=False).wait_for()
    settle(page)
    assert_no_exception(page)

    main.get_by_role("tab", name="3 · Homogeneity").click()
    panel = main.locator('[role="tabpanel"]:visible')
    chart = panel.locator(".js-plotly-plot").first
    chart.wait_for()
    for title in ("non_sensitive seeds", "sensitive seeds", "all seeds"):
        assert chart.get_by_text(title, exact=True).count() == 1
    assert chart.get_by_text("dataset labels", exact=True).count() >= 1  # the legend of the comparison
    shot(page, "expand-homogeneity")

    main.get_by_role("tab", name="4 · Export").click()
    panel = main.locator('[role="tabpanel"]:visible')
    out = tmp_path / "browser-export.csv"
    path_box = panel.get_by_label("Manifest file (.csv or .parquet)", exact=True)
    path_box.fill(str(out))
    path_box.press("Enter")
    settle(page)
    name_box = panel.get_by_label("Dataset name to ingest it as", exact=True)
    name_box.fill("corpus-browser")
    name_box.press("Enter")
    settle(page)
    panel.get_by_role("button", name="Write manifest").click()
    panel.get_by_text("Manifest written to", exact=False).wait_for()
    settle(page)
    assert out.exists()
    assert "--root" in panel.locator('[data-testid="stCode"]').first.inner_text()
    panel.get_by_role("button", name="Ingest it now").click()
    panel.get_by_text("dataset 'corpus-browser'", exact=False).wait_for()
    settle(page)
    assert_no_exception(page)

    m = pd.read_csv(out)
    back = ds_mod.load("corpus-browser")
    assert len(back.errors) == 0
    assert back.images["path"].tolist() == m["path"].tolist()
    assert back.images["label"].tolist() == m["label"].tolist()
    assert back.images["split"].tolist() == m["split"].tolist()
    assert set(m["label_source"]) >= {"seed", "expansion"}
    shot(page, "expand-export")
