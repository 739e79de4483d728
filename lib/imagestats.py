"""Image statistics per content id: size, mean brightness, sharpness (Laplacian variance).

They are the cheap "is this image usable" signals of cleanvision: tiny, dark, washed-out
or blurry images. Computed from the decode the other per-image signals share
(:func:`lib.images.open_reduced`), at the colour scoring size (RGB within :data:`STATS_SIDE`
on its longest side, :func:`lib.colorscore.scoring_image`: the fused job resizes once for
both, and sharpness compares images of any resolution alike), cached per content id under
``<cache>/imagestats/<fingerprint>/`` (:class:`lib.idcache.IdCache`).

``width``/``height`` are of the full-size image as :func:`lib.images.open_image` returns
it (EXIF orientation applied); ``brightness`` is the mean of the 8-bit luma (PIL ``L``)
divided by 255, in 0..1; ``sharpness`` is the variance of the 4-neighbour Laplacian of that
luma (0..255 scale) at the reduced size: low values are blurry or flat images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

#: Bump when a change of the code changes the statistics (part of the cache fingerprint).
STATS_VERSION = 2  # 2: measured on the RGB scoring image (resize, then luma)
#: Longest side the brightness and sharpness are measured at.
STATS_SIDE = 256
COLUMNS = ["width", "height", "brightness", "sharpness"]


def stats_cache():
    """The per-content-id cache of the statistics: columns :data:`COLUMNS`."""
    from .idcache import IdCache

    return IdCache("imagestats", f"stats-side{STATS_SIDE}-v{STATS_VERSION}", COLUMNS,
                   info={"what": "full-size width/height (EXIF-oriented), mean luma brightness 0..1, variance "
                                 "of the 4-neighbour Laplacian of the luma", "side": STATS_SIDE,
                         "version": STATS_VERSION})


def image_stats(img: Image.Image, size: tuple[int, int]) -> tuple[int, int, float, float]:
    """(width, height, brightness, sharpness) of one image.

    ``img`` is the decoded image (any mode, any size: it is brought to the colour scoring
    size, :func:`lib.colorscore.scoring_image`, here), ``size`` the (W, H) of the full-size
    oriented image.
    """
    from .colorscore import DEFAULT_PARAMS, scoring_image

    return small_image_stats(scoring_image(img, DEFAULT_PARAMS), size)


def small_image_stats(small: Image.Image, size: tuple[int, int]) -> tuple[int, int, float, float]:
    """:func:`image_stats` of an image already at the scoring size (RGB within :data:`STATS_SIDE`)."""
    a = np.asarray(small.convert("L"), dtype=np.float32)
    brightness = float(a.mean()) / 255.0
    if a.shape[0] < 3 or a.shape[1] < 3:
        sharpness = 0.0
    else:
        lap = (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:]) - 4.0 * a[1:-1, 1:-1]
        sharpness = float(lap.var(dtype=np.float64))
    return int(size[0]), int(size[1]), brightness, sharpness


def stats_file(path: str, side: int = STATS_SIDE) -> tuple[int, int, float, float]:
    """:func:`image_stats` of one file, decoded on its own (raises :class:`lib.errors.ImageError`)."""
    from .images import open_reduced

    pixels, _, size = open_reduced(path, side)
    return image_stats(pixels, size)


def _stats_chunk(paths: list[str]) -> list[tuple[tuple | None, str | None]]:
    from .errors import ImageError

    out = []
    for p in paths:
        try:
            out.append((stats_file(p), None))
        except ImageError as e:
            out.append((None, str(e)))
        except Exception as e:  # a decoder bug in one file must not stop a long run
            out.append((None, f"{p}: {type(e).__name__}: {e}"))
    return out


def rows_frame(ids: Sequence[str], values: Sequence[tuple]) -> pd.DataFrame:
    """A cache part: ``id`` + :data:`COLUMNS` from (width, height, brightness, sharpness) tuples."""
    v = list(values)
    return pd.DataFrame({"id": pd.Series(list(ids), dtype=object),
                         "width": np.array([x[0] for x in v], np.int64),
                         "height": np.array([x[1] for x in v], np.int64),
                         "brightness": np.array([x[2] for x in v], np.float64),
                         "sharpness": np.array([x[3] for x in v], np.float64)})


def stats_ids(ds, ids: Sequence[str] | None = None, *, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Statistics of distinct images of dataset ``ds`` (all by default), decoding only what
    the cache lacks (the standalone pass; :func:`lib.signals.index` fills the cache for free).

    Returns
    -------
    (table, errors) : table with ``id`` + :data:`COLUMNS`, one row per id that has
        statistics, in the order of ``ids``; {id: reason} for the images that could not be read.
    """
    from .colorscore import default_workers, run_chunks

    ids = list(dict.fromkeys(ds.unique_ids if ids is None else map(str, ids)))
    cache = stats_cache()
    have = cache.lookup(ids)
    done = set(have["id"].astype(str))
    todo, paths, errors = ds.paths_of(c for c in ids if c not in done)
    new_ids, new_vals = [], []
    n_done = 0

    def got(start: int, results: list) -> None:
        nonlocal n_done
        for j, (vals, err) in enumerate(results):
            cid = todo[start + j]
            if vals is None:
                errors[cid] = err or "no statistics"
            else:
                new_ids.append(cid)
                new_vals.append(vals)
        n_done += len(results)
        if progress is not None:
            progress(n_done, len(todo))

    w = default_workers() if workers is None else max(1, int(workers))
    try:
        run_chunks(_stats_chunk, paths, (), w if len(paths) >= 64 else 1, 32, got)
    finally:
        if new_ids:
            cache.write(rows_frame(new_ids, new_vals))
    table = pd.concat([have, rows_frame(new_ids, new_vals)], ignore_index=True) if new_ids else have
    order = {c: k for k, c in enumerate(ids)}
    table = table.assign(_o=table["id"].astype(str).map(order)).sort_values("_o").drop(columns="_o")
    return table.reset_index(drop=True), errors
