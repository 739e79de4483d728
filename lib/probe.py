"""Linear probes: how much of the labels a frozen model's embeddings already separate.

A standardised logistic regression on cached vectors, the MedGore protocol: image
embeddings, caption embeddings from the same model's text tower, or both concatenated
(image-only, text-only, multimodal). Evaluated by stratified k-fold cross-validation
(every image gets an out-of-fold prediction) or by the dataset's ``split`` column.

Each content id is used once (byte-identical copies would otherwise sit on both sides of
a fold); rows without a label, and in text mode rows without a caption, are dropped and
counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from .errors import WorkbenchError

INPUTS = ("image", "text", "both")


class ProbeError(WorkbenchError):
    """A probe cannot run on this data (too few rows or classes, no captions...)."""


@dataclass
class ProbeResult:
    """Outcome of :func:`run_probe`.

    Attributes
    ----------
    metrics : dict
        :func:`lib.metrics.classification_metrics` of the out-of-fold (or test) predictions.
    predictions : DataFrame, one row per evaluated image
        ``id, row, label, fold`` (``-1``: a training row of a split run, not predicted),
        ``p:<class>`` per class, ``pred`` and, for two classes, ``score`` (the positive
        class's probability).
    dropped : dict
        Rows left out and why (``no_label``, ``no_caption``, ``duplicate``, ``no_split``,
        ``near_duplicate_of_test``: training images near-identical to a test image, split mode).
    """

    dataset: str
    spec: str
    input: str
    mode: str
    classes: list
    positive: object
    metrics: dict
    predictions: pd.DataFrame
    dropped: dict = field(default_factory=dict)
    n_features: int = 0

    def metrics_row(self) -> dict:
        """Scalar metrics plus what was probed, as one flat row."""
        keep = {k: v for k, v in self.metrics.items() if np.isscalar(v) or v is None}
        return {"dataset": self.dataset, "model": self.spec, "input": self.input, "mode": self.mode,
                "features": self.n_features, **keep,
                **{f"dropped_{k}": v for k, v in self.dropped.items()}}

    def save(self, path: str | Path) -> list[Path]:
        """Predictions to ``path`` (parquet) and the metrics row beside it (``-metrics.csv``)."""
        from .files import write_table

        path = write_table(Path(path), self.predictions)
        mpath = write_table(path.with_name(f"{path.stem}-metrics.csv"), pd.DataFrame([self.metrics_row()]))
        return [path, mpath]


# ------------------------------------------------------------------------- features


def caption_vectors(backend, captions: list[str], *, cache: bool = True) -> np.ndarray:
    """Text-tower vectors of ``captions`` -> (n, dim) float32 unit rows, cached on disk.

    The cache key is the model fingerprint plus the exact caption list.
    """
    path = None
    if cache:
        h = hashlib.sha256(backend.fingerprint.encode())
        for c in captions:
            h.update(c.encode())
            h.update(b"\0")
        path = config.cache_dir() / "text" / backend.fingerprint[:24] / f"{h.hexdigest()[:24]}.npy"
        if path.exists():
            vec = np.load(path)
            if vec.shape[0] == len(captions):
                return vec
    vec = np.asarray(backend.encode_texts(list(captions)), dtype=np.float32)
    if path is not None:
        from .files import write_npy

        write_npy(path, vec)
    return vec


def probe_frame(images: pd.DataFrame, input: str = "image") -> tuple[pd.DataFrame, dict]:
    """The dataset rows a probe uses: one per content id, labelled (and captioned for text).

    Returns
    -------
    (rows, dropped) : DataFrame with the original row number in ``row``, and counts of
        what was left out.
    """
    if input not in INPUTS:
        raise ValueError(f"input {input!r} not in {INPUTS}")
    df = images.reset_index(drop=True).assign(row=np.arange(len(images)))
    dropped = {}
    first = ~df["id"].duplicated()
    dropped["duplicate"] = int((~first).sum())
    df = df[first]
    has_label = df["label"].notna()
    dropped["no_label"] = int((~has_label).sum())
    df = df[has_label]
    if input in ("text", "both"):
        cap = df["caption"] if "caption" in df else pd.Series(pd.NA, index=df.index)
        has_cap = cap.notna() & (cap.astype("string").str.strip().str.len() > 0)
        dropped["no_caption"] = int((~has_cap).sum())
        df = df[has_cap.fillna(False).astype(bool)]
        if df.empty:
            raise ProbeError("no labelled row has a caption: text and multimodal probes need captions")
    return df.reset_index(drop=True), dropped


def probe_features(name: str, model, input: str = "image") -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Features of dataset ``name`` under ``model`` (a :class:`lib.models.ResolvedModel` or a
    spec string) for a probe.

    Returns
    -------
    X : ndarray of shape (n_rows, dim) or (n_rows, 2 * dim) for ``both``
        Image vectors (from the embedding cache), caption vectors, or both side by side.
    rows : DataFrame (n_rows, ...)
        The dataset rows, aligned with ``X`` (see :func:`probe_frame`).
    dropped : dict
    """
    from . import dataset as ds_mod
    from .embeddings import load_embeddings
    from .models import resolve_model

    model = resolve_model(model)
    ds = ds_mod.load(name)
    rows, dropped = probe_frame(ds.images, input)
    parts = []
    if input in ("image", "both"):
        emb = load_embeddings(name, model)
        parts.append(emb.take(rows["row"].to_numpy()))
    if input in ("text", "both"):  # only the text tower needs the model loaded
        parts.append(caption_vectors(model.backend, rows["caption"].astype(str).tolist()))
    return np.hstack(parts), rows, dropped


# ---------------------------------------------------------------------------- probing


def default_positive(classes, policy=None) -> object:
    """The positive class of a binary task: the class the label policy
    (:func:`lib.sensitivity.positive_class`; default: the shipped vocabulary) calls
    sensitive, e.g. ``sensitive`` or MedGore's ``Blur``; else 1/True for 0/1 labels; else
    the last of two (a task the policy knows nothing about: say ``--positive``); None for more."""
    from .sensitivity import positive_class

    classes = list(classes)
    pos = positive_class(classes, policy)
    if pos is not None:
        return pos
    if len(classes) == 2:
        return classes[1]
    return None


def make_probe(C: float = 1.0, class_weight: str | None = None, seed: int = 0):
    """The probe: StandardScaler + L2 logistic regression (lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight=class_weight, max_iter=5000,
                                                              random_state=seed))


def linear_probe(X: np.ndarray, y, *, folds: int = 5, train_mask: np.ndarray | None = None,
                 C: float = 1.0, class_weight: str | None = None, seed: int = 0,
                 positive=None) -> tuple[dict, pd.DataFrame]:
    """Fit and evaluate a linear probe.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    folds : int, default 5
        Stratified k-fold (shuffled with ``seed``): each sample is predicted by the model
        trained on the other folds. Ignored when ``train_mask`` is given.
    train_mask : bool array of shape (n_samples,), optional
        Train on these samples, predict the others (``fold`` = 0 for predicted, -1 for training).
    positive : label, optional
        Positive class of a binary task (default: :func:`default_positive`).

    Returns
    -------
    (metrics, predictions) : dict from :func:`lib.metrics.classification_metrics` on the
        predicted samples, and a DataFrame (n_samples, ...) with ``fold``, ``p:<class>``,
        ``pred`` and (binary) ``score``; rows that were not predicted hold NaN.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from .metrics import classification_metrics

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be (n_samples, n_features) matching y ({len(y)}), got {X.shape}")
    classes = sorted(pd.unique(y).tolist())
    if len(classes) < 2:
        raise ProbeError(f"a probe needs two or more classes; the rows used have only {classes}")
    model = make_probe(C, class_weight, seed)
    proba = np.full((len(y), len(classes)), np.nan)
    fold = np.full(len(y), -1, dtype=np.int64)
    if train_mask is None:
        counts = pd.Series(y).value_counts()
        if counts.min() < folds:
            raise ProbeError(f"class {counts.idxmin()!r} has only {counts.min()} rows; use at most that many folds")
        if folds < 2:
            raise ProbeError("cross-validation needs at least 2 folds")
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)
    else:
        train_mask = np.asarray(train_mask, dtype=bool)
        if train_mask.all() or not train_mask.any():
            raise ProbeError("the split has no test rows" if train_mask.all() else "the split has no training rows")
        if len(pd.unique(y[train_mask])) < 2:
            raise ProbeError("the training split holds a single class")
        splits = [(np.flatnonzero(train_mask), np.flatnonzero(~train_mask))]
    for f, (tr, te) in enumerate(splits):
        m = clone(model).fit(X[tr], y[tr])
        cols = [classes.index(c) for c in m.classes_]
        proba[np.ix_(te, cols)] = m.predict_proba(X[te])
        proba[te] = np.nan_to_num(proba[te], nan=0.0)  # a class absent from a training fold gets 0
        fold[te] = f
    done = fold >= 0
    positive = default_positive(classes) if positive is None else positive
    metrics = classification_metrics(y[done], proba[done], labels=classes,
                                     positive=positive if len(classes) == 2 else None)
    pred = pd.DataFrame({"fold": fold})
    for i, c in enumerate(classes):
        pred[f"p:{c}"] = proba[:, i]
    pred["pred"] = pd.Series(np.asarray(classes, dtype=object)[np.nan_to_num(proba, nan=-1).argmax(1)]).where(done)
    if len(classes) == 2:
        pred["score"] = proba[:, classes.index(positive)]
    return metrics, pred


def run_probe(name: str, model, input: str = "image", *, folds: int = 5, use_split: bool = False,
              train_values=("train",), test_values=("test",), C: float = 1.0, class_weight: str | None = None,
              seed: int = 0, positive=None, exclude_ids=None) -> ProbeResult:
    """Probe dataset ``name`` with ``model`` (a :class:`lib.models.ResolvedModel`, or a spec
    string for its defaults; embeddings must be cached for image input).

    ``use_split`` trains on rows whose ``split`` is in ``train_values`` and tests on
    ``test_values`` (other rows are dropped as ``no_split``); otherwise ``folds``-fold CV.
    In split mode, ``exclude_ids`` (content ids) are left out of training, counted in
    ``dropped`` as ``near_duplicate_of_test``: ``python -m lib probe --split`` passes the
    near-duplicates of the test images by the model-free perceptual hash
    (:func:`lib.quality.split_exclusions`), the same images for every model compared.
    ``positive`` is the positive class of a two-class task (default: the one the dataset's
    label policy calls sensitive, :func:`default_positive`).
    """
    from .models import resolve_model
    from .sensitivity import load_policy

    model = resolve_model(model)
    spec = model.spec
    X, rows, dropped = probe_features(name, model, input)
    train_mask = None
    if use_split:
        split = rows["split"].astype("string")
        used = split.isin([*train_values, *test_values]).fillna(False).to_numpy(dtype=bool)
        dropped["no_split"] = int((~used).sum())
        if not used.any():
            raise ProbeError(f"dataset {name!r} has no rows with split in {list(train_values) + list(test_values)}")
        X, rows = X[used], rows[used].reset_index(drop=True)
        train_mask = rows["split"].isin(list(train_values)).to_numpy()
        if exclude_ids is not None:
            ids = rows["id"].astype(str).to_numpy()
            drop = train_mask & np.isin(ids, list(set(map(str, exclude_ids))))
            dropped["near_duplicate_of_test"] = int(drop.sum())
            X, rows, train_mask = X[~drop], rows[~drop].reset_index(drop=True), train_mask[~drop]
    y = rows["label"].astype(str).to_numpy()
    if len(set(y)) < 2:
        lost = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items() if v)
        raise ProbeError(f"the {len(y)} usable rows of {name!r} for a {input} probe are all {y[0]!r}"
                         + (f" (rows left out: {lost})" if lost else ""))
    classes = sorted(set(y))
    if positive is not None and positive not in classes:
        raise ProbeError(f"--positive {positive!r} is not a label of the rows probed ({', '.join(classes)})")
    if positive is None and len(classes) == 2:
        positive = default_positive(classes, load_policy(name))
    metrics, pred = linear_probe(X, y, folds=folds, train_mask=train_mask, C=C, class_weight=class_weight,
                                 seed=seed, positive=positive)
    out = pd.concat([rows[["id", "row", "label"]].reset_index(drop=True), pred], axis=1)
    if use_split:
        out = out[out["fold"] >= 0].reset_index(drop=True)
    return ProbeResult(name, spec, input, "split" if use_split else f"cv{folds}", metrics["labels"],
                       metrics["positive"], metrics, out, dropped, X.shape[1])


def default_path(name: str, spec: str, input: str) -> Path:
    """Where the CLI keeps a probe's predictions: ``<home>/results/<dataset>/probe-<model>-<input>.parquet``."""
    from .files import results_dir, slug

    return results_dir(name) / f"probe-{slug(spec)}-{input}.parquet"
