"""faiss search over a dataset's embeddings: inner product on L2-normalised vectors (= cosine).

Index kinds, and what ``bench/search.py`` measured on 2 cores with 512-d clustered
vectors (numbers under other processes' load; quiet-machine figures are lower):

- ``flat``: exact. ``auto`` up to :data:`EXACT_MAX` vectors: single-query p50 18-50 ms
  at 100k (memory-bandwidth bound, linear in n), ~190 ms at 1M.
- ``ivf``: inverted lists over fp16 codes (the cache's own precision: half the memory
  and scan time of float32, no loss of recall), ``nlist`` a power of two near
  ``2 sqrt(n)``, ``nprobe`` from :func:`ivf_params`. ``auto`` above ``EXACT_MAX``: at
  1M, nlist 2048, nprobe 10: p50 ~0.8 ms, recall@10 0.98, built in ~20 s, 1 GB.
- ``hnsw``: graph (M=32, efSearch=64): p50 ~0.4 ms at 1M with recall@10 ~0.976, but
  ~220 s to build there (parallel insertion already); worth it when queries are many
  and the index is built once.

Recall depends on the data: these settings reach recall@10 >= 0.97 on the synthetic
clustered vectors of the benchmark; raise ``IVF_MIN_NPROBE`` (or the ``nprobe`` of a
loaded index) if real data needs more. Indexes are written next to the embedding cache,
keyed by the dataset's embedding key and the index parameters, so they are read back
from disk and rebuilt only when the vectors (or the parameters) change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config
from .embeddings import DatasetEmbeddings

#: Above this many vectors, ``auto`` picks an approximate index (flat p50 <= 50 ms up to here).
EXACT_MAX = 100_000
HNSW_M = 32
HNSW_EF_SEARCH = 64
HNSW_EF_CONSTRUCTION = 40
#: IVF: lists probed at least (recall@10 >= 0.97 at 100k-1M on the benchmark's vectors).
IVF_MIN_NPROBE = 10
#: IVF: k-means training points per list (k-means cost is linear in it) and iterations.
IVF_TRAIN_PER_LIST = 32
IVF_NITER = 10
KINDS = ("auto", "flat", "hnsw", "ivf")


def ivf_params(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for ``n`` vectors: a power of two near 2 sqrt(n) lists, ~0.5% of them probed."""
    nlist = int(2 ** round(np.log2(max(2 * np.sqrt(max(n, 1)), 16))))
    nlist = max(1, min(nlist, 65536, n // 8 or 1))  # k-means wants several points per list
    return nlist, min(nlist, max(IVF_MIN_NPROBE, nlist // 200))


def _params_tag(kind: str, n: int) -> str:
    if kind == "hnsw":
        return f"m{HNSW_M}-efc{HNSW_EF_CONSTRUCTION}"
    if kind == "ivf":
        return f"sq16-nl{ivf_params(n)[0]}"
    return "f32"


@dataclass
class VectorIndex:
    """A faiss index whose ids are dataset row numbers."""

    index: object
    kind: str
    path: Path | None
    build_seconds: float = 0.0

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) -> (scores (q, k) float32 cosine, rows (q, k) int64; -1 pads)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal))
        return self.index.search(q, k)


def choose_kind(n: int, kind: str = "auto") -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} not in {KINDS}")
    if kind != "auto":
        return kind
    # IVF over HNSW above EXACT_MAX: both sub-millisecond at 1M, IVF built ~10x faster.
    return "flat" if n <= EXACT_MAX else "ivf"


def _build(emb: DatasetEmbeddings, kind: str):
    import faiss

    d, n = emb.dim, len(emb)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        nlist, nprobe = ivf_params(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = IVF_NITER
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
        index.train(emb.take(sample))
        index.nprobe = nprobe
    for _, chunk in emb.iter_chunks():
        index.add(chunk)
    return index


def index_path(emb: DatasetEmbeddings, dataset: str, kind: str) -> Path:
    return emb.store_dir / "index" / f"{dataset}-{kind}-{emb.key}-{_params_tag(kind, len(emb))}.faiss"


def get_index(emb: DatasetEmbeddings, dataset: str, kind: str = "auto", *, persist: bool = True) -> VectorIndex:
    """Load the persisted index for these embeddings, building (and saving) it if stale."""
    import faiss

    kind = choose_kind(len(emb), kind)
    path = index_path(emb, dataset, kind)
    if path.exists():
        index = faiss.read_index(str(path))
        if kind == "hnsw":
            index.hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == "ivf":
            index.nprobe = ivf_params(len(emb))[1]
        return VectorIndex(index, kind, path)
    t0 = time.perf_counter()
    index = _build(emb, kind)
    seconds = time.perf_counter() - t0
    if persist:
        config.ensure(path.parent)
        for stale in path.parent.glob(f"{dataset}-{kind}-*.faiss"):
            stale.unlink(missing_ok=True)
        from .files import write_bytes

        write_bytes(path, faiss.serialize_index(index).tobytes())
    return VectorIndex(index, kind, path if persist else None, seconds)
