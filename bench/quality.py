"""Data quality at scale: near-duplicate groups of 1M x 512 vectors, and perceptual hashes.

1. Near-duplicate groups: :func:`bench.common.clustered_vectors` with planted groups of
   near copies (cosine 0.97-0.995 to their original), through the app's code path: the
   index :func:`lib.index.get_index` picks (IVF at 1M), :func:`lib.quality.vector_pairs`
   (faiss range search in chunks) and :func:`lib.quality.build_groups` (connected
   components). Recall of the true pairs is measured against exact search (brute-force
   inner products over all vectors) for a sample of query rows; memory is sampled while
   the pairs are found.
2. Perceptual hashes on the real corpus files: decode only (the ceiling) vs decode + hash
   (:func:`lib.quality.image_hashes`, 8 orientations), in one process and in the worker pool.
3. Comparing the hashes of 100k images (8 codes each; exact faiss binary range search),
   with planted matches.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd

from .common import CORPUS, WORK, Recorder, clustered_vectors

THRESHOLD = 0.95  # lib.quality.DEFAULT_THRESHOLD
SAMPLE = 2000  # query rows whose pairs are checked against exact search


class _PeakRSS:
    """Resident memory sampled every 50 ms in a thread: peak above the level at start."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def planted(n: int, dim: int = 512, *, groups: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clustered unit vectors in which ``groups`` originals got 1-3 near copies each
    (overwriting other rows). Returns (vectors (n, dim) float32, group (n,) int, -1: none)."""
    base = np.array(clustered_vectors(n, dim, seed=0))
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 5, groups)  # original + 1..3 copies
    rows = rng.permutation(n)[:int(sizes.sum())]
    group = np.full(n, -1, np.int64)
    at = 0
    for g, s in enumerate(sizes):
        members = rows[at:at + s]
        at += s
        orig = base[members[0]]
        for m in members[1:]:
            noise = rng.standard_normal(dim).astype(np.float32)
            noise -= noise.dot(orig) * orig
            noise *= rng.uniform(0.1, 0.25) / np.linalg.norm(noise)  # cosine 1/sqrt(1+s^2): 0.970..0.995
            x = orig + noise
            base[m] = x / np.linalg.norm(x)
        group[members] = g
    return base, group


def _emb(x: np.ndarray, store):
    from lib.embeddings import DatasetEmbeddings

    n = len(x)
    locs = np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], 1)
    return DatasetEmbeddings([f"{i:064x}" for i in range(n)], locs, [x], f"synthetic-q-{n}", store)


def _exact_pairs(x: np.ndarray, queries: np.ndarray, threshold: float, block: int = 65536) -> set[tuple[int, int]]:
    """Every (min, max) row pair with cosine >= threshold that involves a query row (brute force)."""
    out = set()
    xq = x[queries]
    for s in range(0, len(x), block):
        sims = xq @ x[s:s + block].T
        qi, bj = np.nonzero(sims >= threshold)
        for q, b in zip(queries[qi], bj + s, strict=True):
            if q != b:
                out.add((min(q, b), max(q, b)))
    return out


def _groups(rec: Recorder, n: int, tag: str) -> None:
    from lib import index as ix
    from lib import quality

    t = time.perf_counter()
    x, truth_group = planted(n, groups=n // 50)
    members = np.flatnonzero(truth_group >= 0)
    by_group = np.split(members[np.argsort(truth_group[members], kind="stable")],
                        np.flatnonzero(np.diff(np.sort(truth_group[members]))) + 1)
    planted_pairs = {(int(min(i, j)), int(max(i, j))) for m in by_group for i in m for j in m if i < j}
    n_true = len(planted_pairs)
    rec.explain(f"{tag}: {n:,} x 512 clustered vectors with {n // 50:,} planted groups of 2-4 near copies "
                f"({n_true:,} planted pairs; {time.perf_counter() - t:.0f} s to make). Threshold {THRESHOLD}.")
    work = WORK / "quality" / tag
    emb = _emb(x, work)
    kind = ix.choose_kind(n)
    t = time.perf_counter()
    vi = ix.get_index(emb, tag, "auto", persist=False)
    build = time.perf_counter() - t
    rec.add(f"{tag}: index build ({kind})", build, "s")
    with _PeakRSS() as mem:
        t = time.perf_counter()
        a, b, sim = quality.vector_pairs(emb, vi.index, THRESHOLD)
        search = time.perf_counter() - t
        t = time.perf_counter()
        nd = quality.build_groups(pd.DataFrame({"id": emb.ids}), a, b, similarity=sim)
        group_s = time.perf_counter() - t
    total = build + search + group_s
    rec.add(f"{tag}: near-duplicate groups, total (build + range search + groups)", total / 60, "min",
            ("<", 10.0) if n >= 1_000_000 else None,
            note=f"range search {search:.0f} s in chunks of {quality.RANGE_CHUNK}, groups {group_s:.1f} s")
    rec.add(f"{tag}: memory above vectors + index while finding pairs and groups", mem.extra_mib, "MiB",
            ("<", 2048.0) if n >= 1_000_000 else None,
            note=f"an n x n float32 matrix would be {n * n * 4 / 2**40:.1f} TiB")
    found = {(int(i), int(j)) for i, j in zip(a, b, strict=True)}
    rec.add(f"{tag}: planted pairs found", len(planted_pairs & found) / max(len(planted_pairs), 1), "",
            note=f"{len(a):,} pairs, {nd.n_groups:,} groups (all planted groups whole); two copies of one "
                 "original can sit below the threshold, so not every planted pair is a true pair")
    rng = np.random.default_rng(2)
    sample = np.unique(np.r_[rng.choice(members, SAMPLE // 2, replace=False),
                             rng.choice(n, SAMPLE // 2, replace=False)])
    t = time.perf_counter()
    exact = _exact_pairs(x, sample, THRESHOLD)
    sset = set(sample.tolist())
    got = {p for p in found if p[0] in sset or p[1] in sset}
    rec.add(f"{tag}: recall of true pairs vs exact search ({len(sample)} query rows)",
            len(got & exact) / max(len(exact), 1), "", (">=", 0.95) if kind == "ivf" else None,
            note=f"{len(exact):,} exact pairs ({time.perf_counter() - t:.0f} s brute force); "
                 f"{len(got - exact)} found pairs not in the exact set")


def _hash_throughput(rec: Recorder) -> None:
    from lib import quality
    from lib.colorscore import DEFAULT_PARAMS, default_workers, load_for_scoring, run_chunks

    paths = [str(CORPUS / p) for p in pd.read_csv(CORPUS / "manifest.csv")["path"]]
    paths = paths[:240] if rec.quick else paths
    for p in paths:  # every timing below reads the files from the page cache
        with open(p, "rb") as f:
            f.read()
    t = time.perf_counter()
    imgs = [load_for_scoring(p, DEFAULT_PARAMS) for p in paths]
    dec = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    for im in imgs:
        quality.image_hashes(im)
    hash_only = len(paths) / (time.perf_counter() - t)
    del imgs
    t = time.perf_counter()
    quality.hash_files(paths)
    both = len(paths) / (time.perf_counter() - t)
    rec.add("hashes: decode only, 1 process", dec, "img/s", note=f"{len(paths)} corpus files (PNG and JPEG)")
    rec.add("hashes: 8-orientation pHash of decoded pixels, 1 process", hash_only, "img/s",
            note="what the hash adds when it reuses the embedding's decoded pixels")
    rec.add("hashes: decode + hash, 1 process, share of the decode ceiling", both / dec, "",
            note=f"{both:.0f} img/s")
    w = default_workers()
    t = time.perf_counter()
    run_chunks(quality.hash_files, paths, (), w, 32, lambda s, r: None)
    pool = len(paths) / (time.perf_counter() - t)
    rec.add(f"hashes: decode + hash, {w} worker processes", pool, "img/s",
            note=f"100k images in {100_000 / pool / 60:.1f} min at this rate")


def _hash_compare(rec: Recorder, n: int) -> None:
    from lib import quality

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    k = n // 100
    src, dst = rng.permutation(n)[:2 * k].reshape(2, k)
    flip = rng.integers(0, 8, k)  # a copy is another orientation of its original, plus bit noise
    bits = np.unpackbits(codes[src, flip], axis=1)
    for _ in range(6):
        bits[np.arange(k), rng.integers(0, 64, k)] ^= 1
    codes[dst, 0] = np.packbits(bits, axis=1)
    t = time.perf_counter()
    a, b, d = quality.hash_pairs(codes, quality.HASH_MAX_DISTANCE)
    s = time.perf_counter() - t
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    hit = sum((min(i, j), max(i, j)) in found for i, j in zip(src, dst, strict=True))
    rec.add(f"hashes: compare {n:,} images x 8 orientations (exact, faiss binary range search)", s, "s",
            note=f"{len(a):,} pairs within {quality.HASH_MAX_DISTANCE} bits; planted copies found {hit}/{k}")


def run(rec: Recorder) -> None:
    import faiss

    rec.explain(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads.")
    _hash_throughput(rec)
    _hash_compare(rec, 30_000 if rec.quick else 100_000)
    _groups(rec, 200_000 if rec.quick else 1_000_000, "200k" if rec.quick else "1M")
