"""Thumbnails of dataset images, rendered once and kept on disk.

Every thumbnail is a JPEG (:func:`lib.safety.safe_thumbnail_bytes`: deterministic bytes)
under ``<cache>/thumbs/v<VERSION>-<mode>-<side>/<id[:2]>/<id>.jpg``, keyed by the image's
content id, the side and the rendering mode, so two datasets sharing an image share its
thumbnails and a changed file (new content id) never shows a stale one. Files are written
to a temporary name and renamed: a reader never sees half a JPEG.

Images are read only through :meth:`lib.dataset.Dataset.abspath`, which refuses paths
outside the dataset root.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import numpy as np

from . import config
from .safety import MODES, safe_thumbnail_bytes

#: Rendering modes: the sharp thumbnail or one of the censored renderings.
RENDERINGS = ("raw", *MODES)

#: Bump when the thumbnail code changes the pixels (not only parameters in the key).
VERSION = 2

DEFAULT_SIDE = 256


def _check(side: int, mode: str) -> None:
    if mode not in RENDERINGS:
        raise ValueError(f"thumbnail mode must be one of {', '.join(RENDERINGS)}, not {mode!r}")
    if not 16 <= int(side) <= 2048:
        raise ValueError(f"thumbnail side must lie in 16..2048 pixels, got {side}")


def thumb_path(content_id: str, side: int = DEFAULT_SIDE, mode: str = "raw") -> Path:
    """Where the thumbnail of ``content_id`` at ``side`` in ``mode`` is cached."""
    _check(side, mode)
    cid = str(content_id).lower()
    if len(cid) < 8 or not all(c in "0123456789abcdef" for c in cid):
        raise ValueError(f"not a content id (sha256 hex): {content_id!r}")
    return config.cache_dir() / "thumbs" / f"v{VERSION}-{mode}-{int(side)}" / cid[:2] / f"{cid}.jpg"


def _row(dataset, row) -> tuple[str, str]:
    """(content id, relative path) of ``row``: a row number of ``dataset.images`` or a row (Series/dict)."""
    rec = dataset.images.iloc[int(row)] if isinstance(row, (int, np.integer)) else row
    return str(rec["id"]), str(rec["path"])


def render_bytes(path: str | os.PathLike, side: int = DEFAULT_SIDE, mode: str = "raw") -> bytes:
    """JPEG thumbnail bytes of one image file, not cached (uploads, previews)."""
    _check(side, mode)
    return safe_thumbnail_bytes(path, sensitive=mode != "raw", mode="blur" if mode == "raw" else mode,
                                side=int(side))


def thumbnail_bytes(dataset, row, side: int = DEFAULT_SIDE, mode: str = "raw") -> bytes:
    """JPEG bytes of a dataset image's thumbnail (fitted inside ``side`` x ``side``).

    Parameters
    ----------
    dataset : :class:`lib.dataset.Dataset`
    row : row number in ``dataset.images``, or one of its rows (with ``id`` and ``path``)
    side : longest side in pixels
    mode : ``raw`` (sharp) or a censoring mode of :data:`lib.safety.MODES`; censored
        thumbnails are rendered from the pixels of the thumbnail, so they hold no more
        detail than the raw one.

    Raises
    ------
    lib.errors.ImageError : the file cannot be decoded.
    lib.errors.UnsafePath : its path leaves the dataset root.
    """
    cid, rel = _row(dataset, row)
    path = thumb_path(cid, side, mode)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = render_bytes(dataset.abspath(rel), side, mode)
    config.ensure(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def data_uri(data: bytes) -> str:
    """``data:image/jpeg;base64,...`` of JPEG bytes (for HTML/plotly that takes a URL)."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
