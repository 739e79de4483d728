"""Retrieval in an embedding space: text -> image and image -> image search, and Recall@K on captions.

Search goes through the dataset's faiss index (:func:`lib.neighbors.search_vectors`).
Evaluation takes (image, caption) pairs and reports Recall@K in both directions:

* T2I: each caption queries the image gallery; a hit is its own image in the top K.
* I2T: each image queries the caption gallery; a hit is one of its captions in the top K.

Ranks are exact (a full similarity row per query, computed in chunks) and ties are broken
pessimistically: a non-relevant item scoring the same as the best relevant one ranks
ahead of it. Recall@K with K at least the gallery size is trivially 1.0 (everything is
retrieved); that is the value reported by default, and ``beyond_gallery="nan"`` reports
NaN instead so the trivial values stay out of the mean. The ``gallery`` column always
says how large the gallery was.

``mean_R`` is defined as MedicalNarratives (Table 2) defines its average: the mean of the six
recalls T2I and I2T at K = 5, 50 and 200 (:data:`PAPER_KS`), whatever ``ks`` are shown. The
mean over the shown ``ks`` is named differently: ``mean_R_ks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DatasetError, ModelError
from .neighbors import Space, search_vectors

KS = (1, 5, 10, 50, 200)
#: The Ks of MedicalNarratives' average Recall@K (both directions): what ``mean_R`` means.
PAPER_KS = (5, 50, 200)
DIRECTIONS = ("t2i", "i2t")


# --------------------------------------------------------------------------- search


def _check_backend(space: Space, backend) -> None:
    if backend.fingerprint != space.emb.fingerprint:
        raise ModelError(f"model {backend.spec} does not match the cached space {space.spec}: "
                         "queries must be embedded by the model that embedded the images")


def text_to_image(space: Space, backend, query_text: str | Sequence[str], k: int = 10) -> pd.DataFrame:
    """The ``k`` images closest to a text query (cosine of text and image embeddings).

    Parameters
    ----------
    space : the dataset embedded with the same model as ``backend``
    backend : a model with a text tower
    query_text : one query, or several (the result then keeps a ``query`` column)

    Returns
    -------
    DataFrame with columns [query,] rank (1-based), row, id, score, label, path, duplicate_of.
    """
    from .zeroshot import require_text

    require_text(backend, "text-to-image search")
    _check_backend(space, backend)
    single = isinstance(query_text, str)
    vecs = backend.encode_texts([query_text] if single else list(query_text))
    df = search_vectors(space, vecs, k)
    return df.drop(columns="query") if single else df


def image_to_image(space: Space, backend_or_vectors, img_or_row, k: int = 10) -> pd.DataFrame:
    """The ``k`` images closest to an image.

    Parameters
    ----------
    space : the dataset's space
    backend_or_vectors : a backend (needed to embed a PIL image or a file), the dataset's
        vectors (a :class:`~lib.embeddings.DatasetEmbeddings` or an (n, D) array, used for a
        row), or None (a row then uses ``space.emb``)
    img_or_row : a dataset row number (the row itself is left out of its results), a PIL
        image, an image file path, or a query vector of shape (D,)

    Returns
    -------
    DataFrame with columns rank (1-based), row, id, score, label, path, duplicate_of.
    """
    if isinstance(img_or_row, (int, np.integer)):
        row = int(img_or_row)
        src = backend_or_vectors if backend_or_vectors is not None and not hasattr(backend_or_vectors,
                                                                                   "encode_images") else space.emb
        vec = src.take([row]) if hasattr(src, "take") else np.asarray(src, np.float32)[[row]]
        return search_vectors(space, vec, k, exclude_rows=[row]).drop(columns="query")
    if isinstance(img_or_row, np.ndarray):
        vec = np.asarray(img_or_row, np.float32).reshape(1, -1)
        return search_vectors(space, vec, k).drop(columns="query")
    backend = backend_or_vectors
    if backend is None or not hasattr(backend, "encode_images"):
        raise ModelError("searching by an image needs the model (a backend) to embed it")
    _check_backend(space, backend)
    if isinstance(img_or_row, (str, Path)):
        from .images import open_image

        img_or_row = open_image(img_or_row)
    return search_vectors(space, backend.encode_images([img_or_row]), k).drop(columns="query")


# --------------------------------------------------------------------------- Recall@K


def _relevance(gt, shape: tuple[int, int]) -> np.ndarray:
    nq, ng = shape
    gt = np.asarray(gt)
    if gt.ndim == 2:
        if gt.shape != shape:
            raise ValueError(f"relevance matrix has shape {gt.shape}, similarity has {shape}")
        rel = gt.astype(bool)
    elif gt.ndim == 1 and len(gt) == nq:
        idx = gt.astype(np.int64)
        if ((idx < 0) | (idx >= ng)).any():
            raise ValueError(f"gt indices must lie in [0, {ng})")
        rel = np.zeros(shape, bool)
        rel[np.arange(nq), idx] = True
    else:
        raise ValueError(f"gt must be ({nq},) gallery indices or a ({nq}, {ng}) boolean matrix")
    if not rel.any(axis=1).all():
        raise ValueError(f"{int((~rel.any(axis=1)).sum())} query(ies) have no relevant gallery item")
    return rel


def relevant_ranks(sim: np.ndarray, gt) -> np.ndarray:
    """Rank (1-based) of the best-ranked relevant gallery item of each query.

    Parameters
    ----------
    sim : (Nq, Ng) similarities, higher is closer
    gt : (Nq,) gallery index of each query's match, or (Nq, Ng) boolean relevance

    Returns
    -------
    ndarray of shape (Nq,), int: 1 + the number of non-relevant items scoring at least as
    high as the query's best relevant item (ties count against the query).
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"sim must be (Nq, Ng), got shape {sim.shape}")
    rel = _relevance(gt, sim.shape)
    best = np.where(rel, sim, -np.inf).max(axis=1)
    return 1 + ((sim >= best[:, None]) & ~rel).sum(axis=1)


def recall_at_k(sim: np.ndarray, gt, ks: Sequence[int] = KS) -> dict[int, float]:
    """Recall@K: the fraction of queries with a relevant item among their top K.

    Parameters
    ----------
    sim : (Nq, Ng) similarities; gt : (Nq,) indices or (Nq, Ng) relevance (see
    :func:`relevant_ranks`); ks : the K values.

    Returns
    -------
    {K: recall}. K >= Ng gives 1.0 (the whole gallery is retrieved).
    """
    return recall_from_ranks(relevant_ranks(sim, gt), ks)


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks <= k)) if len(ranks) else float("nan") for k in ks}


def _nanmean(values) -> float:
    vals = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(vals)) if len(vals) and not np.all(np.isnan(vals)) else float("nan")


def _chunked_ranks(queries: np.ndarray, gallery: np.ndarray, q_keys: np.ndarray, g_keys: np.ndarray,
                   chunk: int) -> np.ndarray:
    """relevant_ranks of (q, D) queries against a (g, D) gallery; relevant = same key."""
    out = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), chunk):
        sim = queries[s:s + chunk] @ gallery.T
        out[s:s + chunk] = relevant_ranks(sim, q_keys[s:s + chunk, None] == g_keys[None, :])
    return out


def evaluate_retrieval(
    image_vecs: np.ndarray,
    text_vecs: np.ndarray,
    groups: Sequence | None = None,
    ks: Sequence[int] = KS,
    pooled: bool = True,
    *,
    image_keys: Sequence | None = None,
    beyond_gallery: str = "one",
    chunk: int = 2048,
) -> pd.DataFrame:
    """Recall@K both ways on N (image, text) pairs, overall and per group.

    Parameters
    ----------
    image_vecs, text_vecs : (N, D) unit vectors; row i of each is one pair
    groups : (N,) group of each pair (e.g. modality or source), optional
    ks : K values
    pooled : per-group queries search the whole gallery (True) or only their group's (False)
    image_keys : (N,) identity of each image (content id): pairs sharing an image count each
        other's image/captions as relevant. Default: every pair distinct.
    beyond_gallery : ``"one"`` reports Recall@K = 1.0 where K >= gallery size; ``"nan"``
        reports NaN there (and the mean skips it)
    chunk : queries per similarity block (memory is chunk x N floats)

    Returns
    -------
    DataFrame, one row for ``all`` then one per group: group, pairs, gallery (its size),
    t2i_R@K and i2t_R@K for each K, ``mean_R`` (MedicalNarratives' average: the six recalls
    at K = 5, 50, 200, both directions, :data:`PAPER_KS`) and ``mean_R_ks`` (the mean of
    the recalls at ``ks``).
    """
    img = np.asarray(image_vecs, np.float32)
    txt = np.asarray(text_vecs, np.float32)
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"image_vecs {img.shape} and text_vecs {txt.shape} must both be (N, D)")
    if beyond_gallery not in ("one", "nan"):
        raise ValueError("beyond_gallery must be 'one' or 'nan'")
    n = len(img)
    keys = np.arange(n) if image_keys is None else pd.factorize(pd.Series(list(image_keys)))[0]
    if len(keys) != n:
        raise ValueError(f"image_keys has {len(keys)} entries for {n} pairs")
    ks = [int(k) for k in ks]

    def ranks_of(sel: np.ndarray, gal: np.ndarray) -> dict[str, np.ndarray]:
        return {"t2i": _chunked_ranks(txt[sel], img[gal], keys[sel], keys[gal], chunk),
                "i2t": _chunked_ranks(img[sel], txt[gal], keys[sel], keys[gal], chunk)}

    def row(name, sel: np.ndarray, ranks: dict[str, np.ndarray], gallery: int) -> dict:
        out = {"group": name, "pairs": int(len(sel)), "gallery": int(gallery)}
        for d in DIRECTIONS:
            for k, r in recall_from_ranks(ranks[d], ks).items():
                out[f"{d}_R@{k}"] = float("nan") if beyond_gallery == "nan" and k >= gallery else r
        vals = [out[f"{d}_R@{k}"] for d in DIRECTIONS for k in ks]
        paper = [float("nan") if beyond_gallery == "nan" and k >= gallery else r
                 for d in DIRECTIONS for k, r in recall_from_ranks(ranks[d], PAPER_KS).items()]
        out["mean_R"] = _nanmean(paper)
        out["mean_R_ks"] = _nanmean(vals)
        return out

    everything = np.arange(n)
    overall = ranks_of(everything, everything) if n else {d: np.zeros(0, np.int64) for d in DIRECTIONS}
    rows = [row("all", everything, overall, n)]
    if groups is not None:
        g = pd.Series(list(groups), dtype=object).where(lambda s: s.notna(), "(none)").astype(str).to_numpy()
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries for {n} pairs")
        for name in sorted(set(g)):
            sel = np.flatnonzero(g == name)
            if pooled:  # same gallery as overall: the group's ranks are a subset of those
                rows.append(row(name, sel, {d: overall[d][sel] for d in DIRECTIONS}, n))
            else:
                rows.append(row(name, sel, ranks_of(sel, sel), len(sel)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- a dataset run


@dataclass
class RetrievalEval:
    """Recall@K of a dataset's (image, caption) pairs under one model."""

    dataset: str
    spec: str
    table: pd.DataFrame
    pairs: int
    skipped: int
    group_col: str | None
    pooled: bool
    path: Path | None


def run_retrieval_eval(
    dataset_name: str,
    model,
    group_col: str | None = None,
    *,
    ks: Sequence[int] = KS,
    pooled: bool = True,
    beyond_gallery: str = "one",
    out: str | Path | None = None,
    write: bool = True,
) -> RetrievalEval:
    """Recall@K (T2I and I2T) on the dataset rows that have a ``caption``, under ``model``
    (a :class:`lib.models.ResolvedModel`, or a spec string for its defaults).

    Rows without a caption are skipped; images come from the embedding cache (filled
    first), captions are embedded with the model's text tower. The table is written as CSV
    to ``out`` or ``<home>/results/<dataset>/retrieval-<fingerprint[:12]>.csv``.

    Raises
    ------
    DatasetError : no row has a caption, or ``group_col`` is not a column.
    ModelError : the model has no text tower.
    """
    from . import dataset as ds_mod
    from .embeddings import embed, load_embeddings
    from .models import resolve_model
    from .zeroshot import require_text

    model = resolve_model(model)
    spec = model.spec
    ds = ds_mod.load(dataset_name)
    images = ds.images
    cap = images["caption"] if "caption" in images else pd.Series([None] * len(images))
    has = cap.notna().to_numpy() & (cap.astype(str).str.strip() != "").to_numpy()
    if not has.any():
        raise DatasetError(f"dataset {dataset_name!r} has no captions: retrieval evaluation needs a "
                           "'caption' column in the manifest with the text of each image")
    if group_col is not None and group_col not in images:
        raise DatasetError(f"no column {group_col!r} in dataset {dataset_name!r}; "
                           f"columns: {', '.join(map(str, images.columns))}")
    backend = model.backend
    require_text(backend, "caption retrieval evaluation")
    embed(dataset_name, model)
    emb = load_embeddings(dataset_name, model)
    rows = np.flatnonzero(has)
    captions = cap.iloc[rows].astype(str).tolist()
    text_vecs = np.concatenate([backend.encode_texts(captions[i:i + 256]) for i in range(0, len(captions), 256)])
    groups = images[group_col].iloc[rows].tolist() if group_col else None
    table = evaluate_retrieval(emb.take(rows), text_vecs, groups, ks, pooled,
                               image_keys=images["id"].iloc[rows].tolist(), beyond_gallery=beyond_gallery)
    path = None
    if write:
        from .files import result_path, write_table

        path = write_table(result_path(dataset_name, f"retrieval-{backend.fingerprint[:12]}.csv", out), table)
    return RetrievalEval(dataset_name, spec, table, int(len(rows)), int((~has).sum()), group_col, pooled, path)
