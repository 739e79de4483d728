"""Safe viewing: censoring renderings, region censoring, mask clean-up and IoU, thumbnails, NudeNet."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter
from scipy import ndimage

from lib import safety as sf
from lib.errors import ModelError
from lib.images import open_image, thumbnail

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> pd.DataFrame:
    """The real corpus (conftest's corpus_dir fails loudly when it is missing)."""
    return pd.read_csv(CORPUS / "manifest.csv")


@pytest.fixture(scope="module")
def wound(manifest) -> Image.Image:
    """A 512 x 512 foot-ulcer photo."""
    return open_image(CORPUS / manifest[manifest.source == "fuseg"].path.iloc[0])


def band_energy(img: Image.Image) -> float:
    """Mean squared difference-of-Gaussians (sigma 1 vs 4 px): the edges and textures that
    make content recognisable, above the 8-bit quantisation noise floor."""
    g = np.asarray(img.convert("L"), dtype=np.float64)
    return float(np.mean((ndimage.gaussian_filter(g, 1) - ndimage.gaussian_filter(g, 4)) ** 2))


# ----------------------------------------------------------------- whole-image renderings


def test_blur_removes_detail_keeps_size_and_colour(wound):
    out = sf.blur(wound)
    assert out.size == wound.size and out.mode == "RGB"
    assert band_energy(wound) / band_energy(out) > 100
    # Colours are kept (it is a blur, not a blackout).
    assert np.abs(np.asarray(out, float).mean((0, 1)) - np.asarray(wound, float).mean((0, 1))).max() < 3
    # The reduced-size shortcut matches a direct full-size Gaussian blur of the same sigma.
    direct = wound.filter(ImageFilter.GaussianBlur(sf.BLUR_FRACTION * 512))
    assert np.abs(np.asarray(out, float) - np.asarray(direct, float)).mean() < 2
    assert np.array_equal(np.asarray(sf.blur(wound, radius=0)), np.asarray(wound))


def test_pixelate_is_block_means(wound):
    out = np.asarray(sf.pixelate(wound, blocks=16), dtype=np.float64)
    assert out.shape == (512, 512, 3)
    # 32 x 32 blocks, each flat and equal to the mean of the original block.
    means = np.asarray(wound, np.float64).reshape(16, 32, 16, 32, 3).mean(axis=(1, 3))
    blocks = out.reshape(16, 32, 16, 32, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert np.abs(blocks[:, 0, :, 0] - means).max() <= 1
    # Non-square images keep their aspect: 16 blocks across the longest side.
    wide = sf.pixelate(wound.resize((320, 160)), blocks=16)
    assert wide.size == (320, 160)
    assert len(np.unique(np.asarray(wide).reshape(-1, 3), axis=0)) <= 16 * 8


def test_blackout_and_modes():
    img = Image.new("RGB", (30, 20), (200, 10, 10))
    out = sf.blackout(img)
    assert out.size == (30, 20) and not np.asarray(out).any()
    with pytest.raises(ValueError, match="blur, pixelate, blackout"):
        sf.render(img, "smudge")


# ----------------------------------------------------------------- regions


@pytest.mark.parametrize("mode", sf.MODES)
def test_censor_regions_changes_only_the_mask(wound, mode):
    small_mask = np.zeros((16, 16), bool)  # resized x32 with nearest neighbour
    small_mask[4:9, 3:12] = True
    small_mask[12, 12] = True
    region = np.kron(small_mask, np.ones((32, 32), bool))
    out = np.asarray(sf.censor_regions(wound, mask=small_mask, mode=mode))
    orig = np.asarray(wound)
    assert out.shape == orig.shape
    assert np.array_equal(out[~region], orig[~region])
    changed = (out != orig).any(axis=-1)
    assert changed[region].mean() > 0.9
    if mode == "blackout":
        assert not out[region].any()


def test_censor_regions_boxes(wound):
    out = np.asarray(sf.censor_regions(wound, boxes=[(10.2, 5, 20, 15.5), (500, 500, 600, 600)], mode="blackout"))
    expected = np.zeros((512, 512), bool)
    expected[5:16, 10:20] = True      # every pixel the box touches
    expected[500:512, 500:512] = True  # clipped to the image
    assert np.array_equal(~out.any(axis=-1), expected | ~np.asarray(wound).any(axis=-1))
    # No region: an unchanged copy.
    assert np.array_equal(np.asarray(sf.censor_regions(wound, boxes=[])), np.asarray(wound))
    with pytest.raises(ValueError, match="x0 <= x1"):
        sf.region_mask((10, 10), boxes=[(5, 0, 2, 3)])


# ----------------------------------------------------------------- masks


def reference_clean(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """Median, closing, opening with explicit k x k windows over edge-replicated borders."""
    def windows(a):
        return sliding_window_view(np.pad(a, k // 2, mode="edge"), (k, k))

    def dilate(a):
        return windows(a).max(axis=(-2, -1))

    def erode(a):
        return windows(a).min(axis=(-2, -1))

    med = (windows(mask.astype(np.uint8)).sum(axis=(-2, -1)) > k * k // 2).astype(np.uint8)
    return dilate(erode(erode(dilate(med)))).astype(bool)


def test_clean_mask_matches_reference():
    rng = np.random.default_rng(1)
    blobs = ndimage.gaussian_filter(rng.random((60, 80)), 6) > 0.5  # smooth regions
    noisy = blobs ^ (rng.random((60, 80)) < 0.08)                   # salt and pepper
    out = sf.clean_mask(noisy)
    assert out.dtype == bool and out.shape == noisy.shape
    assert np.array_equal(out, reference_clean(noisy))
    # Cleaning brings the noisy mask back close to the regions it came from.
    assert sf.mask_iou(noisy, blobs) < 0.9 < sf.mask_iou(out, blobs)


def test_clean_mask_specks_holes_borders():
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    m[19:21, 19:21] = False  # 2 x 2 hole
    m[3, 35] = True          # isolated speck
    out = sf.clean_mask(m)
    assert out[12:28, 12:28].all()      # hole filled
    assert not out[:8, 30:].any()       # speck gone
    square = np.zeros_like(m)
    square[10:30, 10:30] = True
    assert not out[~square].any()       # nothing grows outside the square
    assert out.sum() >= 400 - 4 * 3     # the median only rounds the four corners
    # A region touching the border survives (scipy's binary closing would erode it).
    assert sf.clean_mask(np.ones((20, 20), bool)).all()
    edge = np.zeros((20, 20), bool)
    edge[:, :8] = True
    assert np.array_equal(sf.clean_mask(edge), edge)


def test_mask_iou_hand_cases():
    pred = np.array([[1, 1], [0, 0]], bool)
    truth = np.array([[1, 0], [1, 0]], bool)
    assert sf.mask_iou(pred, truth) == pytest.approx(1 / 3)  # TP=1, FP=1, FN=1
    assert sf.mask_iou(pred, pred) == 1.0
    assert sf.mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert sf.mask_iou(np.zeros((3, 3)), np.eye(3)) == 0.0
    a = np.zeros((4, 4), bool)
    a[:2] = True                     # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True                    # 8 pixels, 4 shared
    assert sf.mask_iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="shape"):
        sf.mask_iou(a, b[:3])


def test_mask_iou_matches_sklearn_jaccard():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(2)
    for density in (0.05, 0.3, 0.7):
        p, t = rng.random((30, 40)) < density, rng.random((30, 40)) < density
        assert sf.mask_iou(p, t) == pytest.approx(jaccard_score(t.ravel(), p.ravel()))


def test_load_mask_encodings_and_resize(tmp_path):
    m = np.zeros((8, 8), bool)
    m[2:5, 1:7] = True
    Image.fromarray(m.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "m255.png")
    Image.fromarray(m.astype(np.uint8)).save(tmp_path / "m01.png")
    for name in ("m255.png", "m01.png"):
        assert np.array_equal(sf.load_mask(tmp_path / name), m)
        assert np.array_equal(sf.load_mask(tmp_path / name, shape=(32, 32)), np.kron(m, np.ones((4, 4), bool)))


def test_mask_iou_paths_on_corpus(manifest):
    rows = pd.concat([manifest[manifest.source == s].dropna(subset=["mask"]).head(2) for s in ("fuseg", "medetec")])
    values = []
    for r in rows.itertuples():
        img, mask = CORPUS / r.path, CORPUS / r.mask
        assert sf.load_mask(mask).any()  # both the 0/255 and the 0/1 masks are read
        iou = sf.mask_iou_paths(img, mask)
        assert 0.0 <= iou <= 1.0
        values.append(iou)
        # Plumbing: predicting the ground truth itself (at full size) scores 1, nothing scores 0.
        assert sf.mask_iou_paths(img, mask, predictor=lambda _, m=mask: sf.load_mask(m), clean=False) == 1.0
        assert sf.mask_iou_paths(img, mask, predictor=lambda im: np.zeros(im.size[::-1], bool)) == 0.0
    assert max(values) > 0  # the blood-like mask overlaps at least one wound


# ----------------------------------------------------------------- thumbnails


def test_safe_thumbnail(wound, manifest):
    plain = sf.safe_thumbnail(wound, sensitive=False)
    assert np.array_equal(np.asarray(plain), np.asarray(thumbnail(wound, 256)))
    for mode in sf.MODES:
        censored = sf.safe_thumbnail(wound, sensitive=True, mode=mode, side=128)
        assert censored.size == (128, 128)
        assert not np.array_equal(np.asarray(censored), np.asarray(thumbnail(wound, 128)))
    blurred = sf.safe_thumbnail(wound, sensitive=True)
    assert band_energy(plain) / band_energy(blurred) > 30
    # Paths work too, and aspect is kept.
    path = CORPUS / manifest[manifest.source == "bccd"].path.iloc[0]  # 640 x 480
    assert sf.safe_thumbnail(path, sensitive=True).size == (256, 192)
    with pytest.raises(ValueError, match="mode"):
        sf.safe_thumbnail(wound, sensitive=False, mode="none")


@pytest.mark.parametrize("flag", [True, None, float("nan"), pd.NA, "no", 2, np.True_, 1])
def test_unknown_sensitivity_is_censored(flag):
    from lib.sensitivity import must_censor

    assert must_censor(flag)


@pytest.mark.parametrize("flag", [False, np.False_, 0])
def test_explicit_false_is_shown(flag):
    from lib.sensitivity import must_censor

    assert not must_censor(flag)


def test_safe_thumbnail_bytes_stable_and_blurred(wound):
    a = sf.safe_thumbnail_bytes(wound, sensitive=True)
    assert a == sf.safe_thumbnail_bytes(wound.copy(), sensitive=True)
    assert a[:2] == b"\xff\xd8"  # JPEG
    plain = sf.safe_thumbnail_bytes(wound, sensitive=False)
    assert a != plain
    decoded, decoded_plain = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(plain))
    assert decoded.size == (256, 256)
    assert band_energy(decoded_plain) / band_energy(decoded) > 30


# ----------------------------------------------------------------- NudeNet


@pytest.fixture(scope="module")
def detector():
    return sf.NudeNetDetector()


def check_detections(dets: list, size: tuple[int, int]) -> None:
    w, h = size
    assert isinstance(dets, list)
    for d in dets:
        assert set(d) == {"label", "score", "box"}
        assert isinstance(d["label"], str) and d["label"].isupper()
        assert 0.0 <= d["score"] <= 1.0
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)


def test_nudenet_on_a_real_photo(detector, tmp_path):
    from nudenet import NudeDetector
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    dets = detector.detect(path)
    check_detections(dets, (512, 512))
    assert dets  # a portrait: the face is found
    # Same detections as NudeNet's own file reader, boxes converted from (x, y, w, h).
    raw = NudeDetector().detect(str(path))
    expected = sorted(
        (r["class"], r["box"][0], r["box"][1], r["box"][0] + r["box"][2], r["box"][1] + r["box"][3]) for r in raw
    )
    assert sorted((d["label"], *d["box"]) for d in dets) == expected
    score = detector.exposure_score(path)
    assert 0.0 <= score < 0.5  # a clothed astronaut
    assert detector.exposure_score(path, classes=[d["label"] for d in dets]) == pytest.approx(dets[0]["score"])


def test_nudenet_on_corpus_skin(detector, manifest):
    img = open_image(CORPUS / manifest[manifest.subclass == "normal_skin"].path.iloc[0])
    check_detections(detector.detect(img), img.size)
    assert 0.0 <= detector.exposure_score(img) <= 1.0


def test_nudenet_missing_is_a_model_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet -> ImportError
    with pytest.raises(ModelError, match="pip install nudenet"):
        sf.NudeNetDetector()


# ----------------------------------------------------------------- contact sheets


def test_safe_grid_tiles_are_safe_thumbnails():
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((200, 300), (150, 100),
                                                                                         (64, 64))]
    sheet = sf.safe_grid(imgs, [True, False, None], side=64, cols=2, pad=4, captions=["one", "two", "three"])
    assert sheet.size == (4 + 2 * 68, 4 + 2 * (64 + 14 + 4))
    arr = np.asarray(sheet)
    for i, (img, flag) in enumerate(zip(imgs, [True, False, None], strict=True)):
        x, y = 4 + (i % 2) * 68, 4 + (i // 2) * (64 + 14 + 4)
        want = np.asarray(sf.safe_thumbnail(img, sensitive=flag, side=64))
        h, w = want.shape[:2]
        x, y = x + (64 - w) // 2, y + (64 - h) // 2
        assert np.array_equal(arr[y:y + h, x:x + w], want)
        raw = np.asarray(thumbnail(img, 64))
        assert np.array_equal(arr[y:y + h, x:x + w], raw) == (flag is False)
    assert (arr[4 + 64 + 1:4 + 64 + 14, 4:4 + 64] < 128).any()  # the first caption is drawn
    # One flag for all, fail-safe default: every tile censored; no captions, no caption strip.
    sheet = sf.safe_grid(imgs[:1], side=64)
    assert sheet.size == (72, 72)
    raw = np.asarray(thumbnail(imgs[0], 64))  # 64 x 43, centred vertically
    top = 4 + (64 - raw.shape[0]) // 2
    assert not np.array_equal(np.asarray(sheet)[top:top + raw.shape[0], 4:68], raw)
    assert np.array_equal(np.asarray(sf.safe_grid(imgs[:1], False, side=64))[top:top + raw.shape[0], 4:68], raw)
    # One censoring mode per tile.
    sheet = np.asarray(sf.safe_grid(imgs[2:] * 3, True, mode=["blur", "pixelate", "blackout"], side=64, cols=3))
    for i, mode in enumerate(["blur", "pixelate", "blackout"]):
        x = 4 + i * 68
        assert np.array_equal(sheet[4:68, x:x + 64], np.asarray(sf.safe_thumbnail(imgs[2], sensitive=True, mode=mode,
                                                                                  side=64)))
    with pytest.raises(ValueError):
        sf.safe_grid(imgs, mode=["blur"])
    with pytest.raises(ValueError):
        sf.safe_grid([])
    with pytest.raises(ValueError):
        sf.safe_grid(imgs, [True])


# ----------------------------------------------------------------- censoring pipelines


def test_pipeline_iou_matches_pixel_masks():
    """Every strategy's IoU equals mask_iou of the literally censored region."""
    rng = np.random.default_rng(3)
    shape = (20, 30)
    recs, truths, colours = [], [], []
    for i in range(40):
        has_mask = i % 3 != 0
        truth = (rng.random(shape) < rng.uniform(0.05, 0.5)) if has_mask else np.zeros(shape, bool)
        colour = rng.random(shape) < rng.choice([0.0, 0.1, 0.4])
        truths.append(truth)
        colours.append(colour)
        recs.append({"row": i, "id": f"id{i}", "path": f"{i}.png", "label": "x", "has_mask": has_mask,
                     "truth_fraction": truth.mean(), "colour_fraction": colour.mean(),
                     "iou_colour": sf.mask_iou(colour, truth), "error": None})
    recs.append({**recs[1], "id": "broken", "truth_fraction": np.nan, "colour_fraction": np.nan,
                 "iou_colour": np.nan, "error": "unreadable"})
    table = pd.DataFrame(recs)
    flagged = rng.random(len(table)) < 0.5
    out = sf.pipeline_iou(table, flagged).set_index(["strategy", "group"])
    assert list(out.index.get_level_values(0).unique()) == list(sf.CENSOR_STRATEGIES)
    full, none = np.ones(shape, bool), np.zeros(shape, bool)
    for strategy in sf.CENSOR_STRATEGIES:
        region = [(c if strategy.startswith("colour") else full)
                  if (f or strategy.endswith("every image")) else none
                  for c, f in zip(colours, flagged[:40], strict=True)]
        ious = np.array([sf.mask_iou(r, t) for r, t in zip(region, truths, strict=True)])
        share = np.array([r.mean() for r in region])
        for group, g in (("wound (has mask)", table["has_mask"][:40].to_numpy()),
                         ("needs no censoring", ~table["has_mask"][:40].to_numpy())):
            row = out.loc[(strategy, group)]
            assert row["n"] == g.sum()
            assert row["mean_iou"] == pytest.approx(ious[g].mean())
            assert row["pixels_censored"] == pytest.approx(share[g].mean())
            assert row["images_censored"] == pytest.approx((share[g] > 0).mean())
    # Flags by id: ids it lacks are not flagged.
    by_id = pd.Series(flagged, index=table["id"])
    assert sf.pipeline_iou(table, by_id).equals(sf.pipeline_iou(table, flagged))
    assert sf.pipeline_iou(table, pd.Series(dtype=bool)).equals(sf.pipeline_iou(table, np.zeros(len(table), bool)))
    with pytest.raises(ValueError, match="shape"):
        sf.pipeline_iou(table, flagged[:3])


def test_censoring_table_on_corpus(corpus):
    images = corpus.images.reset_index(drop=True)
    pick = lambda m: list(images.index[m][:2])  # noqa: E731
    rows = (pick(images["source"].eq("fuseg")) + pick(images["source"].eq("medetec"))
            + pick(images["subclass"].eq("normal_skin")) + pick(images["source"].eq("bccd"))
            + pick(images["subclass"].eq("surgical_wound")))  # sensitive, no mask: not scorable
    table = sf.censoring_table(corpus, rows=rows)
    assert table["row"].tolist() == rows[:8] and table["error"].isna().all()
    for r in table.itertuples():
        img = CORPUS / r.path
        if r.has_mask:
            mask = CORPUS / images.loc[r.row, "mask"]
            assert r.iou_colour == pytest.approx(sf.mask_iou_paths(img, mask))
            assert 0 < r.truth_fraction < 1
        else:
            assert r.label == "non_sensitive" and r.truth_fraction == 0
            assert r.iou_colour == (1.0 if r.colour_fraction == 0 else 0.0)
    assert table["has_mask"].tolist() == [True] * 4 + [False] * 4
