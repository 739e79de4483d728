"""Thumbnails of dataset images, rendered once and kept on disk.

Every thumbnail is a JPEG (:func:`lib.safety.thumbnail_rendering_bytes`: deterministic
bytes) under ``<cache>/thumbs/v<VERSION>-<rendering>-<side>/<id[:2]>/<id>.jpg``, keyed by
the image's content id, the side and the rendering (mode, blur strength, greyscale), so two
datasets sharing an image share its thumbnails and a changed file (new content id) never
shows a stale one. Files are written atomically (:mod:`lib.files`): a reader never sees
half a JPEG.

Images are read only through :meth:`lib.dataset.Dataset.abspath`, which refuses paths
outside the dataset root.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

from . import config
from .files import write_bytes
from .safety import BLUR_FRACTION, MODES, thumbnail_rendering_bytes
from .sensitivity import must_censor

#: Rendering modes: the sharp thumbnail, the colour regions blacked out, or a censored rendering.
RENDERINGS = ("raw", "regions", *MODES)

#: Bump when the thumbnail code changes the pixels (not only parameters in the key).
VERSION = 2

DEFAULT_SIDE = 256


#: How a revealed image may be shown: colour regions blacked out, or the full image.
REVEAL_LEVELS = ("regions", "full")


def mode_for(censored, *, safe_view: bool = True, revealed: str | None = None, censor: str = "blur") -> str:
    """How to render one image: ``raw``, ``regions`` or the censoring mode ``censor``.

    Raw when safe view is off, when the image is explicitly not censored
    (:func:`lib.sensitivity.must_censor`: None, NaN and anything but False censor), or when
    the user revealed it fully; ``regions`` when revealed with its colour regions blacked out.
    """
    if censor not in MODES:
        raise ValueError(f"censoring mode must be one of {', '.join(MODES)}, not {censor!r}")
    if revealed is not None and revealed not in REVEAL_LEVELS:
        raise ValueError(f"reveal level must be one of {', '.join(REVEAL_LEVELS)}, not {revealed!r}")
    if not safe_view or not must_censor(censored) or revealed == "full":
        return "raw"
    return "regions" if revealed == "regions" else censor


def _check(side: int, mode: str, strength: float | None = None) -> None:
    if mode not in RENDERINGS:
        raise ValueError(f"thumbnail mode must be one of {', '.join(RENDERINGS)}, not {mode!r}")
    if not 16 <= int(side) <= 2048:
        raise ValueError(f"thumbnail side must lie in 16..2048 pixels, got {side}")
    if strength is not None and not 0.01 <= float(strength) <= 0.5:
        raise ValueError(f"blur strength must lie in 0.01..0.5 of the longest side, got {strength}")


def rendering_name(mode: str, strength: float | None = None, grey: bool = False) -> str:
    """Folder-name form of a rendering, e.g. ``blur``, ``blur-s12``, ``raw-grey``."""
    name = mode
    if mode == "blur" and strength is not None and round(float(strength), 3) != BLUR_FRACTION:
        name += f"-s{round(float(strength) * 100, 1):g}"
    return name + ("-grey" if grey else "")


def thumb_path(content_id: str, side: int = DEFAULT_SIDE, mode: str = "raw", *, strength: float | None = None,
               grey: bool = False) -> Path:
    """Where the thumbnail of ``content_id`` at ``side`` in this rendering is cached."""
    _check(side, mode, strength)
    cid = str(content_id).lower()
    if len(cid) < 8 or not all(c in "0123456789abcdef" for c in cid):
        raise ValueError(f"not a content id (sha256 hex): {content_id!r}")
    return (config.cache_dir() / "thumbs" / f"v{VERSION}-{rendering_name(mode, strength, grey)}-{int(side)}"
            / cid[:2] / f"{cid}.jpg")


def _row(dataset, row) -> tuple[str, str]:
    """(content id, relative path) of ``row``: a row number of ``dataset.images`` or a row (Series/dict)."""
    rec = dataset.images.iloc[int(row)] if isinstance(row, (int, np.integer)) else row
    return str(rec["id"]), str(rec["path"])


def render_bytes(path: str | os.PathLike, side: int = DEFAULT_SIDE, mode: str = "raw", *,
                 strength: float | None = None, grey: bool = False) -> bytes:
    """JPEG thumbnail bytes of one image file, not cached (uploads, previews)."""
    _check(side, mode, strength)
    return thumbnail_rendering_bytes(path, mode, side=int(side), strength=strength, grey=grey)


def thumbnail_bytes(dataset, row, side: int = DEFAULT_SIDE, mode: str = "raw", *, strength: float | None = None,
                    grey: bool = False) -> bytes:
    """JPEG bytes of a dataset image's thumbnail (fitted inside ``side`` x ``side``).

    Parameters
    ----------
    dataset : :class:`lib.dataset.Dataset`
    row : row number in ``dataset.images``, or one of its rows (with ``id`` and ``path``)
    side : longest side in pixels
    mode : ``raw`` (sharp), ``regions`` (colour regions blacked out) or a censoring mode of
        :data:`lib.safety.MODES`; censored thumbnails are rendered from the pixels of the
        thumbnail, so they hold no more detail than the raw one.
    strength : blur sigma as a fraction of the longest side (``blur`` only; default 8%).
    grey : greyscale (for revealed images, as moderators ask).

    Raises
    ------
    lib.errors.ImageError : the file cannot be decoded.
    lib.errors.UnsafePath : its path leaves the dataset root.
    """
    cid, rel = _row(dataset, row)
    path = thumb_path(cid, side, mode, strength=strength, grey=grey)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = render_bytes(dataset.abspath(rel), side, mode, strength=strength, grey=grey)
    write_bytes(path, data, durable=False)  # a cache: rebuilt if lost
    return data


def data_uri(data: bytes) -> str:
    """``data:image/jpeg;base64,...`` of JPEG bytes (for HTML/plotly that takes a URL)."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
