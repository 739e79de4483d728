"""Load: several browser sessions browse the Neighbours page of one server at once.

``python -m bench --only load`` (8 sessions x 60 s on the shared 100k-row dataset; ``--quick``:
4 sessions x 30 s on 20k rows), or on its own: ``python -m bench.load [--quick]``.

Each session is its own Chromium context (its own Streamlit session) and loops for a fixed
time: open Neighbours on a random image of the dataset, wait until the query and its 12
neighbours are on the page and the script run has finished, record the time, check the page
shows no exception. The server (``streamlit run app.py`` on 127.0.0.1 only) is warmed by one
session first, so the figures are the steady state; its resident memory (process tree) is
sampled every second. Models, datasets and faiss indexes live in ``st.cache_resource``: one
copy per process, so more sessions must not mean more memory beyond per-session state.

:func:`browse` is also what ``tests/test_exposure_browser.py`` runs, lighter (2 sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from .server import Server

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


@dataclass
class LoadResult:
    """What :func:`browse` measured: page times (s), errors, server RSS samples (bytes)."""

    sessions: int
    seconds: float
    times: list[float] = field(default_factory=list)
    per_session: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, bytes)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.times, q)) if self.times else float("nan")

    @property
    def rss_peak(self) -> float:
        return max((r for _, r in self.rss), default=float("nan"))

    def summary(self) -> str:
        return (f"{self.sessions} sessions x {self.seconds:.0f} s: {len(self.times)} pages "
                f"(per session {self.per_session}), {len(self.errors)} errors; page time p50 {self.pct(50):.2f} s, "
                f"p99 {self.pct(99):.2f} s; server RSS peak {self.rss_peak / 2**20:.0f} MiB")


def tree_rss(pid: int) -> float:
    """Resident memory of a process and its children, bytes."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def _session(browser, url_of, ids: list[str], k: int, deadline: float, seed: int, out: LoadResult,
                   timeout_ms: int) -> int:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 1100})
    page = await ctx.new_page()
    page.set_default_timeout(timeout_ms)
    rng = random.Random(seed)
    n = 0
    try:
        while time.monotonic() < deadline:
            cid = ids[rng.randrange(len(ids))]
            t = time.perf_counter()
            try:
                await page.goto(url_of(cid))
                await page.locator('[data-testid="stMain"] img[alt^="image "]').nth(k).wait_for()
                await page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
                first = await page.locator('[data-testid="stMain"] img[alt^="image "]').first.get_attribute("alt")
            except Exception as e:  # a timeout is a failed page: counted, and the session goes on
                out.errors.append(f"{cid[:12]}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                continue
            elapsed = time.perf_counter() - t
            bad = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count()
            if bad:
                text = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]'
                                          ).first.inner_text()
                out.errors.append(f"{cid[:12]}: the page shows an error: {text[:300]}")
            elif first != f"image {cid[:16]}":
                out.errors.append(f"{cid[:12]}: the page shows query {first!r}")
            else:
                out.times.append(elapsed)
                n += 1
    finally:
        await ctx.close()
    return n


async def _browse(base: str, dataset: str, model_key: str, ids: list[str], sessions: int, seconds: float,
                  seed: int, k: int, out: LoadResult, timeout_ms: int) -> None:
    from playwright.async_api import async_playwright

    def url_of(cid: str) -> str:
        return f"{base}/Neighbours?" + urlencode({"dataset": dataset, "model": model_key, "id": cid})

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            deadline = time.monotonic() + seconds
            out.per_session = list(await asyncio.gather(*[
                _session(browser, url_of, ids, k, deadline, seed * 1000 + i, out, timeout_ms)
                for i in range(sessions)]))
        finally:
            await browser.close()


def browse(base: str, dataset: str, model_key: str, ids: list[str], *, sessions: int = 8, seconds: float = 60,
           seed: int = 0, k: int = 12, server_pid: int | None = None, timeout_s: float = 120) -> LoadResult:
    """``sessions`` browser sessions open Neighbours on random ``ids`` for ``seconds``.

    ``k`` is the index of the last image to wait for (the query is image 0). With
    ``server_pid`` the server's resident memory is sampled every second.
    """
    out = LoadResult(sessions, seconds)
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            try:
                out.rss.append((time.monotonic() - t0, tree_rss(server_pid)))
            except Exception:  # the server went away: the pages will say so
                return
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True) if server_pid else None
    if sampler:
        sampler.start()
    failure: list[BaseException] = []

    def drive() -> None:  # its own thread: the caller may already run an event loop (sync Playwright)
        try:
            asyncio.run(_browse(base, dataset, model_key, ids, sessions, seconds, seed, k, out, int(timeout_s * 1000)))
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    try:
        driver = threading.Thread(target=drive)
        driver.start()
        driver.join()
        if failure:
            raise failure[0]
    finally:
        stop.set()
        if sampler:
            sampler.join()
    return out


def run(rec) -> None:
    """The benchmark: warm-up with one session, then many at once, on the shared big dataset."""
    from lib import dataset, gallery
    from lib.neighbors import open_space

    from .common import shared_home

    n = 20_000 if rec.quick else 100_000
    sessions, seconds = (4, 30) if rec.quick else (8, 60)
    home, spec = shared_home(n)
    t = time.perf_counter()
    _ = open_space("big", spec).index  # built once and saved: the server reads it from disk
    ds = dataset.load("big")
    gallery.eb_scores(ds)  # the safe view needs every image's EB: computed once, cached on disk
    rec.add("setup: index + EB fractions (0 when cached)", time.perf_counter() - t, "s")
    ids = ds.images["id"].tolist()
    with Server(home / "load-streamlit.log", home) as server:
        rss0 = tree_rss(server.proc.pid)
        warm = browse(server.base, "big", spec, ids, sessions=1, seconds=10 if rec.quick else 20, seed=1,
                      server_pid=server.proc.pid)
        rss_warm = tree_rss(server.proc.pid)
        cpu0, wall0 = tree_cpu(server.proc.pid), time.monotonic()
        load = browse(server.base, "big", spec, ids, sessions=sessions, seconds=seconds, seed=2,
                      server_pid=server.proc.pid)
        cpu_s, wall_s = tree_cpu(server.proc.pid) - cpu0, time.monotonic() - wall0
        rss_end = tree_rss(server.proc.pid)
    rec.explain(f"warm-up: {warm.summary()}")
    rec.explain(f"load: {load.summary()}")
    rec.add(f"pages served under load ({sessions} sessions, {seconds} s)", len(load.times), "pages")
    rec.add("page errors under load", len(load.errors) + len(warm.errors), "", ("<=", 0),
            note="; ".join((load.errors + warm.errors)[:3]))
    rec.add("Neighbours page time p50 under load", load.pct(50), "s", note=f"{n // 1000}k rows, {sessions} sessions")
    rec.add("Neighbours page time p99 under load", load.pct(99), "s",
            note="browser and server share the cores: see the server's CPU per view")
    rec.add("Neighbours page time p50, one session", warm.pct(50), "s")
    rec.add("server CPU per page view under load", cpu_s / max(len(load.times), 1), "s", ("<", 1.0),
            note=f"server busy {cpu_s / wall_s:.0%} of one core over the load on {os.cpu_count()} cores; the rest "
                 "of the page time is the Chromium renderers sharing those cores")
    rec.add("server RSS at start", rss0 / 2**20, "MiB")
    rec.add("server RSS after one warm session", rss_warm / 2**20, "MiB")
    rec.add(f"server RSS peak under {sessions} sessions", load.rss_peak / 2**20, "MiB", ("<", 2048))
    growth = (load.rss_peak - rss_warm) / 2**20
    rec.add(f"RSS growth from 1 to {sessions} sessions", growth, "MiB", ("<", 400),
            note="a per-session copy of the index (100k x 512 float32 = 195 MiB) would add ~1.4 GiB")
    half = [r for s, r in load.rss if s >= seconds / 2]
    if len(half) >= 4:  # steady state: memory must not keep climbing while the load is constant
        ts = np.array([s for s, r in load.rss if s >= seconds / 2])
        slope = float(np.polyfit(ts, np.array(half), 1)[0]) / 2**20
        rec.add("RSS trend over the second half of the load", slope * 60, "MiB/min", ("<", 60))
    rec.add("server RSS at the end", rss_end / 2**20, "MiB")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from .common import Recorder

    rec = Recorder("load", a.quick)
    run(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
