"""Data quality: near-duplicate groups, leaks between splits or datasets, likely label
mistakes and outliers, from cached embeddings, faiss and a model-free perceptual hash.

Near-duplicates
    A pair is two distinct images (content ids) that are

    - **exact**: byte-identical copies share one content id (:mod:`lib.dataset`), so every
      dataset row of an id with several rows is in a group, whatever the model;
    - **model**: cosine similarity ``>= threshold`` under a model, found by faiss range
      search over the dataset's own index (:func:`lib.index.get_index`: exact ``Flat`` up
      to :data:`lib.index.EXACT_MAX` vectors, IVF above, probing :data:`RANGE_NPROBE`
      lists), queried in chunks of :data:`RANGE_CHUNK` rows, so memory is the index plus one chunk's results, never an
      n x n matrix;
    - **hash**: a perceptual hash (``imagehash.phash``, 64 bits) within
      :data:`HASH_MAX_DISTANCE` bits, where each image is hashed in its 8 flips and
      rotations (:func:`image_hashes`) so that augmented copies match; compared exactly
      with a faiss binary index (range search over every image's 8 codes).

    Groups are the connected components of the pairs (what union-find computes;
    ``scipy.sparse.csgraph.connected_components``), each with a representative: its
    largest image (most pixels: the original rather than a downscaled copy), ties broken
    by dataset order.

Defaults (documented choices, not fitted to any corpus)
    :data:`DEFAULT_THRESHOLD` 0.95 cosine: an angle of about 18 degrees between unit
    vectors, where learned image encoders (CLIP-style) keep resized, recompressed and
    lightly cropped copies. Hand-crafted features such as the offline ``color`` backend
    place unrelated images that close too (their histograms share a large common part):
    under them use ``--hash`` (the hash does not depend on the model) or a higher
    threshold. :data:`HASH_MAX_DISTANCE` 10 of 64 bits: imagededup's default for pHash.

Leaks
    Near-duplicate pairs whose members sit in different ``split`` values (byte-identical
    copies in two splits included), or between two datasets (:func:`dataset_leaks`).

Label issues
    cleanlab's ``find_label_issues`` and label quality scores on out-of-fold
    probabilities of the linear probe (:func:`lib.probe.linear_probe`), plus the share of
    the k nearest neighbours with another label (MedGore's homogeneity, per image).

Outliers / uniqueness
    The mean cosine distance to the k nearest other images (FiftyOne's uniqueness);
    an image more than :data:`OUTLIER_MADS` scaled median absolute deviations above the
    median is unlike any other in the dataset.

For training code: :func:`near_duplicates_of` names the images of a pool that are near
duplicates of a set of (test) images, by the model-free hash by default; ``probe --split``
leaves them out of training (:func:`lib.probe.run_probe`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import dataset as ds_mod
from .errors import ImageError, WorkbenchError

#: Cosine similarity at or above which two images are near-duplicates under a model.
DEFAULT_THRESHOLD = 0.95
#: Hamming distance (of 64 bits) at or below which two perceptual hashes match.
HASH_MAX_DISTANCE = 10
#: imagehash's hash_size: 8 -> 8 x 8 = 64 bits (pHash of a 32 x 32 DCT).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE
#: Bump when a change of the hashing code changes the hashes (the cache fingerprint).
HASH_VERSION = 2
#: Letterbox trimming: an edge row/column is padding when under TRIM_SHARE of its pixels
#: differ by more than TRIM_TOLERANCE grey levels from its median; nothing is cut when
#: less than TRIM_MIN_KEEP of the image would remain.
TRIM_TOLERANCE = 16
TRIM_SHARE = 0.02
TRIM_MIN_KEEP = 0.25
#: Longest side an image is reduced to before trimming and hashing (the hash reads 32 x 32).
HASH_DECODE_SIDE = 128
#: Neighbours for kNN label disagreement and uniqueness.
KNN_K = 10
#: Outlier: uniqueness above median + OUTLIER_MADS * 1.4826 * MAD.
OUTLIER_MADS = 3.0
#: Query rows per faiss range search call (bounded memory).
RANGE_CHUNK = 4096
#: Lists an IVF range search probes. Near-duplicates sit next to each other, so the query's
#: nearest lists hold them: far fewer than a top-k search needs (``lib.index.ivf_params``);
#: ``bench/quality.py`` measures the recall of the pairs against exact search.
RANGE_NPROBE = 4
#: Refuse thresholds that produce more pairs than this (memory), with the reason.
MAX_PAIRS = 50_000_000

#: via codes of a pair (bit flags): exact copy, model similarity, perceptual hash.
EXACT, MODEL, HASH = 1, 2, 4
_VIA_NAMES = {EXACT: "exact", MODEL: "model", HASH: "hash"}

#: The 8 flips and rotations (the dihedral group of the square) applied before hashing.
_DIHEDRAL = (None, "FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "ROTATE_90", "ROTATE_180", "ROTATE_270",
             "TRANSPOSE", "TRANSVERSE")

DUPLICATE_COLUMNS = ["id", "path", "group", "representative", "similarity", "split", "hash_distance", "label",
                     "is_representative", "group_size"]
LEAK_COLUMNS = ["id_a", "id_b", "split_a", "split_b", "similarity", "hash_distance", "via", "dataset_a",
                "dataset_b", "path_a", "path_b"]
LABEL_ISSUE_COLUMNS = ["id", "path", "label", "score", "suggested", "flagged", "label_quality",
                       "knn_disagreement", "knn_majority", "missed_sensitive"]
OUTLIER_COLUMNS = ["id", "path", "label", "split", "uniqueness", "nearest_id", "nearest_similarity", "outlier"]


class QualityError(WorkbenchError):
    """A data-quality analysis cannot run as asked (the message says why)."""


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in (0, 1], or :class:`QualityError` naming it."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise QualityError(f"--threshold {threshold!r} is not a number: give a cosine similarity in (0, 1]") from None
    if not 0.0 < t <= 1.0:
        raise QualityError(f"--threshold {threshold} is outside (0, 1]: it is the cosine similarity at or above "
                           f"which two images are near-duplicates (default {DEFAULT_THRESHOLD})")
    return t


def check_hash_distance(distance: int) -> int:
    d = int(distance)
    if not 0 <= d <= HASH_BITS // 2:
        raise QualityError(f"--hash-distance {distance} is outside 0..{HASH_BITS // 2}: it is the number of the "
                           f"{HASH_BITS} hash bits two near-duplicates may differ in (default {HASH_MAX_DISTANCE})")
    return d


# =========================================================================== perceptual hash


def trim_border(img):
    """Cut uniform bands (letterbox padding) off the edges of a greyscale PIL image.

    An edge row or column is padding when fewer than :data:`TRIM_SHARE` of its pixels
    differ from its median by more than :data:`TRIM_TOLERANCE`; the image is returned
    unchanged when less than :data:`TRIM_MIN_KEEP` of it would remain (a mostly uniform
    image). So a copy flipped inside its padding, or padded differently, hashes alike.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        return img
    bounds = []
    for axis in (1, 0):  # rows (deviation along each row), then columns
        med = np.median(a, axis=axis, keepdims=True)
        busy = np.flatnonzero((np.abs(a - med) > TRIM_TOLERANCE).mean(axis=axis) >= TRIM_SHARE)
        size = a.shape[0] if axis == 1 else a.shape[1]
        bounds.append((int(busy[0]), int(busy[-1]) + 1) if len(busy) else (0, size))
    (r0, r1), (c0, c1) = bounds
    if (r1 - r0) * (c1 - c0) >= a.size or (r1 - r0) * (c1 - c0) < TRIM_MIN_KEEP * a.size:
        return img
    return img.crop((c0, r0, c1, r1))


def _hash_input(img):
    """The 32 x 32 greyscale image pHash reads: reduced within :data:`HASH_DECODE_SIDE`,
    borders trimmed, resized with LANCZOS (imagehash's own resampling)."""
    from PIL import Image

    w, h = img.size
    if max(w, h) > HASH_DECODE_SIDE:
        f = HASH_DECODE_SIDE / max(w, h)
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    side = HASH_SIZE * 4  # imagehash.phash's highfreq_factor
    return trim_border(img.convert("L")).resize((side, side), Image.Resampling.LANCZOS)


#: How each orientation of :data:`_DIHEDRAL` acts on pHash's low-frequency DCT block D[u, v]
#: (u: vertical frequency, v: horizontal): (transposed, sign of the rows, sign of the columns).
#: Reversing a signal multiplies its DCT-II coefficient k by (-1)^k, so one DCT gives all 8.
_DCT_ACTION = {None: (False, False, False), "FLIP_LEFT_RIGHT": (False, False, True),
               "FLIP_TOP_BOTTOM": (False, True, False), "ROTATE_180": (False, True, True),
               "TRANSPOSE": (True, False, False), "TRANSVERSE": (True, True, True),
               "ROTATE_90": (True, True, False), "ROTATE_270": (True, False, True)}


def image_hashes(img) -> np.ndarray:
    """Perceptual hashes of one image in its 8 flips and rotations.

    The image (PIL, any mode) is reduced to greyscale within :data:`HASH_DECODE_SIDE`,
    trimmed of uniform borders (:func:`trim_border`) and resized once to pHash's 32 x 32.
    Each orientation's hash is ``imagehash.phash`` of that orientation of the small image;
    they are computed from one DCT (a flip changes the signs of odd frequencies, a
    transpose transposes the block), which ``tests/test_quality.py`` checks against
    ``imagehash.phash`` itself.

    Returns
    -------
    ndarray (8, 8) uint8: row t is the 64-bit hash of orientation t (:data:`_DIHEDRAL`) as
    8 bytes (row 0: the image as it is), the code layout of faiss binary indexes.
    """
    import scipy.fftpack

    pixels = np.asarray(_hash_input(img))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)  # as imagehash.phash computes it
    low = dct[:HASH_SIZE, :HASH_SIZE]
    sign = np.where(np.arange(HASH_SIZE) % 2 == 0, 1.0, -1.0)
    out = np.empty((len(_DIHEDRAL), HASH_BITS // 8), np.uint8)
    for t, name in enumerate(_DIHEDRAL):
        transposed, rows, cols = _DCT_ACTION[name]
        d = low.T if transposed else low
        if rows:
            d = d * sign[:, None]
        if cols:
            d = d * sign[None, :]
        out[t] = np.packbits((d > np.median(d)).ravel())
    return out


def image_hashes_reference(img) -> np.ndarray:
    """:func:`image_hashes` computed the slow way: ``imagehash.phash`` of each of the 8
    transposed images (for tests; same layout)."""
    import imagehash
    from PIL import Image

    small = _hash_input(img)
    out = np.empty((len(_DIHEDRAL), HASH_BITS // 8), np.uint8)
    for t, name in enumerate(_DIHEDRAL):
        x = small if name is None else small.transpose(getattr(Image.Transpose, name))
        out[t] = np.packbits(imagehash.phash(x, hash_size=HASH_SIZE).hash.ravel())
    return out


def hash_cache():
    """The per-content-id cache of the hashes: ``h0..h7`` (int64 views of the 8 codes)."""
    from .idcache import IdCache

    fp = f"phash{HASH_BITS}-dihedral8-trim-v{HASH_VERSION}"
    return IdCache("phash", fp, [f"h{t}" for t in range(len(_DIHEDRAL))],
                   info={"what": "imagehash.phash of each content id in its 8 flips/rotations, after trimming "
                                 "uniform borders", "bits": HASH_BITS, "version": HASH_VERSION})


def _hash_file(path: str) -> tuple[np.ndarray | None, str | None]:
    from .colorscore import DEFAULT_PARAMS, load_for_scoring

    try:
        return image_hashes(load_for_scoring(path, DEFAULT_PARAMS)), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # a decoder bug in one file must not stop a long run
        return None, f"{path}: {type(e).__name__}: {e}"


def hash_files(paths: list[str]) -> list[tuple[np.ndarray | None, str | None]]:
    """(codes (8, 8) uint8, None) or (None, reason) per file: one worker's chunk of :func:`hash_ids`."""
    return [_hash_file(p) for p in paths]


def hash_ids(ds: ds_mod.Dataset, ids: Sequence[str] | None = None, *, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """Hashes of distinct images of dataset ``ds`` (all by default), computing only what
    the cache lacks, decoding in ``workers`` processes.

    Returns
    -------
    (codes, errors) : codes (len(ids), 8, 8) uint8 aligned with ``ids`` (all-zero rows for
        images that could not be read), and {id: reason} for those.
    """
    from .colorscore import default_workers, run_chunks

    ids = list(dict.fromkeys(ds.unique_ids if ids is None else map(str, ids)))
    cache = hash_cache()
    cols = cache.columns
    have = cache.lookup(ids)
    codes = np.zeros((len(ids), len(_DIHEDRAL), HASH_BITS // 8), np.uint8)
    pos = {cid: k for k, cid in enumerate(ids)}
    if len(have):
        k = np.array([pos[c] for c in have["id"].astype(str)])
        vals = have[cols].to_numpy(dtype=np.int64)
        codes[k] = np.ascontiguousarray(vals).view(np.uint8).reshape(len(vals), len(cols), -1)
    done = set(have["id"].astype(str))
    todo, paths, errors = ds.paths_of(c for c in ids if c not in done)
    pending: list[tuple[str, np.ndarray]] = []
    n_done = 0

    def flush() -> None:
        if pending:
            vals = np.stack([c for _, c in pending]).reshape(len(pending), len(cols), -1).copy().view(np.int64)
            cache.write(pd.DataFrame({"id": [i for i, _ in pending],
                                      **{c: vals[:, t, 0] for t, c in enumerate(cols)}}))
            pending.clear()

    def got(start: int, results: list) -> None:
        nonlocal n_done
        for j, (code, err) in enumerate(results):
            cid = todo[start + j]
            if code is None:
                errors[cid] = err or "cannot be hashed"
            else:
                codes[pos[cid]] = code
                pending.append((cid, code))
        n_done += len(results)
        if len(pending) >= 4096:
            flush()
        if progress is not None:
            progress(n_done, len(todo))

    w = default_workers() if workers is None else max(1, int(workers))
    try:
        run_chunks(hash_files, paths, (), w if len(paths) >= 64 else 1, 32, got)
    finally:
        flush()
    return codes, errors


def _binary_index(codes: np.ndarray):
    """A faiss binary index over (m, 8) uint8 codes: exact (brute-force popcount over every
    code, multi-threaded, ~1.9e9 code comparisons per second on 2 cores: 100k images x 8
    orientations against 100k queries in about 45 s). faiss's multi-index hashing
    (``IndexBinaryMultiHash``, 4 x 16 bits, 2 flips) was 4-6x slower at this radius, and
    binary IVF misses matches; see ``bench/quality.py``."""
    import faiss

    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(np.ascontiguousarray(codes))
    return index


def hash_pairs(codes: np.ndarray, max_distance: int = HASH_MAX_DISTANCE, *, other: np.ndarray | None = None,
               valid: np.ndarray | None = None, other_valid: np.ndarray | None = None,
               chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of images whose hashes match in some orientation.

    Parameters
    ----------
    codes : (n, 8, 8) uint8 from :func:`image_hashes` / :func:`hash_ids`.
    other : (m, 8, 8) uint8, optional: pairs between ``other`` (queries) and ``codes``
        instead of within ``codes``.
    valid, other_valid : bool (n,) / (m,): rows with a hash (the others never match).

    Returns
    -------
    (a, b, distance) int64 arrays: ``a`` indexes ``codes``, ``b`` indexes ``other`` (or
    ``codes``, then ``a < b``); distance is the least Hamming distance over orientations.
    """
    n, t = codes.shape[:2]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    keep = np.flatnonzero(valid)
    empty = (np.zeros(0, np.int64),) * 3
    if not len(keep):
        return empty
    index = _binary_index(codes[keep].reshape(len(keep) * t, -1))
    queries = codes if other is None else other
    qvalid = valid if other is None else (np.ones(len(other), bool) if other_valid is None
                                          else np.asarray(other_valid, bool))
    qrows = np.flatnonzero(qvalid)
    A, B, D = [], [], []
    for s in range(0, len(qrows), chunk):
        q = qrows[s:s + chunk]
        lims, dist, ent = index.range_search(np.ascontiguousarray(queries[q, 0]), max_distance + 1)  # strict <
        qi = np.repeat(q, np.diff(lims.astype(np.int64)))
        A.append(keep[ent // t])
        B.append(qi)
        D.append(dist.astype(np.int64))
    a, b, d = (np.concatenate(x) for x in (A, B, D))
    if other is None:  # within one set: (min, max), self-matches dropped
        a, b = np.minimum(a, b), np.maximum(a, b)
        ok = a != b
        a, b, d = a[ok], b[ok], d[ok]
        width = n
    else:
        width = len(other)
    return _best_per_pair(a, b, d, width, lowest=True)


def _best_per_pair(a: np.ndarray, b: np.ndarray, v: np.ndarray, width: int, *, lowest: bool):
    """Each (a, b) once, with its lowest (or highest) value."""
    if not len(a):
        return a.astype(np.int64), b.astype(np.int64), v
    key = a.astype(np.int64) * int(width) + b.astype(np.int64)
    order = np.lexsort((v if lowest else -v, key))
    key, v = key[order], v[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, v = key[first], v[first]
    return key // width, key % width, v


def hash_distance(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Least Hamming distance over orientations between paired rows: (m, 8, 8) x (m, 8, 8) -> (m,) int."""
    if not len(codes_a):
        return np.zeros(0, np.int64)
    x = np.bitwise_xor(codes_a[:, :1, :], codes_b)  # a as it is vs every orientation of b
    d1 = np.unpackbits(x, axis=2).sum(axis=2).min(axis=1)
    y = np.bitwise_xor(codes_b[:, :1, :], codes_a)
    d2 = np.unpackbits(y, axis=2).sum(axis=2).min(axis=1)
    return np.minimum(d1, d2).astype(np.int64)


# =========================================================================== model pairs


def _range_params(index):
    """Search parameters of a range search: IVF probes :data:`RANGE_NPROBE` lists (None: defaults)."""
    import faiss

    if faiss.try_extract_index_ivf(index) is None:
        return None
    return faiss.SearchParametersIVF(nprobe=int(min(RANGE_NPROBE, faiss.extract_index_ivf(index).nlist)))


def range_pairs(index, query_chunks: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float, *,
                max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss range search, chunk by chunk: every (indexed row, query row) with cosine >= ``threshold``.

    Parameters
    ----------
    index : a faiss index over unit vectors (inner product), e.g. ``VectorIndex.index``.
    query_chunks : ``(query ids (m,), vectors (m, dim) float32)`` per chunk.

    Returns
    -------
    (a, q, similarity) : indexed row, query id, cosine (float32), unfiltered for self-matches.
    """
    radius = float(np.nextafter(np.float32(threshold), np.float32(-1)))  # faiss keeps sim > radius
    params = _range_params(index)
    A, Q, S = [], [], []
    total = 0
    for qids, x in query_chunks:
        lims, sim, rows = index.range_search(np.ascontiguousarray(x, dtype=np.float32), radius, params=params)
        ok = sim >= threshold
        A.append(rows[ok])
        Q.append(np.repeat(np.asarray(qids, np.int64), np.diff(lims.astype(np.int64)))[ok])
        S.append(sim[ok].astype(np.float32))
        total += int(ok.sum())
        if total > max_pairs:
            raise QualityError(f"more than {max_pairs:,} pairs have cosine >= {threshold}: this threshold is too low "
                               "for this model (most images count as near-duplicates); raise --threshold")
    if not A:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(A).astype(np.int64), np.concatenate(Q), np.concatenate(S)


def _first_rows(images: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(unique ids in first-seen order, the first dataset row of each, id index per row)."""
    codes, uniq = pd.factorize(images["id"].astype(str), sort=False)
    _, first = np.unique(codes, return_index=True)  # codes are numbered in first-seen order
    return [str(u) for u in uniq], first.astype(np.int64), codes.astype(np.int64)


def vector_pairs(emb, index, threshold: float, *, first: np.ndarray | None = None,
                 id_of_row: np.ndarray | None = None, chunk: int = RANGE_CHUNK,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct items with cosine >= ``threshold`` among the rows of an index.

    Parameters
    ----------
    emb : :class:`lib.embeddings.DatasetEmbeddings` (n_rows, dim), the vectors the index holds.
    index : the faiss index over them (row numbers as ids).
    first : (n_items,) the row queried for each item (default: every row is an item).
    id_of_row : (n_rows,) item of each row (default: the row itself); rows of one item
        (byte-identical copies) are never paired with each other.

    Returns
    -------
    (a, b, similarity) : item indices with a < b, each pair once with its cosine.
    """
    n_rows = len(emb)
    first = np.arange(n_rows) if first is None else np.asarray(first, np.int64)
    id_of_row = np.arange(n_rows) if id_of_row is None else np.asarray(id_of_row, np.int64)

    def chunks():
        for s in range(0, len(first), chunk):
            q = np.arange(s, min(s + chunk, len(first)))
            yield q, emb.take(first[q])
            if progress is not None:
                progress(int(q[-1]) + 1, len(first))

    rows, q, sim = range_pairs(index, chunks(), threshold)
    a = id_of_row[rows]
    lo, hi = np.minimum(a, q), np.maximum(a, q)
    ok = lo != hi
    return _best_per_pair(lo[ok], hi[ok], sim[ok], max(len(first), 1), lowest=False)


def model_pairs(space, threshold: float = DEFAULT_THRESHOLD, *, chunk: int = RANGE_CHUNK,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct images with cosine >= ``threshold`` in a :class:`lib.neighbors.Space`
    (its persisted index: exact up to :data:`lib.index.EXACT_MAX` vectors, IVF above).

    Returns
    -------
    (a, b, similarity) : indices into the unique ids (:func:`_first_rows` order), a < b.
    """
    threshold = check_threshold(threshold)
    _, first, id_of_row = _first_rows(space.dataset.images)
    return vector_pairs(space.emb, space.index.index, threshold, first=first, id_of_row=id_of_row, chunk=chunk,
                        progress=progress)


# =========================================================================== groups


@dataclass
class NearDuplicates:
    """Near-duplicate pairs and groups of one dataset's distinct images.

    Attributes
    ----------
    ids : list (n,) of the dataset's content ids, first-seen order.
    pairs : DataFrame, one row per pair of distinct images: ``a, b`` (indices into ``ids``,
        a < b), ``similarity`` (cosine under the model; NaN without one), ``hash_distance``
        (-1 without hashes), ``via`` (``exact``/``model``/``hash`` joined by ``+``).
    group : ndarray (n,) int: group number (0, 1, ... by size, largest first) or -1 for an
        image with no near-duplicate and a single dataset row.
    representative : ndarray (n,) int: index (into ``ids``) of the group's representative, -1.
    threshold, hash_max_distance : what the pairs were cut at (None: not used).
    hash_errors : {id: reason} of images that could not be hashed.
    codes : (n, 8, 8) uint8 hashes aligned with ``ids`` when the hash was used.
    """

    ids: list[str]
    pairs: pd.DataFrame
    group: np.ndarray
    representative: np.ndarray
    threshold: float | None = None
    hash_max_distance: int | None = None
    hash_errors: dict = field(default_factory=dict)
    codes: np.ndarray | None = field(default=None, repr=False)

    def groups_of(self, ids: Iterable[str]) -> np.ndarray:
        """Group number of each id (-1: in no group; unknown ids: -1)."""
        pos = {c: k for k, c in enumerate(self.ids)}
        return np.array([self.group[pos[c]] if c in pos else -1 for c in map(str, ids)], dtype=np.int64)

    @property
    def n_groups(self) -> int:
        return int(self.group.max() + 1) if len(self.group) and self.group.max() >= 0 else 0

    def partners(self, ids: Iterable[str]) -> set[str]:
        """Ids directly paired with any of ``ids`` (not through a chain of pairs)."""
        pos = {c: k for k, c in enumerate(self.ids)}
        want = np.zeros(len(self.ids), bool)
        want[[pos[c] for c in map(str, ids) if c in pos]] = True
        a, b = self.pairs["a"].to_numpy(), self.pairs["b"].to_numpy()
        hit = np.r_[b[want[a]], a[want[b]]]
        return {self.ids[i] for i in np.unique(hit)}


def _via_text(flags: np.ndarray) -> np.ndarray:
    out = np.full(len(flags), "", dtype=object)
    for bit, name in _VIA_NAMES.items():
        has = (flags & bit) > 0
        out[has] = np.where(out[has] == "", name, out[has] + "+" + name)
    return out


def build_groups(images: pd.DataFrame, a: np.ndarray, b: np.ndarray, *, similarity: np.ndarray | None = None,
                 hash_dist: np.ndarray | None = None, via: np.ndarray | None = None, threshold: float | None = None,
                 hash_max_distance: int | None = None, hash_errors: dict | None = None) -> NearDuplicates:
    """Groups from pairs of distinct images (indices into the unique ids of ``images``).

    Byte-identical copies (several rows of one id) make a group of their own even without
    a pair. The representative is the group's largest image (``width * height``), ties
    broken by dataset order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids, first, id_of_row = _first_rows(images)
    n = len(ids)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    m = len(a)
    graph = coo_matrix((np.ones(m, np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    rows_per_id = np.bincount(id_of_row, minlength=n)
    size = np.bincount(comp, minlength=comp.max() + 1 if n else 0)
    grouped = (size[comp] > 1) | (rows_per_id > 1)
    group = np.full(n, -1, np.int64)
    rep = np.full(n, -1, np.int64)
    if grouped.any():
        members = np.flatnonzero(grouped)
        c = comp[members]
        # group numbers: larger groups first, then by the first member's position
        sizes = np.bincount(c, weights=rows_per_id[members])
        uniq_c, first_member = np.unique(c, return_index=True)
        order = np.lexsort((members[first_member], -sizes[uniq_c]))
        number = np.empty(comp.max() + 1, np.int64)
        number[uniq_c[order]] = np.arange(len(uniq_c))
        group[members] = number[c]
        px = np.zeros(n)
        if "width" in images and "height" in images:
            w = pd.to_numeric(images["width"], errors="coerce").fillna(0).to_numpy()[first]
            h = pd.to_numeric(images["height"], errors="coerce").fillna(0).to_numpy()[first]
            px = w * h
        best = np.lexsort((first[members], -px[members], group[members]))  # by group, most pixels, dataset order
        g_sorted = group[members][best]
        lead = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
        rep_of_group = np.empty(len(uniq_c), np.int64)
        rep_of_group[g_sorted[lead]] = members[best][lead]
        rep[members] = rep_of_group[group[members]]
    pairs = pd.DataFrame({
        "a": a, "b": b,
        "similarity": np.asarray(similarity, np.float64) if similarity is not None else np.full(m, np.nan),
        "hash_distance": np.asarray(hash_dist, np.int64) if hash_dist is not None else np.full(m, -1, np.int64),
        "via": _via_text(np.asarray(via, np.int64)) if via is not None else np.full(m, "", dtype=object),
    })
    return NearDuplicates(ids, pairs, group, rep, threshold, hash_max_distance, dict(hash_errors or {}))


def _merge_pairs(parts: list[tuple[np.ndarray, np.ndarray, int]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of pair lists (a, b, via flag) -> unique (a, b) with OR-ed flags."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    f = np.concatenate([np.full(len(p[0]), p[2], np.int64) for p in parts])
    if not len(a):
        return a, b, f
    key = a * n + b
    uniq, inv = np.unique(key, return_inverse=True)
    flags = np.zeros(len(uniq), np.int64)
    np.bitwise_or.at(flags, inv, f)
    return uniq // n, uniq % n, flags


def pair_similarity(space, ids_index_a: np.ndarray, ids_index_b: np.ndarray, first_rows: np.ndarray,
                    other_space=None, other_first: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """Cosine of paired images (indices into unique ids, mapped to dataset rows by ``first_rows``)."""
    out = np.empty(len(ids_index_a), np.float64)
    osp = other_space or space
    ofirst = first_rows if other_first is None else other_first
    for s in range(0, len(out), chunk):
        xa = space.emb.take(first_rows[ids_index_a[s:s + chunk]])
        xb = osp.emb.take(ofirst[ids_index_b[s:s + chunk]])
        out[s:s + chunk] = np.einsum("ij,ij->i", xa, xb)
    return out


def find_near_duplicates(ds: ds_mod.Dataset, space=None, *, threshold: float | None = DEFAULT_THRESHOLD,
                         use_hash: bool = False, hash_max_distance: int = HASH_MAX_DISTANCE,
                         workers: int | None = None,
                         progress: Callable[[int, int], None] | None = None) -> NearDuplicates:
    """Near-duplicate pairs and groups of dataset ``ds``.

    Parameters
    ----------
    space : :class:`lib.neighbors.Space` of the dataset under a model, or None (hash only).
    threshold : cosine cut for model pairs; None: no model pairs (similarities are still
        reported when ``space`` is given).
    use_hash : also pairs of matching perceptual hashes (computed once per content id and cached).
    progress : ``progress(done, total)`` while hashing.
    """
    if threshold is not None:
        threshold = check_threshold(threshold)
    hash_max_distance = check_hash_distance(hash_max_distance)
    if space is None and not use_hash:
        raise QualityError("near-duplicates need a model's embeddings, the perceptual hash, or both")
    ids, first, _ = _first_rows(ds.images)
    n = len(ids)
    parts = []
    if space is not None and threshold is not None:
        a, b, _ = model_pairs(space, threshold)
        parts.append((a, b, MODEL))
    codes, errors = None, {}
    if use_hash:
        codes, errors = hash_ids(ds, ids, workers=workers, progress=progress)
        valid = np.array([c not in errors for c in ids], bool)
        a, b, _ = hash_pairs(codes, hash_max_distance, valid=valid)
        parts.append((a, b, HASH))
    a, b, flags = _merge_pairs(parts, max(n, 1))
    sim = pair_similarity(space, a, b, first) if space is not None else None
    hd = None
    if codes is not None:
        hd = hash_distance(codes[a], codes[b])
        bad = np.array([ids[i] in errors or ids[j] in errors for i, j in zip(a, b, strict=True)], bool) \
            if errors else np.zeros(len(a), bool)
        hd[bad] = -1
    nd = build_groups(ds.images, a, b, similarity=sim, hash_dist=hd, via=flags,
                      threshold=threshold, hash_max_distance=hash_max_distance if use_hash else None,
                      hash_errors=errors)
    nd.codes = codes
    return nd


def near_duplicate_groups(name: str, spec=None, *, threshold: float | None = DEFAULT_THRESHOLD,
                          use_hash: bool = True,
                          progress: Callable[[int, int], None] | None = None) -> NearDuplicates:
    """:func:`find_near_duplicates` of dataset ``name`` by name: under model ``spec`` (a
    ResolvedModel or a spec string; its embeddings must be cached) and/or the perceptual hash. For training code: use
    ``.groups_of(ids)`` to keep groups whole on one side of a split, or
    :func:`near_duplicates_of` to drop the near-duplicates of a test set from training."""
    ds = ds_mod.load(name)
    space = None
    if spec is not None:
        from .neighbors import open_space

        space = open_space(name, spec)
    return find_near_duplicates(ds, space, threshold=threshold if space is not None else None, use_hash=use_hash,
                                progress=progress)


def near_duplicates_of(ds: ds_mod.Dataset | str, test_ids: Iterable[str], pool_ids: Iterable[str], *,
                       hash_max_distance: int = HASH_MAX_DISTANCE, space=None, threshold: float | None = None,
                       progress: Callable[[int, int], None] | None = None) -> set[str]:
    """The ids of ``pool_ids`` (e.g. training images) that are near-duplicates of an image
    of ``test_ids``: a matching perceptual hash (model-free, so a comparison of models
    leaves out the same images for each), or, with ``space`` and ``threshold``, also cosine
    >= threshold. Only direct pairs count, not chains through other images. Byte-identical
    copies share an id, so a pool id equal to a test id is returned too.

    Hashes are computed (and cached) for the images of both sets only.
    """
    ds = ds_mod.load(ds) if isinstance(ds, str) else ds
    test = list(dict.fromkeys(map(str, test_ids)))
    pool = list(dict.fromkeys(map(str, pool_ids)))
    out = set(test) & set(pool)
    if not test or not pool:
        return out
    codes, errors = hash_ids(ds, test + [p for p in pool if p not in set(test)], progress=progress)
    everything = test + [p for p in pool if p not in set(test)]
    pos = {c: k for k, c in enumerate(everything)}
    t_rows = np.array([pos[c] for c in test])
    p_rows = np.array([pos[c] for c in pool])
    ok = np.array([c not in errors for c in everything])
    a, b, _ = hash_pairs(codes[p_rows], hash_max_distance, other=codes[t_rows], valid=ok[p_rows],
                         other_valid=ok[t_rows])
    out |= {pool[i] for i in np.unique(a)}
    if space is not None and threshold is not None:
        threshold = check_threshold(threshold)
        nd_ids, first, id_of_row = _first_rows(space.dataset.images)
        where = {c: k for k, c in enumerate(nd_ids)}
        t_first = first[[where[c] for c in test]]
        rows, q, _ = range_pairs(space.index.index,
                                 ((np.arange(s, min(s + RANGE_CHUNK, len(t_first))),
                                   space.emb.take(t_first[s:s + RANGE_CHUNK]))
                                  for s in range(0, len(t_first), RANGE_CHUNK)), threshold)
        hit = {nd_ids[i] for i in np.unique(id_of_row[rows])}
        out |= hit & set(pool)
    return out


def split_exclusions(ds: ds_mod.Dataset | str, train_values: Sequence[str] = ("train",),
                     test_values: Sequence[str] = ("test",), **kwargs) -> set[str]:
    """The training images (``split`` in ``train_values``) that are near-duplicates of a test
    image (``split`` in ``test_values``), by :func:`near_duplicates_of`: what ``probe
    --split`` leaves out of training by default (``exclude_ids`` of :func:`lib.probe.run_probe`)."""
    ds = ds_mod.load(ds) if isinstance(ds, str) else ds
    split = ds.images["split"].astype("string")
    ids = ds.images["id"].astype(str)
    test = ids[split.isin(list(test_values)).fillna(False).to_numpy(bool)]
    train = ids[split.isin(list(train_values)).fillna(False).to_numpy(bool)]
    return near_duplicates_of(ds, test, train, **kwargs)


# =========================================================================== tables


def duplicates_table(ds: ds_mod.Dataset, nd: NearDuplicates, space=None, codes: np.ndarray | None = None) -> pd.DataFrame:
    """One row per dataset row in a group: :data:`DUPLICATE_COLUMNS`, sorted by group then
    representative first. ``similarity`` is the cosine to the representative under the model
    (NaN without one); ``hash_distance`` to it (-1 without hashes)."""
    ids, first, id_of_row = _first_rows(ds.images)
    g = nd.group[id_of_row]
    rows = np.flatnonzero(g >= 0)
    if not len(rows):
        return pd.DataFrame(columns=DUPLICATE_COLUMNS)
    member = id_of_row[rows]
    rep = nd.representative[member]
    if space is not None:
        sim = pair_similarity(space, member, rep, first)
        sim[member == rep] = 1.0
    else:
        sim = np.full(len(rows), np.nan)
    if codes is not None:
        hd = hash_distance(codes[member], codes[rep])
        if nd.hash_errors:
            bad = np.array([ids[m] in nd.hash_errors or ids[r] in nd.hash_errors for m, r in zip(member, rep,
                                                                                                  strict=True)])
            hd[bad] = -1
    else:
        hd = np.full(len(rows), -1, np.int64)
    images = ds.images
    out = pd.DataFrame({
        "id": images["id"].astype(str).to_numpy()[rows],
        "path": images["path"].astype(str).to_numpy()[rows],
        "group": g[rows],
        "representative": np.asarray(ids, dtype=object)[rep],
        "similarity": np.round(sim, 6),
        "split": images["split"].to_numpy()[rows] if "split" in images else None,
        "hash_distance": hd,
        "label": images["label"].to_numpy()[rows],
        "is_representative": rows == first[rep],
        "row": rows,
    })
    out["group_size"] = out.groupby("group")["id"].transform("size").astype(int)
    out = out.sort_values(["group", "is_representative", "row"], ascending=[True, False, True], kind="stable")
    return out[DUPLICATE_COLUMNS + ["row"]].reset_index(drop=True)


def split_leaks(ds: ds_mod.Dataset, nd: NearDuplicates) -> pd.DataFrame:
    """Near-duplicate pairs across different ``split`` values (:data:`LEAK_COLUMNS`), one row
    per (pair, split_a, split_b); byte-identical copies in two splits are pairs of an id with
    itself (``via`` exact). Rows without a split are not compared."""
    images = ds.images
    if "split" not in images or not images["split"].notna().any():
        return pd.DataFrame(columns=LEAK_COLUMNS)
    ids, first, id_of_row = _first_rows(images)
    split = images["split"].astype(object).where(images["split"].notna(), None).to_numpy()
    per_id = pd.DataFrame({"k": id_of_row, "split": split}).dropna().drop_duplicates()
    splits_of = per_id.groupby("k")["split"].apply(list).to_dict()
    paths = images["path"].astype(str).to_numpy()[first]
    recs = []
    for k, sp in splits_of.items():  # copies of one id in several splits
        sp = sorted(sp)
        for i in range(len(sp)):
            for j in range(i + 1, len(sp)):
                recs.append((ids[k], ids[k], sp[i], sp[j], 1.0, 0, "exact", ds.name, ds.name, paths[k], paths[k]))
    p = nd.pairs
    for a, b, s, h, via in zip(p["a"], p["b"], p["similarity"], p["hash_distance"], p["via"], strict=True):
        for sa in splits_of.get(a, []):
            for sb in splits_of.get(b, []):
                if sa != sb:
                    recs.append((ids[a], ids[b], sa, sb, float(s), int(h), via, ds.name, ds.name, paths[a], paths[b]))
    out = pd.DataFrame(recs, columns=LEAK_COLUMNS)
    return out.sort_values(["similarity", "id_a", "id_b"], ascending=[False, True, True], kind="stable",
                           na_position="last").reset_index(drop=True)


def dataset_leaks(ds: ds_mod.Dataset, other: ds_mod.Dataset, space=None, other_space=None, *,
                  threshold: float | None = DEFAULT_THRESHOLD, use_hash: bool = False,
                  hash_max_distance: int = HASH_MAX_DISTANCE,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Images of ``other`` that are copies or near-duplicates of images of ``ds``
    (:data:`LEAK_COLUMNS`; ``a`` in ``ds``, ``b`` in ``other``): the same content id, cosine
    >= threshold between the two spaces (same model), or matching perceptual hashes."""
    if threshold is not None:
        threshold = check_threshold(threshold)
    ids, first, _ = _first_rows(ds.images)
    oids, ofirst, _ = _first_rows(other.images)
    pos = {c: k for k, c in enumerate(ids)}
    parts = []
    same = [(pos[c], j) for j, c in enumerate(oids) if c in pos]
    if same:
        parts.append((np.array([s[0] for s in same]), np.array([s[1] for s in same]), EXACT))
    if space is not None and other_space is not None and threshold is not None:
        if space.emb.fingerprint != other_space.emb.fingerprint:
            raise QualityError(f"datasets {ds.name!r} and {other.name!r} are embedded with different models")
        idx = space.index.index
        _, _, id_of_row = _first_rows(ds.images)
        rows, q, _ = range_pairs(idx, ((np.arange(s, min(s + RANGE_CHUNK, len(ofirst))),
                                        other_space.emb.take(ofirst[s:s + RANGE_CHUNK]))
                                       for s in range(0, len(ofirst), RANGE_CHUNK)), threshold)
        parts.append((id_of_row[rows], q, MODEL))
    codes = ocodes = None
    if use_hash:
        codes, err = hash_ids(ds, ids, progress=progress)
        ocodes, oerr = hash_ids(other, oids, progress=progress)
        a, b, _ = hash_pairs(codes, hash_max_distance, other=ocodes, valid=np.array([c not in err for c in ids]),
                             other_valid=np.array([c not in oerr for c in oids]))
        parts.append((a, b, HASH))
    a, b, flags = _merge_pairs(parts, max(len(oids), 1))
    if not len(a):
        return pd.DataFrame(columns=LEAK_COLUMNS)
    sim = pair_similarity(space, a, b, first, other_space, ofirst) if space is not None and other_space is not None \
        else np.full(len(a), np.nan)
    sim[(flags & EXACT) > 0] = 1.0
    hd = hash_distance(codes[a], ocodes[b]) if codes is not None else np.full(len(a), -1, np.int64)

    def split_of(d: ds_mod.Dataset, rows: np.ndarray):
        if "split" not in d.images:
            return np.full(len(rows), None, dtype=object)
        s = d.images["split"].astype(object)
        return s.where(s.notna(), None).to_numpy()[rows]

    out = pd.DataFrame({
        "id_a": np.asarray(ids, dtype=object)[a], "id_b": np.asarray(oids, dtype=object)[b],
        "split_a": split_of(ds, first[a]), "split_b": split_of(other, ofirst[b]),
        "similarity": np.round(sim, 6), "hash_distance": hd, "via": _via_text(flags),
        "dataset_a": ds.name, "dataset_b": other.name,
        "path_a": ds.images["path"].astype(str).to_numpy()[first[a]],
        "path_b": other.images["path"].astype(str).to_numpy()[ofirst[b]],
    })
    return out.sort_values(["similarity", "id_a"], ascending=[False, True], kind="stable").reset_index(drop=True)


# =========================================================================== neighbours: label issues, outliers


def knn(space, k: int = KNN_K, *, chunk: int = RANGE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other distinct images of every distinct image.

    Returns
    -------
    (neighbours, similarity) : (n, k) int64 indices into the unique ids (-1 where fewer
        exist) and (n, k) float32 cosines, nearest first. Copies of an image (its own id)
        are skipped.
    """
    ids, first, id_of_row = _first_rows(space.dataset.images)
    n = len(ids)
    extra = 2 * int(np.bincount(id_of_row).max()) if n else 1  # the image's and its neighbours' copies
    want = min(k + extra, len(space.dataset.images))
    nb = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), np.nan, np.float32)
    for s in range(0, n, chunk):
        q = np.arange(s, min(s + chunk, n))
        sc, rows = space.index.search(space.emb.take(first[q]), want)
        who = np.where(rows >= 0, id_of_row[np.maximum(rows, 0)], -1)
        keep = (who >= 0) & (who != q[:, None])
        for j in range(1, who.shape[1]):  # a neighbour's byte-identical copies: count it once
            keep[:, j] &= ~(who[:, j:j + 1] == who[:, :j]).any(axis=1)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits first, in rank order
        ok = np.take_along_axis(keep, order, 1)
        w = np.take_along_axis(who, order, 1)
        v = np.take_along_axis(sc, order, 1)
        width = w.shape[1]
        nb[q, :width] = np.where(ok, w, -1)
        sims[q, :width] = np.where(ok, v, np.nan)
    return nb, sims


def outliers_table(ds: ds_mod.Dataset, nb: np.ndarray, sims: np.ndarray) -> pd.DataFrame:
    """Uniqueness of every distinct image (:data:`OUTLIER_COLUMNS`), most unique first:
    mean cosine distance (1 - cosine) to its k nearest other images; ``outlier`` above
    median + :data:`OUTLIER_MADS` x 1.4826 MAD (the robust z-score rule)."""
    ids, first, _ = _first_rows(ds.images)
    uniq = np.nanmean(1.0 - sims.astype(np.float64), axis=1) if sims.shape[1] else np.full(len(ids), np.nan)
    med = np.nanmedian(uniq) if len(uniq) else np.nan
    mad = 1.4826 * np.nanmedian(np.abs(uniq - med)) if len(uniq) else np.nan
    cut = med + OUTLIER_MADS * mad
    images = ds.images
    nearest = nb[:, 0] if nb.shape[1] else np.full(len(ids), -1)
    out = pd.DataFrame({
        "id": ids, "path": images["path"].astype(str).to_numpy()[first],
        "label": images["label"].to_numpy()[first],
        "split": images["split"].to_numpy()[first] if "split" in images else None,
        "uniqueness": np.round(uniq, 6),
        "nearest_id": [ids[j] if j >= 0 else None for j in nearest],
        "nearest_similarity": np.round(sims[:, 0].astype(np.float64), 6) if sims.shape[1] else np.nan,
        "outlier": uniq > cut if np.isfinite(cut) else np.zeros(len(ids), bool),
        "row": first,
    })
    return out.sort_values("uniqueness", ascending=False, kind="stable").reset_index(drop=True)


def knn_disagreement(labels: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of each image's labelled neighbours with another label, and their majority label.

    labels : (n,) object, None where unlabelled; nb : (n, k) from :func:`knn`.
    """
    code, classes = pd.factorize(pd.Series(np.asarray(labels, dtype=object)), sort=True)  # -1: unlabelled
    ncode = np.where(nb >= 0, code[np.maximum(nb, 0)], -1)
    has = ncode >= 0
    n_has = has.sum(1)
    diff = has & (ncode != code[:, None])
    share = np.where(n_has > 0, diff.sum(1) / np.maximum(n_has, 1), np.nan)
    if not len(classes):
        return share, np.full(len(code), None, dtype=object)
    votes = np.stack([(ncode == c).sum(1) for c in range(len(classes))], axis=1)
    majority = np.where(n_has > 0, np.asarray(classes, dtype=object)[votes.argmax(1)], None)
    return share, majority


def label_issues_table(ds: ds_mod.Dataset, space, nb: np.ndarray, *, folds: int = 5, seed: int = 0,
                       positive=None) -> pd.DataFrame:
    """Labelled images ranked by how likely their label is wrong (:data:`LABEL_ISSUE_COLUMNS`), best first.

    ``label_quality`` is cleanlab's self-confidence (the out-of-fold probability of the
    given label; low: suspicious); ``flagged`` is ``cleanlab.filter.find_label_issues``'s
    verdict (confident learning, prune by noise rate); ``knn_disagreement`` the share of
    the k nearest labelled images with another label. ``score = ((1 - label_quality) +
    knn_disagreement) / 2``. ``suggested`` is the probe's out-of-fold prediction;
    ``missed_sensitive`` marks images labelled other than the positive class (the one the
    label policy calls sensitive) that look positive: the safe view would show them raw.

    Raises :class:`QualityError` when the dataset has no labels or a single class.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from .probe import ProbeError, linear_probe, probe_frame

    if not ds.has_labels:
        raise QualityError(f"dataset {ds.name!r} has no labels: no label issues (duplicates and outliers still apply)")
    ids, first, _ = _first_rows(ds.images)
    rows, _ = probe_frame(ds.images, "image")  # one row per labelled id
    y = rows["label"].astype(str).to_numpy()
    classes = sorted(set(y))
    if len(classes) < 2:
        raise QualityError(f"dataset {ds.name!r} has a single label ({classes[0]!r}): no label issues")
    counts = pd.Series(y).value_counts()
    k_folds = int(min(folds, counts.min()))
    if k_folds < 2:
        raise QualityError(f"label {counts.idxmin()!r} has a single image in {ds.name!r}: out-of-fold probabilities "
                           "need at least two per label")
    if positive is None and len(classes) == 2:
        from .probe import default_positive
        from .sensitivity import load_policy

        positive = default_positive(classes, load_policy(ds.name))
    X = space.emb.take(rows["row"].to_numpy())
    try:
        _, pred = linear_probe(X, y, folds=k_folds, seed=seed, positive=positive)
    except ProbeError as e:
        raise QualityError(f"label issues of {ds.name!r}: {e}") from None
    probs = pred[[f"p:{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
    yi = np.searchsorted(classes, y)
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork from a threaded
    # process (the app's script threads, faiss/torch pools) can inherit a held lock and hang.
    flagged = find_label_issues(labels=yi, pred_probs=probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(labels=yi, pred_probs=probs, method="self_confidence")
    pos = {c: k for k, c in enumerate(ids)}
    u = np.array([pos[c] for c in rows["id"].astype(str)])
    all_labels = np.full(len(ids), None, dtype=object)
    lab = ds.images["label"].astype(object).to_numpy()[first]
    all_labels[:] = [None if v is None or v != v else str(v) for v in lab]
    share, majority = knn_disagreement(all_labels, nb)
    dis = share[u]
    score = ((1.0 - quality) + np.nan_to_num(dis, nan=0.0)) / 2.0
    suggested = np.asarray(classes, dtype=object)[probs.argmax(1)]
    missed = (y != str(positive)) & (suggested == str(positive)) if positive is not None else np.zeros(len(y), bool)
    out = pd.DataFrame({
        "id": rows["id"].astype(str).to_numpy(), "path": rows["path"].astype(str).to_numpy(), "label": y,
        "score": np.round(score, 6), "suggested": suggested, "flagged": flagged.astype(bool),
        "label_quality": np.round(quality, 6), "knn_disagreement": np.round(dis, 6), "knn_majority": majority[u],
        "missed_sensitive": missed, "row": rows["row"].to_numpy(),
    })
    return out.sort_values(["score", "row"], ascending=[False, True], kind="stable").reset_index(drop=True)


# =========================================================================== the report


@dataclass
class QualityReport:
    """Everything :func:`run_quality` found; :meth:`save` writes the four CSVs."""

    dataset: str
    spec: str
    near: NearDuplicates
    duplicates: pd.DataFrame
    leaks: pd.DataFrame
    label_issues: pd.DataFrame
    outliers: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    against: str | None = None
    use_hash: bool = False
    n_images: int = 0

    def leak_counts(self) -> pd.DataFrame:
        """Leaked pairs per (dataset_a, split_a, dataset_b, split_b)."""
        if self.leaks.empty:
            return pd.DataFrame(columns=["dataset_a", "split_a", "dataset_b", "split_b", "pairs"])
        lk = self.leaks.fillna({"split_a": "(none)", "split_b": "(none)"})
        return (lk.groupby(["dataset_a", "split_a", "dataset_b", "split_b"]).size().rename("pairs").reset_index()
                .sort_values("pairs", ascending=False, kind="stable").reset_index(drop=True))

    def summary(self) -> str:
        d = self.duplicates
        n_groups = int(d["group"].nunique()) if len(d) else 0
        how = []
        if self.near.threshold is not None:
            how.append(f"cosine >= {self.near.threshold:g} under {self.spec}")
        if self.near.hash_max_distance is not None:
            how.append(f"perceptual hash within {self.near.hash_max_distance} bits")
        how.append("byte-identical copies")
        lines = [f"{self.dataset} x {self.spec}: {n_groups} near-duplicate groups holding {len(d)} images "
                 f"({', '.join(how)})"]
        if n_groups:
            sizes = d.groupby("group").size()
            lines.append(f"  largest group: {int(sizes.max())} images; {int((sizes == 2).sum())} pairs, "
                         f"{int((sizes > 2).sum())} groups of 3 or more")
            total = self.n_images
            if total and sizes.max() > max(10, 0.2 * total):
                lines.append(f"  warning: one group holds {int(sizes.max())} of {total} images: at this threshold "
                             f"{self.spec} does not tell near-copies apart; raise --threshold, or use --hash-only")
        if self.near.hash_errors:
            lines.append(f"  {len(self.near.hash_errors)} image(s) could not be hashed")
        counts = self.leak_counts()
        lines.append(f"leaked pairs: {len(self.leaks)}" + ("" if len(self.leaks) else " (no near-duplicates across "
                                                                              "splits" + (" or datasets)" if self.against
                                                                                          else ")")))
        for rec in counts.itertuples(index=False):
            lines.append(f"  {rec.dataset_a}:{rec.split_a} <-> {rec.dataset_b}:{rec.split_b}: {rec.pairs}")
        if len(self.label_issues):
            li = self.label_issues
            lines.append(f"label issues: {int(li['flagged'].sum())} of {len(li)} labelled images flagged by cleanlab; "
                         "top 10:")
            for rec in li.head(10).itertuples(index=False):
                lines.append(f"  {rec.score:.3f}  {rec.id[:12]}  {rec.path}  label={rec.label} -> {rec.suggested}"
                             f"  (kNN disagreement {rec.knn_disagreement:.2f})")
        n_out = int(self.outliers["outlier"].sum()) if len(self.outliers) else 0
        lines.append(f"outliers: {n_out} image(s) unlike any other (uniqueness above median + {OUTLIER_MADS:g} MAD)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> list[Path]:
        """``duplicates.csv``, ``leaks.csv``, ``label_issues.csv``, ``outliers.csv`` under ``folder``."""
        from .files import write_table

        folder = Path(folder)
        out = []
        for name, df, cols in (("duplicates", self.duplicates, DUPLICATE_COLUMNS), ("leaks", self.leaks, LEAK_COLUMNS),
                               ("label_issues", self.label_issues, LABEL_ISSUE_COLUMNS),
                               ("outliers", self.outliers, OUTLIER_COLUMNS)):
            table = df.reindex(columns=cols) if len(df) else pd.DataFrame(columns=cols)
            out.append(write_table(folder / f"{name}.csv", table))
        return out


def report_folder(name: str, spec: str, out: str | Path | None = None) -> Path:
    """Where the quality report of dataset ``name`` under model ``spec`` and its manifests go:
    ``out`` when given, else ``<home>/results/<name>/quality-<model>/`` (the CLI's and the page's)."""
    from .files import results_dir, slug

    return Path(out) if out else results_dir(name) / f"quality-{slug(spec)}"


def run_quality(name: str, spec, *, threshold: float = DEFAULT_THRESHOLD, use_hash: bool = False,
                hash_only: bool = False, hash_max_distance: int = HASH_MAX_DISTANCE, against: str | None = None,
                k: int = KNN_K, folds: int = 5, seed: int = 0,
                workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> QualityReport:
    """The data-quality report of dataset ``name`` under model ``spec`` (a
    :class:`lib.models.ResolvedModel` or a spec string; embeddings cached).

    ``hash_only`` takes near-duplicates from the perceptual hash alone (the model still
    gives similarities, label issues and outliers); ``against`` also finds leaks between
    ``name`` and dataset ``against`` (embedded with the same model).
    """
    from .models import resolve_model
    from .neighbors import open_space

    spec = resolve_model(spec)
    threshold = check_threshold(threshold)
    hash_max_distance = check_hash_distance(hash_max_distance)
    if k < 1:
        raise QualityError(f"--k {k}: the number of neighbours must be at least 1")
    use_hash = use_hash or hash_only
    ds = ds_mod.load(name)
    other = ds_mod.load(against) if against else None
    if other is not None and other.name == ds.name:
        raise QualityError(f"--against {against!r} is the dataset itself: name another dataset")
    space = open_space(name, spec, index_kind="auto")
    notes = []
    nd = find_near_duplicates(ds, space, threshold=None if hash_only else threshold, use_hash=use_hash,
                              hash_max_distance=hash_max_distance, workers=workers, progress=progress)
    dups = duplicates_table(ds, nd, space, nd.codes)
    leaks = split_leaks(ds, nd)
    if other is not None:
        ospace = open_space(against, spec)
        cross = dataset_leaks(ds, other, space, ospace, threshold=None if hash_only else threshold,
                              use_hash=use_hash, hash_max_distance=hash_max_distance, progress=progress)
        leaks = pd.concat([leaks, cross], ignore_index=True) if len(leaks) else cross
    nb, sims = knn(space, k)
    outl = outliers_table(ds, nb, sims)
    try:
        issues = label_issues_table(ds, space, nb, folds=folds, seed=seed)
    except QualityError as e:
        notes.append(str(e))
        issues = pd.DataFrame(columns=LABEL_ISSUE_COLUMNS)
    return QualityReport(name, spec.spec, nd, dups, leaks, issues, outl, notes, against, use_hash, len(ds.images))


# =========================================================================== manifests


def _manifest_base(ds: ds_mod.Dataset, rows: np.ndarray, absolute: bool) -> pd.DataFrame:
    images = ds.images.iloc[rows]
    keep = ["path", "label", "split", "caption"] + [c for c in images.columns if c not in ds_mod.RESERVED_COLUMNS]
    out = images[[c for c in keep if c in images]].reset_index(drop=True).copy()
    if absolute:
        out["path"] = [str(ds.abspath(p)) for p in out["path"].astype(str)]
    return out


def dedup_manifest(ds: ds_mod.Dataset, nd: NearDuplicates, *, absolute: bool = False) -> pd.DataFrame:
    """"Keep one per group": a manifest (``path, label, split, caption`` and the metadata
    columns) with one row per distinct image outside the groups and the representative of
    each group, plus ``group`` (-1 outside groups) and ``group_size`` (images it stands for)."""
    ids, first, id_of_row = _first_rows(ds.images)
    n = len(ids)
    keep = (nd.group < 0) | (nd.representative == np.arange(n))
    out = _manifest_base(ds, first[keep], absolute)
    out["group"] = nd.group[keep]
    rows_per_group = pd.Series(nd.group[id_of_row]).value_counts()
    out["group_size"] = [int(rows_per_group.get(g, 1)) if g >= 0 else int(np.sum(id_of_row == i))
                         for g, i in zip(nd.group[keep], np.flatnonzero(keep), strict=True)]
    return out


#: Which split a group moves to when its members are split evenly: keep test sets clean.
SPLIT_PREFERENCE = ("train", "val", "validation", "test")


def no_leak_manifest(ds: ds_mod.Dataset, nd: NearDuplicates, *, test_frac: float = 0.2, seed: int = 0,
                     absolute: bool = False) -> pd.DataFrame:
    """A manifest of every dataset row whose splits keep each near-duplicate group whole.

    With ``split`` values: a group moves, whole, to the split most of its rows are in (ties:
    the earliest of :data:`SPLIT_PREFERENCE`, so an ambiguous group leaves the test set);
    rows outside groups keep theirs. Without: a new ``train``/``test`` split by group
    (scikit-learn's ``GroupShuffleSplit``, ``test_frac`` of the groups, seeded). Adds
    ``split_before`` and ``group`` (-1 outside groups).
    """
    from sklearn.model_selection import GroupShuffleSplit

    ids, first, id_of_row = _first_rows(ds.images)
    rows = np.arange(len(ds.images))
    out = _manifest_base(ds, rows, absolute)
    g = nd.group[id_of_row]
    before = ds.images["split"].astype(object).where(ds.images["split"].notna(), None).to_numpy() \
        if "split" in ds.images else np.full(len(rows), None, dtype=object)
    split = before.copy()
    if any(v is not None for v in before):
        rank = {s: k for k, s in enumerate(SPLIT_PREFERENCE)}
        for grp in np.unique(g[g >= 0]):
            members = np.flatnonzero(g == grp)
            vals = [v for v in before[members] if v is not None]
            if not vals:
                continue
            counts = pd.Series(vals).value_counts()
            top = counts[counts == counts.max()].index.tolist()
            split[members] = sorted(top, key=lambda s: (rank.get(str(s), len(rank)), str(s)))[0]
    else:
        if not 0 < test_frac < 1:
            raise QualityError(f"test_frac {test_frac} must lie in (0, 1)")
        groups = np.where(g >= 0, g, -1 - id_of_row)  # each ungrouped id is a group of its own
        if len(np.unique(groups)) < 2:
            raise QualityError(f"dataset {ds.name!r} has fewer than two groups: nothing to split")
        tr, te = next(GroupShuffleSplit(1, test_size=test_frac, random_state=seed).split(rows, groups=groups))
        split = np.empty(len(rows), dtype=object)
        split[tr], split[te] = "train", "test"
    out["split"] = split
    out["split_before"] = before
    out["group"] = g
    return out


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest (CSV, atomically, :func:`lib.files.write_table`) that ``ingest`` reads back."""
    from .files import write_table

    path = Path(path)
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise QualityError(f"cannot write a manifest to {path}: use a .csv or .parquet file name")
    return write_table(path, manifest)


# =========================================================================== review queue (Quality page -> Annotate)


REVIEW_COLUMNS = ["id", "reason", "suggested", "added_at"]


def review_list_path(name: str) -> Path:
    from .files import results_dir

    return results_dir(name) / "quality-review.csv"


def review_list(name: str) -> pd.DataFrame:
    """Images sent from the Quality page to the Annotate page's review queue (:data:`REVIEW_COLUMNS`)."""
    p = review_list_path(name)
    if not p.exists():
        return pd.DataFrame(columns=REVIEW_COLUMNS)
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    return df.reindex(columns=REVIEW_COLUMNS)


def send_to_review(name: str, ids: Iterable[str], reason: str, suggested: str | None = None) -> int:
    """Append images to the review list (each id once; a new reason replaces the old);
    returns how many it now holds."""
    from datetime import UTC, datetime

    from .files import write_table

    cur = review_list(name)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    new = pd.DataFrame({"id": [str(i) for i in ids], "reason": reason, "suggested": suggested or "", "added_at": now})
    both = pd.concat([cur, new], ignore_index=True).drop_duplicates("id", keep="last").reset_index(drop=True)
    write_table(review_list_path(name), both)
    return len(both)


def review_queue(ds: ds_mod.Dataset) -> pd.DataFrame:
    """The review list as an Annotate queue: ``id, row, task`` (``quality``) and ``reason``,
    in the order sent; ids no longer in the dataset are left out."""
    lst = review_list(ds.name)
    ids, first, _ = _first_rows(ds.images)
    pos = {c: k for k, c in enumerate(ids)}
    lst = lst[lst["id"].isin(pos)]
    return pd.DataFrame({"id": lst["id"].to_numpy(), "row": [int(first[pos[c]]) for c in lst["id"]],
                         "task": "quality", "reason": lst["reason"].to_numpy(),
                         "suggested": lst["suggested"].to_numpy()})


# =========================================================================== what the Quality page draws


def group_page(duplicates: pd.DataFrame, page: int = 1, per_page: int = 10,
               max_members: int | None = None) -> tuple[list[tuple[int, pd.DataFrame]], int]:
    """One page of near-duplicate groups: ([(group, its rows of :func:`duplicates_table`,
    representative first, at most ``max_members`` of them)], number of pages)."""
    if duplicates.empty:
        return [], 1
    groups = sorted(duplicates["group"].unique())
    n_pages = max(1, -(-len(groups) // per_page))
    page = min(max(int(page), 1), n_pages)
    chosen = groups[(page - 1) * per_page:page * per_page]
    by = dict(tuple(duplicates[duplicates["group"].isin(chosen)].groupby("group", sort=True)))
    return [(int(g), by[g] if max_members is None else by[g].head(max_members)) for g in chosen], n_pages


def leak_rows(ds: ds_mod.Dataset, leaks: pd.DataFrame) -> pd.DataFrame:
    """Leak pairs within dataset ``ds`` with the dataset rows of both sides (``row_a``, ``row_b``)."""
    if leaks.empty:
        return leaks.assign(row_a=pd.Series(dtype=int), row_b=pd.Series(dtype=int))
    lk = leaks[(leaks["dataset_a"] == ds.name) & (leaks["dataset_b"] == ds.name)].copy()
    images = ds.images
    key = pd.Series(np.arange(len(images)), index=pd.MultiIndex.from_arrays(
        [images["id"].astype(str), images["split"].astype(object).where(images["split"].notna(), None)]))
    key = key[~key.index.duplicated()]
    lk["row_a"] = [int(key.get((a, s), -1)) for a, s in zip(lk["id_a"], lk["split_a"], strict=True)]
    lk["row_b"] = [int(key.get((b, s), -1)) for b, s in zip(lk["id_b"], lk["split_b"], strict=True)]
    return lk[(lk["row_a"] >= 0) & (lk["row_b"] >= 0)].reset_index(drop=True)


def annotation_label_for(name: str, labels: Sequence[str], cls) -> str | None:
    """The annotation label (of the store's label set ``labels``) that stands for dataset class
    ``cls`` (:func:`lib.expansion.class_mapping`: Blur for the sensitive class, Ok for the safe
    one), or the class itself when it is a label of the set; None when no label says it."""
    from .expansion import class_mapping

    for label, c in class_mapping(name).items():
        if c is not None and str(c) == str(cls) and label in labels:
            return label
    return str(cls) if str(cls) in labels else None


def group_caption(rec) -> str:
    """Caption of a group member (a row of :func:`duplicates_table`)."""
    if rec["is_representative"]:
        text = "representative"
    else:
        text = f"cos {rec['similarity']:.3f}" if pd.notna(rec["similarity"]) else "hash match"
        if rec["hash_distance"] >= 0:
            text += f" · hash {int(rec['hash_distance'])}"
    return text + (f" · {rec['split']}" if pd.notna(rec["split"]) else "")


def issue_caption(rec) -> str:
    """Caption of a label issue (a row of :func:`label_issues_table`)."""
    return (f"{rec['label']} → {rec['suggested']} · score {rec['score']:.2f}" + (" · flagged" if rec["flagged"] else "")
            + (" · looks sensitive" if rec["missed_sensitive"] else ""))


def outlier_caption(rec) -> str:
    return f"uniqueness {rec['uniqueness']:.3f}" + (" · outlier" if rec["outlier"] else "")
