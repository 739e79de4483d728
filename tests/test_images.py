"""The libspng fast path of lib.images gives PIL's pixels, and hands every other PNG to PIL."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib import colorscore, images
from lib.errors import ImageError

RNG = np.random.default_rng(7)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(rows: np.ndarray, width: int, bit_depth: int, color_type: int) -> bytes:
    """A PNG written by hand from packed rows (filter 0), for depths PIL does not write."""
    ihdr = struct.pack(">IIBBBBB", width, rows.shape[0], bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + r.tobytes() for r in rows)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + \
        _chunk(b"IEND", b"")


def pil_only(source) -> np.ndarray:
    """What lib.images decodes without libspng: the reference."""
    saved = images.pyspng
    images.pyspng = None
    try:
        return np.asarray(images.open_image_bytes(source) if isinstance(source, bytes) else images.open_image(source))
    finally:
        images.pyspng = saved


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_libspng_is_installed_and_used(tmp_path, monkeypatch):
    assert images.pyspng is not None, "pyspng is in requirements.txt"
    calls = []
    real = images.pyspng.load
    monkeypatch.setattr(images.pyspng, "load", lambda data: calls.append(len(data)) or real(data))
    p = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 255, (64, 48, 3), np.uint8)).save(p)
    images.open_image(p)
    colorscore.load_for_scoring(str(p), colorscore.DEFAULT_PARAMS)
    assert calls == [p.stat().st_size] * 2


def _cases() -> dict[str, bytes]:
    rgb = RNG.integers(0, 255, (37, 53, 3), np.uint8)
    grey = RNG.integers(0, 255, (37, 53), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb16 = RNG.integers(0, 65535, (9, 11, 3), np.uint16).astype(">u2")
    grey2 = RNG.integers(0, 255, (9, 4), np.uint8)  # 2-bit grey: 4 pixels per byte, 16 wide
    return {
        "rgb": png_bytes(Image.fromarray(rgb)),
        "rgb, max compression": png_bytes(Image.fromarray(rgb), compress_level=9),
        "grey": png_bytes(Image.fromarray(grey)),
        "rgb with tRNS": png_bytes(Image.fromarray(rgb), transparency=(1, 2, 3)),
        "rgba": png_bytes(Image.fromarray(np.dstack([rgb, grey]))),
        "palette": png_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)),
        "grey 16-bit": png_bytes(Image.fromarray(grey.astype(np.uint16) * 200)),
        "rgb with eXIf orientation 6": png_bytes(Image.fromarray(rgb), exif=exif),
        "rgb 16-bit (hand-made)": raw_png(rgb16.reshape(9, -1), 11, 16, 2),
        "grey 2-bit (hand-made)": raw_png(grey2, 16, 2, 0),
        "rgb, hand-made": raw_png(rgb.reshape(37, -1), 53, 8, 2),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_every_png_kind_decodes_to_the_pixels_pil_gives(tmp_path, name):
    data = _cases()[name]
    p = tmp_path / "x.png"
    p.write_bytes(data)
    want = pil_only(p)
    assert np.array_equal(np.asarray(images.open_image(p)), want), name
    assert np.array_equal(np.asarray(images.open_image_bytes(data, "x.png")), want), name
    if "eXIf" in name:
        assert want.shape[:2] == (53, 37)  # the orientation was applied (PIL's path)


def test_corpus_pngs_equal_pil(corpus_dir):
    paths = sorted((corpus_dir / "images").rglob("*.png"))[::25]
    assert len(paths) >= 10
    for p in paths:
        assert np.array_equal(np.asarray(images.open_image(p)), pil_only(p)), p


def test_damaged_pngs_still_get_pils_reason(tmp_path):
    good = png_bytes(Image.fromarray(RNG.integers(0, 255, (40, 40, 3), np.uint8)))
    idat = good.index(b"IDAT")
    cases = {"truncated.png": good[: len(good) // 2]}
    for name, at in (("deflate.png", idat + 30), ("adler.png", len(good) - 20)):  # IDAT data, its CRC unchanged
        bad = bytearray(good)
        bad[at] ^= 0xFF
        cases[name] = bytes(bad)
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        try:
            want = ("ok", pil_only(p))
        except ImageError as e:
            want = ("error", str(e))
        try:
            got = ("ok", np.asarray(images.open_image(p)))
        except ImageError as e:
            got = ("error", str(e))
        assert got[0] == want[0], name
        assert (np.array_equal(got[1], want[1]) if got[0] == "ok" else got[1] == want[1]), name
    with pytest.raises(ImageError, match="truncated"):
        images.open_image(tmp_path / "truncated.png")


def test_colour_scores_unchanged_by_the_fast_decoder(corpus_dir):
    paths = [str(p) for p in sorted((corpus_dir / "images").rglob("*.png"))[::40]]
    fast = [colorscore.score_file(p, colorscore.DEFAULT_PARAMS) for p in paths]
    saved = images.pyspng
    images.pyspng = None
    try:
        slow = [colorscore.score_file(p, colorscore.DEFAULT_PARAMS) for p in paths]
    finally:
        images.pyspng = saved
    assert fast == slow
    assert all(e is None for _, _, e in fast)


def test_plain_png_pixels_reads_paths_and_file_objects(tmp_path):
    rgb = RNG.integers(0, 255, (8, 5, 3), np.uint8)
    p = tmp_path / "p.png"
    Image.fromarray(rgb).save(p)
    with Image.open(p) as im:
        assert np.array_equal(np.asarray(images.plain_png_pixels(im)), rgb)
    buf = io.BytesIO(p.read_bytes())
    buf.seek(10)  # wherever the caller left it
    with Image.open(buf) as im:
        assert np.array_equal(np.asarray(images.plain_png_pixels(im)), rgb)
    jpg = tmp_path / "j.jpg"
    Image.fromarray(rgb).save(jpg)
    with Image.open(jpg) as im:
        assert images.plain_png_pixels(im) is None
    assert Path(p).exists()
