"""Generators of hostile and awkward image files, shared by the ingest and reliability tests.

Each maker writes one file and returns what must happen to it: ``("ok", check)`` where
``check(img)`` asserts the decoded RGB image is right, or ``("error", words)`` where the
error reason must contain one of ``words``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def exif_jpeg(path: Path, orientation: int) -> None:
    # 40 wide x 20 high, left half red, right half blue; the tag says how to show it.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif.tobytes())


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels (H, W, ...) as a viewer shows them under EXIF ``orientation`` 1-8."""
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
           8: lambda a: np.rot90(a, 1)}
    return ops[orientation](a)


def expected_exif(orientation: int) -> np.ndarray:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    return orient(arr, orientation)


def _close(img: Image.Image, expected: np.ndarray, tol: int = 40) -> None:
    got = np.asarray(img).astype(int)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    # JPEG blurs the red/blue edge; compare away from it.
    assert np.median(np.abs(got - expected.astype(int))) <= tol


def dicom_file(path: Path, *, photometric: str = "MONOCHROME2", frames: int = 1, pixels: bool = True,
               window: tuple[float, float] | None = None) -> np.ndarray:
    """Write a small uncompressed DICOM; returns the stored (first-frame) pixel array."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    rows, cols = 16, 24
    base = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) * 10)
    stack = np.stack([base + 100 * f for f in range(frames)]) if frames > 1 else base
    if pixels:
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = stack.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return base


def make_bad_folder(root: Path) -> dict[str, tuple]:
    """Write the issue's bad-file set under ``root``; returns {relative path: expectation}."""
    root.mkdir(parents=True, exist_ok=True)
    exp: dict[str, tuple] = {}

    (root / "empty.jpg").write_bytes(b"")
    exp["empty.jpg"] = ("error", ["empty"])

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    exp["truncated.jpg"] = ("error", ["truncated", "corrupt"])

    (root / "page.jpg").write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    exp["page.jpg"] = ("error", ["HTML"])

    cmyk = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(root / "cmyk.jpg", "JPEG", quality=95)
    exp["cmyk.jpg"] = ("ok", lambda im: _close(im, np.full((24, 32, 3), (255, 0, 0), np.uint8)))

    g16 = np.zeros((20, 30), np.uint16)
    g16[:, 15:] = 4000  # 12-bit data in a 16-bit PNG: must still show as black | white
    Image.fromarray(g16).save(root / "gray16.png")

    def check16(im):
        a = np.asarray(im)
        assert a.shape == (20, 30, 3) and a[:, :15].max() == 0 and a[:, 15:].min() == 255

    exp["gray16.png"] = ("ok", check16)

    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (5, 0, 10, 10))
    pal.info["transparency"] = 0  # palette index 0 (red) fully transparent
    pal.save(root / "palette_alpha.png", transparency=0)

    def check_pal(im):
        a = np.asarray(im)
        assert tuple(a[5, 2]) == (255, 255, 255), "transparent pixels go on white"
        assert tuple(a[5, 7]) == (0, 255, 0)

    exp["palette_alpha.png"] = ("ok", check_pal)

    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exp["anim.gif"] = ("ok", lambda im: _close(im, np.full((12, 12, 3), (255, 0, 0), np.uint8), 10))

    exif_jpeg(root / "exif_rot6.jpg", 6)
    exp["exif_rot6.jpg"] = ("ok", lambda im: _close(im, expected_exif(6)))

    Image.new("1", (20000, 20000)).save(root / "bomb.png")
    exp["bomb.png"] = ("error", ["decompression bomb", "limit"])

    stored = dicom_file(root / "mono1.dcm", photometric="MONOCHROME1")

    def check_mono1(im):
        a = np.asarray(im)[..., 0].astype(int)
        lo, hi = np.unravel_index(stored.argmin(), stored.shape), np.unravel_index(stored.argmax(), stored.shape)
        assert a[lo] == 255 and a[hi] == 0, "MONOCHROME1: the lowest stored value shows white"

    exp["mono1.dcm"] = ("ok", check_mono1)

    uni = "rana_创伤_é ü.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / uni)
    exp[uni] = ("ok", lambda im: _close(im, np.full((8, 8, 3), (10, 200, 30), np.uint8), 0))
    return exp


# ----------------------------------------------------------------------------- the full hostile folder

#: A name of 230 ASCII characters (+ ".png": 234 bytes; most file systems allow 255).
LONG_ASCII = "long_" + "x" * 225 + ".png"
#: 80 CJK characters: 240 bytes in UTF-8 (+ ".png").
LONG_UNICODE = "创" * 80 + ".png"


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def _solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    Image.new("RGB", size, rgb).save(path)


def _checker(h: int, w: int, cell: int = 4) -> np.ndarray:
    """(h, w) bool checkerboard of ``cell``-pixel squares, True at the top-left."""
    yy, xx = np.mgrid[:h, :w]
    return ((yy // cell + xx // cell) % 2 == 0)


def make_hostile_folder(root: Path) -> dict[str, tuple]:
    """Write every kind of awkward or hostile file under ``root``; returns {relative path: expectation}.

    Expectations are ``("ok", check)`` (kept; ``check(rgb_image)`` asserts the pixels as
    shown) or ``("error", words)`` (reported; the reason contains one of ``words``).
    ``make_bad_folder``'s set is included. Outside ``root`` it writes one real image,
    ``<root>-outside/real.png``, for a symlink to point at. Symlinks out of the folder
    (to that image and to ``/etc/passwd``) must be reported, never followed.
    """
    exp = make_bad_folder(root)

    # --- empty, truncated, not images
    (root / "empty.png").write_bytes(b"")
    exp["empty.png"] = ("error", ["empty"])
    png = _png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    exp["truncated.png"] = ("error", ["truncated", "corrupt"])
    (root / "notes.jpg").write_text("these are my notes, not a photograph\n" * 5)
    exp["notes.jpg"] = ("error", ["plain text"])
    (root / "random.png").write_bytes(np.random.default_rng(2).integers(0, 255, 4096, np.uint8).tobytes())
    exp["random.png"] = ("error", ["not an image", "unknown"])

    # --- modes
    one = _checker(16, 24)
    Image.fromarray(one).convert("1").save(root / "onebit.png")

    def check_one(im):
        a = np.asarray(im)
        assert a.shape == (16, 24, 3)
        assert (a[one] == 255).all() and (a[~one] == 0).all()

    exp["onebit.png"] = ("ok", check_one)

    la = np.zeros((10, 20, 2), np.uint8)
    la[:, :, 0] = 40  # dark grey ...
    la[:, :10, 1] = 255  # ... opaque on the left, fully transparent on the right
    Image.fromarray(la, "LA").save(root / "gray_alpha.png")

    def check_la(im):
        a = np.asarray(im).astype(int)
        assert a.shape == (10, 20, 3)
        assert (np.abs(a[:, :10] - 40) <= 1).all(), "opaque grey stays grey"
        assert (a[:, 10:] == 255).all(), "transparent pixels go on white"

    exp["gray_alpha.png"] = ("ok", check_la)

    f32 = np.zeros((12, 12), np.float32)
    f32[:, 6:] = 3.5e4
    Image.fromarray(f32, "F").save(root / "float.tif")

    def check_f32(im):
        a = np.asarray(im)
        assert a.shape == (12, 12, 3) and a[:, :6].max() == 0 and a[:, 6:].min() == 255

    exp["float.tif"] = ("ok", check_f32)

    pages = [Image.new("RGB", (14, 10), c) for c in ((0, 128, 255), (255, 255, 0), (0, 0, 0))]
    pages[0].save(root / "pages.tif", save_all=True, append_images=pages[1:])
    exp["pages.tif"] = ("ok", lambda im: _close(im, np.full((10, 14, 3), (0, 128, 255), np.uint8), 0))

    # --- extreme shapes
    Image.new("RGB", (1, 300), (250, 10, 10)).save(root / "one_pixel_wide.png")
    exp["one_pixel_wide.png"] = ("ok", lambda im: _close(im, np.full((300, 1, 3), (250, 10, 10), np.uint8), 0))
    Image.new("RGB", (1, 1), (10, 250, 10)).save(root / "one_pixel.png")
    exp["one_pixel.png"] = ("ok", lambda im: _close(im, np.full((1, 1, 3), (10, 250, 10), np.uint8), 0))
    Image.new("RGB", (4000, 1), (10, 10, 250)).save(root / "one_pixel_high.png")
    exp["one_pixel_high.png"] = ("ok", lambda im: _close(im, np.full((1, 4000, 3), (10, 10, 250), np.uint8), 0))

    # --- EXIF orientations 1-8 (the bad set has 6 under another name: same pixels, a duplicate)
    for o in range(1, 9):
        exif_jpeg(root / f"exif_{o}.jpg", o)
        exp[f"exif_{o}.jpg"] = ("ok", lambda im, o=o: _close(im, expected_exif(o)))
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 9  # no such orientation: shown as stored
    Image.fromarray(arr).save(root / "exif_bogus.jpg", "JPEG", quality=95, exif=exif.tobytes())
    exp["exif_bogus.jpg"] = ("ok", lambda im: _close(im, arr))

    # --- DICOM
    stored2 = dicom_file(root / "mono2.dcm", photometric="MONOCHROME2")

    def check_mono2(im):
        a = np.asarray(im)[..., 0].astype(int)
        lo, hi = np.unravel_index(stored2.argmin(), stored2.shape), np.unravel_index(stored2.argmax(), stored2.shape)
        assert a[lo] == 0 and a[hi] == 255, "MONOCHROME2: the lowest stored value shows black"

    exp["mono2.dcm"] = ("ok", check_mono2)
    first = dicom_file(root / "frames.dcm", frames=3)

    def check_frames(im):
        a = np.asarray(im)[..., 0].astype(float)
        assert a.shape == (16, 24)
        # the first frame, stretched to 0..255 (later frames are offset by 100 per frame)
        ref = (first - first.min()) * 255.0 / (first.max() - first.min())
        assert np.abs(a - ref).max() <= 1

    exp["frames.dcm"] = ("ok", check_frames)
    dicom_file(root / "nopixels.dcm", pixels=False)
    exp["nopixels.dcm"] = ("error", ["no pixel data"])
    (root / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    exp["fake.dcm"] = ("error", ["DICOM"])

    # --- symlinks
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    _solid(outside / "real.png", (200, 30, 30))
    (root / "link_outside.png").symlink_to(outside / "real.png")
    exp["link_outside.png"] = ("error", ["outside"])
    (root / "link_passwd.jpg").symlink_to("/etc/passwd")
    exp["link_passwd.jpg"] = ("error", ["outside"])
    (root / "link_dotdot.png").symlink_to(Path("..") / outside.name / "real.png")
    exp["link_dotdot.png"] = ("error", ["outside"])
    _solid(root / "target.png", (0, 90, 90))
    exp["target.png"] = ("ok", lambda im: _close(im, np.full((8, 8, 3), (0, 90, 90), np.uint8), 0))
    (root / "link_inside.png").symlink_to("target.png")
    exp["link_inside.png"] = ("ok", lambda im: _close(im, np.full((8, 8, 3), (0, 90, 90), np.uint8), 0))
    (root / "dangling.png").symlink_to("no_such_file.png")
    exp["dangling.png"] = ("error", ["cannot read", "no such file"])
    (root / "outside_dir").symlink_to(outside, target_is_directory=True)  # never walked into

    # --- names
    names = {LONG_ASCII: (12, 34, 56), LONG_UNICODE: (56, 34, 12), "🩸 emoji name.png": (90, 0, 0),
             "cafe\u0301 nfd.png": (0, 0, 90), "new\nline\tand tab.png": (33, 66, 99), "-rf --help.png": (7, 7, 7),
             "UPPER.PNG": (70, 80, 90), "png_named.jpg": (100, 110, 120), "semi;colon,comma \"quote\".png": (1, 2, 3)}
    for name, rgb in names.items():
        _solid(root / name, rgb)
        exp[name] = ("ok", lambda im, rgb=rgb: _close(im, np.full((8, 8, 3), rgb, np.uint8), 0))

    # --- byte-identical duplicates under other names
    _solid(root / "dup_a.png", (123, 45, 67))
    (root / "dup_b.png").write_bytes((root / "dup_a.png").read_bytes())
    (root / "dup c copy.png").write_bytes((root / "dup_a.png").read_bytes())
    for name in ("dup_a.png", "dup_b.png", "dup c copy.png"):
        exp[name] = ("ok", lambda im: _close(im, np.full((8, 8, 3), (123, 45, 67), np.uint8), 0))

    # --- not a regular file: a named pipe must be reported, never opened (open() would block)
    import os

    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.jpg")
        exp["pipe.jpg"] = ("error", ["not a regular file"])
        os.mkfifo(root / "pipe.bin")
        exp["pipe.bin"] = ("error", ["not a regular file"])
    return exp


#: make_hostile_folder's EXIF files: the stored pixels are identical, only the tag differs.
EXIF_FILES = {f"exif_{o}.jpg": o for o in range(1, 9)}
