"""EB colour score: masks against a per-pixel reference, z-scores, cached parallel scoring, figures."""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib import charts
from lib import colorscore as cs
from lib.files import sha256_file
from lib.images import open_image

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

# A foot ulcer (512 px PNG), a Medetec ulcer (224 px PNG), normal skin and a background
# photo (JPEG), a blood smear (JPEG): reds, skin and neither.
SAMPLE_SUBCLASSES = ["foot_ulcer", "normal_skin", "background", "blood_smear_microscopy", "venous_wound"]


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> pd.DataFrame:
    """The real corpus (conftest's corpus_dir fails loudly when it is missing)."""
    return pd.read_csv(CORPUS / "manifest.csv")


@pytest.fixture(scope="module")
def sample_paths(manifest) -> list[Path]:
    rows = [manifest[manifest.subclass == s].iloc[0] for s in SAMPLE_SUBCLASSES]
    rows.append(manifest[manifest.source == "medetec"].iloc[0])
    return [CORPUS / r.path for r in rows]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ----------------------------------------------------------------- slow reference

BT601 = {  # full-range ITU-R BT.601 (JFIF) RGB -> YCbCr
    "y": (0.299, 0.587, 0.114, 0.0),
    "cb": (-0.168736, -0.331264, 0.5, 128.0),
    "cr": (0.5, -0.418688, -0.081312, 128.0),
}

# PIL stores converted channels as truncated 8-bit codes (code - exact value lies in
# (-1.007, 0.023] for YCbCr over all 2^24 colours, in (-1, 0] for hue and saturation codes),
# and the masks compare thresholds with the code's bin centre (code + 0.5). So a pixel whose
# exact value is within about half a code of a threshold may land on either side of it;
# the test marks those pixels "ambiguous". Hue codes are 360/255 degrees wide.
BAND = 0.53  # codes
HUE_BAND_DEG = BAND * 360.0 / 255.0
SAT_BAND = BAND / 255.0
YCC_BAND = BAND


def reference_masks(img: Image.Image, p: cs.ColorParams):
    """Per-pixel pure-Python masks, plus the pixels lying within one 8-bit code of a threshold."""
    w, h = img.size
    blood = np.zeros((h, w), bool)
    skin = np.zeros((h, w), bool)
    ambiguous = np.zeros((h, w), bool)
    px = img.load()
    wraps = p.blood_hue_low_deg > p.blood_hue_high_deg
    for yy in range(h):
        for xx in range(w):
            r, g, b = px[xx, yy]
            hue, sat, val = colorsys.rgb_to_hsv(r / 255.0, g / 255.0, b / 255.0)
            deg = hue * 360.0
            if wraps:
                red = deg >= p.blood_hue_low_deg or deg <= p.blood_hue_high_deg
            else:
                red = p.blood_hue_low_deg <= deg <= p.blood_hue_high_deg
            blood[yy, xx] = red and sat >= p.blood_min_saturation and val >= p.blood_min_value
            y, cb, cr = (cr_ * r + cg * g + cb_ * b + off for cr_, cg, cb_, off in BT601.values())
            skin[yy, xx] = (y > p.skin_min_y and p.skin_cb_low < cb < p.skin_cb_high
                            and p.skin_cr_low < cr < p.skin_cr_high)
            ambiguous[yy, xx] = (
                min(abs(deg - p.blood_hue_low_deg), abs(deg - p.blood_hue_high_deg)) <= HUE_BAND_DEG
                or abs(sat - p.blood_min_saturation) <= SAT_BAND
                or abs(y - p.skin_min_y) <= YCC_BAND
                or min(abs(cb - p.skin_cb_low), abs(cb - p.skin_cb_high)) <= YCC_BAND
                or min(abs(cr - p.skin_cr_low), abs(cr - p.skin_cr_high)) <= YCC_BAND
            )
    return blood, skin, ambiguous


def small(path: Path, side: int = 48) -> Image.Image:
    return open_image(path).resize((side, side), Image.Resampling.BILINEAR)


@pytest.mark.parametrize(
    "params",
    [cs.DEFAULT_PARAMS,
     # a non-wrapping hue band and other thresholds, to exercise every branch
     cs.ColorParams(blood_hue_low_deg=5.0, blood_hue_high_deg=40.0, blood_min_saturation=0.2,
                    blood_min_value=0.3, skin_min_y=60.5, skin_cb_low=90.0, skin_cr_high=170.25)],
    ids=["default", "custom"],
)
def test_masks_match_per_pixel_reference(sample_paths, params):
    n_blood = n_skin = n_pixels = 0
    for path in sample_paths:
        img = small(path)
        blood, skin = cs.color_masks(img, params)
        ref_blood, ref_skin, ambiguous = reference_masks(img, params)
        assert blood.shape == skin.shape == (48, 48)
        # Every disagreement is explained by PIL's 8-bit rounding at a threshold ...
        assert not ((blood != ref_blood) & ~ambiguous).any(), path
        assert not ((skin != ref_skin) & ~ambiguous).any(), path
        # ... and such pixels are rare, so the fractions barely move.
        b, s = cs.color_fractions(img, params)
        assert b == pytest.approx(ref_blood.mean(), abs=0.02)
        assert s == pytest.approx(ref_skin.mean(), abs=0.02)
        n_blood += ref_blood.sum()
        n_skin += ref_skin.sum()
        n_pixels += blood.size
    # The sample is not degenerate: both colour classes occur and neither covers everything.
    assert 0.01 < n_blood / n_pixels < 0.9
    assert 0.01 < n_skin / n_pixels < 0.9


@pytest.mark.parametrize("params", [cs.DEFAULT_PARAMS, cs.ColorParams(blood_hue_low_deg=5.0, blood_hue_high_deg=40.0,
                                                                   skin_cr_high=170.25)], ids=["default", "custom"])
def test_mask_table_gives_pils_conversions_bit_for_bit(sample_paths, home, params, monkeypatch):
    """The per-colour table stands for HSV/YCbCr conversion + thresholds: every pixel agrees."""
    monkeypatch.setattr(cs, "_TABLES", {})  # built in this test's data home
    rng = np.random.default_rng(11)
    imgs = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))] + [open_image(p) for p in sample_paths]
    for img in imgs:
        direct = (cs.blood_mask_hsv(np.asarray(img.convert("HSV")), params),
                  cs.skin_mask_ycbcr(np.asarray(img.convert("YCbCr")), params))
        got = cs.color_masks(img, params, full_size=True)
        assert np.array_equal(got[0], direct[0]) and np.array_equal(got[1], direct[1])
    stored = list((home / "cache" / "colorscore").glob("masks-*.npy"))
    assert len(stored) == 1 and stored[0].stat().st_size > 1 << 24
    # A fresh process (here: an emptied memo) maps the stored table instead of rebuilding it.
    build = cs._build_mask_table
    monkeypatch.setattr(cs, "_TABLES", {})
    monkeypatch.setattr(cs, "_build_mask_table", lambda p: pytest.fail("table rebuilt"))
    table = cs.mask_table(params)
    assert isinstance(table, np.memmap)
    # A damaged table file is rebuilt, not trusted.
    monkeypatch.setattr(cs, "_build_mask_table", build)
    stored[0].write_bytes(b"not a table")
    monkeypatch.setattr(cs, "_TABLES", {})
    assert cs.mask_table(params).shape == (1 << 24,)


def test_masks_on_pure_colours():
    # Hand-checked colours: blood red, skin tone, pale pink (low saturation), dark red (low
    # value), green, and a magenta-red just inside the 340 degree band (hue 341.05).
    colours = [(200, 20, 30), (224, 172, 140), (250, 225, 225), (30, 2, 2), (20, 180, 40), (220, 30, 90)]
    img = Image.fromarray(np.array([colours], dtype=np.uint8))
    blood, skin = cs.color_masks(img)
    assert blood[0].tolist() == [True, False, False, False, False, True]
    # Skin tone: Y=183.9, Cb=103.2, Cr=156.6 and pale pink: Y=232.5, Cb=123.8, Cr=140.5 are
    # inside the box; blood red has Y=75.0 < 80, magenta-red Cr=218.1 > 180.
    assert skin[0].tolist() == [False, True, True, False, False, False]


def test_scoring_size_and_full_size(sample_paths):
    img = open_image(sample_paths[0])  # 512 x 512
    blood, skin = cs.color_masks(img)
    assert blood.shape == (256, 256)
    full_blood, _ = cs.color_masks(img, full_size=True)
    assert full_blood.shape == (512, 512)
    # Fractions are nearly resolution independent.
    assert blood.mean() == pytest.approx(full_blood.mean(), abs=0.01)
    assert cs.scoring_size((640, 480), 256) == (256, 192)
    assert cs.scoring_size((100, 50), 256) == (100, 50)


# ----------------------------------------------------------------- z-scores


def test_zscore_eb_closed_form():
    blood = np.array([0.1, 0.3, 0.2, 0.6])
    skin = np.array([0.5, 0.1, 0.2, 0.2])
    z = cs.zscore_eb(blood, skin)
    zb = (blood - blood.mean()) / blood.std()
    zs = (skin - skin.mean()) / skin.std()
    np.testing.assert_allclose(z["z_blood"], zb)
    np.testing.assert_allclose(z["z_skin"], zs)
    np.testing.assert_allclose(z["eb"], np.maximum(zb, zs))
    # Hand-computed: blood mean 0.3, sd sqrt(0.035); the last image has z_blood = 0.3/0.187 = 1.604.
    assert z["eb"].iloc[3] == pytest.approx(0.3 / math.sqrt(0.035))


def test_zscore_eb_reference_nan_and_zero_sd():
    ref_b, ref_s = np.array([0.0, 0.2]), np.array([0.4, 0.4])  # skin has no spread
    z = cs.zscore_eb([0.1, 0.5, np.nan], [0.4, 0.9, np.nan], reference=(ref_b, ref_s))
    np.testing.assert_allclose(z["z_blood"][:2], [0.0, 4.0])  # mean 0.1, sd 0.1
    np.testing.assert_allclose(z["z_skin"][:2], [0.0, 0.5])   # sd 0 -> only centred
    assert np.isfinite(z.to_numpy()[:2]).all()
    assert z.iloc[2].isna().all()
    with pytest.raises(ValueError, match="reference"):
        cs.zscore_eb([0.1], [0.2], reference=([np.nan], [np.nan]))


def test_eb_table_reference_mask():
    df = pd.DataFrame({"id": list("abcd"), "blood": [0.1, 0.3, 0.2, 0.6], "skin": [0.5, 0.1, 0.2, 0.2],
                       "label": ["non_sensitive", "non_sensitive", "sensitive", "sensitive"]})
    out = cs.eb_table(df, reference_mask=df.label == "non_sensitive")
    assert list(out.columns[-3:]) == ["z_blood", "z_skin", "eb"]
    assert "z_blood" not in df.columns  # input untouched
    # Reference = first two rows: blood mean 0.2, sd 0.1; skin mean 0.3, sd 0.2.
    np.testing.assert_allclose(out.z_blood, [-1, 1, 0, 4])
    np.testing.assert_allclose(out.z_skin, [1, -1, -0.5, -0.5])
    np.testing.assert_allclose(out.eb, [1, 1, 0, 4])
    with pytest.raises(ValueError, match="shape"):
        cs.eb_table(df, reference_mask=[True])


# ----------------------------------------------------------------- scoring files + cache


@pytest.fixture
def files(sample_paths, tmp_path) -> list[Path]:
    bad = tmp_path / "not_an_image.png"
    bad.write_text("<html>404</html>")
    return [*sample_paths, bad, tmp_path / "missing.png"]


def test_score_paths_values_and_errors(files, monkeypatch):
    calls = []
    real = cs.score_file
    monkeypatch.setattr(cs, "score_file", lambda p, params: calls.append(p) or real(p, params))
    df = cs.score_paths([*files, files[0]], workers=1, cache=False)
    assert list(df.columns) == ["id", "path", "blood", "skin", "error"]
    assert df.path.tolist() == [str(p) for p in [*files, files[0]]]
    good = df.iloc[: len(files) - 2]
    for row, path in zip(good.itertuples(), files, strict=False):
        assert row.id == sha256_file(path)
        assert row.error is None
        b, s = cs.color_fractions(open_image(path))
        assert (row.blood, row.skin) == pytest.approx((b, s), abs=2e-3)  # JPEG DCT-scaled decode
    bad, missing = df.iloc[len(files) - 2], df.iloc[len(files) - 1]
    assert np.isnan(bad.blood) and "HTML" in bad.error and bad.id == sha256_file(files[-2])
    assert np.isnan(missing.skin) and missing.id is None and "cannot read" in missing.error
    # The duplicate of the first file is scored once and reported twice.
    assert df.iloc[-1][["id", "blood", "skin"]].tolist() == df.iloc[0][["id", "blood", "skin"]].tolist()
    assert len(calls) == len(files) - 1


def test_cache_second_call_computes_nothing(files, home, monkeypatch):
    calls = []
    real = cs.score_file
    monkeypatch.setattr(cs, "score_file", lambda p, params: calls.append(p) or real(p, params))
    pairs = [(f"id{i}", p) for i, p in enumerate(files[:4])]
    first = cs.score_paths(pairs, workers=1)
    assert len(calls) == 4
    parts = list((home / "cache" / "colorscore" / cs.cache_key()).glob("part-*.parquet"))
    assert len(parts) == 1
    second = cs.score_paths(pairs, workers=1)
    assert len(calls) == 4  # nothing recomputed
    pd.testing.assert_frame_equal(first, second)
    # A new parameter set has its own cache; failed images are retried, never cached.
    cs.score_paths(pairs[:2], cs.ColorParams(max_side=128), workers=1)
    assert len(calls) == 6
    cs.score_paths(files[-2:], workers=1)  # unreadable + missing: only the first is scored
    cs.score_paths(files[-2:], workers=1)
    assert len(calls) == 8
    assert set(cs.FractionCache().read().id) == {f"id{i}" for i in range(4)}


def test_parallel_equals_serial(files):
    serial = cs.score_paths(files, workers=1, cache=False, chunksize=1)
    parallel = cs.score_paths(files, workers=2, cache=False, chunksize=1)
    pd.testing.assert_frame_equal(serial, parallel)


def test_score_paths_other_formats_match_open_image(tmp_path, sample_paths):
    from hostile_files import dicom_file

    dicom_file(tmp_path / "xray.dcm")
    rgba = open_image(sample_paths[0]).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # half-transparent: composited on white
    rgba.save(tmp_path / "alpha.png")
    big = open_image(sample_paths[1]).resize((1200, 1000))
    big.save(tmp_path / "big.jpg", quality=95)  # decoded DCT-scaled by the scorer
    paths = [tmp_path / "xray.dcm", tmp_path / "alpha.png", tmp_path / "big.jpg"]
    df = cs.score_paths(paths, workers=1, cache=False)
    assert df.error.isna().all()
    for row, path in zip(df.itertuples(), paths, strict=True):
        assert (row.blood, row.skin) == pytest.approx(cs.color_fractions(open_image(path)), abs=0.01)
    assert df.skin.iloc[2] > 0.05  # the skin photo is scored as skin through the fast path


def test_score_paths_dataframe_input_and_progress(files):
    table = pd.DataFrame({"id": ["a", None, "c"], "path": [str(p) for p in files[:3]]})
    seen = []
    df = cs.score_paths(table, workers=1, cache=False, chunksize=1, progress=lambda d, t: seen.append((d, t)))
    assert df.id.tolist() == ["a", sha256_file(files[1]), "c"]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="path"):
        cs.score_paths(pd.DataFrame({"id": ["a"]}))


def test_cache_writes_are_atomic(files, home, monkeypatch):
    pairs = [(f"id{i}", p) for i, p in enumerate(files[:3])]
    cs.score_paths(pairs[:1], workers=1)
    folder = home / "cache" / "colorscore" / cs.cache_key()
    before = sorted(folder.iterdir())

    def killed_mid_write(self, f, **kw):
        f.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(pd.DataFrame, "to_parquet", killed_mid_write)
        cs.score_paths(pairs, workers=1)
    assert sorted(folder.iterdir()) == before  # no partial part, no temp file left
    assert cs.FractionCache().read().id.tolist() == ["id0"]
    # A part damaged by something else is ignored (its rows are recomputed), not fatal.
    (folder / "part-zzz.parquet").write_bytes(b"garbage")
    df = cs.score_paths(pairs, workers=1)
    assert df.error.isna().all()


def test_cache_compacts_parts(files, monkeypatch):
    monkeypatch.setattr(cs.FractionCache, "MAX_PARTS", 3)
    store = cs.FractionCache()
    for i in range(5):
        store.add([f"x{i}"], [i / 10], [0.5])
        assert len(store.parts()) <= 3
    cached = store.read().sort_values("id")
    assert cached.id.tolist() == [f"x{i}" for i in range(5)]
    np.testing.assert_allclose(cached.blood, [0, 0.1, 0.2, 0.3, 0.4])


# ----------------------------------------------------------------- figures (lib.charts, from EB tables)


@pytest.fixture
def eb_df() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({
        "id": [f"img{i}" for i in range(n)],
        "blood": rng.uniform(0, 0.5, n),
        "skin": rng.uniform(0, 0.8, n),
        "label": rng.choice(["sensitive", "non_sensitive"], n),
        "split": rng.choice(["train", "test", "val"], n),
    })
    return cs.eb_table(df)


def test_eb_histograms(eb_df):
    fig = charts.eb_histograms(eb_df, by="label", facet="split", nbins=20)
    assert fig.layout.barmode == "overlay"
    combos = eb_df.groupby(["label", "split"]).size()
    assert len(fig.data) == len(combos)
    bins = {(t.xbins.start, t.xbins.size) for t in fig.data}
    assert len(bins) == 1  # one binning for every overlaid trace and panel
    start, size = bins.pop()
    assert start == pytest.approx(eb_df.eb.min())
    assert size == pytest.approx((eb_df.eb.max() - eb_df.eb.min()) / 20)
    axes = {t.xaxis for t in fig.data}
    assert len(axes) == 3  # one panel per split
    titles = {a.text for a in fig.layout.annotations}
    assert titles == {"train", "test", "val"}
    # Traces hold the EB values of their label, one trace per (label, split) cell.
    assert sorted(len(t.x) for t in fig.data) == sorted(combos.tolist())
    for label, group in eb_df.groupby("label"):
        xs = np.concatenate([t.x for t in fig.data if t.name == label])
        np.testing.assert_allclose(np.sort(xs), np.sort(group.eb))
    # Without the facet column: one panel.
    single = charts.eb_histograms(eb_df.drop(columns="split"))
    assert len(single.data) == 2 and {t.xaxis for t in single.data} == {"x"}


def test_blood_skin_scatter_customdata_is_id(eb_df):
    fig = charts.blood_skin_scatter(eb_df, color="label", hover_data=["split", "eb"])
    by_id = eb_df.set_index("id")
    seen = 0
    for t in fig.data:
        for x, y, custom in zip(t.x, t.y, t.customdata, strict=True):
            row = by_id.loc[custom[0]]
            assert (row.blood, row.skin) == (x, y)
            assert row.label == t.name
            seen += 1
    assert seen == len(eb_df)


def test_rescoring_a_dataset_checks_only_the_paths_it_reads(tmp_path, monkeypatch):
    """Cached rows are not read, so their paths are not resolved again (10 s at 100k rows)."""
    from lib import dataset

    rng = np.random.default_rng(5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)).save(folder / f"{i}.png")
    dataset.ingest(folder, "six")
    first = cs.score_dataset_rows(dataset.load("six"), workers=1)
    checked = []
    real = dataset.safe_join
    monkeypatch.setattr(dataset, "safe_join", lambda root, rel: checked.append(rel) or real(root, rel))
    again = cs.score_dataset_rows(dataset.load("six"), workers=1)
    assert checked == []
    pd.testing.assert_frame_equal(first.drop(columns="path"), again.drop(columns="path"))
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)).save(folder / "new.png")
    dataset.ingest(folder, "six")
    checked.clear()
    grown = cs.score_dataset_rows(dataset.load("six"), workers=1)
    assert checked == ["new.png"] and grown["error"].isna().all() and len(grown) == 7


def test_mask_table_is_built_once_when_sessions_ask_together(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(cs, "_TABLES", {})
    built = []
    real = cs._build_mask_table

    def slow_build(params):
        built.append(params)
        time.sleep(0.3)  # the other threads arrive while this one builds
        return real(params)

    monkeypatch.setattr(cs, "_build_mask_table", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cs.mask_table())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(got) == 4 and all(g is got[0] for g in got)
