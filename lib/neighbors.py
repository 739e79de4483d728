"""Neighbourhoods in an embedding space: who is near an image, by how much, with what label.

Search only. The MedGore seed expansion built on it (expand, review truth, homogeneity)
lives in :mod:`lib.expansion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import dataset as ds_mod
from .embeddings import DatasetEmbeddings, load_embeddings
from .index import VectorIndex, get_index


@dataclass
class Space:
    """A dataset seen through one model: its rows, their vectors and a faiss index."""

    dataset: ds_mod.Dataset
    spec: str
    emb: DatasetEmbeddings
    index_kind: str = "auto"
    _index: VectorIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._index = get_index(self.emb, self.dataset.name, self.index_kind)
        return self._index

    def row_of(self, image_id: str) -> int:
        row = self.dataset.row_of(image_id)
        if row is None:
            raise ds_mod.DatasetError(f"image {image_id} is not in dataset {self.dataset.name!r}")
        return row


def open_space(name: str, model, *, index_kind: str = "auto", dataset: ds_mod.Dataset | None = None) -> Space:
    """Dataset ``name`` embedded with ``model`` (a :class:`lib.models.ResolvedModel` or a spec
    string; its embeddings must be cached: see ``lib embed``). ``dataset``: the dataset
    already loaded (the app's shared one: not a second copy of a 1M-row table)."""
    from .models import resolve_model

    model = resolve_model(model)
    ds = ds_mod.load(name) if dataset is None else dataset
    return Space(ds, model.spec, load_embeddings(name, model, dataset=ds), index_kind)


def search_vectors(space: Space, vectors: np.ndarray, k: int,
                   exclude_rows: list[int] | None = None) -> pd.DataFrame:
    """Top-``k`` rows for each query vector (q, dim), as a long table.

    Columns: query, rank (1-based), row, id, score, label, path, duplicate_of. Rows in
    ``exclude_rows`` (one per query, e.g. the query image itself) are skipped.
    """
    extra = 1 if exclude_rows is not None else 0
    scores, rows = space.index.search(vectors, k + extra)
    images = space.dataset.images
    out = []
    for q in range(len(rows)):
        keep = [(s, r) for s, r in zip(scores[q], rows[q], strict=True)
                if r >= 0 and (exclude_rows is None or r != exclude_rows[q])][:k]
        for rank, (s, r) in enumerate(keep, start=1):
            out.append((q, rank, int(r), float(s)))
    df = pd.DataFrame(out, columns=["query", "rank", "row", "score"])
    sub = images.iloc[df["row"].to_numpy()]
    for col in ("id", "label", "path", "duplicate_of"):
        df[col] = sub[col].to_numpy() if col in sub else None
    return df


def neighbours(space: Space, row: int, k: int = 10) -> pd.DataFrame:
    """The ``k`` nearest other rows of dataset row ``row`` (rank, row, id, score, label, path)."""
    df = search_vectors(space, space.emb.take([row]), k, exclude_rows=[row])
    return df.drop(columns="query")


def neighbours_of_image(space: Space, backend, img, k: int = 10) -> pd.DataFrame:
    """Neighbours of an outside image (PIL) embedded with ``backend`` (same fingerprint)."""
    if backend.fingerprint != space.emb.fingerprint:
        raise ds_mod.DatasetError(f"model {backend.spec} does not match the cached space {space.spec}")
    return search_vectors(space, backend.encode_images([img]), k).drop(columns="query")


def distinct_neighbours(space: Space, rows: np.ndarray, self_ids: np.ndarray, k: int) -> pd.DataFrame:
    """The k nearest distinct images of each query row (dataset rows, shape (q,)), skipping
    the query's own id (``self_ids``, shape (q,)).

    Duplicate files share an id and a vector; they would otherwise fill the top ranks, so
    the search asks for extra results and keeps each id once. Returns ``query, rank, row,
    id, score`` (query indexes ``rows``).
    """
    ids = space.dataset.images["id"].to_numpy()
    n, n_unique = len(ids), len(set(ids))
    want = min(k, n_unique - 1)
    extra = n - n_unique
    kk = min(n, k + 1 + min(extra, k))
    pending = np.arange(len(rows))
    parts = []
    while len(pending):
        scores, found = space.index.search(space.emb.take(rows[pending]), kk)
        q = np.repeat(pending, found.shape[1])
        df = pd.DataFrame({"query": q, "row": found.ravel(), "score": scores.ravel()})
        df = df[df["row"] >= 0]
        df["id"] = ids[df["row"].to_numpy()]
        df = df[df["id"].to_numpy() != self_ids[df["query"].to_numpy()]]
        df = df.drop_duplicates(["query", "id"])  # results are sorted: keeps each id's best row
        df["rank"] = df.groupby("query").cumcount() + 1
        df = df[df["rank"] <= k]
        got = df.groupby("query").size().reindex(pending, fill_value=0)
        short = got.index[got.to_numpy() < want].to_numpy()
        done = df[~df["query"].isin(short)]
        parts.append(done)
        if not len(short) or kk >= n:
            if len(short):
                parts.append(df[df["query"].isin(short)])
            break
        pending, kk = short, min(n, kk * 2)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["query", "row", "score", "id", "rank"])
    return out.sort_values(["query", "rank"], ignore_index=True)[["query", "rank", "row", "id", "score"]]
