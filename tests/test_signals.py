"""The fused ``index`` job: one decode per image gives the same signals as their own passes.

On real corpus files (PNGs, small JPEGs and JPEGs large enough to be reduced on decode)
and the real caches: EB fractions and perceptual hashes bit for bit, image statistics
equal, embeddings within cosine 0.9999 of the plain ``embed`` path (the stated tolerance;
measured: within 0.99999, the fp16 cache's rounding, since large JPEGs are decoded again at
full size for the models; with ``reduce_on_decode`` the reduced ones within 0.9999 on the
small test models); and a later
``scores``, ``quality`` hash pass, statistics pass, ``embed`` or ``index`` decodes nothing
(the image files are deleted before they run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TINY = "open_clip:WB-Tiny-ViT"
#: The stated tolerance: embeddings of the fused job vs the plain embed path, every image.
COSINE = 0.9999


def _pick(corpus_dir: Path) -> list[str]:
    """Corpus files of every kind: PNGs of two sources, small JPEGs, JPEGs >= 2x the scoring side."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    jpgs = [p for p in m["path"] if p.endswith(".jpg")]
    big = [p for p in jpgs if min(Image.open(corpus_dir / p).size) >= 2 * 260][:4]
    small = [p for p in jpgs if max(Image.open(corpus_dir / p).size) < 400][:3]
    pngs = [p for p in m["path"] if p.endswith(".png")]
    return big + small + pngs[::97][:5]


@pytest.fixture(scope="module")
def home(tmp_path_factory, corpus_dir):
    """A private data home with dataset 'sig' (copies of real corpus files, one broken file)."""
    root = tmp_path_factory.mktemp("signals")
    src = root / "src"
    for k, rel in enumerate(_pick(corpus_dir)):
        label = "sensitive" if k % 2 else "safe"
        dest = src / label / f"{k:02d}_{Path(rel).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_dir / rel, dest)
    (src / "safe" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(root / "home"))
        from lib import dataset

        dataset.ingest(src, "sig")
        yield root


@pytest.fixture(scope="module")
def indexed(home, tiny_model):
    from lib.signals import index

    report = index("sig", ["color", TINY], random_weights=True, backends={TINY: tiny_model}, workers=2,
                   batch_size=4)
    return report


def _good(ds):
    rows = ds.images[ds.images["error"].isna()] if "error" in ds.images else ds.images
    first = rows.drop_duplicates("id")
    return first["id"].astype(str).tolist(), [str(ds.abspath(p)) for p in first["path"]]


def test_index_reports_every_signal_and_the_broken_file(indexed):
    from lib import dataset

    ds = dataset.load("sig")
    ids, paths = _good(ds)
    n = len(ids)
    assert n == 12
    assert indexed.decoded == n
    for key in ("eb", "phash", "stats", "color", TINY):
        assert indexed.computed[key] == n and indexed.cached[key] == 0, key
    # A file ingest already refused is not in the dataset's images; nothing else failed.
    assert all("broken.jpg" in p for p, _ in indexed.errors)
    reduced = [p for p in paths if p.endswith(".jpg") and min(Image.open(p).size) >= 520]
    assert len(reduced) >= 2, "the test needs JPEGs that are reduced on decode"


def test_fused_eb_fractions_are_bit_identical_to_the_scores_path(indexed):
    from lib import dataset
    from lib.colorscore import FractionCache, score_paths

    ds = dataset.load("sig")
    ids, paths = _good(ds)
    fused = FractionCache().read().set_index("id").loc[ids]
    alone = score_paths(list(zip(ids, paths, strict=True)), cache=False, workers=1)
    assert alone["error"].isna().all()
    assert np.array_equal(fused["blood"].to_numpy(np.float64), alone["blood"].to_numpy(np.float64))
    assert np.array_equal(fused["skin"].to_numpy(np.float64), alone["skin"].to_numpy(np.float64))


def test_fused_hashes_and_statistics_equal_their_own_passes(indexed):
    from lib import dataset
    from lib.colorscore import DEFAULT_PARAMS, load_for_scoring
    from lib.images import open_image
    from lib.imagestats import COLUMNS, stats_cache, stats_file
    from lib.quality import hash_cache, image_hashes

    ds = dataset.load("sig")
    ids, paths = _good(ds)
    cached = hash_cache().read().set_index("id").loc[ids]
    codes = np.ascontiguousarray(cached.to_numpy(np.int64)).view(np.uint8).reshape(len(ids), 8, 8)
    alone = np.stack([image_hashes(load_for_scoring(p, DEFAULT_PARAMS)) for p in paths])
    assert np.array_equal(codes, alone)

    stats = stats_cache().read().set_index("id").loc[ids]
    for cid, p in zip(ids, paths, strict=True):
        assert tuple(stats.loc[cid, COLUMNS]) == stats_file(p), p
        assert (stats.loc[cid, "width"], stats.loc[cid, "height"]) == open_image(p).size
    assert stats["brightness"].between(0, 1).all() and (stats["sharpness"] > 0).all()


def test_fused_embeddings_match_the_plain_embed_path(indexed, tiny_model):
    from lib import dataset
    from lib.embeddings import load_embeddings
    from lib.images import open_image
    from lib.models import load_model

    ds = dataset.load("sig")
    ids, paths = _good(ds)
    rows = [int(np.flatnonzero(ds.images["id"].astype(str).to_numpy() == i)[0]) for i in ids]
    reduced = np.array([p.endswith(".jpg") and min(Image.open(p).size) >= 520 for p in paths])
    for spec, backend in [("color", load_model("color")), (TINY, tiny_model)]:
        fused = load_embeddings("sig", spec, backend=backend).take(rows)
        plain = backend.encode_images([open_image(p) for p in paths])  # what embed() computes per image
        cos = np.sum(fused * plain, axis=1)
        assert cos.min() >= COSINE, (spec, cos.min())
        assert cos.min() >= 0.99999, (spec, cos.min())  # embed's pixels: fp16 storage only
    assert reduced.sum() >= 2


def test_reduce_on_decode_stays_within_the_tolerance_on_the_test_models(home, tiny_model, tmp_path, monkeypatch):
    from lib import dataset
    from lib.embeddings import load_embeddings
    from lib.images import open_image
    from lib.models import load_model
    from lib.signals import index

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(home / "src", "sig")
    rep = index("sig", ["color", TINY], backends={TINY: tiny_model}, reduce_on_decode=True)
    assert rep.computed[TINY] == 12
    ds = dataset.load("sig")
    ids, paths = _good(ds)
    rows = [int(np.flatnonzero(ds.images["id"].astype(str).to_numpy() == i)[0]) for i in ids]
    for spec, backend in [("color", load_model("color")), (TINY, tiny_model)]:
        fused = load_embeddings("sig", spec, backend=backend).take(rows)
        plain = backend.encode_images([open_image(p) for p in paths])
        assert np.sum(fused * plain, axis=1).min() >= COSINE, spec


def test_later_passes_decode_nothing(home, indexed, tiny_model):
    """After index, the image files are gone: scores, hashes, statistics, embed and index
    still answer in full, from the caches."""
    from lib import dataset
    from lib.colorscore import FractionCache, score_dataset
    from lib.embeddings import embed
    from lib.imagestats import stats_ids
    from lib.quality import hash_ids
    from lib.signals import index

    ds = dataset.load("sig")
    ids, paths = _good(ds)
    before = FractionCache().read().set_index("id").loc[ids]
    gone = home / "gone"
    shutil.move(str(home / "src"), str(gone))
    try:
        eb = score_dataset(ds, workers=1)
        assert eb["error"].isna().all() and np.isfinite(eb["eb"]).all()
        assert np.array_equal(eb.set_index("id").loc[ids, "blood"].to_numpy(), before["blood"].to_numpy())
        codes, errors = hash_ids(ds, workers=1)
        assert not errors and codes.any(axis=(1, 2)).all()
        stats, errors = stats_ids(ds, workers=1)
        assert not errors and len(stats) == len(ids)
        assert embed("sig", "color").computed == 0
        assert embed("sig", TINY, backend=tiny_model).computed == 0
        again = index("sig", ["color", TINY], random_weights=True, backends={TINY: tiny_model})
        assert again.decoded == 0 and not again.errors and sum(again.computed.values()) == 0
    finally:
        shutil.move(str(gone), str(home / "src"))


def test_index_fills_only_what_is_missing(home, indexed):
    """A signal cache emptied after index is refilled by the next run; the others are not recomputed."""
    from lib.imagestats import stats_cache
    from lib.signals import index

    shutil.rmtree(stats_cache().dir)
    rep = index("sig", ["color"])
    assert rep.computed["stats"] == 12 and rep.computed["eb"] == 0 and rep.computed["color"] == 0
    assert rep.decoded == 12  # decoded for the statistics alone; no model ran
    assert len(stats_cache().read()) == 12


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "WORKBENCH_HOME": str(home / "home")}
    return subprocess.run([sys.executable, "-m", "lib", *args], cwd=REPO, capture_output=True, text=True, env=env)


def test_index_verb_and_its_errors(home, indexed):
    ok = _cli("index", "sig", "--models", "color", home=home)
    assert ok.returncode == 0, ok.stderr
    assert "index sig: 12 unique images, 0 decoded once" in ok.stdout
    bad = _cli("index", "sig", "--models", " , ", home=home)
    assert bad.returncode == 2 and "--models ' , ' names no model" in bad.stderr
    unknown = _cli("index", "sig", "--models", "color,nosuchkind:x", home=home)
    assert unknown.returncode == 2 and "nosuchkind:x" in unknown.stderr
    missing = _cli("index", "nosuchdataset", home=home)
    assert missing.returncode == 2 and "nosuchdataset" in missing.stderr


def test_uint8_pixel_path_gives_the_float_path_vectors_bit_for_bit(corpus_dir, tiny_model):
    """The fast path's uint8 pixels, normalised batched, are open_clip's transform exactly."""
    from lib.images import open_image

    pixels = tiny_model.pixels_preprocess()
    assert pixels is not None
    paths = [corpus_dir / p for p in _pick(corpus_dir)]
    imgs = [open_image(p) for p in paths]
    u8 = np.stack([pixels(im) for im in imgs])
    assert u8.dtype == np.uint8 and u8.shape == (len(imgs), 3, 64, 64)
    floats = np.stack([tiny_model.preprocess(im) for im in imgs])
    assert np.array_equal(tiny_model.encode_pixels(u8), tiny_model.encode_preprocessed(floats))


def test_a_file_broken_since_ingest_is_reported_and_retried(home, corpus_dir):
    """The error names the file; nothing of it is cached, so the next run tries it again."""
    from lib import dataset
    from lib.colorscore import FractionCache
    from lib.imagestats import stats_cache, stats_file
    from lib.quality import hash_cache
    from lib.signals import index

    src = home / "src2"
    src.mkdir()
    used = set(_pick(corpus_dir))
    fresh = [p for p in pd.read_csv(corpus_dir / "manifest.csv")["path"] if p not in used][5::101][:3]
    for k, rel in enumerate(fresh):
        shutil.copyfile(corpus_dir / rel, src / f"{k}{Path(rel).suffix}")
    dataset.ingest(src, "sig2")
    victim = sorted(src.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after ingest
    cid = dataset.load("sig2").images.set_index("path").loc[victim.name, "id"]
    rep = index("sig2", ["color"])
    assert [p for p, _ in rep.errors] == [str(victim)]
    assert str(victim) in rep.errors[0][1]
    for cache_ids in (FractionCache().read()["id"], hash_cache().read()["id"], stats_cache().read()["id"]):
        assert cid not in set(cache_ids.astype(str))
    assert index("sig2", ["color"]).errors == rep.errors  # tried again, and reported again
    from lib.errors import ImageError

    with pytest.raises(ImageError, match=victim.name):
        stats_file(str(victim))


def test_index_tta_fills_the_detector_views_and_predict_then_decodes_nothing(home, tiny_model, tmp_path, monkeypatch):
    """``index --tta``: the 7 flips / rotations come from the same decode, into the stores
    ``predict --tta`` reads. With the image files gone, predict still has every view; the
    views equal what :func:`lib.detector.embed_views` computes itself from the files (the
    stated tolerance: cosine >= 0.99999 per view, the fp16 cache's rounding; measured: equal)."""
    from lib import config, dataset
    from lib import detector as D
    from lib.signals import index

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(home / "src", "sig")
    rep = index("sig", ["color", TINY], random_weights=True, backends={TINY: tiny_model}, tta=True, workers=2,
                batch_size=4)
    n = 12
    assert rep.decoded == n
    for spec in ("color", TINY):
        assert rep.computed[spec] == n and rep.computed[f"{spec} tta"] == 7 * n and rep.cached[f"{spec} tta"] == 0
    dets = {"color": D.train(["sig"], "color", "sig-color")[0],
            TINY: D.train(["sig"], TINY, "sig-tiny", random_weights=True, backend=tiny_model)[0]}
    ds = dataset.load("sig")
    for det in dets.values():
        assert all(D.tta_store(det.fingerprint, t).missing(list(ds.unique_ids)) == [] for t in D.TTA_TRANSFORMS)

    gone = home / "gone"
    shutil.move(str(home / "src"), str(gone))
    try:  # nothing to decode: every view is read from its store
        fused = {s: D.view_vectors(ds, d) for s, d in dets.items()}
        tables = {s: D.predict("sig", d, tta=True, write=False) for s, d in dets.items()}
        again = index("sig", ["color", TINY], random_weights=True, backends={TINY: tiny_model}, tta=True)
        assert again.decoded == 0 and not again.errors and sum(again.computed.values()) == 0
        assert again.cached[f"{TINY} tta"] == 7 * n
    finally:
        shutil.move(str(gone), str(home / "src"))
    for s in dets:
        assert np.isfinite(fused[s]).all() and np.isfinite(tables[s]["tta_sd"]).all(), s

    shutil.rmtree(config.cache_dir() / "emb-tta")  # embed_views' own computation, from the files
    for s, det in dets.items():
        own = D.view_vectors(ds, det, backend=tiny_model if s == TINY else None)
        assert np.isfinite(own).all()
        cos = np.sum(fused[s] * own, axis=2)  # (7 views, rows)
        assert cos.min() >= 0.99999, (s, cos.min())
        assert np.array_equal(fused[s], own), (s, np.abs(fused[s] - own).max())
        table = D.predict("sig", det, tta=True, write=False, backend=tiny_model if s == TINY else None)
        np.testing.assert_array_equal(table["tta_sd"].to_numpy(), tables[s]["tta_sd"].to_numpy())
        assert table["uncertain"].tolist() == tables[s]["uncertain"].tolist()


def test_index_verb_tta_flag(home, indexed):
    """``index NAME --models color --tta`` fills the color views only (the rest is cached)."""
    ok = _cli("index", "sig", "--models", "color", "--tta", home=home)
    assert ok.returncode == 0, ok.stderr
    assert "index sig: 12 unique images, 12 decoded once" in ok.stdout and "color tta 84 new/0 cached" in ok.stdout
    again = _cli("index", "sig", "--models", "color", "--tta", home=home)
    assert "0 decoded once" in again.stdout and "color tta 0 new/84 cached" in again.stdout
