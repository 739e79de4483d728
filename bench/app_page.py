"""App: the Neighbours page on a 100k-row dataset, in Chromium, and the server's memory.

Setup (timed, not a goal): the shared 100k-row dataset (tiny PNGs, synthetic ViT-B-32
vectors), its index built once and saved (the app reads it from disk), and its EB colour
fractions (computed once, cached on disk) since every page's safe view needs them.
Then ``streamlit run app.py`` and, with Playwright driving /usr/bin/chromium:

- cold: the first visit after the server starts (imports, dataset, caches read from disk);
- warm: a new browser session on the running server (its resource caches are filled);
- re-query: in that session, the page for another query image.

A render is done when the query and its 12 neighbours are on the page and the script
run has finished. Server RSS is the Streamlit process tree's resident memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlencode

from .common import REPO, Recorder, shared_home
from .server import Server

CHROMIUM = "/usr/bin/chromium"


def _rss(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def _render(page, url: str, k: int = 12) -> float:
    t = time.perf_counter()
    page.goto(url)
    page.locator('[data-testid="stMain"] img[alt^="image "]').nth(k).wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    seconds = time.perf_counter() - t
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError("the page raised: " + page.locator('[data-testid="stException"]').first.inner_text()[:500])
    return seconds


def run(rec: Recorder) -> None:
    from lib import dataset, gallery
    from lib.neighbors import open_space

    if not (REPO / "app.py").exists() or not (REPO / "views" / "2_Neighbours.py").exists():
        rec.explain("app.py / views/2_Neighbours.py not there yet: nothing measured.")
        return
    n = 20_000 if rec.quick else 100_000
    t = time.perf_counter()
    home, spec = shared_home(n)
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    space = open_space("big", spec)
    vi = space.index
    t_index = time.perf_counter() - t
    t = time.perf_counter()
    ds = dataset.load("big")
    gallery.eb_scores(ds)
    t_eb = time.perf_counter() - t
    rec.add(f"setup: {n // 1000}k dataset + synthetic vectors", t_data, "s", note="0 when built by an earlier benchmark")
    rec.add(f"setup: {vi.kind} index built and saved", t_index, "s", note=f"{vi.path.name}")
    rec.add("setup: EB colour fractions of every image", t_eb, "s")

    with Server(home / "streamlit.log", home) as server:
        base, proc = server.base, server.proc
        rec.add("server start to healthy", server.started_s, "s")
        rss0 = _rss(proc.pid)
        from playwright.sync_api import sync_playwright

        ids = ds.images["id"]
        url = f"{base}/Neighbours?" + urlencode({"dataset": "big", "model": spec, "id": ids.iat[1234]})
        url2 = f"{base}/Neighbours?" + urlencode({"dataset": "big", "model": spec, "id": ids.iat[n // 2]})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                page = ctx.new_page()
                page.set_default_timeout(180_000)
                cold = _render(page, url)
                page.close()
                warm = []  # new tabs of a browser that has seen the app: Streamlit's JS is cached
                for _ in range(3):
                    page = ctx.new_page()
                    page.set_default_timeout(60_000)
                    warm.append(_render(page, url))
                    page.close()
                page = ctx.new_page()
                requery = _render(page, url2)
                ctx.close()
                fresh = []  # new browser profiles: nothing cached on the browser side
                for _ in range(2):
                    ctx = browser.new_context(viewport={"width": 1440, "height": 1400})
                    page = ctx.new_page()
                    page.set_default_timeout(60_000)
                    fresh.append(_render(page, url))
                    ctx.close()
            finally:
                browser.close()
        rss = _rss(proc.pid)
    rec.add(f"Neighbours first render, cold server ({n // 1000}k rows)", cold, "s",
            note="first visit after start: imports, dataset, model status, EB table, index from disk")
    rec.add(f"Neighbours first render, warm server ({n // 1000}k rows)", min(warm), "s", ("<", 2.0),
            note="new tab, browser cache warm; best of 3: " + ", ".join(f"{w:.2f}" for w in warm))
    rec.add("Neighbours first render, warm server, empty browser cache", min(fresh), "s",
            note="new browser profile (downloads and compiles Streamlit's JS): " + ", ".join(f"{w:.2f}" for w in fresh))
    rec.add("Neighbours, another query in the same session", requery, "s")
    rec.add("server RSS after the renders", rss / 2**30, "GiB", ("<", 2.0), note=f"{rss0 / 2**20:.0f} MiB at start")
    script = _script_profile(spec, ds.images["id"])
    rec.add("page script run on the server, first in a process", script["first"], "s", note="streamlit AppTest")
    rec.add("page script run on the server, warm", script["warm"], "s", note="the rest of a render is the browser's")
    rec.explain("Where a warm render's server time goes (cProfile of the page script, cumulative s): "
                + "; ".join(f"{name} {sec:.3f}" for name, sec in script["top"]))
    rec.explain("Where the cold server's first script run goes: "
                + "; ".join(f"{name} {sec:.2f}" for name, sec in script["top_first"]))


_WRAPPER = """
import cProfile, runpy
import streamlit as st
st.page_link = lambda *a, **k: None  # page paths resolve against the real entrypoint only
prof = cProfile.Profile()
prof.enable()
try:
    runpy.run_path({page!r}, run_name="__main__")
finally:
    prof.disable()
    prof.dump_stats({out!r})
"""


def _top(prof_path, prefix: str = str(REPO), n: int = 8) -> list[tuple[str, float]]:
    """The project functions (lib/, views/) with the largest cumulative time, outermost excluded."""
    import pstats

    stats = pstats.Stats(str(prof_path)).stats
    rows = []
    for (file, _line, fn), (_, _, _, cum, _) in stats.items():
        if file.startswith(prefix) and "/.venv/" not in file and "<module>" not in fn:
            rows.append((f"{Path(file).relative_to(REPO)}:{fn}", cum))
    return sorted(rows, key=lambda r: -r[1])[:n]


def _script_profile(spec: str, ids) -> dict:
    """Server-side time of the Neighbours script, without a browser (Streamlit's AppTest)."""
    from streamlit.testing.v1 import AppTest

    out: dict = {}
    work = Path(os.environ["WORKBENCH_HOME"])
    for i, key in enumerate(["first", "second", "warm"]):
        prof = work / f"neighbours-{key}.prof"
        at = AppTest.from_string(_WRAPPER.format(page=str(REPO / "views" / "2_Neighbours.py"), out=str(prof)),
                                 default_timeout=600)
        at.query_params.update({"dataset": "big", "model": spec, "id": ids.iat[100 + i]})
        t = time.perf_counter()
        at.run()
        out[key] = time.perf_counter() - t
        if len(at.exception):
            raise RuntimeError(f"the page raised under AppTest: {at.exception[0].value}")
        out["top" if key == "warm" else f"top_{key}"] = _top(prof)
    return out
