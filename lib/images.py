"""Decode any image file the workbench meets into an RGB ``PIL.Image``.

One loader for ingest, embedding, scoring and the app, so every path sees the same
pixels: EXIF orientation applied, first frame of multi-frame files, every PIL mode
converted to 8-bit RGB, DICOM windowed to 8 bits, and a pixel limit against
decompression bombs. Failures raise :class:`lib.errors.ImageError` with the path
and the reason.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

try:  # libspng decodes 8-bit PNGs 1.6x faster than PIL's libpng path (bench/eb.py)
    import pyspng
except ImportError:  # pragma: no cover - a platform without its wheel: PIL does it all
    pyspng = None

#: Largest image (width * height) the workbench decodes. A 20000x20000 PNG is 400 Mpx
#: and would take 1.2 GB as RGB; photos and slides in figure collections are far below.
MAX_PIXELS = int(os.environ.get("WORKBENCH_MAX_PIXELS", 100_000_000))

#: File extensions treated as images when walking a folder (DICOM also by magic bytes).
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".dcm", ".dicom",
}

DICOM_SUFFIXES = {".dcm", ".dicom"}

# PIL's own bomb check fires at 2x its limit; ours fires first with a clear reason.
Image.MAX_IMAGE_PIXELS = None


def is_dicom(path: str | Path) -> bool:
    """True when the file has the DICOM preamble magic (``DICM`` at byte 128) or a .dcm name."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        if not stat.S_ISREG(p.stat().st_mode):  # opening a named pipe or a device would block
            return False
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def file_kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode``, for error messages."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _sniff(path: Path) -> str:
    """Describe what a non-image file looks like, for the error message."""
    with open(path, "rb") as f:
        return _describe(f.read(512))


def _describe(head: bytes) -> str:
    """What the first bytes of a file that is no image look like."""
    if not head:
        return "empty file (0 bytes)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "not an image: the file holds HTML/XML text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image: the file holds plain text"
    return "not an image: unknown or unsupported format"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels are composited on white (a viewer's default page); 16-bit and
    float images are stretched from their own min..max to 0..255, since medical PNGs
    often use 12 of their 16 bits.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_stretch(arr)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Linearly map ``arr`` (H, W) from its min..max to uint8 0..255."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _check_size(path, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{path}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height / 1e6:.0f} Mpx exceeds the "
            f"{MAX_PIXELS / 1e6:.0f} Mpx limit (possible decompression bomb); "
            "raise WORKBENCH_MAX_PIXELS to allow it"
        )


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` to an oriented RGB image, or raise :class:`ImageError`.

    Returns
    -------
    PIL.Image.Image in mode ``RGB``, size (W, H) after EXIF orientation.
    """
    img, _ = open_image_with_meta(path)
    return img


def open_image_with_meta(path: str | Path) -> tuple[Image.Image, dict]:
    """Like :func:`open_image`, also returning metadata (format, frames, DICOM tags)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):  # a named pipe would block the reader forever
        raise ImageError(f"{path}: not a regular file ({file_kind(st.st_mode)})")
    size = st.st_size
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    if is_dicom(path):
        return _open_dicom(path, path, force=path.suffix.lower() in DICOM_SUFFIXES)
    return _decode(path, path, lambda: _sniff(path))


def open_image_bytes(data: bytes, name: str = "upload") -> Image.Image:
    """Decode an image file held in memory (an upload) exactly like :func:`open_image`:
    the same pixel limit, EXIF orientation, mode conversion and DICOM windowing. Nothing
    is written to disk; ``name`` only picks DICOM by its suffix and labels the errors.

    Returns
    -------
    PIL.Image.Image in mode ``RGB``.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM":
        return _open_dicom(io.BytesIO(data), name, force=True)[0]
    return _decode(io.BytesIO(data), name, lambda: _describe(data[:512]))[0]


def _decode(source, label, sniff) -> tuple[Image.Image, dict]:
    """PIL-decode ``source`` (a path or a binary file object); errors name ``label``."""
    try:
        with Image.open(source) as im:
            _check_size(label, *im.size)
            meta = {"format": im.format, "frames": getattr(im, "n_frames", 1)}
            if meta["frames"] > 1:
                im.seek(0)
            fast = plain_png_pixels(im)
            if fast is not None:
                return fast, meta
            # exif_transpose loads the frame; truncated data fails here.
            oriented = ImageOps.exif_transpose(im)
            oriented.load()
            return to_rgb(oriented), meta
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{label}: {sniff()}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        raise ImageError(f"{label}: {msg}") from None
    except Image.DecompressionBombError as e:  # only if a caller re-enabled PIL's own check
        raise ImageError(f"{label}: {e}") from None


#: EXIF orientations (tag 274) that swap width and height.
_SWAPS_AXES = {5, 6, 7, 8}


def open_reduced(path: str | Path, side: int, *, oriented: bool = False
                 ) -> tuple[Image.Image, Image.Image | None, tuple[int, int]]:
    """One decode of ``path`` for the per-image signals, reduced on decode where that is free.

    JPEGs are decoded with DCT scaling (PIL ``draft``) to no less than ``side`` x ``side``
    (8x faster on camera photos); plain PNGs through libspng; anything PIL cannot open
    directly (DICOM, damaged, too large) through :func:`open_image`, which decodes it or
    raises :class:`ImageError` with the reason.

    Returns
    -------
    (pixels, oriented_pixels, size) : ``pixels`` RGB without EXIF orientation (what the
        colour scores and hashes read: orientation changes no fraction, and hashes cover all
        8 orientations); ``oriented_pixels`` the same decode with EXIF orientation applied
        (None unless ``oriented``; it is ``pixels`` itself when nothing needs turning);
        ``size`` (W, H) of :func:`open_image`'s result, i.e. the full-size oriented image.
    """
    if is_dicom(path) or not os.path.isfile(path):  # DICOM: never guess; pipes, folders: the reason
        img = open_image(path)
        return img, (img if oriented else None), img.size
    try:
        with Image.open(path) as im:
            if im.width * im.height <= MAX_PIXELS:
                full = im.size
                fast = plain_png_pixels(im)  # refuses files with an eXIf chunk: no orientation
                if fast is not None:
                    return fast, (fast if oriented else None), full
                orientation = im.getexif().get(0x0112, 1)
                if im.format == "JPEG":
                    im.draft(None, (side, side))
                im.load()
                pixels = to_rgb(im)
                turned = None
                if oriented:
                    turned = pixels if orientation in (None, 1) else to_rgb(ImageOps.exif_transpose(im))
                swap = orientation in _SWAPS_AXES
                return pixels, turned, ((full[1], full[0]) if swap else full)
    except Exception:  # open_image below gives the user-facing reason
        pass
    img = open_image(path)
    return img, (img if oriented else None), img.size


def plain_png_pixels(im: Image.Image) -> Image.Image | None:
    """Decode a plain 8-bit RGB or grey PNG with libspng: the same pixels as PIL's decoder.

    ``im`` is an opened, not yet loaded PIL image; its bytes are read from the file PIL
    holds open. Returns the RGB image, or None when the file needs PIL: not a PNG, other
    modes (palette, alpha, 16-bit grey), transparency, animation, an eXIf chunk (an
    orientation to apply), or anything libspng refuses (CRC errors, truncation), so PIL
    gives the usual reason. (One difference remains: a file whose chunk CRCs match but
    whose zlib checksum does not decodes here, where PIL refuses it.)
    """
    if (pyspng is None or im.format != "PNG" or im.mode not in ("RGB", "L") or "transparency" in im.info
            or getattr(im, "n_frames", 1) > 1):
        return None
    try:  # PIL keeps reading this file if we return None: leave it where it was
        pos = im.fp.tell()
        im.fp.seek(0)
        data = im.fp.read()
        im.fp.seek(pos)
    except (AttributeError, OSError, ValueError):  # no file held open (or closed)
        return None
    if not intact_png_without_exif(data):
        return None
    try:
        arr = pyspng.load(data)
    except Exception:  # libspng's reason is worse than PIL's: let PIL decode and explain
        return None
    want = (im.height, im.width, 3) if im.mode == "RGB" else (im.height, im.width)
    if arr.dtype != np.uint8 or arr.shape != want:  # 16-bit RGB, 1/2/4-bit grey: PIL's unpacking
        return None
    return Image.fromarray(arr).convert("RGB") if arr.ndim == 2 else Image.fromarray(arr)


def intact_png_without_exif(png: bytes) -> bool:
    """Every chunk up to IEND is whole with a matching CRC, and none is eXIf.

    pyspng tells libspng to ignore CRCs, so damage that PIL reports would pass silently;
    checking them costs 0.1 ms on a 512-px photo. An eXIf chunk may carry an orientation,
    which PIL's path applies.
    """
    view, pos, n = memoryview(png), 8, len(png)
    while pos + 12 <= n:
        end = pos + 8 + int.from_bytes(png[pos:pos + 4], "big")
        kind = png[pos + 4:pos + 8]
        if end + 4 > n or kind == b"eXIf" or zlib.crc32(view[pos + 4:end]) != int.from_bytes(png[end:end + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        pos = end + 4
    return False


def dicom_to_array(ds) -> np.ndarray:
    """Pixel data of a pydicom dataset as uint8, (H, W) or (H, W, 3), first frame.

    Grayscale goes through the modality LUT (rescale slope/intercept), then the VOI
    window when the file has one, else the full range; MONOCHROME1 is inverted so
    that high values are dark, as a radiologist would see it.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 3:
        if photometric.startswith("YBR") and photometric != "YBR_FULL_422":
            arr = convert_color_space(arr, photometric, "RGB")
        elif photometric == "YBR_FULL_422":
            arr = convert_color_space(arr, "YBR_FULL", "RGB")
        if arr.dtype != np.uint8:
            arr = np.stack([_stretch(arr[..., c].astype(np.float64)) for c in range(3)], -1)
        return arr
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb / 257).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
        return rgb
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        windowed = apply_voi_lut(arr, ds, index=0).astype(np.float64)
        # apply_voi_lut returns values in the stored range; stretch that window to 8 bits.
        out = _stretch(windowed)
    else:
        out = _stretch(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _open_dicom(source, path, force: bool) -> tuple[Image.Image, dict]:
    """Decode a DICOM file (a path or a binary file object); errors name ``path``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(source, force=force)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as e:
        raise ImageError(f"{path}: not a readable DICOM file ({e})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{path}: DICOM file has no pixel data")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    _check_size(path, cols, rows)
    try:
        arr = dicom_to_array(ds)
    except Exception as e:  # pydicom raises many types for unsupported syntaxes
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f" (transfer syntax {ts.name})" if ts is not None else ""
        raise ImageError(f"{path}: cannot decode DICOM pixel data{hint}: {e}") from None
    img = Image.fromarray(arr).convert("RGB")
    meta = {
        "format": "DICOM",
        "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
        "Modality": str(getattr(ds, "Modality", "") or ""),
        "BodyPartExamined": str(getattr(ds, "BodyPartExamined", "") or ""),
        "ViewPosition": str(getattr(ds, "ViewPosition", "") or ""),
    }
    return img, meta


def thumbnail(img: Image.Image, side: int = 256) -> Image.Image:
    """A copy of ``img`` fitted inside ``side`` x ``side``, aspect kept."""
    out = img.copy()
    out.thumbnail((side, side), Image.Resampling.BILINEAR)
    return out
