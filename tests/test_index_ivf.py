"""IVF parameters and fp16 codes of lib.index (the settings bench/search.py chose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib import index as index_mod
from lib.embeddings import DatasetEmbeddings


def _emb(n: int, d: int = 64, seed: int = 0, store: Path = Path("/nonexistent")) -> DatasetEmbeddings:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    locs = np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], 1)
    return DatasetEmbeddings([f"{i:064x}" for i in range(n)], locs, [x], f"syn{seed}", store)


@pytest.mark.parametrize("n", [1_000, 100_000, 1_000_000, 50_000_000])
def test_ivf_params_scale_with_sqrt_n(n):
    nlist, nprobe = index_mod.ivf_params(n)
    assert nlist & (nlist - 1) == 0  # a power of two
    assert 2 * np.sqrt(n) / 1.5 <= nlist <= 2 * np.sqrt(n) * 1.5
    assert min(nlist, index_mod.IVF_MIN_NPROBE) <= nprobe <= nlist


def test_ivf_params_small_sets_keep_points_per_list():
    for n in (10, 100, 500):
        nlist, nprobe = index_mod.ivf_params(n)
        assert 1 <= nlist <= max(1, n // 8) and 1 <= nprobe <= nlist


def test_ivf_scores_are_cosines_to_fp16_precision():
    emb = _emb(6000)
    vi = index_mod.get_index(emb, "syn", "ivf", persist=False)
    assert vi.kind == "ivf" and vi.index.nprobe == index_mod.ivf_params(6000)[1]
    x = emb.matrix()
    q = x[::300]
    scores, rows = vi.search(q, 10)
    exact = np.einsum("qd,qkd->qk", q, x[rows])
    # fp16 codes: each component is rounded to 11 significant bits, so a cosine moves by < 1e-3.
    assert np.abs(scores - exact).max() < 1e-3
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_index_file_names_the_parameters(tmp_path, monkeypatch):
    emb = _emb(500, store=tmp_path)
    first = index_mod.index_path(emb, "syn", "hnsw")
    monkeypatch.setattr(index_mod, "HNSW_M", index_mod.HNSW_M * 2)
    assert index_mod.index_path(emb, "syn", "hnsw") != first  # new parameters: never the old file
    built = index_mod.get_index(emb, "syn", "ivf")
    assert built.path.exists() and f"nl{index_mod.ivf_params(500)[0]}" in built.path.name
    again = index_mod.get_index(emb, "syn", "ivf")
    assert again.build_seconds == 0.0 and again.index.nprobe == built.index.nprobe
