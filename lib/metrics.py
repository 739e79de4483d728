"""Scores of a classifier or of annotators: labels and scores in, numbers and tables out.

Pure functions, no I/O. scikit-learn does the standard metrics; this module adds what it
lacks for the workbench: Double F1 (the mean of the positive- and negative-class F1 used
in the Gore censoring thesis), threshold selection on a validation split, Gwet's AC1,
the MedGore beta-binomial homogeneity estimate and per-slice (fairness) tables.

Conventions
-----------
* A ratio whose denominator is zero (precision with nothing flagged, recall with no
  positives, AUC with one class) is NaN, never a silent 0 or 1.
* Macro averages come in two named conventions, side by side in
  :func:`classification_metrics`:

  - ``precision_macro``, ``recall_macro``, ``f1_macro``: a class whose ratio is undefined
    is skipped (scikit-learn's ``zero_division=np.nan``), the workbench's own reading;
  - ``precision_macro_zero``, ``recall_macro_zero``, ``f1_macro_zero``: an undefined
    ratio counts as 0 (``zero_division=0``, scikit-learn's default), the convention of
    MedGore's tables. Its degenerate zero-shot row (everything predicted as one class on a
    balanced set) is precision 25.0 / recall 50.0 / F1 33.3 under it, 50 / 50 / 33.3
    under the NaN-skipping one.
* Binary tasks also report the negative class (``precision_negative`` = TN / (TN + FN),
  ``recall_negative`` = ``specificity`` = TN / (TN + FP)), the Gore censoring thesis's
  Double F1 (mean of the positive- and negative-class F1) and its weighted Double F1
  (``double_f1_weighted`` = 0.75 F1(positive) + 0.25 F1(negative) by default,
  :data:`DOUBLE_F1_WEIGHTS`).
* Binary scores mean "higher is more positive"; a sample is flagged when
  ``score >= threshold`` (the same rule as :func:`sklearn.metrics.precision_recall_curve`).
* Empty input, mismatched lengths and missing values raise :class:`ValueError` naming
  the argument.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "DOUBLE_F1_WEIGHTS",
    "EB_RULES",
    "agreement",
    "beta_estimate",
    "classification_metrics",
    "cohen_kappa",
    "confusion_table",
    "double_f1",
    "eb_operating_points",
    "gwet_ac1",
    "gwet_ac1_from_table",
    "mask_metrics",
    "metrics_at_threshold",
    "multilabel_ap",
    "operating_points",
    "per_class_report",
    "segmentation_metrics",
    "select_thresholds",
    "sliced_metrics",
]

#: Weights (positive class, negative class) of the thesis's weighted Double F1.
DOUBLE_F1_WEIGHTS = (0.75, 0.25)

# --------------------------------------------------------------------------- validation


def _labels_1d(values: Any, name: str) -> np.ndarray:
    """Labels as a 1-D array with no missing values (ValueError naming ``name`` otherwise)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: there are no samples to score")
    missing = int(pd.isna(arr).sum())
    if missing:
        raise ValueError(f"{name} has {missing} missing value(s) (None/NaN); drop those samples first")
    return arr


def _scores_1d(values: Any, name: str) -> np.ndarray:
    """Scores as a finite float 1-D array."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: there are no samples to score")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric scores, got dtype {arr.dtype}") from exc
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN/inf)")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} samples but {name_b} has {len(b)}")


def _is_zero_one(labels: Sequence) -> bool:
    """True for the label sets {0, 1} and {False, True}, whose positive class is obvious."""
    try:
        return len(labels) == 2 and set(labels) == {0, 1}
    except TypeError:  # unhashable labels
        return False


def _binary(y: np.ndarray, positive: Any) -> np.ndarray:
    """Boolean (n,) array: True where ``y == positive``; every other label is negative."""
    return np.asarray(y == positive, dtype=bool)


def _ratio(num: Any, den: Any) -> Any:
    """num / den with NaN where den == 0 (works on scalars and arrays)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)
    return out[()] if out.ndim == 0 else out


def _check_weights(weights: Sequence[float]) -> tuple[float, float]:
    w = tuple(float(v) for v in weights)
    if len(w) != 2 or not all(np.isfinite(w)) or min(w) < 0 or not np.isclose(sum(w), 1.0):
        raise ValueError(f"double_f1 weights must be two non-negative numbers summing to 1, got {weights}")
    return w[0], w[1]


def _count_metrics(tp: Any, fp: Any, fn: Any, tn: Any,
                   weights: Sequence[float] = DOUBLE_F1_WEIGHTS) -> dict[str, Any]:
    """Binary metrics from confusion counts (scalars or equal-shape arrays).

    F1 is written as 2tp / (2tp + fp + fn): identical to the harmonic mean of precision
    and recall where both exist, 0 when tp == 0 but the class occurs, and NaN only when
    the class occurs neither in the truth nor in the predictions. ``weights`` are the
    (positive, negative) weights of ``double_f1_weighted``.
    """
    w_pos, w_neg = _check_weights(weights)
    f1_pos = _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)
    f1_neg = _ratio(2 * np.asarray(tn), 2 * np.asarray(tn) + fn + fp)
    specificity = _ratio(tn, np.asarray(tn) + fp)
    return {
        "precision": _ratio(tp, np.asarray(tp) + fp),
        "recall": _ratio(tp, np.asarray(tp) + fn),
        "f1": f1_pos,
        "precision_negative": _ratio(tn, np.asarray(tn) + fn),
        "recall_negative": specificity,
        "specificity": specificity,
        "f1_negative": f1_neg,
        "double_f1": (np.asarray(f1_pos) + f1_neg) / 2,
        "double_f1_weighted": w_pos * np.asarray(f1_pos) + w_neg * np.asarray(f1_neg),
        "accuracy": _ratio(np.asarray(tp) + tn, np.asarray(tp) + fp + fn + tn),
    }


def _binary_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of boolean truth (n,) vs scores (n,); NaN when only one class is present."""
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, scores))


def _binary_ap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision; NaN without positives (it is undefined, sklearn would warn)."""
    if not truth.any():
        return float("nan")
    return float(average_precision_score(truth, scores))


# ----------------------------------------------------------------- classification metrics


def double_f1(y_true: Any, y_pred: Any, *, positive: Any = 1,
              weights: Sequence[float] = (0.5, 0.5)) -> float:
    """Double F1: the mean of the positive-class F1 and the negative-class F1.

    The Gore censoring thesis reports it because the plain F1 ignores how well the
    (majority) negative class is kept: Double F1 = 1/2 F1(positive) + 1/2 F1(negative).
    Its weighted variant is ``weights=DOUBLE_F1_WEIGHTS`` (0.75 positive, 0.25 negative).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Labels; every label other than ``positive`` counts as negative.
    positive : label, default 1
    weights : (w_positive, w_negative), non-negative, summing to 1; default (0.5, 0.5)

    Returns
    -------
    float
        NaN when a class occurs neither in ``y_true`` nor in ``y_pred`` (its F1 is undefined).
    """
    w = _check_weights(weights)
    t = _binary(_labels_1d(y_true, "y_true"), positive)
    p = _binary(_labels_1d(y_pred, "y_pred"), positive)
    _same_length(t, p, "y_true", "y_pred")
    per_class = f1_score(t, p, labels=[True, False], average=None, zero_division=np.nan)
    return float(w[0] * per_class[0] + w[1] * per_class[1])


def confusion_table(
    y_true: Any,
    y_pred: Any,
    *,
    labels: Sequence | None = None,
    true_name: str = "true",
    pred_name: str = "predicted",
) -> pd.DataFrame:
    """Confusion matrix as a labelled DataFrame.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : sequence of labels, optional
        Row/column order; default: sorted union of the labels seen. Labels outside this
        list raise ValueError (scikit-learn would silently drop those samples).

    Returns
    -------
    DataFrame of shape (n_labels, n_labels)
        Integer counts; rows are ``y_true`` (index name ``true_name``), columns are
        ``y_pred`` (columns name ``pred_name``).
    """
    t = _labels_1d(y_true, "y_true")
    p = _labels_1d(y_pred, "y_pred")
    _same_length(t, p, "y_true", "y_pred")
    labels = _resolve_labels(labels, t, p)
    return _labelled_confusion(_encode(t, labels), _encode(p, labels), labels, true_name, pred_name)


def per_class_report(y_true: Any, y_pred: Any, *, labels: Sequence | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : sequence of labels, optional
        Row order; default: sorted union of the labels seen.

    Returns
    -------
    DataFrame of shape (n_labels, 4)
        Index: label; columns ``precision, recall, f1, support`` (support = count in
        ``y_true``). Undefined ratios are NaN.
    """
    t = _labels_1d(y_true, "y_true")
    p = _labels_1d(y_pred, "y_pred")
    _same_length(t, p, "y_true", "y_pred")
    labels = _resolve_labels(labels, t, p)
    prec, rec, f1, sup = precision_recall_fscore_support(
        _encode(t, labels), _encode(p, labels), labels=np.arange(len(labels)), average=None, zero_division=np.nan
    )
    return pd.DataFrame(
        {"precision": prec, "recall": rec, "f1": f1, "support": sup.astype(int)},
        index=pd.Index(labels, name="label"),
    )


def _resolve_labels(labels: Sequence | None, *arrays: np.ndarray) -> list:
    """Explicit labels (checked to cover every value) or the sorted union of the values."""
    seen = _distinct(*arrays)
    if labels is None:
        return _sorted_labels(seen)
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels}")
    unknown = [v for v in seen if v not in set(labels)]
    if unknown:
        raise ValueError(f"values {unknown[:10]} are not in labels={labels}")
    return labels


def _distinct(*arrays: np.ndarray) -> list:
    """Distinct values over the arrays (np.unique where the dtype sorts, a dict otherwise)."""
    seen: dict = {}
    for a in arrays:
        try:
            values = np.unique(a).tolist()
        except TypeError:  # object arrays mixing types
            values = np.asarray(a, dtype=object).tolist()
        seen.update(dict.fromkeys(values))
    return list(seen)


def _sorted_labels(values: Any) -> list:
    values = list(dict.fromkeys(values))
    try:
        return sorted(values)
    except TypeError:  # mixed types: sort by text, deterministic
        return sorted(values, key=str)


def _encode(values: np.ndarray, labels: list) -> np.ndarray:
    """Integer codes (n,) of ``values`` in ``labels`` order.

    scikit-learn is fed codes, not labels: it rejects object arrays of numbers ("unknown"
    target type) and mixed types, whereas codes work for any hashable labels.
    """
    codes = pd.Categorical(values, categories=labels).codes.astype(np.intp)
    if (codes < 0).any():  # callers check first; this guards against a silent drop
        raise ValueError(f"values outside labels={labels}")
    return codes


def _confusion_codes(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Counts (k, k) of code pairs: rows ``t``, columns ``p``.

    The same table as sklearn's confusion_matrix, which warns on every 1x1 table even
    with ``labels`` given; a single category is a legitimate case here.
    """
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _labelled_confusion(t: np.ndarray, p: np.ndarray, labels: list, true_name: str, pred_name: str) -> pd.DataFrame:
    """Confusion DataFrame (k, k) from integer codes ``t``, ``p`` of shape (n,)."""
    cm = _confusion_codes(t, p, len(labels))
    return pd.DataFrame(
        cm, index=pd.Index(labels, name=true_name), columns=pd.Index(labels, name=pred_name)
    )


def classification_metrics(
    y_true: Any,
    y_score_or_pred: Any,
    *,
    positive: Any = None,
    threshold: float = 0.5,
    labels: Sequence | None = None,
    double_f1_weights: Sequence[float] = DOUBLE_F1_WEIGHTS,
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 (both conventions), ROC AUC and support, binary or multiclass.

    What ``y_score_or_pred`` is decides how it is read:

    * float array of shape (n_samples,): scores of the positive class (binary only);
      flagged as positive when ``score >= threshold``;
    * array of shape (n_samples, n_classes): class probabilities/scores, columns in the
      order of ``labels``; the prediction is the arg-max column;
    * any other 1-D array (int, bool, str): predicted labels; no AUC (NaN).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_score_or_pred : array-like of shape (n_samples,) or (n_samples, n_classes)
    positive : label, optional
        The positive class of a binary task. Default: 1 (or True) when the labels are
        {0, 1}; required for binary scores with other labels (e.g. "sensitive").
    threshold : float, default 0.5
        Used only with 1-D scores.
    labels : sequence of labels, optional
        All classes, in column order for a probability matrix. Default: the sorted labels
        seen ({0, 1} whenever only 0/1 occur).
    double_f1_weights : (w_positive, w_negative), default :data:`DOUBLE_F1_WEIGHTS`
        Weights of ``double_f1_weighted``.

    Returns
    -------
    dict
        ``n, labels, positive, threshold, accuracy``;
        ``precision_macro, recall_macro, f1_macro`` (undefined per-class ratios skipped,
        ``zero_division=nan``) and ``precision_macro_zero, recall_macro_zero,
        f1_macro_zero`` (undefined ratios counted as 0, ``zero_division=0``: MedGore's
        tables and scikit-learn's default); ``roc_auc`` (binary: AUC of the positive-class
        score; multiclass: macro one-vs-rest over classes present with both outcomes),
        ``support`` ({label: count in y_true}). With a known positive class of a two-class
        task also ``precision, recall, f1, precision_negative, recall_negative,
        specificity, f1_negative, double_f1, double_f1_weighted`` and, with scores,
        ``average_precision``.
    """
    t = _labels_1d(y_true, "y_true")
    raw = np.asarray(y_score_or_pred)
    if raw.ndim == 2:
        mode = "proba"
    elif raw.ndim == 1 and raw.dtype.kind == "f":
        mode = "scores"
    elif raw.ndim == 1:
        mode = "labels"
    else:
        raise ValueError(f"y_score_or_pred must have shape (n,) or (n, k), got {raw.shape}")
    if raw.shape[0] == 0:
        raise ValueError("y_score_or_pred is empty: there are no samples to score")
    _same_length(t, raw, "y_true", "y_score_or_pred")

    if mode == "labels":
        pred = _labels_1d(raw, "y_score_or_pred")
        labels = _resolve_labels(labels, t, pred)
        scores = None
    else:
        seen = _sorted_labels(_distinct(t))
        if labels is None:
            if _is_zero_one(seen) or (len(seen) == 1 and seen[0] in (0, 1) and positive in (None, 0, 1)):
                labels = [False, True] if t.dtype == bool else [0, 1]
            elif mode == "proba" and len(seen) != raw.shape[1]:
                raise ValueError(
                    f"y_true has {len(seen)} classes {seen[:10]} but the score matrix has "
                    f"{raw.shape[1]} columns: pass labels= naming the columns in order"
                )
            else:
                labels = seen
        labels = _resolve_labels(labels, t)
        if mode == "proba":
            scores = _scores_1d(raw.reshape(-1), "y_score_or_pred").reshape(raw.shape)
            if scores.shape[1] != len(labels):
                raise ValueError(f"score matrix has {scores.shape[1]} columns but labels has {len(labels)}")
        else:
            scores = _scores_1d(raw, "y_score_or_pred")
            if len(labels) > 2:
                raise ValueError(
                    f"1-D scores need a binary task but there are {len(labels)} classes {labels[:10]}; "
                    "pass an (n_samples, n_classes) score matrix instead"
                )

    if positive is None and _is_zero_one(labels):
        positive = next(v for v in labels if v == 1)
    if positive is not None and positive not in labels:
        raise ValueError(f"positive={positive!r} is not one of the labels {labels}")
    pos = labels.index(positive) if positive is not None else None

    t_idx = _encode(t, labels)
    if mode == "labels":
        p_idx = _encode(pred, labels)
    elif mode == "proba":
        p_idx = scores.argmax(axis=1)
    else:
        if pos is None or len(labels) != 2:
            raise ValueError(
                f"binary scores with labels {labels} need positive= (which label the score is for) "
                "and, when y_true holds one class only, labels= naming both classes"
            )
        p_idx = np.where(scores >= threshold, pos, 1 - pos)

    k = np.arange(len(labels))
    *_, sup = precision_recall_fscore_support(t_idx, p_idx, labels=k, average=None, zero_division=np.nan)
    macro = precision_recall_fscore_support(t_idx, p_idx, labels=k, average="macro", zero_division=np.nan)
    macro0 = precision_recall_fscore_support(t_idx, p_idx, labels=k, average="macro", zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(t)),
        "labels": list(labels),
        "positive": positive,
        "threshold": float(threshold) if mode == "scores" else None,
        "accuracy": float(accuracy_score(t_idx, p_idx)),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "precision_macro_zero": float(macro0[0]),
        "recall_macro_zero": float(macro0[1]),
        "f1_macro_zero": float(macro0[2]),
        "roc_auc": float("nan"),
        "support": {lab: int(n) for lab, n in zip(labels, sup, strict=True)},
    }

    if mode == "scores":
        out["roc_auc"] = _binary_auc(t_idx == pos, scores)
    elif mode == "proba":
        if len(labels) == 2 and pos is not None:
            out["roc_auc"] = _binary_auc(t_idx == pos, scores[:, pos])
        else:
            # Macro one-vs-rest by hand: sklearn's multi_class="ovr" demands rows summing to 1
            # and every class present; per-class AUCs let sigmoid scores and absent classes through.
            aucs = [_binary_auc(t_idx == j, scores[:, j]) for j in k]
            aucs = [a for a in aucs if np.isfinite(a)]
            out["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")

    if pos is not None and len(labels) == 2:
        truth = t_idx == pos
        binary = _count_metrics(*_confusion_counts(truth, p_idx == pos), weights=double_f1_weights)
        out.update({key: float(binary[key]) for key in BINARY_KEYS})
        if mode != "labels":
            out["average_precision"] = _binary_ap(truth, scores if mode == "scores" else scores[:, pos])
    return out


#: The binary-task keys :func:`classification_metrics` adds for a known positive class.
BINARY_KEYS = ("precision", "recall", "f1", "precision_negative", "recall_negative", "specificity",
               "f1_negative", "double_f1", "double_f1_weighted")


def _confusion_counts(truth: np.ndarray, flagged: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of boolean arrays of shape (n,)."""
    tp = int(np.count_nonzero(truth & flagged))
    fp = int(np.count_nonzero(~truth & flagged))
    fn = int(np.count_nonzero(truth & ~flagged))
    return tp, fp, fn, int(len(truth)) - tp - fp - fn


# ----------------------------------------------------------------------------- thresholds


def metrics_at_threshold(y_true: Any, scores: Any, threshold: float, *, positive: Any = 1) -> dict[str, Any]:
    """Binary metrics of ``scores >= threshold``; one O(n) pass, cheap enough for a live slider.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Labels; ``positive`` is the positive class, every other label is negative.
    scores : array-like of float, shape (n_samples,)
    threshold : float

    Returns
    -------
    dict
        ``threshold, n, positives, flagged, tp, fp, fn, tn`` (ints) and ``precision,
        recall, f1, precision_negative, recall_negative, specificity, f1_negative,
        double_f1, double_f1_weighted, accuracy`` (floats, NaN where undefined).
    """
    truth = _binary(_labels_1d(y_true, "y_true"), positive)
    s = _scores_1d(scores, "scores")
    _same_length(truth, s, "y_true", "scores")
    tp, fp, fn, tn = _confusion_counts(truth, s >= threshold)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n": int(len(s)),
        "positives": tp + fn,
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
    out.update({k: float(v) for k, v in _count_metrics(tp, fp, fn, tn).items()})
    return out


def select_thresholds(
    y_val: Any,
    s_val: Any,
    y_test: Any,
    s_test: Any,
    *,
    recalls: Sequence[float] = (0.90, 0.95),
    positive: Any = 1,
    thesis: bool = True,
) -> pd.DataFrame:
    """Pick thresholds on a validation split, then measure them on a test split.

    Rules (all read off the validation precision-recall curve):

    * ``max_f1``: the threshold of maximal F1 (ties: the highest such threshold);
    * ``recall>=R`` for each R in ``recalls``: the highest threshold whose recall is >= R,
      i.e. the fewest flags that still catch that share of positives;
    * ``thesis`` (when 0.90 is among ``recalls`` and ``thesis`` is true): the Gore
      censoring thesis's rule, the lower of the max-F1 and the 90%-recall thresholds
      (so at least 90% recall, and max-F1 where that already reaches it).

    Parameters
    ----------
    y_val, y_test : array-like of shape (n_val,), (n_test,)
        Labels; ``positive`` is the positive class.
    s_val, s_test : array-like of float, shape (n_val,), (n_test,)
    recalls : sequence of float in (0, 1]
    positive : label, default 1
    thesis : bool, default True
        Add the ``thesis`` row (needs 0.90 in ``recalls``).

    Returns
    -------
    DataFrame of shape (1 + len(recalls) [+ 1], 14)
        Columns ``rule, threshold`` then ``val_`` and ``test_`` prefixed ``precision,
        recall, f1, double_f1, specificity, flagged``; rows in the order max_f1, the
        recalls, thesis. Test metrics may be NaN (e.g. no test positives).
    """
    t_val = _binary(_labels_1d(y_val, "y_val"), positive)
    sv = _scores_1d(s_val, "s_val")
    _same_length(t_val, sv, "y_val", "s_val")
    t_test = _binary(_labels_1d(y_test, "y_test"), positive)
    st = _scores_1d(s_test, "s_test")
    _same_length(t_test, st, "y_test", "s_test")
    if not t_val.any():
        raise ValueError(f"y_val has no positive samples (positive={positive!r}): cannot choose a threshold")
    if t_val.all():
        raise ValueError(f"y_val has no negative samples (positive={positive!r}): cannot choose a threshold")
    recalls = list(recalls)
    for r in recalls:
        if not 0 < r <= 1:
            raise ValueError(f"recall targets must lie in (0, 1], got {r}")

    # precision/recall carry one extra final point (recall 0) that has no threshold.
    prec, rec, thr = precision_recall_curve(t_val, sv)
    prec, rec = prec[:-1], rec[:-1]
    f1 = _ratio(2 * prec * rec, prec + rec)
    best = np.flatnonzero(f1 == np.nanmax(f1))
    rules = [("max_f1", float(thr[best].max()))]
    for r in recalls:
        # Tiny tolerance: a recall of exactly 9/10 must count as reaching 0.90.
        rules.append((f"recall>={r:.2f}", float(thr[rec >= r - 1e-12].max())))
    by_name = dict(rules)
    if thesis and "recall>=0.90" in by_name:
        rules.append(("thesis", min(by_name["max_f1"], by_name["recall>=0.90"])))

    keys = ("precision", "recall", "f1", "double_f1", "specificity")
    rows = []
    for name, threshold in rules:
        row: dict[str, Any] = {"rule": name, "threshold": threshold}
        for split, truth, s in (("val", t_val, sv), ("test", t_test, st)):
            counts = _confusion_counts(truth, s >= threshold)
            m = _count_metrics(*counts)
            for key in keys:
                row[f"{split}_{key}"] = float(m[key])
            row[f"{split}_flagged"] = counts[0] + counts[1]
        rows.append(row)
    cols = ["rule", "threshold"] + [f"{split}_{k}" for split in ("val", "test") for k in (*keys, "flagged")]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------ agreement


def gwet_ac1_from_table(table: Any) -> float:
    """Gwet's AC1 of two raters from their contingency table.

    AC1 = (pa - pe) / (1 - pe), with pa the observed agreement,
    pe = 1/(q-1) * sum_k pi_k (1 - pi_k) and pi_k the mean of the two raters' marginal
    proportions of category k (Gwet 2008, Br J Math Stat Psychol 61:29-48).

    Parameters
    ----------
    table : array-like of shape (q, q)
        Counts; rows are rater A's categories, columns rater B's, same order. Categories
        nobody used still count in q (they change pe).

    Returns
    -------
    float
        NaN when q == 1 (chance agreement is undefined with a single category).
    """
    tab = np.asarray(table, dtype=np.float64)
    if tab.ndim != 2 or tab.shape[0] != tab.shape[1]:
        raise ValueError(f"table must be square (q, q), got shape {tab.shape}")
    if tab.size == 0 or tab.sum() == 0:
        raise ValueError("table is empty: no rated subjects")
    if (tab < 0).any() or not np.isfinite(tab).all():
        raise ValueError("table must hold finite non-negative counts")
    q = tab.shape[0]
    if q < 2:
        return float("nan")
    n = tab.sum()
    pa = np.trace(tab) / n
    pi = (tab.sum(axis=1) + tab.sum(axis=0)) / (2 * n)
    pe = float(np.sum(pi * (1 - pi)) / (q - 1))
    # pe <= 1/q < 1 for q >= 2, so the denominator never vanishes.
    return float((pa - pe) / (1 - pe))


def _rater_pair(labels_a: Any, labels_b: Any, categories: Sequence | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Integer codes (n,) of both raters' labels and the category list they index."""
    a = _labels_1d(labels_a, "labels_a")
    b = _labels_1d(labels_b, "labels_b")
    _same_length(a, b, "labels_a", "labels_b")
    cats = _resolve_labels(categories, a, b)
    return _encode(a, cats), _encode(b, cats), cats


def gwet_ac1(labels_a: Any, labels_b: Any, categories: Sequence | None = None) -> float:
    """Gwet's AC1 of two raters, any number of nominal categories.

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_subjects,)
        The two raters' categories of the same subjects, in the same order.
    categories : sequence, optional
        All categories raters could choose (e.g. ``["Blur", "Maybe", "Ok"]``); default:
        those used. q, and therefore pe, depends on it.

    Returns
    -------
    float
        NaN when there is a single category.
    """
    a, b, cats = _rater_pair(labels_a, labels_b, categories)
    return gwet_ac1_from_table(_confusion_codes(a, b, len(cats)))


def _kappa_codes(a: np.ndarray, b: np.ndarray, q: int) -> float:
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # chance agreement of 1: sklearn warns and returns NaN
        k = float(cohen_kappa_score(a, b, labels=np.arange(q)))
    return k if np.isfinite(k) else float("nan")


def cohen_kappa(labels_a: Any, labels_b: Any, categories: Sequence | None = None) -> float:
    """Cohen's kappa of two raters (scikit-learn); NaN when chance agreement is 1.

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_subjects,)
    categories : sequence, optional
    """
    a, b, cats = _rater_pair(labels_a, labels_b, categories)
    return _kappa_codes(a, b, len(cats))


def agreement(labels_a: Any, labels_b: Any, categories: Sequence | None = None) -> dict[str, Any]:
    """Agreement of two raters on the same subjects.

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_subjects,)
        Rater A is the reference for F1.
    categories : sequence, optional
        All selectable categories (default: those used).

    Returns
    -------
    dict
        ``n, categories, percent_agreement, kappa, ac1, f1_macro`` and ``confusion``
        (DataFrame (q, q): rows rater A, columns rater B).
    """
    a, b, cats = _rater_pair(labels_a, labels_b, categories)
    table = _labelled_confusion(a, b, cats, "rater_a", "rater_b")
    q = np.arange(len(cats))
    return {
        "n": int(len(a)),
        "categories": cats,
        "percent_agreement": float(np.mean(a == b)),
        "kappa": _kappa_codes(a, b, len(cats)),
        "ac1": gwet_ac1_from_table(table.to_numpy()),
        "f1_macro": float(f1_score(a, b, labels=q, average="macro", zero_division=np.nan)),
        "confusion": table,
    }


# ------------------------------------------------------------------------- beta-binomial


def beta_estimate(confirmed: Any, rejected: Any) -> tuple[Any, Any]:
    """MedGore homogeneity estimate: posterior Beta(confirmed + 1, rejected + 1).

    With a uniform prior, after ``confirmed`` confirmations and ``rejected`` rejections
    the share of confirmed items is Beta(a, b) with a = confirmed + 1, b = rejected + 1.

    Parameters
    ----------
    confirmed, rejected : float or array-like (broadcastable)
        Non-negative counts.

    Returns
    -------
    (mean, sd)
        Floats for scalar input, else arrays of the broadcast shape.
    """
    c = np.asarray(confirmed, dtype=np.float64)
    r = np.asarray(rejected, dtype=np.float64)
    for name, v in (("confirmed", c), ("rejected", r)):
        if v.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"{name} must hold finite non-negative counts")
    dist = stats.beta(c + 1, r + 1)
    mean, sd = dist.mean(), dist.std()
    if np.ndim(mean) == 0:
        return float(mean), float(sd)
    return mean, sd


# -------------------------------------------------------------------------------- slices

_SLICE_METRICS = ["accuracy", "precision", "recall", "f1", "double_f1", "roc_auc", "average_precision"]


def sliced_metrics(
    df: pd.DataFrame,
    group_col: str,
    y_true_col: str,
    score_col: str,
    *,
    positive: Any = 1,
    threshold: float = 0.5,
    min_n: int = 1,
) -> pd.DataFrame:
    """Every binary metric per value of a metadata column, to show fairness gaps.

    Parameters
    ----------
    df : DataFrame of shape (n_samples, ...)
    group_col : str
        Metadata to slice by (source, modality, skin tone); missing values form the
        slice ``"(missing)"``.
    y_true_col : str
        Labels; ``positive`` is the positive class.
    score_col : str
        Numeric scores (or 0/1 predictions); flagged when ``score >= threshold``.
    min_n : int, default 1
        Slices smaller than this are listed but left out of the worst-group row.

    Returns
    -------
    DataFrame of shape (n_groups + 2, 12)
        Columns ``slice, kind, n, positives, flagged`` and ``accuracy, precision, recall,
        f1, double_f1, roc_auc, average_precision``. ``kind`` is "group" for each slice
        (sorted), "all" for the whole frame and "worst" for the minimum of each metric
        over the slices with n >= min_n (its counts are <NA>). Single-class slices get
        NaN AUC and NaN for the other undefined ratios.
    """
    missing = [c for c in (group_col, y_true_col, score_col) if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("df is empty: there are no samples to score")
    truth = _binary(_labels_1d(df[y_true_col].to_numpy(), y_true_col), positive)
    scores = _scores_1d(df[score_col].to_numpy(), score_col)
    groups = df[group_col].astype(object).where(df[group_col].notna(), "(missing)").to_numpy()

    def row(name: Any, kind: str, mask: np.ndarray) -> dict[str, Any]:
        t, s = truth[mask], scores[mask]
        tp, fp, fn, tn = _confusion_counts(t, s >= threshold)
        m = _count_metrics(tp, fp, fn, tn)
        out = {"slice": name, "kind": kind, "n": int(mask.sum()), "positives": tp + fn, "flagged": tp + fp}
        out.update({k: float(m[k]) for k in ("accuracy", "precision", "recall", "f1", "double_f1")})
        out["roc_auc"] = _binary_auc(t, s)
        out["average_precision"] = _binary_ap(t, s)
        return out

    rows = [row(g, "group", groups == g) for g in _sorted_labels(_distinct(groups))]
    rows.append(row("all", "all", np.ones(len(df), dtype=bool)))
    table = pd.DataFrame(rows)
    eligible = table[(table["kind"] == "group") & (table["n"] >= min_n)]
    worst = {"slice": "worst", "kind": "worst"}
    worst.update({k: eligible[k].min(skipna=True) if len(eligible) else np.nan for k in _SLICE_METRICS})
    table = pd.concat([table, pd.DataFrame([worst])], ignore_index=True)
    for col in ("n", "positives", "flagged"):
        table[col] = table[col].astype("Int64")
    return table[["slice", "kind", "n", "positives", "flagged", *_SLICE_METRICS]]


# ------------------------------------------------------------------- operating points

#: Short names of the :func:`select_thresholds` rules, as the charts and the detector print them.
RULE_LABELS = {"max_f1": "max-F1", "recall>=0.90": "R90", "recall>=0.95": "R95",
               "thesis": "thesis (lower of max-F1 and R90)"}


def operating_points(y_true: Any, scores: Any, *, positive: Any = 1,
                     recalls: Sequence[float] = (0.90, 0.95)) -> dict[str, float]:
    """The thresholds of every :func:`select_thresholds` rule read off ``(y_true, scores)``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,); ``positive`` is the positive class
    scores : array-like of float, shape (n_samples,)

    Returns
    -------
    dict
        ``{rule label: threshold}`` in the order max-F1, R90, R95, thesis
        (:data:`RULE_LABELS`; other recall targets as ``R<percent>``).
    """
    table = select_thresholds(y_true, scores, y_true, scores, recalls=recalls, positive=positive)
    out = {}
    for rule, thr in zip(table["rule"], table["threshold"], strict=True):
        label = RULE_LABELS.get(rule) or (f"R{round(float(rule.split('>=')[1]) * 100):d}" if ">=" in rule else rule)
        out[label] = float(thr)
    return out


#: EB operating points: name -> (cut, what the paper or the workbench says). A score strictly
#: above the cut is flagged (MedGore reads EB > 0 as Blur; the safe view's default cut is 1.0).
EB_RULES = {
    "medgore (EB > 0)": (0.0, "MedGore: an image with EB above 0 is Blur"),
    "safe view (EB > 1.0)": (1.0, "the workbench's default EB cut (lib.sensitivity, --eb-threshold)"),
}


def eb_operating_points(y_true: Any, eb: Any, *, positive: Any = 1,
                        rules: dict[str, tuple[float, str]] | None = None) -> pd.DataFrame:
    """Binary metrics of the EB colour score at each named cut (flagged when ``eb > cut``).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,); ``positive`` is the positive (Blur) class
    eb : array-like of float, shape (n_samples,): EB scores (z-score units), finite
    rules : {name: (cut, definition)}; default :data:`EB_RULES`

    Returns
    -------
    DataFrame, one row per rule: ``rule, cut, definition`` and the columns of
    :func:`metrics_at_threshold` (``threshold`` is the cut itself; the comparison is strict).
    """
    rows = []
    for name, (cut, definition) in (rules or EB_RULES).items():
        # Strictly above the cut: the next float up is the ">=" threshold of metrics_at_threshold.
        m = metrics_at_threshold(y_true, eb, float(np.nextafter(float(cut), np.inf)), positive=positive)
        m["threshold"] = float(cut)
        rows.append({"rule": name, "cut": float(cut), "definition": definition, **m})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------- segmentation

_MASK_KEYS = ("iou", "dice", "f1_background", "double_f1", "mse", "precision", "recall")


def _mask_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft prediction in [0, 1], its binary mask at 0.5, boolean truth), all of one shape."""
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: prediction {p.shape}, truth {t.shape}")
    if p.size == 0:
        raise ValueError("masks are empty (no pixels)")
    if p.dtype == bool:
        soft = p.astype(np.float64)
    else:
        soft = p.astype(np.float64)
        if not np.isfinite(soft).all() or soft.min() < 0 or soft.max() > 1:
            raise ValueError("a soft prediction mask must hold probabilities in [0, 1]")
    return soft, soft >= 0.5, t.astype(bool)


def _mask_counts(flagged: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    return _confusion_counts(truth.ravel(), flagged.ravel())


def _mask_from_counts(tp: int, fp: int, fn: int, tn: int, sq_err: float) -> dict[str, float]:
    """Mask metrics from pixel counts; a region absent from both masks scores 1 (nothing to find)."""
    n = tp + fp + fn + tn
    both_empty = tp + fp + fn == 0
    bg_empty = tn + fp + fn == 0
    return {
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "f1_background": 1.0 if bg_empty else 2 * tn / (2 * tn + fp + fn),
        "double_f1": ((1.0 if both_empty else 2 * tp / (2 * tp + fp + fn))
                      + (1.0 if bg_empty else 2 * tn / (2 * tn + fp + fn))) / 2,
        "mse": sq_err / n,
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
    }


def mask_metrics(pred: Any, truth: Any) -> dict[str, float]:
    """Pixel metrics of one predicted mask against its ground truth.

    * ``iou`` = TP / (TP + FP + FN) (the thesis's segmentation score);
    * ``dice`` = 2TP / (2TP + FP + FN), the pixel F1 of the region;
    * ``f1_background`` = 2TN / (2TN + FP + FN), ``double_f1`` = their mean (pixel Double F1);
    * ``mse`` = mean (prediction - truth)^2 over pixels (the soft prediction where one is given,
      so it also scores a probability map; for binary masks it is the share of wrong pixels);
    * ``precision``, ``recall`` of region pixels (NaN where undefined).

    A region empty in both masks scores IoU = Dice = 1 (there was nothing to find).

    Parameters
    ----------
    pred : bool array (H, W), or float array (H, W) of probabilities (thresholded at 0.5)
    truth : bool array (H, W)
    """
    soft, flagged, t = _mask_pair(pred, truth)
    return _mask_from_counts(*_mask_counts(flagged, t), float(np.sum((soft - t) ** 2)))


def segmentation_metrics(preds: Sequence[Any], truths: Sequence[Any]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-image and pooled mask metrics (see :func:`mask_metrics`).

    Parameters
    ----------
    preds, truths : sequences of n masks; each pair has one shape (H_i, W_i)

    Returns
    -------
    (per_image, pooled)
        ``per_image``: DataFrame (n, 8), columns ``pixels`` and :func:`mask_metrics`'s keys.
        ``pooled``: ``n, pixels``, ``mean_<key>`` (the mean over images, each image weighing
        the same: the thesis's mean IoU) and ``pooled_<key>`` (from the pixel counts summed
        over all images, each pixel weighing the same).
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted masks but {len(truths)} ground-truth masks")
    if not len(preds):
        raise ValueError("no masks to score")
    rows, total = [], np.zeros(5)
    for p, t in zip(preds, truths, strict=True):
        soft, flagged, tb = _mask_pair(p, t)
        counts = _mask_counts(flagged, tb)
        sq = float(np.sum((soft - tb) ** 2))
        total += (*counts, sq)
        rows.append({"pixels": int(tb.size), **_mask_from_counts(*counts, sq)})
    per_image = pd.DataFrame(rows, columns=["pixels", *_MASK_KEYS])
    pooled_counts = _mask_from_counts(*(int(v) for v in total[:4]), float(total[4]))
    pooled: dict[str, float] = {"n": int(len(rows)), "pixels": int(per_image["pixels"].sum())}
    pooled.update({f"mean_{k}": float(per_image[k].mean(skipna=True)) for k in _MASK_KEYS})
    pooled.update({f"pooled_{k}": float(v) for k, v in pooled_counts.items()})
    return per_image, pooled


# --------------------------------------------------------------------------- multi-label


def multilabel_ap(y_true: Any, scores: Any, labels: Sequence | None = None) -> tuple[pd.DataFrame, float]:
    """Average precision of every label of a multi-label task, and their mean (mAP).

    For tag sets where an image can carry several labels at once (Cheng et al.'s body
    regions, VinDr-CXR findings). AP is scikit-learn's ``average_precision_score`` per
    column (the step-wise area under the precision-recall curve); mAP is the unweighted
    mean over labels that have at least one positive (a label without positives has no
    AP: NaN, left out of the mean, and said so by its ``positives`` count of 0).

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels), 0/1 or bool
    scores : array-like of shape (n_samples, n_labels), higher is more likely
    labels : n_labels names (default 0..n_labels-1)

    Returns
    -------
    (per_label, mAP)
        ``per_label``: DataFrame (n_labels, 3) with columns ``label, positives, ap``.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must both be (n_samples, n_labels)")
    if y.size == 0:
        raise ValueError("y_true is empty: there are no samples to score")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true of a multi-label task must hold 0/1 (or bool) per label")
    if not np.isfinite(s).all():
        raise ValueError("scores has non-finite value(s) (NaN/inf)")
    names = list(range(y.shape[1])) if labels is None else list(labels)
    if len(names) != y.shape[1]:
        raise ValueError(f"labels has {len(names)} names for {y.shape[1]} columns")
    yb = y.astype(bool)
    aps = [_binary_ap(yb[:, j], s[:, j]) for j in range(y.shape[1])]
    table = pd.DataFrame({"label": names, "positives": yb.sum(axis=0).astype(int), "ap": aps})
    finite = [a for a in aps if np.isfinite(a)]
    return table, float(np.mean(finite)) if finite else float("nan")
