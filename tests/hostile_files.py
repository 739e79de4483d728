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


def expected_exif(orientation: int) -> np.ndarray:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
           8: lambda a: np.rot90(a, 1)}
    return ops[orientation](arr)


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
