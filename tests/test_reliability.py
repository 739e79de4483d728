"""Reliability and security under hostile conditions.

1. Bad input end to end: a folder of every awkward or hostile file goes through the CLI
   (ingest, embed with ``color`` and the tiny model, show, neighbors, scores) and every page
   of the app: usable images are kept, oriented and embedded; the rest are reported with
   path and reason; nothing crashes.
2. Kill and resume: ``embed``, ``scores`` and ``project`` are SIGKILLed at seeded random
   points; nothing corrupt is left behind and the rerun is bit-identical to an uninterrupted
   run. Shards that are damaged, or belong to another model, are never read.
3. Concurrent annotators: app sessions keep reading (and writing) while two processes write.
4. Files and network: images are read only inside dataset roots, whatever a manifest, a URL
   or an upload says; uploads are decoded in memory; the server listens on 127.0.0.1 with
   XSRF protection.
6. Load: the safe view's per-image tables are shared by all sessions, not copied per view
   (the browser sessions themselves: ``test_exposure_browser.py`` and ``bench/load.py``).

File opens are watched with a Python audit hook (:func:`sys.addaudithook`): a test that
says "never read" checks that no ``open`` of the path happened at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from app_pages import assert_clean, open_page
from hostile_files import EXIF_FILES, make_hostile_folder, orient
from PIL import Image
from streamlit.testing.v1 import AppTest

from lib import dataset

REPO = Path(__file__).resolve().parent.parent
TINY = "open_clip:WB-Tiny-ViT"
TINY_KEY = "open_clip:WB-Tiny-ViT@@random"
PAGES = ["app.py", "views/1_Gallery.py", "views/2_Neighbours.py", "views/3_Zero-shot.py", "views/4_Retrieval.py",
         "views/5_Blur_scores.py", "views/6_Compare_models.py", "views/7_Annotate.py", "views/8_Expand.py",
         "views/9_Agreement.py"]


# ----------------------------------------------------------------------------- helpers


def cli(*args: str, home: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if home is not None:
        env["WORKBENCH_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "lib", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_exit(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"{r.args}: exit {r.returncode}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr + r.stdout, f"{r.args}:\n{r.stderr[-3000:]}"




# Every file open of this process, while a test watches (audit events cannot be removed,
# so one hook is installed once and switched on and off).
_WATCH: list | None = None


def _audit(event: str, args: tuple) -> None:
    if _WATCH is not None and event == "open":
        _WATCH.append(args)


sys.addaudithook(_audit)


@contextlib.contextmanager
def watched_opens():
    """Collect ``(path, mode, flags)`` of every file opened inside the block."""
    global _WATCH
    seen: list = []
    _WATCH = seen
    try:
        yield seen
    finally:
        _WATCH = None


def _as_path(p) -> str | None:
    if isinstance(p, int):
        return None
    return os.fsdecode(p) if isinstance(p, (bytes, str, os.PathLike)) else None


def opened_under(seen: list, *roots: Path | str) -> list[str]:
    """Paths in ``seen`` that resolve to or under one of ``roots``."""
    roots_r = [Path(os.path.realpath(r)) for r in roots]
    hits = []
    for args in seen:
        p = _as_path(args[0])
        if p is None:
            continue
        real = Path(os.path.realpath(p))
        if any(real == r or r in real.parents for r in roots_r) or any(
                Path(p) == Path(r) for r in roots):
            hits.append(p)
    return hits


def writes(seen: list) -> list[str]:
    """Paths in ``seen`` opened for writing or creation."""
    out = []
    for path, mode, flags in seen:
        w_mode = isinstance(mode, str) and any(c in mode for c in "wax+")
        w_flags = isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if w_mode or w_flags:
            out.append(_as_path(path))
    return out


# ============================================================================= 1. bad input end to end


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile folder ingested and embedded (color, tiny), shown and scored: all by the CLI."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "files"
    exp = make_hostile_folder(root)
    runs = {
        "ingest": cli("ingest", str(root), "--name", "hostile"),
        "embed-color": cli("embed", "hostile", "--model", "color"),
        "embed-tiny": cli("embed", "hostile", "--model", TINY, "--random-weights"),
        "show": cli("show", "hostile", "--limit", "100"),
        "show-errors": cli("show", "hostile", "--errors", "--limit", "100"),
        "scores": cli("scores", "hostile"),
    }
    by_path = dataset.load("hostile").images.set_index("path")["id"]
    for rel in ("one_pixel_wide.png", "new\nline\tand tab.png", "mono1.dcm"):  # odd images as queries
        runs[f"neighbors {rel!r}"] = cli("neighbors", "hostile", "--model", "color", "--id", by_path[rel][:16],
                                         "--k", "5")
    # queries from files: a usable one and hostile ones (a message, exit 2, never a traceback)
    runs["neighbors-image"] = cli("neighbors", "hostile", "--model", TINY, "--random-weights", "--image",
                                  str(root / "exif_6.jpg"), "--k", "3")
    bad_queries = {name: cli("neighbors", "hostile", "--model", "color", "--image", str(root / name))
                   for name in ("bomb.png", "pipe.jpg", "page.jpg", "link_passwd.jpg")}
    return SimpleNamespace(root=root, outside=base / "files-outside", exp=exp, runs=runs, bad_queries=bad_queries)


def test_hostile_folder_through_the_cli_never_crashes(hostile):
    for r in hostile.runs.values():
        assert_clean_exit(r)
    for name, r in hostile.bad_queries.items():
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr[-1500:])
        assert r.stderr.startswith("error: "), (name, r.stderr)
    assert "decompression bomb" in hostile.bad_queries["bomb.png"].stderr
    assert "named pipe" in hostile.bad_queries["pipe.jpg"].stderr
    n_ok = sum(k == "ok" for k, _ in hostile.exp.values())
    n_bad = len(hostile.exp) - n_ok
    assert f"{n_ok} images ingested, {n_bad} errors" in hostile.runs["ingest"].stdout
    ds = dataset.load("hostile")
    for spec in ("color", TINY):
        out = hostile.runs["embed-color" if spec == "color" else "embed-tiny"].stdout
        assert f"{len(ds.unique_ids)} unique images, 0 cached, {len(ds.unique_ids)} computed, 0 errors" in out, out
    assert f"({n_ok} images, {n_bad} errors; root " in hostile.runs["show"].stdout
    assert f"EB scores of {n_ok} images (0 unreadable)" in hostile.runs["scores"].stdout
    print(f"\nhostile folder: {len(hostile.exp)} files tried, {n_ok} kept ({len(ds.unique_ids)} unique), "
          f"{n_bad} reported; {len(hostile.runs) + len(hostile.bad_queries)} CLI runs, none crashed")


def test_hostile_folder_usable_images_kept_and_oriented_the_rest_reported(hostile):
    from lib.images import open_image

    ds = dataset.load("hostile")
    kept = set(ds.images["path"])
    errors = dict(zip(ds.errors["path"], ds.errors["reason"], strict=True))
    ok = {rel for rel, (kind, _) in hostile.exp.items() if kind == "ok"}
    assert kept == ok, f"kept but not expected: {kept - ok}; expected but not kept: {ok - kept}"
    assert set(errors) == set(hostile.exp) - ok
    for rel, (kind, check) in hostile.exp.items():
        if kind == "ok":
            check(open_image(ds.abspath(rel)))
        else:
            assert any(w.lower() in errors[rel].lower() for w in check), (rel, errors[rel])
    # duplicates share one id and name the first copy
    dup = ds.images.set_index("path")
    assert dup.loc["dup_b.png", "id"] == dup.loc["dup_a.png", "id"] == dup.loc["dup c copy.png", "id"]
    assert {dup.loc[p, "duplicate_of"] for p in ("dup_a.png", "dup_b.png")} == {"dup c copy.png"}
    # nothing outside the folder was taken in, though symlinks point there
    assert not any(str(hostile.outside) in str(p) for p in ds.images["path"])


@pytest.mark.parametrize("spec", ["color", TINY])
def test_hostile_folder_every_kept_image_embedded_as_oriented(hostile, spec):
    from lib.embeddings import load_embeddings
    from lib.models import load_model

    ds = dataset.load("hostile")
    rnd = spec != "color"
    backend = load_model(spec, random_weights=rnd)
    emb = load_embeddings("hostile", spec, random_weights=rnd, backend=backend if rnd else None)
    m = emb.matrix()
    assert m.shape == (len(ds), backend.dim) and np.isfinite(m).all()
    assert np.allclose(np.linalg.norm(m, axis=1), 1, atol=1e-5)
    # EXIF: the stored pixels of the 8 files are the same; each vector must be that of the
    # pixels turned as the tag says (decoded here by PIL without any orientation).
    stored = np.asarray(Image.open(hostile.root / "exif_1.jpg").convert("RGB"))
    rows = {p: i for i, p in enumerate(ds.images["path"])}
    refs = backend.encode_images([Image.fromarray(np.ascontiguousarray(orient(stored, o))) for o in range(1, 9)])
    for name, o in EXIF_FILES.items():
        got = emb.take([rows[name]])[0]
        assert np.abs(got - refs[o - 1]).max() < 3e-3, (spec, name)
    # and the orientations are told apart (the check above could not pass by accident)
    assert np.abs(refs[5] - refs[7]).max() > 1e-2


def test_hostile_folder_thumbnails_in_every_mode(hostile):
    from lib import thumbs

    ds = dataset.load("hostile")
    for row in range(len(ds)):
        for mode in thumbs.RENDERINGS:
            im = Image.open(io.BytesIO(thumbs.thumbnail_bytes(ds, row, 256, mode)))
            assert max(im.size) <= 256 and min(im.size) >= 1, (ds.images["path"].iat[row], mode)


def test_hostile_folder_every_page_runs_clean(hostile):
    ds = dataset.load("hostile")
    for page in PAGES:
        assert_clean(open_page(page, dataset="hostile", model="color"), page)
    for page in ("views/2_Neighbours.py", "views/3_Zero-shot.py", "views/4_Retrieval.py"):
        assert_clean(open_page(page, dataset="hostile", model=TINY_KEY, random="1"), page)
    # the whole dataset on one gallery page: every kept image is drawn
    at = open_page("views/1_Gallery.py", dataset="hostile", model="color")
    at.selectbox(key="g-size").set_value(96).run()
    assert_clean(at, "gallery")
    assert len(at.get("image")) == len(ds)
    # every unique image as the query of Neighbours and of Blur scores (its colour evidence)
    for page in ("views/2_Neighbours.py", "views/5_Blur_scores.py"):
        at = None
        for cid in ds.unique_ids:
            at = open_page(page, at, dataset="hostile", model="color", id=cid)
            assert_clean(at, (page, cid))
            shown = [w.value for w in at.warning if not w.value.startswith("**This image is censored")]  # Reveal's
            assert not shown, (page, cid, shown)
            assert at.query_params["id"] == cid


def test_extreme_aspect_ratio_cannot_blow_up_model_preprocessing(tmp_path):
    """A legal 1 x 2 000 000 image: CLIP's short-side resize would make it 64 x 128 000 000
    (24 GB); under a 6 GB address-space limit the embedding must still succeed."""
    Image.new("RGB", (2_000_000, 1), (200, 30, 30)).save(tmp_path / "strip.png")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from lib.images import open_image\n"
        "from lib.models import load_model\n"
        "b = load_model('open_clip:WB-Tiny-ViT', random_weights=True)\n"
        f"v = b.encode_images([open_image({str(tmp_path / 'strip.png')!r})])\n"
        "print(v.shape)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ============================================================================= 2. kill and resume


def _subset(corpus_dir: Path, out: Path, n: int, offset: int = 0) -> Path:
    pd.read_csv(corpus_dir / "manifest.csv").iloc[offset:offset + n].to_csv(out, index=False)
    return out


def _popen(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "lib", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _sigkill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group (decoding workers die with it); True if it was still running."""
    running = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return running


def _files(folder: Path) -> dict[str, bytes]:
    """Every non-temporary file under ``folder`` (relative path -> bytes)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _timed_run(args: list[str], home: Path) -> float:
    t = time.perf_counter()
    p = _popen(args, home)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - t


def _two_homes(tmp_path: Path, monkeypatch, corpus_dir: Path, n: int) -> dict[str, Path]:
    manifest = _subset(corpus_dir, tmp_path / "m.csv", n)
    homes = {}
    for tag in ("clean", "killed"):
        homes[tag] = tmp_path / tag
        monkeypatch.setenv("WORKBENCH_HOME", str(homes[tag]))
        dataset.ingest(manifest, "small", root=corpus_dir)
    return homes


def test_embed_killed_at_random_points_resumes_bit_identical(corpus_dir, tmp_path, monkeypatch):
    from lib.embeddings import EmbeddingStore, load_embeddings

    homes = _two_homes(tmp_path, monkeypatch, corpus_dir, 96)
    args = ["embed", "small", "--model", "color", "--shard-size", "4", "--batch-size", "4", "--workers", "0"]
    _timed_run(args, homes["clean"])
    ref = _files(homes["clean"] / "cache" / "emb")
    ref_shards = {k: v for k, v in ref.items() if "/shards/" in k}
    total = sum(k.endswith(".json") for k in ref_shards)
    assert total == 24
    rng = random.Random(20240611)
    kills = []
    for _ in range(4):  # each run resumes the last killed one, and is killed in turn
        before = len(list((homes["killed"] / "cache" / "emb").glob("*/shards/*.json")))
        # a random point in what is left: after this many shards, plus a moment inside the next ones
        target = before + max(1, int(rng.uniform(0.1, 0.6) * (total - before)))
        extra = rng.uniform(0.0, 0.03)
        proc = _popen(args, homes["killed"])
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and \
                len(list((homes["killed"] / "cache" / "emb").glob("*/shards/*.json"))) < target:
            time.sleep(0.002)
        time.sleep(extra)
        was_running = _sigkill(proc)
        now = _files(homes["killed"] / "cache" / "emb")
        committed = [k for k in now if k.endswith(".json") and "/shards/" in k]
        kills.append((target, round(extra, 3), was_running, before, len(committed)))
        # nothing corrupt: every committed shard verifies and equals the uninterrupted run's
        for store_dir in (homes["killed"] / "cache" / "emb").iterdir():
            info = json.loads((store_dir / "model.json").read_text())
            assert EmbeddingStore(info["fingerprint"], root=store_dir.parent).verify() == []
        assert set(now) <= set(ref), set(now) - set(ref)
        for k in committed:
            rec, ref_rec = json.loads(now[k]), json.loads(ref[k])
            assert {x: rec[x] for x in rec if x != "created"} == {x: ref_rec[x] for x in ref_rec if x != "created"}
            stem = k[:-len(".json")]
            assert now[stem + ".vec.npy"] == ref[stem + ".vec.npy"] and now[stem + ".ids.npy"] == ref[stem + ".ids.npy"]
    mid = [k for k in kills if k[2] and k[3] < k[4] < total]
    assert len(mid) >= 2, f"fewer than two kills landed mid-run: {kills}"
    resumed = _popen(args, homes["killed"])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-2000:]
    final = _files(homes["killed"] / "cache" / "emb")
    assert {k: v for k, v in final.items() if k.endswith(".npy")} == \
        {k: v for k, v in ref_shards.items() if k.endswith(".npy")}
    monkeypatch.setenv("WORKBENCH_HOME", str(homes["killed"]))
    a = load_embeddings("small", "color").matrix()
    monkeypatch.setenv("WORKBENCH_HOME", str(homes["clean"]))
    assert np.array_equal(a, load_embeddings("small", "color").matrix())
    print(f"\nembed: {len(kills)} SIGKILLs (target shards, extra s, was running, shards before, after): {kills}; "
          f"resumed to {total} shards, bit-identical")


def _kill_chain(args: list[str], home: Path, ref_seconds: float, seed: int, n: int, check) -> list[tuple]:
    """Start ``args`` ``n`` times in ``home``, each SIGKILLed at a seeded random moment of an
    uninterrupted run's duration (each resumes what the last one left); ``check()`` after each.

    When no kill found the run still going (the reference run was slowed by other work on
    the machine, and this chain was not), ``home`` is put back as it was and the chain runs
    again on the duration its first run took, up to twice."""
    rng = random.Random(seed)
    pristine = home.with_name(home.name + "-pristine")
    shutil.copytree(home, pristine)
    kills: list[tuple] = []
    full = ref_seconds
    for chain in range(3):
        if chain:
            shutil.rmtree(home)
            shutil.copytree(pristine, home)
        for k in range(n):
            at = rng.uniform(0.15, 0.95) * full
            t = time.perf_counter()
            proc = _popen(args, home)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=at)
            running = _sigkill(proc)
            if not running and k == 0:  # it ran whole from the start state: its real duration
                full = min(full, time.perf_counter() - t)
            kills.append((round(at, 2), running))
            check()
        if any(running for _, running in kills):
            break
    return kills


def _parquet_parts_by_id(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(folder.rglob("part-*.parquet")):
        df = pd.read_parquet(p)  # a part that exists is whole: this must not raise
        out.update({i: (b, s) for i, b, s in zip(df["id"], df["blood"], df["skin"], strict=True)})
    return out


def test_scores_killed_at_random_points_resumes_bit_identical(corpus_dir, tmp_path, monkeypatch):
    homes = _two_homes(tmp_path, monkeypatch, corpus_dir, 96)
    args = ["scores", "small", "--workers", "2"]
    ref_s = _timed_run(args, homes["clean"])
    out = Path("results") / "small" / "eb_scores.parquet"
    ref = (homes["clean"] / out).read_bytes()
    ref_cache = _parquet_parts_by_id(homes["clean"] / "cache" / "colorscore")
    assert len(ref_cache) == 96

    def check() -> None:
        p = homes["killed"] / out
        assert not p.exists() or p.read_bytes() == ref, "a killed run left a partial or different table"
        cached = _parquet_parts_by_id(homes["killed"] / "cache" / "colorscore")
        assert all(ref_cache[i] == v for i, v in cached.items())

    kills = _kill_chain(args, homes["killed"], ref_s, 7, 3, check)
    assert any(running for _, running in kills), kills
    r = cli(*args, home=homes["killed"])
    assert_clean_exit(r)
    assert (homes["killed"] / out).read_bytes() == ref
    print(f"\nscores: uninterrupted {ref_s:.1f} s; SIGKILLs at (s, was running) {kills}; rerun bit-identical")


@pytest.mark.parametrize("method,n_kills", [("pca", 3), ("umap", 1)])
def test_project_killed_at_random_points_resumes_bit_identical(corpus_dir, tmp_path, monkeypatch, method, n_kills):
    from lib.embeddings import embed

    homes = _two_homes(tmp_path, monkeypatch, corpus_dir, 96)
    for home in homes.values():
        monkeypatch.setenv("WORKBENCH_HOME", str(home))
        embed("small", "color", workers=0)
    args = ["project", "small", "--model", "color", "--method", method]
    ref_s = _timed_run(args, homes["clean"])
    out = Path("results") / "small" / f"project-color-{method}.parquet"
    ref = (homes["clean"] / out).read_bytes()
    ref_cache = _files(homes["clean"] / "cache" / "projection")
    assert len(ref_cache) == 1

    def check() -> None:
        p = homes["killed"] / out
        assert not p.exists() or p.read_bytes() == ref, "a killed run left a partial or different map"
        cache = _files(homes["killed"] / "cache" / "projection")
        assert all(ref_cache.get(k) == v for k, v in cache.items()), "a partial or different cached map"

    kills = _kill_chain(args, homes["killed"], ref_s, 11, n_kills, check)
    assert any(running for _, running in kills), kills
    assert_clean_exit(cli(*args, home=homes["killed"]))
    assert (homes["killed"] / out).read_bytes() == ref
    assert _files(homes["killed"] / "cache" / "projection") == ref_cache
    print(f"\nproject {method}: uninterrupted {ref_s:.1f} s; SIGKILLs at (s, was running) {kills}; rerun bit-identical")


class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs, no ``except Exception`` catches it."""


@pytest.mark.parametrize("verb", ["scores", "project"])
def test_a_table_is_replaced_whole_or_not_at_all(corpus_dir, tmp_path, monkeypatch, verb):
    """The process dies halfway through writing its result: the old table stays readable."""
    from lib.cli import main
    from lib.embeddings import embed

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(_subset(corpus_dir, tmp_path / "m.csv", 12), "small", root=corpus_dir)
    embed("small", "color", workers=0)
    args = {"scores": ["scores", "small", "--workers", "1"],
            "project": ["project", "small", "--model", "color", "--method", "pca"]}[verb]
    out = tmp_path / "home" / "results" / "small" / ("eb_scores.parquet" if verb == "scores"
                                                     else "project-color-pca.parquet")
    assert main(args) == 0
    before = out.read_bytes()
    real = pd.DataFrame.to_parquet

    def dying(self, path, *a, **k):
        buf = io.BytesIO()
        real(self, buf, *a, **k)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(path, "write"):
            path.write(half)
        else:
            Path(path).write_bytes(half)
        raise _Killed

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dying)
    with pytest.raises(_Killed):
        main(args)
    assert out.read_bytes() == before
    pd.read_parquet(out)


def _damage(kind: str, store, victim: str, other_store) -> None:
    d = store.shard_dir
    if kind == "truncated ids":
        p = d / f"{victim}.ids.npy"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "truncated vec":
        p = d / f"{victim}.vec.npy"
        p.write_bytes(p.read_bytes()[:-100])
    elif kind == "deleted vec":
        (d / f"{victim}.vec.npy").unlink()
    elif kind == "deleted ids":
        (d / f"{victim}.ids.npy").unlink()
    elif kind == "garbage record":
        (d / f"{victim}.json").write_text("{this is not json")
    elif kind == "record of other files":
        rec = json.loads((d / f"{victim}.json").read_text())
        rec["n"] += 1
        (d / f"{victim}.json").write_text(json.dumps(rec))
    elif kind in ("other model, same dim", "other model, other dim"):
        for suffix in (".json", ".vec.npy", ".ids.npy"):  # a valid shard with valid checksums
            shutil.copy(other_store.shard_dir / f"{victim}{suffix}", d / f"{victim}{suffix}")
    else:
        raise ValueError(kind)


DAMAGE = ["truncated ids", "truncated vec", "deleted vec", "deleted ids", "garbage record", "record of other files",
          "other model, same dim", "other model, other dim"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_or_foreign_shard_is_never_read_and_is_recomputed(corpus_dir, tmp_path, monkeypatch, kind):
    from lib import catalog
    from lib.colorscore import ColorParams
    from lib.embeddings import EmbeddingStore, embed, load_embeddings
    from lib.errors import WorkbenchError
    from lib.models import load_model
    from lib.models.color import ColorBackend

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(_subset(corpus_dir, tmp_path / "m.csv", 30, offset=200), "small", root=corpus_dir)
    embed("small", "color", shard_size=10, workers=0)
    before = load_embeddings("small", "color").matrix()
    color = load_model("color")
    store = EmbeddingStore(color.fingerprint)
    victim = store.shard_names()[1]
    # another model's shard of the same images: same dimension (colour features with other
    # thresholds), or another dimension (the tiny CLIP)
    other = ColorBackend(ColorParams(blood_min_saturation=0.5)) if kind.endswith("same dim") else \
        load_model(TINY, random_weights=True)
    embed("small", "color" if kind.endswith("same dim") else TINY, shard_size=10, workers=0, backend=other,
          random_weights=not kind.endswith("same dim"))
    other_store = EmbeddingStore(other.fingerprint)
    assert other.fingerprint != color.fingerprint and victim in other_store.shard_names()
    _damage(kind, store, victim, other_store)

    # Before any repair: the vectors are either refused with a message or exactly right.
    try:
        got = load_embeddings("small", "color").matrix()
    except WorkbenchError as e:
        assert "embed" in str(e)
    else:
        assert np.array_equal(got, before), "damaged or foreign vectors were read"
    catalog.model_status("small")  # the app's model list: no exception
    at = open_page("views/2_Neighbours.py", dataset="small", model="color")
    assert not at.exception, [e.message for e in at.exception]

    report = embed("small", "color", shard_size=10, workers=0)
    assert report.corrupt_shards == [victim] and report.computed == 10, report.summary()
    assert np.array_equal(load_embeddings("small", "color").matrix(), before)
    assert (store.dir / "corrupt" / f"{victim}.json").exists()
    assert embed("small", "color", shard_size=10, workers=0).corrupt_shards == []


# ============================================================================= 3. concurrent annotators

WRITER = """
import json, os, sys, time
from lib.annotations import AnnotationStore
folder, k, annotator, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ids = json.loads(open(os.path.join(folder, "ids.json")).read())
labels = ("Blur", "Maybe", "Ok")
store = AnnotationStore()  # the data home's store, as the app's
open(os.path.join(folder, f"ready{k}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.001)
seq = 0
# at least n labels, and on until the test has seen enough app runs overlap the writes (told by "stop")
while seq < n or not os.path.exists(os.path.join(folder, "stop")):
    store.set_label("conc", ids[seq % len(ids)], annotator, labels[(seq * (k + 1) + seq // len(ids)) % 3],
                    context={"seq": seq})
    seq += 1
    time.sleep(0.004)
open(os.path.join(folder, f"done{k}"), "w").write(str(seq))
"""


def test_app_sessions_read_and_write_while_two_processes_write(corpus_dir, tmp_path, monkeypatch):
    from lib import gallery
    from lib.annotations import AnnotationStore

    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    dataset.ingest(_subset(corpus_dir, tmp_path / "m.csv", 24, offset=100), "conc", root=corpus_dir)
    ds = dataset.load("conc")
    gallery.eb_scores(ds)  # fractions cached on disk: the pages' first run stays short
    ids = ds.unique_ids
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    n = 800
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(k), name, str(n)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for k, name in enumerate(("ann", "bob"))]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        agree = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        annot = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        annot.session_state["wb:annotator"] = "carol"
        (tmp_path / "go").touch()
        both, runs, clicks, during = [], 0, 0, 0
        deadline = time.monotonic() + 900  # a loaded machine renders slowly: the writers wait for the app
        while any(p.poll() is None for p in procs) or runs < 2:
            if during >= 3 or time.monotonic() > deadline:
                (tmp_path / "stop").touch()
            writing = all(p.poll() is None for p in procs)
            agree = open_page("views/9_Agreement.py", agree, dataset="conc", model="color")
            assert_clean(agree, f"agreement run {runs}")
            metric = [m for m in agree.metric if m.label == "Images both labelled"]
            if metric:
                both.append(int(metric[0].value))
            annot = open_page("views/7_Annotate.py", annot, dataset="conc", model="color")
            assert_clean(annot, f"annotate run {runs}")
            assert [b for b in annot.button if b.key == "an-lab-0"], (
                [i.value for i in annot.info], [w.value for w in annot.warning], [m.value for m in annot.markdown])
            annot.button(key=f"an-lab-{runs % 3}").click().run()  # carol labels through the app meanwhile
            assert_clean(annot, f"annotate click {runs}")
            clicks += 1
            runs += 1
            during += writing and all(p.poll() is None for p in procs)
        errs = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert during >= 3, f"only {during} app runs overlapped the writes: the test proved nothing"
    assert both == sorted(both) and both[-1] == len(ids), both
    written = [int((tmp_path / f"done{k}").read_text()) for k in range(2)]
    assert min(written) >= n
    store = AnnotationStore()
    hist = store.history("conc")
    counts = hist.groupby("annotator").size().to_dict()
    assert counts == {"ann": written[0], "bob": written[1], "carol": clicks}, counts
    for k, name in enumerate(("ann", "bob")):
        mine = hist[hist["annotator"] == name]
        assert [c["seq"] for c in mine["context"]] == list(range(written[k]))
        last = {ids[s % len(ids)]: ("Blur", "Maybe", "Ok")[(s * (k + 1) + s // len(ids)) % 3]
                for s in range(written[k])}
        cur = store.current("conc", name)
        assert dict(zip(cur["image_id"], cur["label"], strict=True)) == last
    print(f"\nconcurrency: 2 processes x {written} labels + {clicks} labels from an app session; {runs} app runs of "
          f"Agreement and Annotate ({during} during the writes), 0 errors; {len(hist)} events stored, 0 lost")


# ============================================================================= 4. files and network


def test_manifest_paths_through_symlinks_out_of_the_root_are_refused(tmp_path):
    from lib.errors import ManifestError

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(outside / "secret.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(root / "fine.png")
    (root / "looks_inside.png").symlink_to(outside / "secret.png")
    (root / "sub" / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "passwd.png").symlink_to("/etc/passwd")
    (root / "m.csv").write_text("path,label\nfine.png,a\nlooks_inside.png,b\nsub/linkdir/secret.png,b\n"
                                "passwd.png,a\nsub/../../outside/secret.png,b\n")
    with watched_opens() as seen, pytest.raises(ManifestError) as e:
        dataset.ingest(root / "m.csv", "escape")
    assert len(e.value.problems) == 4, e.value.problems
    for p in ("looks_inside.png", "sub/linkdir/secret.png", "passwd.png", "sub/../../outside/secret.png"):
        assert any(p in q and "outside" in q for q in e.value.problems), p
    assert not opened_under(seen, outside, "/etc/passwd"), "a refused file was opened"
    assert not dataset.exists("escape")


@pytest.fixture()
def swapped(tmp_path, monkeypatch):
    """A dataset whose files were replaced, after ingest, by symlinks out of its root."""
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    root, outside = tmp_path / "imgs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(root / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(outside / "secret.png")
    dataset.ingest(root, "swapped")
    for name, target in (("1.png", outside / "secret.png"), ("4.png", Path("/etc/passwd"))):
        (root / name).unlink()
        (root / name).symlink_to(target)
    return SimpleNamespace(home=home, root=root, outside=outside)


def test_files_swapped_for_symlinks_after_ingest_are_never_read(swapped):
    from lib import thumbs
    from lib.embeddings import embed
    from lib.errors import UnsafePath

    ds = dataset.load("swapped")
    with watched_opens() as seen:
        report = embed("swapped", "color", workers=0)
        assert report.computed == 4 and sorted(p for p, _ in report.errors) == ["1.png", "4.png"]
        assert all("outside the dataset root" in r for _, r in report.errors)
        for row in (1, 4):
            with pytest.raises(UnsafePath):
                thumbs.thumbnail_bytes(ds, row, 256, "blur")
        for page in ("views/1_Gallery.py", "views/5_Blur_scores.py", "views/7_Annotate.py"):
            at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
            at.session_state["wb:annotator"] = "carol"
            at = open_page(page, at, dataset="swapped", model="color", id=ds.images["id"].iat[1])
            assert not at.exception, (page, [e.message for e in at.exception])
        gallery = open_page("views/1_Gallery.py", dataset="swapped", model="color")
        warned = " ".join(w.value for w in gallery.warning)
        assert "cannot show 1.png" in warned and "cannot show 4.png" in warned
        assert len(gallery.get("image")) == 4
    assert not opened_under(seen, swapped.outside, "/etc/passwd")
    r = cli("scores", "swapped", home=swapped.home)
    assert_clean_exit(r)
    assert "(2 unreadable)" in r.stdout


HOSTILE_PARAMS = [
    {"dataset": "../../../../etc", "model": "../../../etc/passwd", "id": "../../../../etc/passwd", "page": "-3"},
    {"dataset": "/etc/passwd", "model": "open_clip:ViT-B-32@/etc/passwd", "id": "/etc/passwd",
     "page": "99999999999999999999999"},
    {"dataset": "hostile", "model": "color@@random", "id": "..%2F..%2F..%2Fetc%2Fpasswd", "page": "nan",
     "random": "1", "safe": "0", "w:safe": "false", "wb:safe": "false", "censor": "raw"},
    {"dataset": "hostile", "model": "hf:/etc", "id": "\x00/etc/passwd", "page": "1e9", "expansion": "../../../etc",
     "file": "/etc/passwd"},
]


@pytest.mark.parametrize("params", HOSTILE_PARAMS, ids=[f"params{i}" for i in range(len(HOSTILE_PARAMS))])
def test_query_parameters_cannot_reach_files_or_turn_safe_view_off(hostile, params):
    """Pages read ``dataset``, ``model``, ``random``, ``id`` and ``page`` from the URL: each is
    checked against what exists; nothing outside a dataset root is opened, safe view stays on."""
    import shutil

    import streamlit as st

    from lib import config

    # Earlier tests may have cached every thumbnail (on disk and in this process): clear
    # them so the pages really read image files and the watch below means something.
    shutil.rmtree(config.cache_dir() / "thumbs", ignore_errors=True)
    st.cache_data.clear()
    st.cache_resource.clear()
    names = dataset.list_names()
    ids = set(dataset.load("hostile").images["id"])
    shown = set()  # the datasets the pages fell back to (a bad name picks the default one)
    with watched_opens() as seen:
        for page in PAGES:
            at = open_page(page, **params)
            assert not at.exception, (page, [e.message for e in at.exception])
            assert at.sidebar.toggle(key="w:safe").value is True
            assert at.query_params["dataset"] in names
            shown.add(at.query_params["dataset"])
            if page in ("views/2_Neighbours.py", "views/5_Blur_scores.py"):  # the pages that read `id`
                assert at.query_params["id"] in ids if at.query_params["dataset"] == "hostile" else True
    bad = opened_under(seen, "/etc/passwd", "/etc/shadow", hostile.outside)
    assert not bad, bad
    roots = [str(dataset.load(n).root) for n in shown]
    assert any(r in str(a[0]) for a in seen for r in roots), ("the watch saw no image read at all", shown)


UPLOAD_NAMES = ["../../../../tmp/wb-pwned.png", "/etc/passwd", "a/../../b.png", "x" * 1000 + ".png", "evil.png\x00.sh",
                "new\nline.png", "<img src=x onerror=alert(1)>.png", "", ".png", "CON.png", "ok.dcm"]


def test_uploads_are_decoded_in_memory_whatever_their_name(tmp_path):
    from lib.errors import ImageError
    from lib.gallery import MAX_UPLOAD_BYTES, decode_upload

    rgb = np.random.default_rng(3).integers(0, 255, (40, 30, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 Mpx in ~50 kB
    dcm = tmp_path / "x.dcm"
    from hostile_files import dicom_file

    dicom_file(dcm, photometric="MONOCHROME1")
    with watched_opens() as seen:
        for name in UPLOAD_NAMES:
            if name.endswith(".dcm"):
                assert decode_upload(dcm.read_bytes(), name).size == (24, 16)
                continue
            img = decode_upload(png.getvalue(), name)
            assert np.array_equal(np.asarray(img), rgb), name
        with pytest.raises(ImageError, match="decompression bomb"):
            decode_upload(bomb.getvalue(), "bomb.png")
        with pytest.raises(ImageError, match="upload limit"):
            decode_upload(b"\x89PNG" + b"\0" * MAX_UPLOAD_BYTES, "big.png")
        with pytest.raises(ImageError, match="HTML"):
            decode_upload(b"<!DOCTYPE html><script>alert(1)</script>", "page.png")
        with pytest.raises(ImageError, match="truncated"):
            decode_upload(png.getvalue()[:200], "cut.png")
    assert writes(seen) == [], f"an upload was written to disk: {writes(seen)}"
    assert not Path("/tmp/wb-pwned.png").exists()
    assert len(bomb.getvalue()) < MAX_UPLOAD_BYTES  # refused for its pixels, not its bytes


def test_streamlit_config_is_local_only_with_xsrf_on():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    if server.get("enableStaticServing", False):
        # static/ serves plotly.js for the map's hover thumbnails and nothing else: no image
        # (nor any other file) can be reached through it; its one writer is ui.plotly_js_url.
        from lib import ui

        assert ui.plotly_js_url() == "/app/static/plotly.min.js"
        assert sorted(p.name for p in (REPO / "static").iterdir()) == ["plotly.min.js"]
        writers = [p for p in (REPO / "lib").rglob("*.py") if '"static"' in p.read_text()]
        assert writers == [REPO / "lib" / "ui.py"], writers
    assert 0 < server["maxUploadSize"] <= 20  # MB; lib.gallery.MAX_UPLOAD_BYTES is the same 20 MB
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] in ("none", False)  # no tracebacks (paths) in the browser


def _http(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})  # the path is sent as is, not normalised
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


@pytest.fixture(scope="module")
def make_run_server(tmp_path_factory):
    """The server exactly as ``make run`` starts it (its command line read with ``make -n``)."""
    import psutil

    from bench.server import Server, free_port

    port = free_port()
    plan = subprocess.run(["make", "-n", "run", f"PORT={port}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    line = next(ln for ln in plan.splitlines() if "-m lib app" in ln)
    assert "--server.address" not in line, "the Makefile must rely on .streamlit/config.toml for the address"
    home = tmp_path_factory.mktemp("make-run-home")
    with Server(home / "server.log", home, port=port, command=["bash", "-c", line]) as srv:
        yield SimpleNamespace(port=port, proc=psutil.Process(srv.proc.pid), line=line)


def test_make_run_listens_on_loopback_only(make_run_server):
    import psutil

    procs = [make_run_server.proc, *make_run_server.proc.children(recursive=True)]
    listening = [c for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert any(c.laddr.port == make_run_server.port for c in listening), listening
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in others:  # this machine's other addresses: nothing answers there
        with pytest.raises(OSError), socket.create_connection((ip, make_run_server.port), timeout=2):
            pass


def test_app_verb_from_another_folder_listens_on_loopback_only(tmp_path, monkeypatch):
    """``python -m lib app`` started elsewhere still reads the app's .streamlit/config.toml."""
    import psutil

    from bench.server import Server, free_port

    port = free_port()
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cmd = ["bash", "-c", f"cd {tmp_path} && exec {sys.executable} -m lib app --port {port}"]
    with Server(tmp_path / "server.log", tmp_path / "home", port=port, command=cmd) as srv:
        proc = psutil.Process(srv.proc.pid)
        listening = [c for p in (proc, *proc.children(recursive=True)) for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert [c.laddr.port for c in listening] == [port], listening
        assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening
        assert "modules the pages import" in srv.log_tail()


def test_app_verb_loads_what_the_pages_import(tmp_path):
    from lib.cli import PRELOAD_LAZY, preload_pages

    (tmp_path / "1_Page.py").write_text("import json\nimport streamlit as st\nfrom lib import gallery, ui\n"
                                        "from lib.detector import GROUPS\nfrom lib.no_such_module import x\n")
    loaded = preload_pages(tmp_path)
    assert {"json", "streamlit", "lib", "lib.gallery", "lib.ui", "lib.detector"} <= set(loaded)
    import importlib.util

    assert {m for m in PRELOAD_LAZY if importlib.util.find_spec(m) is not None} <= set(loaded)  # those installed
    assert "lib.detector.GROUPS" not in loaded and "lib.no_such_module" not in loaded  # names, missing modules
    assert "lib.ui" in sys.modules


def test_make_run_refuses_uploads_without_xsrf_token(make_run_server):
    port = make_run_server.port
    resp, _ = _http(port, "GET", "/_stcore/health")
    cookie = resp.getheader("Set-Cookie") or ""
    assert "_streamlit_xsrf=" in cookie, "XSRF protection is off"
    token = cookie.split("_streamlit_xsrf=", 1)[1].split(";", 1)[0]
    path = "/_stcore/upload_file/no-such-session/file1"
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\nxx\r\n--b--\r\n'
    assert _http(port, "PUT", path, form, body)[0].status == 403  # no token
    forged = {**form, "Cookie": f"_streamlit_xsrf={token}", "X-Xsrftoken": "2|00|00|00"}
    assert _http(port, "PUT", path, forged, body)[0].status == 403  # a token that does not match
    valid = {**form, "Cookie": f"_streamlit_xsrf={token}", "X-Xsrftoken": token}
    assert _http(port, "PUT", path, valid, body)[0].status == 400  # past XSRF: only the session is wrong


TRAVERSALS = ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/media/../../../../etc/passwd",
              "/media/..%2f..%2f..%2f..%2fetc%2fpasswd", "/app/static/../../../../etc/passwd",
              "/app/static/..%2f..%2f..%2fetc%2fpasswd", "/_stcore/../../../etc/passwd",
              "/component/x/../../../../../etc/passwd", "/component/..%2f..%2f..%2f..%2fetc%2fpasswd",
              "/static/../../../../etc/passwd", "//etc/passwd", "/Neighbours?id=../../../../etc/passwd"]


def test_make_run_serves_no_file_by_path(make_run_server):
    secret = Path("/etc/passwd").read_bytes()[:32]
    for path in TRAVERSALS:
        resp, data = _http(make_run_server.port, "GET", path)
        assert secret not in data and b"root:" not in data, path
    # nor the app's own files (unknown paths answer with the app's index page)
    for path, marker in (("/app/static/.streamlit/config.toml", b"enableXsrfProtection"),
                         ("/.streamlit/config.toml", b"enableXsrfProtection"), ("/app.py", b"st.navigation"),
                         ("/app/static/../app.py", b"st.navigation"), ("/views/0_Home.py", b"ui.setup"),
                         ("/lib/ui.py", b"cache_resource")):
        assert marker not in _http(make_run_server.port, "GET", path)[1], path


# ============================================================================= 6. load (the browser part: test_exposure_browser)


def test_safe_view_tables_are_shared_by_sessions_not_copied(hostile):
    """Every page view asks for the safe view's table (one row per image) and its id -> flag map.
    They must be one shared object per process (st.cache_resource), like the dataset and the
    index: a copy per call (st.cache_data) cost ~16 MB of server memory per page view at 100k
    images under several sessions (bench/load.py)."""
    from lib import ui

    ctx = ui.Ctx(name="hostile", model=None)
    assert ctx.decision() is ctx.decision()
    assert ctx.served()[0] is ctx.served()[0]
    other = ui.Ctx(name="hostile", model=None)  # another session, same settings
    assert other.served()[0] is ctx.served()[0] and other.served()[1] is ctx.served()[1]
    laxer = ui.Ctx(name="hostile", model=None, eb_threshold=5.0)  # other settings: another table
    assert laxer.decision() is not ctx.decision()
    assert laxer.served()[0].sum() <= ctx.served()[0].sum()
