"""The content-addressed embedding cache and the ``embed`` job that fills it.

Layout, under ``<home>/cache/emb/<fingerprint[:24]>/``::

    model.json                      what the fingerprint stands for (spec, weights hash, preprocessing)
    shards/<name>.vec.npy           float16 (n, dim) vectors
    shards/<name>.ids.npy           the n content ids (sha256 hex, |S64)
    shards/<name>.json              commit record: n, dim, dtype, fingerprint, sha256 of both files

A shard exists only once its commit record does; every file is written to a temp name
and renamed, so a killed run never leaves a half-written shard that is read. A shard whose
record names another model's fingerprint, or whose files are missing or do not match the
record's shape, is never read (and ``verify`` moves it aside, with checksum failures). Vectors
are keyed by content id, not by dataset, so an image in two datasets is embedded once
per model. Shard names derive from their ids, so a resumed run writes exactly the
shards an uninterrupted one would have.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .errors import ImageError, UnsafePath, WorkbenchError
from .files import sha256_file, write_npy, write_text

DTYPE = np.float16
ID_DTYPE = "S64"


def id_bytes(ids) -> np.ndarray:
    """Content ids as one (n,) |S64 array (the form shards store and ``_find`` compares).

    A pandas column backed by Arrow whose ids are all 64 bytes (sha256 hex, as ingest
    writes them) is copied straight from its character buffers: ~40 ms at 1M ids, where
    converting a list of 1M str took 0.5-1 s. Anything else is converted element-wise.
    """
    chunks = getattr(getattr(getattr(ids, "array", ids), "_pa_array", None), "chunks", None)
    if chunks is not None:
        import pyarrow as pa

        out = np.empty(sum(len(c) for c in chunks), ID_DTYPE)
        at = 0
        for c in chunks:
            width = {pa.string(): np.int32, pa.large_string(): np.int64}.get(c.type)
            if width is None or c.null_count:
                break
            bufs = c.buffers()
            offsets = np.frombuffer(bufs[1], width)[c.offset: c.offset + len(c) + 1]
            if len(c) and not (np.diff(offsets) == 64).all():
                break
            if len(c):
                out[at: at + len(c)] = np.frombuffer(bufs[2], np.uint8)[offsets[0]: offsets[-1]].view(ID_DTYPE)
            at += len(c)
        else:
            return out
    return np.asarray(list(ids), dtype=ID_DTYPE)


# ------------------------------------------------------------------------ the store


class MissingVectors(WorkbenchError):
    """Some of the asked images have no vector in the store (:meth:`EmbeddingStore.open`)."""


class EmbeddingStore:
    """All vectors of one model fingerprint, across every dataset."""

    def __init__(self, fingerprint: str, root: Path | None = None):
        self.fingerprint = fingerprint
        self.dir = (root or config.cache_dir() / "emb") / fingerprint[:24]
        self.shard_dir = self.dir / "shards"
        self._raw_ids: np.ndarray | None = None  # every shard's ids, in shard order (repeats possible)
        self._raw_locs: np.ndarray | None = None
        self._ids: np.ndarray | None = None  # each id once (the first), with its lookup index: built on need
        self._locs: np.ndarray | None = None
        self._index = None
        self._shards: list[str] | None = None
        self._mmaps: list[np.ndarray] = []

    def _forget(self) -> None:
        self._raw_ids = self._raw_locs = self._ids = self._locs = self._index = self._shards = None

    # -- writing

    def write_info(self, info: dict) -> None:
        config.ensure(self.dir)
        path = self.dir / "model.json"
        if not path.exists():
            write_text(path, json.dumps({"fingerprint": self.fingerprint, **info}, indent=2, default=str))

    def write_shard(self, ids: Sequence[str], vectors: np.ndarray) -> str:
        """Commit one shard: vectors (n, dim) float, ids (n,) content ids. Returns its name."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        config.ensure(self.shard_dir)
        name = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]
        vec_path, ids_path = self.shard_dir / f"{name}.vec.npy", self.shard_dir / f"{name}.ids.npy"
        write_npy(vec_path, np.asarray(vectors, dtype=DTYPE))
        write_npy(ids_path, np.asarray(ids, dtype=ID_DTYPE))
        record = {"n": len(ids), "dim": int(vectors.shape[1]), "dtype": np.dtype(DTYPE).name,
                  "fingerprint": self.fingerprint,
                  "vec_sha256": sha256_file(vec_path), "ids_sha256": sha256_file(ids_path),
                  "created": time.time()}
        write_text(self.shard_dir / f"{name}.json", json.dumps(record))  # last: the commit record
        self._forget()
        return name

    # -- reading

    def shard_names(self) -> list[str]:
        if not self.shard_dir.exists():
            return []
        return sorted(p.name[:-5] for p in self.shard_dir.glob("*.json"))

    def verify(self) -> list[str]:
        """Check every shard's checksums; move corrupt ones aside. Returns their names."""
        bad = []
        for name in self.shard_names():
            rec_path = self.shard_dir / f"{name}.json"
            try:
                rec = json.loads(rec_path.read_text())
                ok = (self._own(rec)
                      and sha256_file(self.shard_dir / f"{name}.vec.npy") == rec["vec_sha256"]
                      and sha256_file(self.shard_dir / f"{name}.ids.npy") == rec["ids_sha256"]
                      and self._open_shard(name) is not None)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                ok = False
            if not ok:
                bad.append(name)
                quarantine = config.ensure(self.dir / "corrupt")
                for suffix in (".json", ".vec.npy", ".ids.npy"):
                    src = self.shard_dir / f"{name}{suffix}"
                    if src.exists():
                        shutil.move(src, quarantine / f"{name}{suffix}")
        if bad:
            self._forget()
        return bad

    def _own(self, rec) -> bool:
        """Whether a commit record belongs to this model (records written before the
        fingerprint was recorded are taken as this store's)."""
        return isinstance(rec, dict) and rec.get("fingerprint", self.fingerprint) == self.fingerprint

    def _open_shard(self, name: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(ids (n,), memory-mapped vectors (n, dim), commit time) of a committed shard, or None when
        it cannot be used: record unreadable or another model's, files missing or not of
        the record's shape. Cheap (no checksums): :meth:`verify` is the thorough check."""
        try:
            rec = json.loads((self.shard_dir / f"{name}.json").read_text())
            if not self._own(rec):
                return None
            ids = np.load(self.shard_dir / f"{name}.ids.npy")
            vec = np.load(self.shard_dir / f"{name}.vec.npy", mmap_mode="r")
        except (OSError, ValueError, EOFError, TypeError, AttributeError):
            return None
        if ids.ndim != 1 or vec.ndim != 2 or len(ids) != len(vec) or len(ids) != rec.get("n") \
                or vec.shape[1] != rec.get("dim"):
            return None
        created = rec.get("created")
        return ids, vec, float(created) if isinstance(created, (int, float)) else 0.0

    def _load_catalog(self) -> None:
        if self._raw_ids is not None:
            return
        names, ids, locs, mmaps = [], [], [], []
        opened_all = [(name, self._open_shard(name)) for name in self.shard_names()]
        # in the order they were written: a dataset embedded in one run then reads back in its own
        # order, and needs no lookup of its ids (:meth:`_find`)
        opened_all.sort(key=lambda no: (no[1][2], no[0]) if no[1] is not None else (0.0, no[0]))
        for name, opened in opened_all:
            if opened is None or (mmaps and opened[1].shape[1] != mmaps[0].shape[1]):
                continue  # its images count as missing: the next embed recomputes them
            si = len(names)
            names.append(name)
            ids.append(opened[0])
            mmaps.append(opened[1])
            locs.append(np.stack([np.full(len(opened[0]), si, np.int32),
                                  np.arange(len(opened[0]), dtype=np.int32)], 1))
        self._shards, self._mmaps = names, mmaps
        self._raw_ids = np.concatenate(ids).astype(ID_DTYPE, copy=False) if ids else np.zeros(0, ID_DTYPE)
        self._raw_locs = np.concatenate(locs) if locs else np.zeros((0, 2), np.int32)

    def _build_index(self) -> None:
        """Each id once, and a hash index over them (1M ids: 1-2 s, so only when an id must be
        looked up; a dataset embedded in its own order needs none: :meth:`_find`)."""
        if self._index is not None:
            return
        import pandas as pd

        self._load_catalog()
        all_ids, all_locs = self._raw_ids, self._raw_locs
        index = pd.Index(all_ids)
        if not index.is_unique:  # shards written side by side (two runs, workers) may share ids: the first is kept
            keep = ~index.duplicated(keep="first")
            all_ids, all_locs, index = all_ids[keep], all_locs[keep], index[keep]
        self._ids, self._locs, self._index = all_ids, all_locs, index

    def _find(self, content_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(positions (n,) into ``locs``, -1 for an id without a vector; ``locs`` (m, 2))."""
        self._load_catalog()
        want = np.ascontiguousarray(content_ids, dtype=ID_DTYPE)  # viewed as bytes below
        raw = self._raw_ids
        if len(want) and want.shape == raw.shape and np.array_equal(want.view(np.uint8), raw.view(np.uint8)):
            return np.arange(len(want)), self._raw_locs  # the store holds exactly these ids, in this order
        self._build_index()
        pos = self._index.get_indexer(want) if len(self._ids) else np.full(len(want), -1)
        return pos, self._locs

    def ids(self) -> np.ndarray:
        """Every cached content id, once, (n,) |S64."""
        self._build_index()
        return self._ids

    def __len__(self) -> int:
        return len(self.ids())

    def present(self, raw_ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of ``raw_ids`` ((n,) |S64, as :func:`id_bytes` gives them) have a
        vector. Ids in the store's own order are matched without building its index."""
        pos, _ = self._find(raw_ids)
        return np.asarray(pos) >= 0

    def missing(self, content_ids: Sequence[str]) -> list[str]:
        """The ids (unique, in order) that have no vector yet."""
        uniq = list(dict.fromkeys(content_ids))
        pos, _ = self._find(uniq)
        return [u for u, p in zip(uniq, pos, strict=True) if p < 0]

    def open(self, content_ids: Sequence[str], raw_ids: np.ndarray | None = None) -> DatasetEmbeddings:
        """Memory-mapped view of the vectors of ``content_ids`` (in that order); ``raw_ids``:
        the same ids as :func:`id_bytes` gives them, when the caller has them."""
        raw = id_bytes(content_ids) if raw_ids is None else raw_ids
        pos, locs = self._find(raw)
        if (pos < 0).any():
            raise MissingVectors(f"{int((pos < 0).sum())} of {len(pos)} images have no vector in cache "
                                 f"{self.dir}; run `python -m lib embed` first")
        return DatasetEmbeddings(list(content_ids), locs[pos], list(self._mmaps), self.fingerprint, self.dir,
                                 list(self._shards), raw_ids=raw)

    def info(self) -> dict:
        p = self.dir / "model.json"
        return json.loads(p.read_text()) if p.exists() else {}


@dataclass
class DatasetEmbeddings:
    """Vectors of one dataset's rows, read lazily from memory-mapped shards.

    ``locs`` (n, 2) holds (shard, row) per dataset row; nothing is copied until asked.
    """

    ids: list[str]
    locs: np.ndarray
    shards: list[np.ndarray]
    fingerprint: str
    store_dir: Path
    shard_names: list[str] | None = None  # the store's names of ``shards`` (a committed shard never changes)
    raw_ids: np.ndarray | None = field(default=None, repr=False)  # ``ids`` as |S64 (n,), when the opener had them

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.shards[0].shape[1]) if self.shards else 0

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectors of dataset rows -> (len(rows), dim) float32, unit norm."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        locs = self.locs[rows]
        for si in np.unique(locs[:, 0]):
            sel = locs[:, 0] == si
            out[sel] = self.shards[si][locs[sel, 1]]
        # fp16 storage moves norms by ~1e-3; renormalise so inner product is cosine.
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def iter_chunks(self, size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(start_row, (m, dim) float32) chunks over all rows, for index building."""
        for start in range(0, len(self), size):
            yield start, self.take(np.arange(start, min(start + size, len(self))))

    def matrix(self) -> np.ndarray:
        """All vectors as one (n, dim) float32 array (a copy: for small and mid-size sets)."""
        return self.take(np.arange(len(self)))

    @functools.cached_property
    def key(self) -> str:
        """Changes whenever the rows or the shards behind them change (computed once: 1M ids take
        ~0.5 s; the rows and shards of one instance never change)."""
        h = hashlib.sha256(self.fingerprint.encode())
        h.update((np.asarray(self.ids, dtype=ID_DTYPE) if self.raw_ids is None else self.raw_ids).tobytes())
        # the shards these rows read, by name, not their positions among every shard of the
        # store: embedding another dataset with the same model adds shards, and must not make
        # this one's index and maps stale
        names = self.shard_names
        used = np.unique(self.locs[:, 0]) if len(self.locs) else np.zeros(0, np.int64)
        if names:  # ranked by name, not by where the store lists them (it lists them in write order)
            used = np.asarray(sorted(used, key=lambda i: names[i]), dtype=np.int64)
        lut = np.zeros(int(used.max()) + 1 if len(used) else 0, np.int64)
        lut[used] = np.arange(len(used))
        rank = lut[self.locs[:, 0]] if len(self.locs) else used
        h.update(np.ascontiguousarray(np.stack([rank, self.locs[:, 1].astype(np.int64)], 1)).tobytes())
        h.update(str([(names[i] if names else "", self.shards[i].shape) for i in used]).encode())
        return h.hexdigest()[:20]


# ------------------------------------------------------------------------ loading


_PREPROCESS: Callable | None = None
#: The decode a forked worker inherits (``path -> (PIL image, extra)``), None: open_image.
_DECODE: Callable | None = None
#: (2, batch_size, *sample shape): two batches in flight, in memory shared with the forked
#: decode workers, so pixels are not pickled through a pipe (1.5 ms of a 64-image batch's
#: 100 ms of transfer per image, on the cores the model needs).
_SLOTS: np.ndarray | None = None
_FORK_LOCK = threading.Lock()


#: Niceness added to decode workers: the model's threads preempt them, so a worker never
#: stalls a parallel matmul half-way (every thread waits for the slowest); workers use the
#: cycles the model leaves. 0 (the default) leaves them at the model's priority: on the
#: shared 2-core bench machine the A/B was lost in the noise (README, "fast path").
WORKER_NICE = 0


def _worker_init() -> None:
    import sys

    if "torch" in sys.modules:  # one thread per worker: the model owns the cores
        sys.modules["torch"].set_num_threads(1)
    if WORKER_NICE:
        import contextlib

        with contextlib.suppress(OSError):  # not allowed here: run at the same priority
            os.nice(WORKER_NICE)


def reduced_decode(side: int | None) -> Callable | None:
    """A prefetch ``decode`` (path -> (image, None)) that reduces JPEGs on decode to no less
    than ``side`` x ``side`` (:func:`lib.images.open_reduced`, EXIF-oriented); None (plain
    :func:`lib.images.open_image`) without a side."""
    if not side:
        return None
    from .images import open_reduced

    def decode(path: str):
        return open_reduced(path, side, oriented=True)[1], None

    return decode


def _prepare_batch(batch: list[tuple[str, str]], slot: int | None = None, row0: int = 0, *,
                   preprocess: Callable | None = None) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]]]:
    """Decode + preprocess (id, path) pairs -> (ok ids, stacked arrays, [(path, reason)]).

    ``preprocess`` defaults to the one a decode worker inherited. With ``slot``, the arrays
    are written to rows ``row0 + k`` of ``_SLOTS[slot]`` instead and None is returned in
    their place (unless one does not fit the slot's shape).
    """
    return _prepare_decoded(batch, slot, row0, preprocess=preprocess)[:3]


def _prepare_decoded(batch: list[tuple[str, str]], slot: int | None = None, row0: int = 0, *,
                     preprocess: Callable | None = None, decode: Callable | None = None
                     ) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]], list]:
    """:func:`_prepare_batch` with a ``decode(path) -> (PIL image, extra)`` (default: the
    worker's inherited one, else :func:`lib.images.open_image` with extra None); also
    returns the extras of the ok ids, in their order."""
    from .images import open_image

    preprocess = preprocess or _PREPROCESS
    decode = decode or _DECODE
    out = _SLOTS[slot] if slot is not None else None
    ids, arrays, errors, extras = [], [], [], []
    for cid, path in batch:
        try:
            if decode is None:
                img, extra = open_image(path), None
            else:
                img, extra = decode(path)
            a = preprocess(img)
        except ImageError as e:
            errors.append((path, str(e)))
            continue
        except Exception as e:  # preprocessing must not kill a long run
            errors.append((path, f"{type(e).__name__}: {e}"))
            continue
        if out is not None and a.shape == out.shape[1:] and a.dtype == out.dtype:
            out[row0 + len(ids)] = a
        else:
            if out is not None:  # the probe's shape was wrong: send this part through the pipe
                arrays, out = list(_SLOTS[slot][row0:row0 + len(ids)]), None
            arrays.append(a)
        ids.append(cid)
        extras.append(extra)
    if out is not None:
        return ids, None, errors, extras
    return ids, (np.stack(arrays) if arrays else None), errors, extras


def _merge_parts(parts: list[tuple], slot: np.ndarray | None = None,
                 row0s: Sequence[int] = ()) -> tuple[list[str], np.ndarray | None, list, list]:
    """One batch from its parts, in order; rows a part left in ``slot`` (from ``row0s``) are copied out."""
    ids: list[str] = []
    errors: list = []
    extras: list = []
    arrays = []
    for k, part in enumerate(parts):
        part_ids, part_arrays, part_errors = part[:3]
        ids += part_ids
        errors += part_errors
        extras += part[3] if len(part) > 3 else [None] * len(part_ids)
        if part_arrays is not None:
            arrays.append(part_arrays)
        elif slot is not None and part_ids:
            arrays.append(slot[row0s[k]:row0s[k] + len(part_ids)])
    if not arrays:
        return ids, None, errors, extras
    return ids, (np.concatenate(arrays) if slot is not None or len(arrays) > 1 else arrays[0]), errors, extras


def _sample_shape(preprocess: Callable) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of one preprocessed image (fixed-size crops), or None if unknown."""
    from PIL import Image

    try:
        a = np.asarray(preprocess(Image.new("RGB", (64, 48), (128, 96, 80))))
    except Exception:  # a preprocess that wants real images: no slots, pickled arrays
        return None
    return a.shape, a.dtype


def prefetch_batches(items: Sequence[tuple[str, str]], preprocess: Callable, batch_size: int,
                     workers: int) -> Iterator[tuple[list[str], np.ndarray | None, list]]:
    """Yield preprocessed batches in order, decoding ahead in ``workers`` processes.

    Each batch is cut into ``workers`` parts decoded side by side, so the first batch
    (during which the model waits) is ready ``workers`` times sooner. Two batches are in
    flight at a time, each decoded into its own slot of shared memory, so memory stays
    bounded however many images there are; batches and their contents are the same for
    any ``workers``. Every yielded array is the caller's own (copied out of its slot).
    """
    for ids, arrays, errors, _ in prefetch_decoded(items, preprocess, batch_size, workers):
        yield ids, arrays, errors


def prefetch_decoded(items: Sequence[tuple[str, str]], preprocess: Callable, batch_size: int, workers: int,
                     decode: Callable | None = None) -> Iterator[tuple[list[str], np.ndarray | None, list, list]]:
    """:func:`prefetch_batches` with a custom decode: yields (ids, arrays (n, ...), errors, extras).

    ``decode(path) -> (PIL image, extra)`` runs in the workers (fork-inherited, so a
    closure will do); ``preprocess`` is applied to its image and ``extra`` (small,
    picklable: the other signals of the image) comes back beside, one per ok id.
    Without ``decode`` images come from :func:`lib.images.open_image` and extras are None.
    """
    global _PREPROCESS, _SLOTS, _DECODE
    batches = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    if workers <= 0 or len(items) < 2 * workers or not hasattr(os, "fork"):
        for b in batches:
            yield _prepare_decoded(b, preprocess=preprocess, decode=decode)
        return
    import mmap
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    sample = _sample_shape(preprocess)
    slots = None
    if sample is not None:  # anonymous shared memory: the forked workers write, we read
        shape, dtype = (2, batch_size, *sample[0]), sample[1]
        buf = mmap.mmap(-1, max(1, int(np.prod(shape)) * dtype.itemsize))
        slots = np.frombuffer(buf, dtype=dtype).reshape(shape)
    # fork: workers inherit the preprocess closure (and the loaded transforms) and the slots
    # for free. An executor, not mp.Pool: a worker that dies (OOM killer, a decoder crash)
    # raises BrokenProcessPool here instead of leaving its task, and this loop, waiting forever.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_init)
    try:
        pending: deque = deque()
        step = -(-batch_size // workers)
        row0s = range(0, batch_size, step)

        def submit(k: int) -> None:
            batch, slot = batches[k], (k % 2 if slots is not None else None)
            pending.append((slot, [pool.submit(_prepare_decoded, batch[i:i + step], slot, i)
                                   for i in range(0, len(batch), step)]))

        with _FORK_LOCK:  # the workers fork at the first submit, with these globals (app threads share them)
            _PREPROCESS, _SLOTS, _DECODE = preprocess, slots, decode
            submit(0)
            _PREPROCESS, _SLOTS, _DECODE = None, None, None
        if len(batches) > 1:
            submit(1)
        for k in range(len(batches)):
            slot, futures = pending.popleft()
            try:
                parts = [f.result() for f in futures]
            except BrokenProcessPool:
                raise WorkbenchError("an image-decoding worker died (out of memory, or a decoder crash); "
                                     "run the command again: finished shards are kept") from None
            batch = _merge_parts(parts, None if slot is None else slots[slot], row0s)  # copies: slot free
            if k + 2 < len(batches):
                submit(k + 2)
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------ the job


@dataclass
class EmbedReport:
    dataset: str
    spec: str
    fingerprint: str
    total: int
    cached: int
    computed: int
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    corrupt_shards: list = field(default_factory=list)

    def summary(self) -> str:
        rate = f", {self.computed / self.seconds:.1f} img/s" if self.computed and self.seconds else ""
        extra = f", {len(self.corrupt_shards)} corrupt shard(s) recomputed" if self.corrupt_shards else ""
        return (f"{self.dataset} x {self.spec}: {self.total} unique images, {self.cached} cached, "
                f"{self.computed} computed, {len(self.errors)} errors{extra} "
                f"({self.seconds:.2f} s{rate}); fingerprint {self.fingerprint[:12]}")


def default_workers(backend_uses_torch: bool) -> int:
    cpus = os.cpu_count() or 1
    # A torch model uses every core for its matmuls and decoding needs a fraction of one,
    # but while the first batch decodes the model waits: every core should decode it.
    return max(1, min(8, cpus)) if backend_uses_torch else cpus


def embed(
    name: str,
    spec,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 4096,
    device: str | None = None,
    precision: str = "auto",
    random_weights: bool = False,
    backend=None,
    progress: bool = False,
    verify: bool = True,
    progress_callback: Callable[[int, int], None] | None = None,
    fast_pixels: bool = True,
    reduce_on_decode: bool = False,
) -> EmbedReport:
    """Embed every image of dataset ``name`` that the cache for ``spec`` lacks.

    ``spec`` is a :class:`lib.models.ResolvedModel` (what the run_* functions pass) or a
    spec string, resolved here with ``random_weights``, ``backend`` (an already loaded
    model), ``device`` and ``precision``. A run with nothing missing never loads the model.
    ``progress_callback(done, total)`` is called after each batch with the images still
    missing at the start as ``total``.
    ``fast_pixels``: use the backend's uint8 pixel path
    (:meth:`lib.models.base.Backend.pixels_preprocess`) when it has one (the same vectors;
    False for the float path, to compare). ``reduce_on_decode``: JPEGs at least twice the
    model's input side are decoded reduced (DCT scaling) to no less than it (faster; off by
    default, since on ViT-B-32 with random weights the worst corpus JPEG moves to cosine
    0.99909 of its full decode, and cached vectors should not depend on how they were computed).
    """
    from . import dataset as ds_mod
    from .models import resolve_model

    model = resolve_model(spec, random_weights=random_weights, backend=backend, device=device, precision=precision)
    t0 = time.perf_counter()
    ds = ds_mod.load(name)
    unique = ds.unique_ids
    fp = model.fingerprint
    spec = model.spec
    corrupt: list[str] = []
    if fp is not None:
        store = EmbeddingStore(fp)
        if verify:
            corrupt = store.verify()
        if not store.missing(unique):
            return EmbedReport(name, spec, fp, len(unique), len(unique), 0, [], time.perf_counter() - t0, corrupt)
    backend = model.backend
    store = EmbeddingStore(backend.fingerprint)
    if fp != backend.fingerprint and verify:
        corrupt += store.verify()
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim})
    missing = store.missing(unique)
    path_of = dict(zip(ds.images["id"], ds.images["path"], strict=True))
    items, refused = [], []
    for cid in missing:
        try:
            items.append((cid, str(ds.abspath(path_of[cid]))))
        except UnsafePath as e:  # swapped for a symlink out of the root since ingest: never read
            refused.append((path_of[cid], str(e)))
    report = EmbedReport(name, backend.spec, backend.fingerprint, len(unique), len(unique) - len(missing), 0,
                         refused, 0.0, corrupt)
    if workers is None:
        workers = default_workers(backend.uses_torch)
    from tqdm import tqdm

    preprocess, encode = backend.preprocess, backend.encode_preprocessed
    pixels = backend.pixels_preprocess() if fast_pixels else None
    if pixels is not None:  # uint8 from the workers, normalised batched on the model's threads
        preprocess, encode = pixels, backend.encode_pixels
    bar = tqdm(total=len(items), desc=f"embed {backend.spec}", unit="img", disable=not progress,
               dynamic_ncols=True)
    buf_ids: list[str] = []
    buf_vecs: list[np.ndarray] = []
    done = 0
    try:
        decode = reduced_decode(backend.input_side()) if reduce_on_decode else None
        for ids, arrays, errors, _ in prefetch_decoded(items, preprocess, batch_size, workers, decode):
            report.errors.extend(errors)
            if arrays is not None:
                buf_vecs.append(encode(arrays))
                buf_ids.extend(ids)
            bar.update(len(ids) + len(errors))
            done += len(ids) + len(errors)
            if progress_callback is not None:
                progress_callback(done, len(items))
            while len(buf_ids) >= shard_size:
                vecs = np.concatenate(buf_vecs)
                store.write_shard(buf_ids[:shard_size], vecs[:shard_size])
                report.computed += shard_size
                buf_ids, buf_vecs = buf_ids[shard_size:], [vecs[shard_size:]]
        if buf_ids:
            store.write_shard(buf_ids, np.concatenate(buf_vecs))
            report.computed += len(buf_ids)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def load_embeddings(name: str, spec, *, random_weights: bool = False, backend=None, dataset=None) -> DatasetEmbeddings:
    """The cached vectors of dataset ``name`` under model ``spec`` (a ResolvedModel, or a spec
    string resolved with ``random_weights`` / ``backend``), one (dim,) vector per dataset row.
    ``dataset``: the dataset ``name`` already loaded (else it is read)."""
    from . import dataset as ds_mod
    from .models import resolve_model

    model = resolve_model(spec, random_weights=random_weights, backend=backend)
    spec = model.spec
    ds = ds_mod.load(name) if dataset is None else dataset
    fp = model.fingerprint
    if fp is None:
        raise WorkbenchError(f"no embeddings of {spec!r} yet; run: python -m lib embed {name} --model {spec}")
    store = EmbeddingStore(fp)
    try:  # one lookup of the ids (at 1M rows, a second one cost seconds)
        return store.open(ds.ids, id_bytes(ds.images["id"]))
    except MissingVectors:
        raise WorkbenchError(f"dataset {name!r} is not fully embedded with {spec!r}; run: python -m lib embed {name} "
                             f"--model {spec}") from None
