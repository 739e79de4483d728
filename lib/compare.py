"""Two or more models on one dataset: who scores better, where they disagree, how alike they see it.

* :func:`metrics_table`: one row of :func:`lib.metrics.classification_metrics` per model,
  on the images every model predicted;
* :func:`agreement_table` / :func:`disagreements`: per-image predictions side by side;
* :func:`score_correlation`: Spearman's rho and Kendall's tau between models' scores;
* :func:`jaccard_at_k` / :func:`neighbourhood_overlap`: mean Jaccard of each image's k
  nearest neighbours in two embedding spaces (exact search), i.e. how much two models
  agree on what looks alike, labels aside.

A prediction table has one row per image: ``id``, ``label`` (truth), ``pred`` and
optionally ``score`` (positive-class score) and ``p:<class>`` probability columns, as
written by :func:`lib.probe.run_probe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from .errors import WorkbenchError

TASKS = ("probe", "none")


def _common(predictions: Mapping[str, pd.DataFrame]) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Prediction tables indexed by id, restricted to the ids present (and predicted) in all."""
    if len(predictions) < 1:
        raise ValueError("no prediction tables given")
    tables = {}
    for model, df in predictions.items():
        for col in ("id", "label", "pred"):
            if col not in df:
                raise ValueError(f"prediction table of {model!r} lacks column {col!r}")
        d = df[df["pred"].notna()].drop_duplicates("id").set_index("id")
        tables[model] = d
    ids = sorted(set.intersection(*(set(d.index) for d in tables.values())))
    if not ids:
        raise WorkbenchError("the models have no predicted image in common")
    return ids, {m: d.loc[ids] for m, d in tables.items()}


def metrics_table(predictions: Mapping[str, pd.DataFrame], *, positive=None, policy=None) -> pd.DataFrame:
    """One row per model of scalar metrics, on the images all models predicted.

    Probability columns ``p:<class>`` are used when present (AUC included), else ``score``
    (binary), else the predicted labels. The positive class of a binary task is
    ``positive``, else the one the label ``policy`` calls sensitive.
    """
    from .metrics import classification_metrics
    from .probe import default_positive

    ids, tables = _common(predictions)
    rows = []
    for model, d in tables.items():
        y = d["label"].astype(str).to_numpy()
        pcols = [c for c in d.columns if c.startswith("p:")]
        if pcols:
            classes = [c[2:] for c in pcols]
            pos = positive if positive is not None else default_positive(classes, policy)
            m = classification_metrics(y, d[pcols].to_numpy(dtype=float), labels=classes,
                                       positive=pos if len(classes) == 2 else None)
        elif "score" in d:
            pos = positive if positive is not None else default_positive(sorted(set(y)), policy)
            m = classification_metrics(y, d["score"].to_numpy(dtype=float), positive=pos)
        else:
            m = classification_metrics(y, d["pred"].astype(str).to_numpy(), positive=positive)
        rows.append({"model": model, **{k: v for k, v in m.items() if np.isscalar(v) or v is None}})
    return pd.DataFrame(rows)


def for_display(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A metrics table as people read it: columns that are empty for every model dropped,
    numbers rounded to ``digits``, a metric undefined for one model shown as ``—``."""
    t = table.dropna(axis=1, how="all")
    out = pd.DataFrame(index=t.index)
    for c in t.columns:
        col = t[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out[c] = [("—" if v != v else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))) for v in col]
        else:
            out[c] = ["—" if v is None or (isinstance(v, float) and v != v) else str(v) for v in col]
    return out


def agreement_table(predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per image: truth, each model's prediction and correctness, how many models are right.

    Returns
    -------
    DataFrame, one row per common id: ``id, label, pred:<model>..., correct:<model>...,
    n_correct, all_agree`` (all models predict the same label).
    """
    ids, tables = _common(predictions)
    first = next(iter(tables.values()))
    out = pd.DataFrame({"id": ids, "label": first["label"].to_numpy()})
    preds = []
    for model, d in tables.items():
        out[f"pred:{model}"] = d["pred"].to_numpy()
        preds.append(d["pred"].astype(str).to_numpy())
    for model in tables:
        out[f"correct:{model}"] = out[f"pred:{model}"].astype(str).to_numpy() == out["label"].astype(str).to_numpy()
    out["n_correct"] = out[[f"correct:{m}" for m in tables]].sum(axis=1).astype(int)
    stacked = np.stack(preds, axis=1)
    out["all_agree"] = (stacked == stacked[:, :1]).all(axis=1)
    return out


def disagreements(agreement: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`agreement_table` where the models predict different labels, fewest right first."""
    return agreement[~agreement["all_agree"]].sort_values(["n_correct", "id"], ignore_index=True)


def score_correlation(scores: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Rank correlation of every pair of models' scores (Series indexed by image id).

    Returns
    -------
    DataFrame, one row per pair: ``a, b, n`` (common ids), ``spearman, spearman_p, kendall,
    kendall_p`` (scipy; tau-b, which handles ties).
    """
    from scipy.stats import kendalltau, spearmanr

    rows = []
    for a, b in combinations(scores, 2):
        j = pd.concat([scores[a].rename("a"), scores[b].rename("b")], axis=1, join="inner").dropna()
        if len(j) < 2:
            rows.append({"a": a, "b": b, "n": len(j), "spearman": np.nan, "spearman_p": np.nan,
                         "kendall": np.nan, "kendall_p": np.nan})
            continue
        rho = spearmanr(j["a"], j["b"])
        tau = kendalltau(j["a"], j["b"])
        rows.append({"a": a, "b": b, "n": len(j), "spearman": float(rho.statistic),
                     "spearman_p": float(rho.pvalue), "kendall": float(tau.statistic),
                     "kendall_p": float(tau.pvalue)})
    return pd.DataFrame(rows, columns=["a", "b", "n", "spearman", "spearman_p", "kendall", "kendall_p"])


# ----------------------------------------------------------------- neighbourhoods


def knn_rows(X: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest other rows of each row by cosine (faiss flat inner product).

    Parameters
    ----------
    X : ndarray of shape (n, dim), L2-normalised rows
    k : int, < n

    Returns
    -------
    ndarray of shape (n, k), int64 row numbers, nearest first, the row itself excluded.
    """
    import faiss

    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} rows, got {k}")
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    _, found = index.search(X, k + 1)
    is_self = found == np.arange(n)[:, None]
    # Normally the row finds itself first; with exact-duplicate vectors it may sit anywhere
    # in a tie, or just past k+1: drop it where present, else drop the last result.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(n), drop] = False
    return found[keep].reshape(n, k)


def jaccard_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard index of row i of ``a`` with row i of ``b``; (n, k) arrays of distinct ids per row -> (n,)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    s = np.sort(np.concatenate([a, b], axis=1), axis=1)
    inter = (s[:, 1:] == s[:, :-1]).sum(axis=1)  # ids are distinct within a row: a repeat is shared
    return inter / (a.shape[1] + b.shape[1] - inter)


def jaccard_at_k(A: np.ndarray, B: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-row Jaccard@k between two embeddings of the same rows: (n, da), (n, db) -> (n,)."""
    if len(A) != len(B):
        raise ValueError(f"the embeddings have different row counts: {len(A)} vs {len(B)}")
    return jaccard_rows(knn_rows(A, k), knn_rows(B, k))


def resolve_all(models: Sequence, random_weights: bool = False) -> list:
    """Specs or ResolvedModels -> ResolvedModels, one per spec; ``random_weights`` applies to
    the models that have weights (``color`` has none)."""
    from .models import has_weights, resolve_model

    out = [m if not isinstance(m, str) else resolve_model(m, random_weights=random_weights and has_weights(m))
           for m in models]
    return list({m.spec: m for m in out}.values())


def neighbourhood_overlap(name: str, models: Sequence, k: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Jaccard@k between every pair of models' spaces on dataset ``name`` (one row per content id).

    ``models``: :class:`lib.models.ResolvedModel` values (or spec strings, for their defaults).

    Returns
    -------
    (pairs, per_item) : ``a, b, k, n, mean_jaccard, median_jaccard, sd_jaccard`` per pair,
        and ``id`` plus one ``jaccard:<a>|<b>`` column per pair.
    """
    from . import dataset as ds_mod
    from .embeddings import load_embeddings

    models = resolve_all(models)
    specs = [m.spec for m in models]
    ds = ds_mod.load(name)
    rows = np.flatnonzero(~ds.images["id"].duplicated().to_numpy())  # one row per content id
    neigh = {m.spec: knn_rows(load_embeddings(name, m).take(rows), k) for m in models}
    per_item = pd.DataFrame({"id": ds.images["id"].to_numpy()[rows]})
    pairs = []
    for a, b in combinations(specs, 2):
        j = jaccard_rows(neigh[a], neigh[b])
        per_item[f"jaccard:{a}|{b}"] = j
        pairs.append({"a": a, "b": b, "k": k, "n": len(j), "mean_jaccard": float(j.mean()),
                      "median_jaccard": float(np.median(j)), "sd_jaccard": float(j.std(ddof=1)) if len(j) > 1
                      else np.nan})
    return pd.DataFrame(pairs), per_item


# ---------------------------------------------------------------------- all at once


@dataclass
class ComparisonResult:
    dataset: str
    specs: list[str]
    k: int
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    agreement: pd.DataFrame = field(default_factory=pd.DataFrame)
    correlation: pd.DataFrame = field(default_factory=pd.DataFrame)
    overlap: pd.DataFrame = field(default_factory=pd.DataFrame)
    overlap_items: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def disagreements(self) -> pd.DataFrame:
        return disagreements(self.agreement) if len(self.agreement) else self.agreement

    def save(self, folder, prefix: str = "compare") -> list:
        """CSV tables and parquet per-item tables under ``folder``."""
        from pathlib import Path

        from .files import write_table

        folder = Path(folder)
        out = []
        for name, df in (("metrics", self.metrics), ("correlation", self.correlation), ("overlap", self.overlap)):
            if len(df):
                out.append(write_table(folder / f"{prefix}-{name}.csv", df))
        for name, df in (("agreement", self.agreement), ("overlap-items", self.overlap_items)):
            if len(df):
                out.append(write_table(folder / f"{prefix}-{name}.parquet", df))
        return out


def compare_models(name: str, models: Sequence, k: int = 10, *, task: str = "probe", input: str = "image",
                   folds: int = 5, seed: int = 0, positive=None) -> ComparisonResult:
    """Compare models on dataset ``name``: neighbourhood overlap always; with ``task='probe'``
    also a cross-validated linear probe per model (:func:`lib.probe.run_probe`), its metrics,
    per-image agreement and score correlation.

    ``models``: :class:`lib.models.ResolvedModel` values (or spec strings, for their
    defaults; :func:`resolve_all` applies one ``random_weights`` to a list of specs)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} not in {TASKS}")
    models = resolve_all(models)
    specs = [m.spec for m in models]
    if len(specs) < 2:
        raise WorkbenchError("give at least two different models to compare")
    res = ComparisonResult(name, specs, k)
    res.overlap, res.overlap_items = neighbourhood_overlap(name, models, k)
    if task == "probe":
        from .probe import run_probe
        from .sensitivity import load_policy

        preds = {m.spec: run_probe(name, m, input, folds=folds, seed=seed, positive=positive).predictions
                 for m in models}
        res.metrics = metrics_table(preds, positive=positive, policy=load_policy(name))
        res.agreement = agreement_table(preds)
        if all("score" in p for p in preds.values()):
            res.correlation = score_correlation({s: p.set_index("id")["score"] for s, p in preds.items()})
    return res
