"""2-D maps of an embedding space: PCA as the instant preview, UMAP as the real map.

UMAP takes seconds to minutes (and numba compiles on first use), so its coordinates are
cached under ``<home>/cache/projection/`` keyed by the embeddings' key
(:attr:`lib.embeddings.DatasetEmbeddings.key`, which changes whenever the rows or vectors
do) and the parameters. Same key, same parameters: the same map, read from disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import config

METHODS = ("umap", "pca")


def projection_params(method: str, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
                      metric: str = "cosine") -> dict:
    """The parameters a projection depends on (its cache key): the defaults are the app's."""
    if method == "pca":
        return {"method": "pca", "seed": seed}
    return {"method": "umap", "n_neighbors": n_neighbors, "min_dist": min_dist, "seed": seed, "metric": metric}


def cache_path(emb_key: str, params: dict) -> Path:
    """Parquet file caching the projection of embeddings ``emb_key`` with ``params``."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return config.cache_dir() / "projection" / f"{emb_key}-{params['method']}-{h}.parquet"


def _compute(X: np.ndarray, method: str, n_neighbors: int, min_dist: float, seed: int, metric: str) -> np.ndarray:
    n = len(X)
    if n < 3:
        raise ValueError(f"a 2-D projection needs at least 3 points, got {n}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(X).astype(np.float32)
    import warnings

    import umap

    with warnings.catch_warnings():
        # umap warns that a fixed random_state disables its parallelism: that is the point.
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*k >= N.*")  # tiny inputs fall back to exact search
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                            metric=metric, random_state=seed, init="spectral" if n > 4 else "random")
        return reducer.fit_transform(X).astype(np.float32)


def project(emb, method: str = "umap", n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, *,
            metric: str = "cosine", cache: bool = True) -> np.ndarray:
    """2-D coordinates of every row of ``emb``.

    Parameters
    ----------
    emb : DatasetEmbeddings or ndarray of shape (n, dim)
        Cached embeddings (their projection is cached on disk) or a plain matrix (not cached).
    method : 'umap' or 'pca'
    n_neighbors, min_dist, metric : UMAP parameters (``n_neighbors`` is capped at n - 1)
    seed : int
        Fixes UMAP's layout (and makes it single-threaded) and PCA's solver.

    Returns
    -------
    ndarray of shape (n, 2), float32
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} not in {METHODS}")
    params = projection_params(method, n_neighbors, min_dist, seed, metric)
    if isinstance(emb, np.ndarray):
        return _compute(np.asarray(emb, dtype=np.float32), method, n_neighbors, min_dist, seed, metric)
    path = cache_path(emb.key, params) if cache else None
    if path is not None and path.exists():  # the key hashes every row's id and vector location
        df = pd.read_parquet(path, columns=["x", "y"])
        if len(df) == len(emb):
            return df.to_numpy(np.float32)
    xy = _compute(emb.matrix(), method, n_neighbors, min_dist, seed, metric)
    if path is not None:
        from .files import write_table

        write_table(path, pd.DataFrame({"id": emb.ids, "x": xy[:, 0], "y": xy[:, 1]}))
    return xy


def projection_frame(dataset, xy: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
    """The dataset's rows with their coordinates: ``x, y`` plus ``id, path, label`` and ``columns``.

    ``xy`` is (len(dataset.images), 2), one point per row, as :func:`project` returns.
    """
    images = dataset.images
    if len(xy) != len(images):
        raise ValueError(f"{len(xy)} points for {len(images)} dataset rows")
    keep = ["id", "path", "label", *[c for c in (columns or []) if c in images and c not in ("id", "path", "label")]]
    out = images[keep].reset_index(drop=True)
    out.insert(0, "y", np.asarray(xy)[:, 1])
    out.insert(0, "x", np.asarray(xy)[:, 0])
    return out


def project_dataset(name: str, model, method: str = "umap", *, columns: list[str] | None = None,
                    **kwargs) -> pd.DataFrame:
    """:func:`project` the cached embeddings of dataset ``name`` under ``model`` (a
    :class:`lib.models.ResolvedModel` or a spec string) -> :func:`projection_frame` (n_rows, x, y, ...)."""
    from . import dataset as ds_mod
    from .embeddings import load_embeddings

    ds = ds_mod.load(name)
    emb = load_embeddings(name, model)
    meta = [c for c in ds.images.columns if c not in ("width", "height", "format", "caption")]
    return projection_frame(ds, project(emb, method, **kwargs), columns if columns is not None else meta)
