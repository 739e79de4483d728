"""The papers' metric definitions (issue 14, part 1), each against a hand-computed case.

MedGore's macro precision/recall/F1 (zero_division=0), the thesis's negative precision and
recall, Double F1 and weighted Double F1, its threshold rule, mask IoU / Dice / pixel
Double F1 / MSE, MedicalNarratives' average Recall@K, the EB > 0 rule and multi-label mAP.
"""

from __future__ import annotations

import numpy as np
import pytest

from lib import metrics as m
from lib.retrieval import PAPER_KS, evaluate_retrieval

# --------------------------------------------------------------- MedGore's degenerate row


def test_medgore_degenerate_zero_shot_row_is_25_50_33():
    # MedGore's zero-shot CLIP: everything predicted as one class on a balanced test set gives
    # precision 25.15, recall 50.00, F1 33.46. With exactly 50/50 that is 25.0 / 50.0 / 33.3.
    y = np.array(["Blur"] * 50 + ["Normal"] * 50)
    pred = np.array(["Normal"] * 100)
    r = m.classification_metrics(y, pred, positive="Blur")
    assert 100 * r["precision_macro_zero"] == pytest.approx(25.0)
    assert 100 * r["recall_macro_zero"] == pytest.approx(50.0)
    assert 100 * r["f1_macro_zero"] == pytest.approx(100 / 3)
    # The NaN-skipping convention drops the never-predicted class's undefined precision.
    assert 100 * r["precision_macro"] == pytest.approx(50.0)
    assert 100 * r["f1_macro"] == pytest.approx(100 / 3)
    # Per class by hand: Normal precision 50/100, recall 1, F1 2/3; Blur precision 0/0, recall 0, F1 0.
    assert r["recall"] == 0.0 and r["f1"] == 0.0 and np.isnan(r["precision"])


def test_medgore_row_with_their_imbalance():
    # 25.15 / 50.00 / 33.46 is what a one-class prediction gives when that class is 50.3% of the set.
    y = np.array([0] * 503 + [1] * 497)
    r = m.classification_metrics(y, np.zeros(1000, int))
    assert 100 * r["precision_macro_zero"] == pytest.approx(25.15)
    assert 100 * r["recall_macro_zero"] == pytest.approx(50.0)
    assert 100 * r["f1_macro_zero"] == pytest.approx(33.46, abs=0.01)


def test_zero_and_nan_conventions_agree_when_every_class_is_predicted():
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 1, 1, 0, 0, 0]
    r = m.classification_metrics(y, pred)
    for key in ("precision", "recall", "f1"):
        assert r[f"{key}_macro"] == pytest.approx(r[f"{key}_macro_zero"])


# ------------------------------------------------------------------------------- thesis


def test_negative_precision_recall_and_specificity_by_hand():
    # tp=3, fn=0, fp=2, tn=3
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 1, 1, 0, 0, 0]
    r = m.classification_metrics(y, pred)
    assert r["precision"] == pytest.approx(3 / 5) and r["recall"] == 1.0
    assert r["precision_negative"] == pytest.approx(3 / 3)  # TN / (TN + FN)
    assert r["recall_negative"] == pytest.approx(3 / 5)  # TN / (TN + FP)
    assert r["specificity"] == r["recall_negative"]


def test_double_f1_and_weighted_double_f1_by_hand():
    # tp=2, fp=2, fn=2, tn=4: F1(pos) = 4/8, F1(neg) = 8/12.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 1])
    f_pos, f_neg = 0.5, 8 / 12
    assert m.double_f1(y, pred) == pytest.approx((f_pos + f_neg) / 2)
    assert m.double_f1(y, pred, weights=m.DOUBLE_F1_WEIGHTS) == pytest.approx(0.75 * f_pos + 0.25 * f_neg)
    r = m.classification_metrics(y, pred)
    assert r["double_f1"] == pytest.approx((f_pos + f_neg) / 2)
    assert r["double_f1_weighted"] == pytest.approx(0.75 * f_pos + 0.25 * f_neg)
    other = m.classification_metrics(y, pred, double_f1_weights=(0.5, 0.5))
    assert other["double_f1_weighted"] == pytest.approx(other["double_f1"])
    with pytest.raises(ValueError, match="summing to 1"):
        m.double_f1(y, pred, weights=(0.75, 0.75))


def test_thesis_double_f1_from_its_reported_numbers():
    # The thesis's best classifier: F1 0.8895, Double F1 0.9192, so its negative-class F1 is
    # 2 * 0.9192 - 0.8895 = 0.9489. A table with tp=889, fp=111, fn=111 (F1 0.889) and
    # tn=2083 (F1(neg) 4166/4388 = 0.9494) gives Double F1 (0.889 + 0.9494) / 2 = 0.9192.
    tp, fp, fn, tn = 889, 111, 111, 2083
    r = m.metrics_at_threshold([1] * (tp + fn) + [0] * (fp + tn),
                               [1.0] * tp + [0.0] * fn + [1.0] * fp + [0.0] * tn, 0.5)
    assert r["f1"] == pytest.approx(0.889)
    assert r["f1_negative"] == pytest.approx(4166 / 4388)
    assert r["double_f1"] == pytest.approx(0.9192, abs=5e-5)


def test_thesis_threshold_rule_is_the_lower_of_max_f1_and_r90():
    # Validation: max-F1 at 0.6 (tp 8, fp 1), 90% recall first reached at 0.3.
    y = np.array([1] * 10 + [0] * 10)
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3, 0.1,
                  0.88, 0.5, 0.4, 0.35, 0.2, 0.15, 0.05, 0.02, 0.01, 0.0])
    pts = m.operating_points(y, s)
    assert list(pts) == ["max-F1", "R90", "R95", "thesis (lower of max-F1 and R90)"]
    assert pts["max-F1"] == 0.6 and pts["R90"] == 0.3 and pts["R95"] == 0.1
    assert pts["thesis (lower of max-F1 and R90)"] == 0.3
    # Where max-F1 already reaches 90% recall, the rule is max-F1.
    y2 = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    s2 = np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.1, 0.2])
    p2 = m.operating_points(y2, s2)
    assert p2["max-F1"] == 0.5 and p2["thesis (lower of max-F1 and R90)"] == 0.5


# ------------------------------------------------------------------------------ masks


def test_mask_metrics_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[0, :3] = True  # 3 region pixels
    pred = np.zeros((4, 4), bool)
    pred[0, 1:4] = True  # tp 2 (0,1),(0,2); fp 1 (0,3); fn 1 (0,0); tn 12
    r = m.mask_metrics(pred, truth)
    assert r["iou"] == pytest.approx(2 / 4)  # TP / (TP + FP + FN)
    assert r["dice"] == pytest.approx(4 / 6)  # 2TP / (2TP + FP + FN)
    assert r["f1_background"] == pytest.approx(24 / 26)
    assert r["double_f1"] == pytest.approx((4 / 6 + 24 / 26) / 2)
    assert r["mse"] == pytest.approx(2 / 16)  # two wrong pixels
    # A soft prediction: MSE on the probabilities, the rest on the 0.5 cut.
    soft = pred * 0.8 + (~pred) * 0.1
    rs = m.mask_metrics(soft, truth)
    assert rs["iou"] == r["iou"]
    want = (2 * 0.2 ** 2 + 1 * 0.8 ** 2 + 1 * 0.9 ** 2 + 12 * 0.1 ** 2) / 16
    assert rs["mse"] == pytest.approx(want)
    # Nothing to find and nothing found: a perfect score.
    assert m.mask_metrics(np.zeros((2, 2), bool), np.zeros((2, 2), bool))["iou"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        m.mask_metrics(pred, truth[:3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.mask_metrics(pred * 2.0, truth)


def test_segmentation_per_image_mean_vs_pooled():
    a_t = np.array([[1, 1], [0, 0]], bool)
    a_p = np.array([[1, 0], [0, 0]], bool)  # tp 1, fn 1: IoU 1/2
    b_t = np.ones((4, 4), bool)
    b_p = np.ones((4, 4), bool)  # IoU 1
    per, pooled = m.segmentation_metrics([a_p, b_p], [a_t, b_t])
    assert per["iou"].tolist() == [0.5, 1.0]
    assert pooled["mean_iou"] == pytest.approx(0.75)
    assert pooled["pooled_iou"] == pytest.approx(17 / 18)  # tp 17, fn 1 over both images
    assert pooled["n"] == 2 and pooled["pixels"] == 20
    with pytest.raises(ValueError, match="2 predicted masks but 1"):
        m.segmentation_metrics([a_p, b_p], [a_t])


# -------------------------------------------------------------------------- retrieval


def test_mean_r_is_the_six_recalls_at_5_50_200():
    rng = np.random.default_rng(0)
    n, d = 320, 16  # gallery larger than 200, so no recall is trivially 1
    img = rng.normal(size=(n, d)).astype(np.float32)
    txt = img + rng.normal(scale=1.5, size=(n, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t = evaluate_retrieval(img, txt, ks=(1, 5, 10, 50, 200)).iloc[0]
    six = [t[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in PAPER_KS]
    assert PAPER_KS == (5, 50, 200)
    assert t["mean_R"] == pytest.approx(np.mean(six))
    assert t["mean_R_ks"] == pytest.approx(np.mean([t[f"{d}_R@{k}"] for d in ("t2i", "i2t")
                                                    for k in (1, 5, 10, 50, 200)]))
    assert t["mean_R"] != pytest.approx(t["mean_R_ks"])
    # mean_R keeps its definition when other Ks are shown.
    only1 = evaluate_retrieval(img, txt, ks=(1,)).iloc[0]
    assert only1["mean_R"] == pytest.approx(t["mean_R"])
    assert only1["mean_R_ks"] == pytest.approx(t["t2i_R@1"] / 2 + t["i2t_R@1"] / 2)


# --------------------------------------------------------------------------------- EB


def test_eb_above_zero_is_blur_as_medgore_reads_it():
    eb = np.array([-0.5, 0.0, 0.2, 1.5, 0.9, -1.0, 1.0])
    y = np.array(["Normal", "Normal", "Blur", "Blur", "Blur", "Normal", "Normal"])
    t = m.eb_operating_points(y, eb, positive="Blur").set_index("rule")
    medgore = t.loc["medgore (EB > 0)"]
    # EB > 0 flags 0.2, 1.5, 0.9, 1.0 (0.0 itself is not above 0): tp 3, fp 1.
    assert (medgore["tp"], medgore["fp"], medgore["fn"], medgore["tn"]) == (3, 1, 0, 3)
    assert medgore["cut"] == 0.0 and medgore["threshold"] == 0.0
    default = t.loc["safe view (EB > 1.0)"]
    # EB > 1.0 flags 1.5 only (1.0 is not above 1.0).
    assert (default["tp"], default["fp"]) == (1, 0)


# ------------------------------------------------------------------------ multi-label


def test_multilabel_ap_and_map_by_hand():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.2], [0.3, 0.6, 0.3], [0.1, 0.9, 0.4]])
    table, mean_ap = m.multilabel_ap(y, s, labels=["chest", "hand", "foot"])
    # chest ranked: r0 (P), r1 (N), r2 (P), r3 -> AP = (1 + 2/3) / 2
    # hand ranked:  r3 (N), r1 (P), r2 (P), r0 -> AP = (1/2 + 2/3) / 2
    assert table.set_index("label").loc["chest", "ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert table.set_index("label").loc["hand", "ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # foot has no positive: no AP, left out of the mean.
    assert np.isnan(table.set_index("label").loc["foot", "ap"])
    assert table["positives"].tolist() == [2, 2, 0]
    assert mean_ap == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    with pytest.raises(ValueError, match="0/1"):
        m.multilabel_ap(y * 2, s)
    with pytest.raises(ValueError, match="both be"):
        m.multilabel_ap(y, s[:, :2])


def test_pr_and_roc_charts_mark_every_operating_point():
    from lib import charts

    y = np.array([1] * 10 + [0] * 10)
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3, 0.1,
                  0.88, 0.5, 0.4, 0.35, 0.2, 0.15, 0.05, 0.02, 0.01, 0.0])
    roc, pr = charts.roc_pr_curves(y, s, 1, threshold=0.5, operating_points=True)
    names = [t.name for t in pr.data]
    assert [n.split(" (")[0] for n in names[1:5]] == ["max-F1", "R90", "R95", "thesis"]
    assert names[-1] == "threshold 0.50"
    marks = {t.name.split(" (")[0]: (t.x[0], t.y[0]) for t in pr.data[1:]}
    assert marks["max-F1"] == pytest.approx((0.8, 8 / 9))  # tp 8, fp 1 at 0.6
    assert marks["R90"] == pytest.approx((0.9, 9 / 13))  # tp 9, fp 4 at 0.3
    roc_marks = {t.name.split(" (")[0]: (t.x[0], t.y[0]) for t in roc.data[2:]}
    assert roc_marks["R95"] == pytest.approx((0.6, 1.0))  # at 0.1: every positive, 6 of 10 negatives
