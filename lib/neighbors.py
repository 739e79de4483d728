"""Neighbourhoods in an embedding space: who is near an image, by how much, with what label."""

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
        rows = np.flatnonzero(self.dataset.images["id"].to_numpy() == image_id)
        if not len(rows):
            raise ds_mod.DatasetError(f"image {image_id} is not in dataset {self.dataset.name!r}")
        return int(rows[0])


def open_space(name: str, spec: str, *, random_weights: bool = False, backend=None,
               index_kind: str = "auto") -> Space:
    """Dataset ``name`` embedded with ``spec`` (which must be cached: see ``lib embed``)."""
    ds = ds_mod.load(name)
    emb = load_embeddings(name, spec, random_weights=random_weights, backend=backend)
    return Space(ds, spec, emb, index_kind)


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
