"""lib.metrics against hand-counted tables, closed forms, slow references and published values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from lib import metrics as m


def auc_by_pairs(truth, scores) -> float:
    """Slow reference AUC: share of (positive, negative) pairs ranked right, ties count 1/2."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[truth], scores[~truth]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def f1_of(tp, fp, fn) -> float:
    return 2 * tp / (2 * tp + fp + fn)


# A hand-counted binary example. At threshold 0.5 the flagged samples are 0.9, 0.8 (positives)
# and 0.7, 0.6 (negatives): tp=2, fp=2, fn=2, tn=4.
Y_BIN = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S_BIN = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.35, 0.05, 0.6])


# ------------------------------------------------------------------ classification_metrics


def test_binary_scores_match_hand_counts():
    r = m.classification_metrics(Y_BIN, S_BIN)
    assert r["n"] == 10 and r["positive"] == 1 and r["labels"] == [0, 1]
    assert r["support"] == {0: 6, 1: 4}
    assert r["accuracy"] == pytest.approx(6 / 10)
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(0.5)
    assert r["f1_negative"] == pytest.approx(8 / 12)  # 2tn / (2tn + fn + fp)
    assert r["double_f1"] == pytest.approx((0.5 + 8 / 12) / 2)
    # negative class: precision tn/(tn+fn) = 4/6, recall tn/(tn+fp) = 4/6
    assert r["precision_macro"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert r["recall_macro"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert r["f1_macro"] == pytest.approx((0.5 + 8 / 12) / 2)
    # Pairs ranked right, counted by hand: 0.9 -> 6, 0.8 -> 6, 0.4 -> 4, 0.3 -> 3 of 24.
    assert r["roc_auc"] == pytest.approx(19 / 24)
    assert r["roc_auc"] == pytest.approx(auc_by_pairs(Y_BIN, S_BIN))
    # Ranked: P P N N P N P -> precision at each positive 1, 1, 3/5, 4/7.
    assert r["average_precision"] == pytest.approx((1 + 1 + 3 / 5 + 4 / 7) / 4)


def test_threshold_moves_the_predictions():
    r = m.classification_metrics(Y_BIN, S_BIN, threshold=0.3)
    # >= 0.3 flags 0.9, 0.8, 0.4, 0.3 (all positives) and 0.7, 0.35, 0.6.
    assert r["recall"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(4 / 7)
    assert r["threshold"] == 0.3


def test_string_labels_need_and_use_positive():
    y = np.where(Y_BIN == 1, "sensitive", "non_sensitive")
    with pytest.raises(ValueError, match="positive="):
        m.classification_metrics(y, S_BIN)
    r = m.classification_metrics(y, S_BIN, positive="sensitive")
    assert r["support"] == {"non_sensitive": 6, "sensitive": 4}
    assert r["precision"] == pytest.approx(0.5)
    assert r["roc_auc"] == pytest.approx(19 / 24)
    with pytest.raises(ValueError, match="not one of the labels"):
        m.classification_metrics(y, S_BIN, positive="gore")


def test_bool_labels_default_to_true_as_positive():
    r = m.classification_metrics(Y_BIN.astype(bool), S_BIN)
    assert r["positive"] is True
    assert r["support"] == {False: 6, True: 4}
    assert r["recall"] == pytest.approx(0.5)


# true a a a b b c c c c / pred a a b b c c c a c -> rows (true) a,b,c; columns (pred) a,b,c
Y3 = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
P3 = ["a", "a", "b", "b", "c", "c", "c", "a", "c"]
CM3 = [[2, 1, 0], [0, 1, 1], [1, 0, 3]]


def test_multiclass_labels_match_hand_table():
    r = m.classification_metrics(Y3, P3)
    # per class P = R = F1: a 2/3, b 1/2, c 3/4
    assert r["precision_macro"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["recall_macro"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["f1_macro"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["accuracy"] == pytest.approx(6 / 9)
    assert r["support"] == {"a": 3, "b": 2, "c": 4}
    assert math.isnan(r["roc_auc"])  # hard labels carry no ranking
    assert "double_f1" not in r


def test_multiclass_probability_matrix_ovr_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    r = m.classification_metrics(y, proba)
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert r["roc_auc"] == pytest.approx(np.mean([auc_by_pairs(y == k, proba[:, k]) for k in range(3)]))
    assert r["accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == y))
    # Sigmoid-style scores (rows not summing to 1) are fine too.
    sig = 1 / (1 + np.exp(-logits))
    r_sig = m.classification_metrics(y, sig)
    assert r_sig["roc_auc"] == pytest.approx(np.mean([auc_by_pairs(y == k, sig[:, k]) for k in range(3)]))


def test_probability_matrix_with_absent_class_and_named_columns():
    y = np.array(["ok", "blur", "ok", "blur", "ok"])
    proba = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    with pytest.raises(ValueError, match="labels="):
        m.classification_metrics(y, proba)
    r = m.classification_metrics(y, proba, labels=["blur", "maybe", "ok"])
    # "maybe" never occurs in y: its one-vs-rest AUC is undefined and left out of the mean.
    expected = np.mean([auc_by_pairs(y == "blur", proba[:, 0]), auc_by_pairs(y == "ok", proba[:, 2])])
    assert r["roc_auc"] == pytest.approx(expected)
    assert r["support"] == {"blur": 2, "maybe": 0, "ok": 3}


def test_two_column_matrix_is_the_binary_case():
    proba = np.column_stack([1 - S_BIN, S_BIN])
    r = m.classification_metrics(Y_BIN, proba)
    assert r["roc_auc"] == pytest.approx(19 / 24)
    assert r["precision"] == pytest.approx(0.5)  # arg-max is score > 0.5 here


def test_single_class_gives_nan_not_a_crash():
    y = np.zeros(5, dtype=int)
    s = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn warning leaks into the app either
        r = m.classification_metrics(y, s)
    assert math.isnan(r["roc_auc"]) and math.isnan(r["recall"]) and math.isnan(r["average_precision"])
    assert r["precision"] == 0.0  # three flagged, none positive
    assert r["support"] == {0: 5, 1: 0}
    assert r["f1_negative"] == pytest.approx(f1_of(2, 0, 3))


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([], [], "empty"),
        ([0, 1], [0.3], "2 samples"),
        ([0, 1, 1], [0.2, np.nan, 0.3], "non-finite"),
        ([0, None, 1], [0.1, 0.2, 0.3], "missing"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "binary"),
    ],
)
def test_bad_input_raises_clear_errors(y, s, message):
    with pytest.raises(ValueError, match=message):
        m.classification_metrics(np.asarray(y, dtype=object if None in y else None), np.asarray(s, dtype=float))


# -------------------------------------------------------------- double F1 and tables


def test_double_f1_hand_counts():
    # tp=3, fn=2, fp=1, tn=4
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    expected = (f1_of(3, 1, 2) + f1_of(4, 2, 1)) / 2
    assert expected == pytest.approx(23 / 33)
    assert m.double_f1(y, p) == pytest.approx(expected)
    ys = ["gore" if v else "safe" for v in y]
    ps = ["gore" if v else "safe" for v in p]
    assert m.double_f1(ys, ps, positive="gore") == pytest.approx(expected)
    # Swapping which class is "positive" leaves the symmetric mean unchanged.
    assert m.double_f1(ys, ps, positive="safe") == pytest.approx(expected)


def test_double_f1_is_nan_when_a_class_never_occurs():
    assert math.isnan(m.double_f1([1, 1, 1], [1, 1, 1]))
    assert m.double_f1([1, 1, 0], [1, 1, 0]) == 1.0


def test_confusion_table_is_labelled():
    cm = m.confusion_table(Y3, P3)
    assert cm.index.name == "true" and cm.columns.name == "predicted"
    assert list(cm.index) == ["a", "b", "c"] and list(cm.columns) == ["a", "b", "c"]
    assert cm.to_numpy().tolist() == CM3
    rev = m.confusion_table(Y3, P3, labels=["c", "b", "a", "d"])
    assert rev.loc["c", "a"] == 1 and rev.loc["a", "b"] == 1 and rev.loc["d"].sum() == 0
    with pytest.raises(ValueError, match="not in labels"):
        m.confusion_table(Y3, P3, labels=["a", "b"])


def test_per_class_report_hand_values():
    rep = m.per_class_report(Y3, P3)
    assert list(rep.columns) == ["precision", "recall", "f1", "support"]
    np.testing.assert_allclose(rep["precision"], [2 / 3, 1 / 2, 3 / 4])
    np.testing.assert_allclose(rep["recall"], [2 / 3, 1 / 2, 3 / 4])
    assert rep["support"].tolist() == [3, 2, 4]
    # A class never predicted has undefined precision and zero recall.
    rep2 = m.per_class_report(["a", "b", "b"], ["a", "a", "a"])
    assert math.isnan(rep2.loc["b", "precision"]) and rep2.loc["b", "recall"] == 0.0
    assert rep2.loc["a", "precision"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------- thresholds


def test_metrics_at_threshold_hand_counts_and_ties():
    r = m.metrics_at_threshold(Y_BIN, S_BIN, 0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 2, 2, 4)
    assert r["flagged"] == 4 and r["positives"] == 4
    assert r["double_f1"] == pytest.approx((0.5 + 8 / 12) / 2)
    # A score equal to the threshold is flagged (>=), as in precision_recall_curve.
    assert m.metrics_at_threshold(Y_BIN, S_BIN, 0.4)["tp"] == 3
    nothing = m.metrics_at_threshold(Y_BIN, S_BIN, 2.0)
    assert nothing["flagged"] == 0 and math.isnan(nothing["precision"]) and nothing["recall"] == 0.0


def test_metrics_at_threshold_agrees_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    s = np.clip(0.35 * y + rng.random(500) * 0.7, 0, 1)
    for thr in (0.1, 0.42, 0.7):
        pred = s >= thr
        r = m.metrics_at_threshold(y, s, thr, positive=True)
        assert r["precision"] == pytest.approx(precision_score(y, pred))
        assert r["recall"] == pytest.approx(recall_score(y, pred))
        assert r["f1"] == pytest.approx(f1_score(y, pred))
        neg = f1_score(~y, ~pred)
        assert r["double_f1"] == pytest.approx((f1_score(y, pred) + neg) / 2)


def test_metrics_at_threshold_is_one_pass_without_sorting(monkeypatch):
    """A live slider recomputes it on every move: counts over 1M rows, no sort (its speed is
    measured in bench/screening.py)."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1_000_000)
    s = rng.random(1_000_000)
    want = np.bincount(2 * y + (s >= 0.5), minlength=4)  # (tn, fp, fn, tp)

    def no_sort(*a, **k):
        raise AssertionError("metrics_at_threshold sorted its input")

    for name in ("sort", "argsort", "lexsort", "unique", "partition", "argpartition"):
        monkeypatch.setattr(np, name, no_sort)
    r = m.metrics_at_threshold(y, s, 0.5)
    assert (r["tn"], r["fp"], r["fn"], r["tp"]) == tuple(int(v) for v in want)
    assert r["n"] == 1_000_000 and r["flagged"] == want[1] + want[3] and r["positives"] == want[2] + want[3]
    assert r["precision"] == pytest.approx(want[3] / (want[1] + want[3]))
    assert r["recall"] == pytest.approx(want[3] / (want[2] + want[3]))


# Validation: 10 positives, 10 negatives; hand-derived thresholds below.
V_POS = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3, 0.1]
V_NEG = [0.88, 0.5, 0.4, 0.35, 0.2, 0.15, 0.05, 0.02, 0.01, 0.0]
Y_VAL = np.array([1] * 10 + [0] * 10)
S_VAL = np.array(V_POS + V_NEG)
Y_TEST = np.array([1, 1, 1, 0, 0, 0])
S_TEST = np.array([0.7, 0.35, 0.05, 0.65, 0.3, 0.0])


def test_select_thresholds_hand_example():
    table = m.select_thresholds(Y_VAL, S_VAL, Y_TEST, S_TEST)
    assert table["rule"].tolist() == ["max_f1", "recall>=0.90", "recall>=0.95", "thesis"]
    # The thesis's rule: the lower of the max-F1 (0.6) and R90 (0.3) thresholds.
    assert table["threshold"].iat[3] == 0.3
    assert {"val_precision", "val_recall", "val_f1", "val_double_f1", "test_precision", "test_recall",
            "test_f1", "test_double_f1"} <= set(table.columns)
    best, r90, r95 = (table.iloc[i] for i in range(3))
    # Max F1 on validation at 0.6: tp=8, fp=1 (0.88), fn=2 -> F1 16/19 (0.3 gives 18/23, 0.65 gives 14/18).
    assert best["threshold"] == 0.6
    assert best["val_f1"] == pytest.approx(16 / 19)
    assert best["val_double_f1"] == pytest.approx((16 / 19 + f1_of(9, 2, 1)) / 2)
    # 9 of 10 positives need threshold 0.3; all 10 need 0.1.
    assert r90["threshold"] == 0.3 and r90["val_recall"] == pytest.approx(0.9)
    assert r95["threshold"] == 0.1 and r95["val_recall"] == pytest.approx(1.0)
    # Test split at 0.6: tp=1 (0.7), fp=1 (0.65), fn=2.
    assert best["test_precision"] == pytest.approx(0.5)
    assert best["test_recall"] == pytest.approx(1 / 3)
    assert best["test_f1"] == pytest.approx(f1_of(1, 1, 2))
    # Test split at 0.3: tp=2, fp=2 (0.65, 0.3), fn=1, tn=1.
    assert r90["test_f1"] == pytest.approx(f1_of(2, 2, 1))
    assert r90["test_double_f1"] == pytest.approx((f1_of(2, 2, 1) + f1_of(1, 1, 2)) / 2)
    assert r90["test_flagged"] == 4


def test_select_thresholds_max_f1_tie_takes_the_higher_threshold():
    # Ranked P N N P: threshold 0.9 gives F1 2/(1+2) = 2/3, threshold 0.6 gives 4/(4+2) = 2/3.
    y, s = [1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]
    table = m.select_thresholds(y, s, y, s, recalls=(1.0,))
    assert table.loc[0, "threshold"] == 0.9 and table.loc[0, "val_f1"] == pytest.approx(2 / 3)
    assert table.loc[1, "rule"] == "recall>=1.00" and table.loc[1, "threshold"] == 0.6


def brute_thresholds(y, s, recalls):
    """Slow reference: try every distinct score as a threshold."""
    best_f1, best_t, by_recall = -1.0, None, {}
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & y))
        f1 = 2 * tp / (pred.sum() + y.sum())
        if f1 > best_f1 + 1e-15:
            best_f1, best_t = f1, t
        for r in recalls:
            if r not in by_recall and tp / y.sum() >= r:
                by_recall[r] = t
    return best_t, by_recall


def test_select_thresholds_matches_brute_force():
    rng = np.random.default_rng(3)
    yv = rng.random(300) < 0.25
    sv = np.round(0.3 * yv + rng.random(300), 2)  # rounded: ties on purpose
    yt = rng.random(200) < 0.25
    st = rng.random(200)
    table = m.select_thresholds(yv, sv, yt, st, recalls=(0.8, 0.9, 0.95), positive=True)
    best_t, by_recall = brute_thresholds(yv, sv, (0.8, 0.9, 0.95))
    assert table.loc[0, "threshold"] == best_t
    assert table["threshold"].tolist()[1:4] == [by_recall[0.8], by_recall[0.9], by_recall[0.95]]
    assert table["threshold"].iat[4] == min(best_t, by_recall[0.9])
    for _, row in table.iterrows():
        pred = st >= row["threshold"]
        assert row["test_recall"] == pytest.approx(recall_score(yt, pred))
        assert row["test_precision"] == pytest.approx(precision_score(yt, pred))


def test_select_thresholds_edge_cases():
    with pytest.raises(ValueError, match="no positive"):
        m.select_thresholds([0, 0, 0], [0.1, 0.2, 0.3], Y_TEST, S_TEST)
    with pytest.raises(ValueError, match="no negative"):
        m.select_thresholds([1, 1], [0.1, 0.2], Y_TEST, S_TEST)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        m.select_thresholds(Y_VAL, S_VAL, Y_TEST, S_TEST, recalls=(90,))
    # A test split without positives still yields a table, with NaN recall.
    table = m.select_thresholds(Y_VAL, S_VAL, [0, 0, 0], [0.9, 0.1, 0.5])
    assert table["test_recall"].isna().all()


# ------------------------------------------------------------------------ agreement


def expand(table, categories):
    """Label lists (rater A, rater B) from a contingency table (rows A, columns B)."""
    a, b = [], []
    for i, ca in enumerate(categories):
        for j, cb in enumerate(categories):
            a += [ca] * table[i][j]
            b += [cb] * table[i][j]
    return a, b


def test_ac1_published_3x3_example():
    # Gwet's irrCAC R package (companion of Gwet 2014, "Handbook of Inter-Rater
    # Reliability", 4th ed.), dataset cont3x3abstractors: 100 pregnancies classified by two
    # abstractors; README output: Cohen's kappa 0.7964094, Gwet's AC1 0.8493305, PA 0.89.
    cats = ["Ectopic", "AIU", "NIU"]
    table = [[13, 0, 0], [0, 20, 7], [0, 4, 56]]
    a, b = expand(table, cats)
    r = m.agreement(a, b, categories=cats)
    assert r["n"] == 100
    assert r["percent_agreement"] == pytest.approx(0.89)
    assert r["ac1"] == pytest.approx(0.8493305, abs=1e-7)
    assert r["kappa"] == pytest.approx(0.7964094, abs=1e-7)
    assert m.gwet_ac1(a, b, cats) == pytest.approx(0.8493305, abs=1e-7)
    assert m.gwet_ac1_from_table(table) == pytest.approx(0.8493305, abs=1e-7)
    assert r["confusion"].to_numpy().tolist() == table


def test_ac1_published_4x4_example():
    # irrCAC dataset cont4x4diagnosis (Gwet 2014): 223 psychiatric patients, clinical vs
    # research diagnosis; unweighted AC1 = 0.456 (3 decimals, irrCAC's reported value).
    table = [[40, 4, 4, 17], [6, 25, 2, 13], [4, 1, 21, 12], [15, 5, 9, 45]]
    assert round(m.gwet_ac1_from_table(table), 3) == 0.456


def test_ac1_high_agreement_paradox_by_hand():
    # 2x2 table [[118, 5], [2, 0]]: pa = 118/125; marginal "yes" 123 (A) and 120 (B),
    # pi_yes = 243/250, pe = 2 * pi_yes * pi_no; kappa's pe = (123*120 + 2*5) / 125^2.
    pa = 118 / 125
    pi = 243 / 250
    pe_ac1 = 2 * pi * (1 - pi)
    pe_k = (123 * 120 + 2 * 5) / 125**2
    a, b = expand([[118, 5], [2, 0]], ["yes", "no"])
    r = m.agreement(a, b)
    assert r["ac1"] == pytest.approx((pa - pe_ac1) / (1 - pe_ac1))
    assert r["kappa"] == pytest.approx((pa - pe_k) / (1 - pe_k))
    assert r["kappa"] < 0 < 0.9 < r["ac1"]  # the paradox AC1 avoids


def test_agreement_unused_category_changes_ac1_not_kappa():
    a = ["Blur", "Ok", "Ok", "Ok"]
    b = ["Blur", "Ok", "Blur", "Ok"]
    # q=2: pi = (3/8, 5/8), pe = 30/64, AC1 = (3/4 - 15/32) / (17/32) = 9/17.
    # q=3 (Maybe unused): pe = 30/64 / 2, AC1 = (48/64 - 15/64) / (49/64) = 33/49.
    # kappa: pe = 1/4*2/4 + 3/4*2/4 = 1/2 -> 1/2 either way.
    # F1 with A as reference: Blur 2/(2+1) = 2/3, Ok 4/(4+1) = 4/5.
    two = m.agreement(a, b)
    three = m.agreement(a, b, categories=["Blur", "Maybe", "Ok"])
    assert two["ac1"] == pytest.approx(9 / 17)
    assert three["ac1"] == pytest.approx(33 / 49)
    assert two["kappa"] == pytest.approx(0.5) and three["kappa"] == pytest.approx(0.5)
    assert two["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert two["percent_agreement"] == 0.75
    cm = three["confusion"]
    assert cm.index.name == "rater_a" and cm.columns.name == "rater_b"
    assert cm.loc["Ok", "Blur"] == 1 and cm.loc["Maybe"].sum() == 0


def test_agreement_edge_cases():
    one = m.agreement(["Ok"] * 3, ["Ok"] * 3)
    assert one["percent_agreement"] == 1.0 and math.isnan(one["ac1"]) and math.isnan(one["kappa"])
    with pytest.raises(ValueError, match="not in labels"):
        m.agreement(["Ok", "Blur"], ["Ok", "Gore"], categories=["Ok", "Blur"])
    with pytest.raises(ValueError, match="empty"):
        m.agreement([], [])
    with pytest.raises(ValueError, match="samples"):
        m.gwet_ac1(["Ok"], ["Ok", "Blur"])
    with pytest.raises(ValueError, match="square"):
        m.gwet_ac1_from_table([[1, 2, 3], [4, 5, 6]])


# --------------------------------------------------------------------- beta estimate


def test_beta_estimate_closed_forms_vectorised():
    confirmed = np.array([0, 3, 10, 250])
    rejected = np.array([0, 1, 40, 3])
    mean, sd = m.beta_estimate(confirmed, rejected)
    a, b = confirmed + 1.0, rejected + 1.0
    np.testing.assert_allclose(mean, a / (a + b))
    np.testing.assert_allclose(sd, np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))
    assert mean[0] == 0.5 and sd[0] == pytest.approx(math.sqrt(1 / 12))  # uniform prior


def test_beta_estimate_scalars_and_broadcast():
    mean, sd = m.beta_estimate(3, 1)
    assert isinstance(mean, float) and mean == pytest.approx(4 / 6)
    assert sd == pytest.approx(math.sqrt(4 * 2 / (36 * 7)))
    mean, _ = m.beta_estimate([1, 2, 3], 0)
    np.testing.assert_allclose(mean, [2 / 3, 3 / 4, 4 / 5])
    with pytest.raises(ValueError, match="non-negative"):
        m.beta_estimate(-1, 2)


# --------------------------------------------------------------------------- slices


def slice_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["A", "A", "A", "A", "B", "B", "B", "C", "C", "C", None],
            "label": [1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1],
            "score": [0.9, 0.4, 0.6, 0.1, 0.2, 0.7, 0.1, 0.8, 0.7, 0.3, 0.2],
        }
    )


def test_sliced_metrics_hand_counts():
    t = m.sliced_metrics(slice_frame(), "source", "label", "score")
    assert t["slice"].tolist() == ["(missing)", "A", "B", "C", "all", "worst"]
    assert t["kind"].tolist() == ["group"] * 4 + ["all", "worst"]
    rows = t.set_index("slice")
    assert rows.loc["A", ["n", "positives", "flagged"]].tolist() == [4, 2, 2]
    # A: tp=1, fp=1, fn=1, tn=1; AUC pairs 0.9>0.6,0.1 and 0.4>0.1 -> 3/4.
    assert rows.loc["A", "f1"] == pytest.approx(0.5) and rows.loc["A", "roc_auc"] == pytest.approx(0.75)
    # B has no positives: AUC and recall undefined, one false positive.
    assert math.isnan(rows.loc["B", "roc_auc"]) and math.isnan(rows.loc["B", "recall"])
    assert rows.loc["B", "precision"] == 0.0
    assert rows.loc["B", "double_f1"] == pytest.approx((0 + f1_of(2, 0, 1)) / 2)
    assert rows.loc["C", "double_f1"] == 1.0
    # all: tp=3, fp=2, fn=2, tn=4; AUC by hand 24/30 (two ties at 0.7 and 0.2).
    assert rows.loc["all", "n"] == 11
    assert rows.loc["all", "accuracy"] == pytest.approx(7 / 11)
    assert rows.loc["all", "double_f1"] == pytest.approx((f1_of(3, 2, 2) + f1_of(4, 2, 2)) / 2)
    assert rows.loc["all", "roc_auc"] == pytest.approx(24 / 30)
    assert rows.loc["all", "roc_auc"] == pytest.approx(auc_by_pairs(slice_frame()["label"], slice_frame()["score"]))
    # worst = minimum over the four slices; the lone unlabelled-source positive scores 0.
    assert pd.isna(rows.loc["worst", "n"])
    assert rows.loc["worst", "accuracy"] == 0.0
    assert rows.loc["worst", "roc_auc"] == pytest.approx(0.75)


def test_sliced_metrics_min_n_excludes_tiny_slices_from_worst():
    t = m.sliced_metrics(slice_frame(), "source", "label", "score", min_n=2).set_index("slice")
    assert len(t) == 6  # the tiny slice is still listed
    assert t.loc["worst", "accuracy"] == pytest.approx(0.5)  # A
    assert t.loc["worst", "double_f1"] == pytest.approx((0 + f1_of(2, 0, 1)) / 2)  # B


def test_sliced_metrics_string_labels_and_errors():
    df = slice_frame().assign(label=lambda d: np.where(d["label"] == 1, "sensitive", "non_sensitive"))
    t = m.sliced_metrics(df, "source", "label", "score", positive="sensitive").set_index("slice")
    assert t.loc["all", "positives"] == 5
    with pytest.raises(ValueError, match="no column"):
        m.sliced_metrics(df, "skin_tone", "label", "score")
    with pytest.raises(ValueError, match="empty"):
        m.sliced_metrics(df.iloc[:0], "source", "label", "score")
