"""The MedGore "estimated blur" (EB) colour evidence: blood-like and skin-like pixels.

Blood-like: HSV hue in the red range with enough saturation and value.
Skin-like: the YCbCr box of Shaik et al. 2015.
Every threshold is a named field of :class:`ColorParams`; the paper gives no exact hue
thresholds, so these are documented choices, not values tuned to any corpus.

Per image we keep the two fractions (share of blood-like and skin-like pixels); over a
collection each fraction is z-scored and ``EB = max(z_blood, z_skin)``.

All per-pixel maths is vectorised: PIL does the colour conversions in C and numpy
compares whole channels with integer thresholds, once for all 16.7M colours
(:func:`mask_table`); an image is then one table lookup per pixel. :func:`score_paths` spreads decoding
over processes and caches the fractions on disk per content id and parameter set.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import config
from .errors import ImageError
from .files import sha256_file, write_npy
from .idcache import IdCache
from .images import open_reduced

log = logging.getLogger(__name__)

#: Bump when a change of the code (not of the parameters) changes the fractions, so
#: that cached fractions computed by older code are not reused.
SCORER_VERSION = 1


@dataclass(frozen=True)
class ColorParams:
    """Thresholds of the blood-like and skin-like masks.

    Hue is in degrees (0..360), saturation and value in 0..1, YCbCr in 0..255.
    """

    #: Red hue band: hue >= blood_hue_low_deg or hue <= blood_hue_high_deg (wraps at 0).
    #: When low <= high the band is low..high without wrapping.
    blood_hue_low_deg: float = 340.0
    blood_hue_high_deg: float = 20.0
    #: Washed-out or near-black reds (skin highlights, shadows) are not blood.
    blood_min_saturation: float = 0.35
    blood_min_value: float = 0.15
    #: Shaik et al. 2015 skin box: Y > 80, 85 < Cb < 135, 135 < Cr < 180.
    skin_min_y: float = 80.0
    skin_cb_low: float = 85.0
    skin_cb_high: float = 135.0
    skin_cr_low: float = 135.0
    skin_cr_high: float = 180.0
    #: Images are scored at this longest side: fractions are resolution-independent.
    max_side: int = 256

    def key(self) -> str:
        """Stable text key for caching results per parameter set."""
        return ",".join(f"{k}={v}" for k, v in sorted(asdict(self).items()))


DEFAULT_PARAMS = ColorParams()


# --------------------------------------------------------------------------- masks
#
# PIL stores every converted channel as an 8-bit code c that truncates the exact value x:
# c = floor(x * 255) for hue (as a fraction of 360 degrees) and saturation, and
# c ~= floor(x) for YCbCr (fixed-point maths; c - x lies in (-1.007, 0.023] over all 2^24
# colours). Thresholds t are compared with the code's bin centre c + 0.5, turned into integer
# thresholds once: only a pixel whose exact value lies within about half a code of t can
# land on the wrong side. Value (max(R, G, B)) is stored exactly and compared exactly.


def _centre_at_least(t: float) -> int:
    """Smallest code c with c + 0.5 >= t."""
    return math.ceil(t - 0.5 - 1e-9)


def _centre_at_most(t: float) -> int:
    """Largest code c with c + 0.5 <= t."""
    return math.floor(t - 0.5 + 1e-9)


def _centre_above(t: float) -> int:
    """Smallest code c with c + 0.5 > t."""
    return math.floor(t - 0.5 + 1e-9) + 1


def _centre_below(t: float) -> int:
    """Largest code c with c + 0.5 < t."""
    return math.ceil(t - 0.5 - 1e-9) - 1


def blood_mask_hsv(hsv: np.ndarray, params: ColorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Blood-like mask from a PIL-HSV array.

    Parameters
    ----------
    hsv : uint8 array (H, W, 3) as returned by ``np.asarray(img.convert("HSV"))``:
        hue code floor(hue / 360 * 255), saturation code floor(s * 255), value max(R, G, B).
        Hue 0..360 degrees wraps, so 340..20 is the red band across 0.

    Returns
    -------
    bool array (H, W)
    """
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    lo = _centre_at_least(params.blood_hue_low_deg / 360.0 * 255.0)
    hi = _centre_at_most(params.blood_hue_high_deg / 360.0 * 255.0)
    red = (h >= lo) & (h <= hi) if lo <= hi else (h >= lo) | (h <= hi)
    return (
        red
        & (s >= _centre_at_least(params.blood_min_saturation * 255.0))
        & (v >= math.ceil(params.blood_min_value * 255.0 - 1e-9))
    )


def skin_mask_ycbcr(ycc: np.ndarray, params: ColorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Skin-like mask from a YCbCr array.

    Parameters
    ----------
    ycc : uint8 array (H, W, 3) as returned by ``np.asarray(img.convert("YCbCr"))``:
        full-range ITU-R BT.601 (JFIF) Y, Cb, Cr.

    Returns
    -------
    bool array (H, W)
    """
    y, cb, cr = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    # Integer thresholds keep numpy on uint8 instead of casting three channels to float.
    return (
        (y >= _centre_above(params.skin_min_y))
        & (cb >= _centre_above(params.skin_cb_low)) & (cb <= _centre_below(params.skin_cb_high))
        & (cr >= _centre_above(params.skin_cr_low)) & (cr <= _centre_below(params.skin_cr_high))
    )


def scoring_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(W, H) an image of ``size`` is scored at: fitted inside ``max_side``, aspect kept."""
    w, h = size
    longest = max(w, h)
    if longest <= max_side:
        return w, h
    scale = max_side / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def scoring_image(img: Image.Image, params: ColorParams = DEFAULT_PARAMS) -> Image.Image:
    """``img`` as the fractions are measured: RGB, fitted inside ``params.max_side``
    (:func:`scoring_size`); the image itself when it already fits."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    size = scoring_size(img.size, params.max_side)
    if size == img.size:
        return img
    # reducing_gap=1: box-reduce by the integer factor first (4x faster than a plain
    # bilinear resize of a 512-px image, and a proper anti-aliasing filter).
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)


def color_masks(
    img: Image.Image, params: ColorParams = DEFAULT_PARAMS, *, full_size: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Blood-like and skin-like boolean masks of an RGB image.

    Returns
    -------
    (blood, skin) : bool arrays (H, W) at the scoring size (:func:`scoring_size`), or at the
        image's own size when ``full_size`` (for censoring and IoU against ground-truth masks).
    """
    work = (img if img.mode == "RGB" else img.convert("RGB")) if full_size else scoring_image(img, params)
    flags = _mask_flags(np.asarray(work), params)
    return (flags & 1).astype(bool), (flags & 2).astype(bool)


def _mask_flags(rgb: np.ndarray, params: ColorParams) -> np.ndarray:
    """uint8 (H, W) from a uint8 RGB array (H, W, 3): bit 0 blood-like, bit 1 skin-like."""
    colour = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return mask_table(params)[colour]


_TABLES: dict[str, np.ndarray] = {}
_TABLES_LOCK = threading.Lock()


def mask_table(params: ColorParams = DEFAULT_PARAMS) -> np.ndarray:
    """The masks of every 24-bit colour: uint8 (2**24,), bit 0 blood-like, bit 1 skin-like.

    A pixel's masks depend on its colour alone, so :func:`blood_mask_hsv` and
    :func:`skin_mask_ycbcr` are run once over all 16.7M colours, through PIL's own HSV and
    YCbCr conversions (about 2 s), and each image then costs one table lookup: the same
    masks, bit for bit, at a third of the time. The table is kept per parameter set (and
    Pillow version) in the cache folder and memory-mapped, so worker processes share it.
    """
    import PIL

    key = f"{cache_key(params)}-pil{PIL.__version__}"
    table = _TABLES.get(key)
    if table is not None:
        return table
    with _TABLES_LOCK:  # app sessions are threads: one builds, the others wait for it
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = _load_or_build_table(params, key)
    return table


def _load_or_build_table(params: ColorParams, key: str) -> np.ndarray:
    path = config.cache_dir() / "colorscore" / f"masks-{key}.npy"
    try:
        table = np.load(path, mmap_mode="r")
        if table.shape != (1 << 24,) or table.dtype != np.uint8:
            table = None
    except (OSError, ValueError):  # absent, or damaged: rebuild
        table = None
    if table is None:
        table = _build_mask_table(params)
        try:  # atomic: a reader sees the whole table or none
            path.parent.mkdir(parents=True, exist_ok=True)
            write_npy(path, table)
        except OSError as e:  # a read-only cache: keep it in memory for this process
            log.warning("cannot store the colour-mask table in %s: %s", path.parent, e)
    return table


def _build_mask_table(params: ColorParams) -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.empty((256, 256, 256, 3), np.uint8)  # rgb[r, g, b] = (r, g, b): row-major = the colour code
    rgb[..., 0] = levels[:, None, None]
    rgb[..., 1] = levels[None, :, None]
    rgb[..., 2] = levels[None, None, :]
    img = Image.fromarray(rgb.reshape(4096, 4096, 3))
    del rgb
    table = blood_mask_hsv(np.asarray(img.convert("HSV")), params).astype(np.uint8).ravel()
    table |= skin_mask_ycbcr(np.asarray(img.convert("YCbCr")), params).astype(np.uint8).ravel() << 1
    return table


def color_fractions(img: Image.Image, params: ColorParams = DEFAULT_PARAMS) -> tuple[float, float]:
    """(blood_fraction, skin_fraction): the share of blood-like and skin-like pixels."""
    return scoring_fractions(scoring_image(img, params), params)


def scoring_fractions(small: Image.Image, params: ColorParams = DEFAULT_PARAMS) -> tuple[float, float]:
    """:func:`color_fractions` of an image already at the scoring size (:func:`scoring_image`)."""
    flags = _mask_flags(np.asarray(small), params)
    return np.count_nonzero(flags & 1) / flags.size, np.count_nonzero(flags & 2) / flags.size



# --------------------------------------------------------------------------- EB score


def zscore_eb(blood, skin, *, reference: tuple | None = None) -> pd.DataFrame:
    """z-score both fractions and take EB = max(z_blood, z_skin).

    Parameters
    ----------
    blood, skin : array-like (n,) fractions; NaN (unscored images) stays NaN.
    reference : optional pair (ref_blood, ref_skin) of array-likes (m,). Means and standard
        deviations are taken from it (e.g. only the non-sensitive images, or one split)
        instead of from ``blood, skin`` themselves.

    Returns
    -------
    DataFrame (n, 3) with columns z_blood, z_skin, eb; index of ``blood`` when it is a Series.

    Notes
    -----
    Population standard deviation (ddof=0), NaNs ignored when fitting, as in
    :class:`sklearn.preprocessing.StandardScaler` which does the work. A fraction with no
    spread in the reference is only centred (its sd is taken as 1, scikit-learn's guard).
    """
    from sklearn.preprocessing import StandardScaler

    x = np.column_stack([np.asarray(blood, dtype=np.float64), np.asarray(skin, dtype=np.float64)])
    ref = x if reference is None else np.column_stack(
        [np.asarray(reference[0], dtype=np.float64), np.asarray(reference[1], dtype=np.float64)]
    )
    if ref.shape[0] == 0 or not np.isfinite(ref).any(axis=0).all():
        raise ValueError("the EB reference has no finite blood and skin fractions to take mean/sd from")
    z = StandardScaler().fit(ref).transform(x) if len(x) else np.empty((0, 2))
    index = blood.index if isinstance(blood, pd.Series) else None
    return pd.DataFrame(
        {"z_blood": z[:, 0], "z_skin": z[:, 1], "eb": np.maximum(z[:, 0], z[:, 1])}, index=index
    )


def eb_table(fractions_df: pd.DataFrame, reference_mask=None) -> pd.DataFrame:
    """Copy of ``fractions_df`` (columns blood, skin) with z_blood, z_skin and eb added.

    ``reference_mask`` : optional bool array-like (n,) choosing the rows whose mean/sd
    define the z-scores (see :func:`zscore_eb`); all rows when None.
    """
    out = fractions_df.copy()
    reference = None
    if reference_mask is not None:
        m = np.asarray(reference_mask, dtype=bool)
        if m.shape != (len(out),):
            raise ValueError(f"reference_mask has shape {m.shape}, expected ({len(out)},)")
        reference = (out["blood"].to_numpy()[m], out["skin"].to_numpy()[m])
    z = zscore_eb(out["blood"].to_numpy(), out["skin"].to_numpy(), reference=reference)
    for col in z.columns:
        out[col] = z[col].to_numpy()
    return out


# --------------------------------------------------------------------------- scoring files


def load_for_scoring(path: str, params: ColorParams) -> Image.Image:
    """Decode ``path`` for scoring: the pixels of :func:`lib.images.open_image`, faster.

    JPEGs are decoded with DCT scaling to no less than the scoring size (8x faster on camera
    photos), and EXIF orientation is not applied: neither changes pixel fractions beyond
    resampling noise. Files PIL cannot open directly (DICOM, damaged, too large) go through
    ``open_image``, which decodes them or raises :class:`ImageError` with the reason.
    """
    return open_reduced(path, params.max_side)[0]


def score_file(path: str, params: ColorParams) -> tuple[float, float, str | None]:
    """(blood, skin, error) of one file; NaNs and the reason when it cannot be scored."""
    try:
        blood, skin = color_fractions(load_for_scoring(path, params), params)
    except ImageError as e:
        return math.nan, math.nan, str(e)
    except Exception as e:  # a decoder bug in one file must not stop a 100k-image run
        return math.nan, math.nan, f"{path}: {type(e).__name__}: {e}"
    return blood, skin, None


def _score_chunk(paths: list[str], params: ColorParams) -> list[tuple[float, float, str | None]]:
    return [score_file(p, params) for p in paths]


def _id_chunk(paths: list[str]) -> list[tuple[str | None, str | None]]:
    out = []
    for p in paths:
        try:
            out.append((sha256_file(p), None))
        except OSError as e:
            out.append((None, f"{p}: cannot read file ({e.strerror or e})"))
    return out


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_chunks(func, items: list, extra: tuple, workers: int, chunksize: int, on_chunk) -> None:
    """Call ``on_chunk(start, func(items[start:start+chunksize], *extra))`` for every chunk.

    With ``workers > 1`` chunks run in a process pool with at most ``2 * workers`` chunks in
    flight (bounded prefetch: memory stays flat however long ``items`` is); chunks may
    finish out of order.
    """
    starts = range(0, len(items), chunksize)
    if workers <= 1 or len(starts) <= 1:
        for s in starts:
            on_chunk(s, func(items[s:s + chunksize], *extra))
        return
    # fork: workers inherit the imported modules, no re-import per worker.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
    todo = iter(starts)
    with ProcessPoolExecutor(max_workers=min(workers, len(starts)), mp_context=ctx) as pool:
        pending: dict = {}

        def submit() -> None:
            s = next(todo, None)
            if s is not None:
                pending[pool.submit(func, items[s:s + chunksize], *extra)] = s

        for _ in range(2 * workers):
            submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                on_chunk(pending.pop(fut), fut.result())
                submit()


def cache_key(params: ColorParams = DEFAULT_PARAMS) -> str:
    """Folder name of the fractions cached for ``params`` (hash of params and code version)."""
    text = f"colorscore-v{SCORER_VERSION};{params.key()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FractionCache(IdCache):
    """Blood/skin fractions by content id (:class:`lib.idcache.IdCache`), one folder per
    parameter set: ``<cache>/colorscore/<cache_key(params)>/``."""

    def __init__(self, params: ColorParams = DEFAULT_PARAMS, root: Path | None = None):
        super().__init__("colorscore", cache_key(params), ["blood", "skin"], root=root,
                         info={"scorer_version": SCORER_VERSION, **asdict(params)})
        self.params = params

    def fractions(self, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        """{id: (blood, skin)} for the given ids that are cached."""
        wanted = set(ids)
        if not wanted:
            return {}
        df = self.read()
        # Plain lists: pandas' isin and row iteration on arrow strings cost 0.4 s per 100k ids.
        cached = zip(df["blood"].to_numpy(np.float64).tolist(), df["skin"].to_numpy(np.float64).tolist(),
                     strict=True)
        return {i: fr for i, fr in zip(df["id"].tolist(), cached, strict=True) if i in wanted}

    def add(self, ids: Sequence[str], blood: Sequence[float], skin: Sequence[float]) -> None:
        """Add rows (failed images must not be passed: they are retried next time)."""
        if len(ids):
            self.write(pd.DataFrame({"id": pd.Series(list(ids), dtype=object),
                                     "blood": np.asarray(blood, dtype=np.float64),
                                     "skin": np.asarray(skin, dtype=np.float64)}))


def _as_items(items) -> tuple[list[str | None], list[str]]:
    """Normalise paths, (id, path) pairs or a DataFrame with id/path columns."""
    if isinstance(items, pd.DataFrame):
        if "path" not in items.columns:
            raise ValueError("score_paths: the DataFrame needs a 'path' column (and optionally 'id')")
        paths = [str(p) for p in items["path"]]
        ids = list(items["id"]) if "id" in items.columns else [None] * len(paths)
        return [None if pd.isna(i) else str(i) for i in ids], paths
    ids, paths = [], []
    for it in items:
        if isinstance(it, (str, os.PathLike)):
            ids.append(None)
            paths.append(os.fspath(it))
        else:
            cid, p = it
            ids.append(None if cid is None else str(cid))
            paths.append(os.fspath(p))
    return ids, paths


def score_paths(
    items,
    params: ColorParams = DEFAULT_PARAMS,
    *,
    workers: int | None = None,
    cache: bool = True,
    chunksize: int = 16,
    flush_every: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Blood-like and skin-like fractions of many image files.

    Parameters
    ----------
    items : iterable of paths, of (content_id, path) pairs, or a DataFrame with columns
        path and optionally id. Without an id the file's sha256 (:func:`lib.files.sha256_file`)
        is computed.
    params : thresholds; the cache is separate per parameter set.
    workers : processes (default: all CPUs available); 1 runs in this process.
    cache : read and write the on-disk cache ``cache_dir()/colorscore/<cache_key(params)>``.
    chunksize : files per task sent to a worker.
    flush_every : computed rows are written to the cache at least this often, so an
        interrupted run keeps most of its work.
    progress : optional ``progress(done, total)`` called as files are scored.

    Returns
    -------
    DataFrame (n, 5), one row per item in input order: id, path, blood, skin (float, NaN
    when the image could not be scored), error (None or the reason).
    """
    ids, paths = _as_items(items)
    n = len(paths)
    workers = default_workers() if workers is None else max(1, int(workers))
    errors: list[str | None] = [None] * n
    blood = np.full(n, np.nan)
    skin = np.full(n, np.nan)

    need_id = [i for i in range(n) if ids[i] is None]
    if need_id:
        def got_ids(start: int, results: list) -> None:
            for k, (cid, err) in enumerate(results):
                i = need_id[start + k]
                ids[i], errors[i] = cid, err

        run_chunks(_id_chunk, [paths[i] for i in need_id], (), workers, 4 * chunksize, got_ids)

    store = FractionCache(params) if cache else None
    known = store.fractions(i for i in ids if i is not None) if store else {}
    todo: dict[str, list[int]] = {}  # content id -> rows (duplicates are scored once)
    for i, cid in enumerate(ids):
        if cid is None:
            continue
        if cid in known:
            blood[i], skin[i] = known[cid]
        else:
            todo.setdefault(cid, []).append(i)

    todo_ids = list(todo)
    todo_paths = [paths[todo[c][0]] for c in todo_ids]
    pending: list[tuple[str, float, float]] = []
    done = 0

    def flush() -> None:
        if store is not None and pending:
            store.add(*zip(*pending, strict=True))
        pending.clear()

    def got_scores(start: int, results: list) -> None:
        nonlocal done
        for k, (b, s, err) in enumerate(results):
            cid = todo_ids[start + k]
            for i in todo[cid]:
                blood[i], skin[i], errors[i] = b, s, err
            if err is None:
                pending.append((cid, b, s))
        done += len(results)
        if len(pending) >= flush_every:
            flush()
        if progress is not None:
            progress(done, len(todo_ids))

    if todo_paths:
        mask_table(params)  # built or mapped once here; forked workers inherit it
    try:
        run_chunks(_score_chunk, todo_paths, (params,), workers, chunksize, got_scores)
    finally:
        flush()  # keep what was computed even when interrupted
    return pd.DataFrame({
        "id": pd.Series(ids, dtype=object),
        "path": paths,
        "blood": blood,
        "skin": skin,
        "error": pd.Series(errors, dtype=object),
    })


# --------------------------------------------------------------------------- datasets


def score_dataset_rows(ds, params: ColorParams = DEFAULT_PARAMS, *, workers: int | None = None,
                       progress=None) -> pd.DataFrame:
    """:func:`score_paths` over every row of a :class:`lib.dataset.Dataset`, in row order.

    A row whose path now leaves the dataset root (a file swapped for a symlink since
    ingest) is never read: NaN fractions and the reason, like an unreadable file (unless
    its content was scored before, from inside the root: the cached fractions stand).
    """
    from .errors import UnsafePath

    ids = [str(i) for i in ds.images["id"].tolist()]
    n = len(ids)
    blood, skin = np.full(n, np.nan), np.full(n, np.nan)
    errors: list[str | None] = [None] * n
    # Cached rows are neither read nor path-checked (100k resolves cost 10 s of a
    # gallery's first render); only the other rows go to score_paths. The lookup is one
    # hash join (a dict of every cached id cost seconds at 1M rows).
    cached = FractionCache(params).read()
    pos = pd.Index(cached["id"].astype(str)).get_indexer(ids) if len(cached) else np.full(n, -1)
    hit = pos >= 0
    blood[hit] = cached["blood"].to_numpy(np.float64)[pos[hit]]
    skin[hit] = cached["skin"].to_numpy(np.float64)[pos[hit]]
    # os.path.join(root, rel) of every (relative) dataset path, vectorised
    paths = (os.path.join(str(ds.root), "") + ds.images["path"].astype("string")).to_numpy(dtype=object)
    todo = []
    for i in np.flatnonzero(~hit).tolist():
        rel = ds.images["path"].iat[i]
        try:
            paths[i] = str(ds.abspath(rel))
            todo.append(i)
        except UnsafePath as e:
            paths[i] = str(rel)
            errors[i] = str(e)
    if todo:
        fr = score_paths([(ids[i], paths[i]) for i in todo], params, workers=workers, progress=progress)
        rows = np.asarray(todo, dtype=np.int64)
        blood[rows], skin[rows] = fr["blood"].to_numpy(np.float64), fr["skin"].to_numpy(np.float64)
        for i, err in zip(todo, fr["error"].tolist(), strict=True):
            errors[i] = err
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "path": paths, "blood": blood, "skin": skin,
                         "error": pd.Series(errors, dtype=object)})


def score_dataset(ds, params: ColorParams = DEFAULT_PARAMS, *, reference: pd.Series | None = None,
                  workers: int | None = None, progress=None) -> pd.DataFrame:
    """EB table of a :class:`lib.dataset.Dataset`, one row per dataset row.

    ``reference`` is an optional boolean Series over the rows: the z-scores take their mean
    and sd from those rows only (e.g. a labelled reference collection). Returns the
    dataset's id, path, label and split plus blood, skin, z_blood, z_skin, eb, error.
    """
    fr = score_dataset_rows(ds, params, workers=workers, progress=progress)
    fr["path"] = ds.images["path"].to_numpy()
    for col in ("label", "split"):
        fr[col] = ds.images[col].to_numpy()
    return eb_table(fr, None if reference is None else np.asarray(reference, dtype=bool))
