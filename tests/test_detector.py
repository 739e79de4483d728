"""Detectors (lib/detector.py, issue 12) on real corpus images: train, save, load, apply,
familiarity, flips and rotations, suggestions, bad input, and the CLI verbs.

Two datasets are cut out of ``../shared/corpus`` (same files, same content ids, so the
``color`` vectors the corpus fixture cached are reused):

* ``det-train``: every source but the chest X-rays, minus a held-out sample;
* ``det-screen``: that held-out sample (familiar kinds of image, never trained on, one
  byte-identical pair among them) plus all 28 chest X-rays (a source the detector never saw).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import charts, dataset
from lib import detector as D
from lib.cli import main

TINY = "open_clip:WB-Tiny-ViT"  # as in conftest.py
DUP = ("images/fuseg/0088.png", "images/fuseg/0151.png")  # byte-identical in the corpus
DUP2 = ("images/fuseg/0092.png", "images/fuseg/0335.png")  # another pair: kept together too


@pytest.fixture(scope="module")
def cut(corpus_color, corpus_dir, tmp_path_factory):
    """det-train / det-screen (see the module docstring), embedded with color."""
    from lib.embeddings import embed

    work = tmp_path_factory.mktemp("det")
    m = pd.read_csv(corpus_dir / "manifest.csv")
    cxr = m["source"] == "figure1_cxr"
    held = ((np.arange(len(m)) % 15 == 7) | m["path"].isin(DUP + DUP2)) & ~cxr
    m[~cxr & ~held].to_csv(work / "train.csv", index=False)
    m[held | cxr].to_csv(work / "screen.csv", index=False)
    for name, f in (("det-train", "train.csv"), ("det-screen", "screen.csv")):
        dataset.ingest(work / f, name, root=corpus_dir)
        embed(name, "color", workers=0)
    assert set(dataset.load("det-train").ids).isdisjoint(dataset.load("det-screen").ids)
    return {"train": dataset.load("det-train"), "screen": dataset.load("det-screen"), "work": work}


@pytest.fixture(scope="module")
def det(cut):
    """Detector 'no-cxr': color, trained on det-train's own labels."""
    d, labels = D.train(["det-train"], "color", "no-cxr")
    assert labels.counts.iloc[-1]["total"] == len(cut["train"].unique_ids)
    return d


@pytest.fixture(scope="module")
def screened(det, cut):
    """det-screen screened by 'no-cxr', flips and rotations included (color: on by default)."""
    return D.predict("det-screen", det)


def _source(ds) -> np.ndarray:
    return ds.images["source"].to_numpy()


def cut_ids(n: int) -> list[str]:
    """n content ids of det-train (embedded)."""
    return dataset.load("det-train").unique_ids[:n]


# --------------------------------------------------------------------------- round trip, fingerprints, pickle


def test_round_trip_gives_identical_p_and_matches_scikit_learn(det, cut, screened):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    from lib.embeddings import load_embeddings
    from lib.probe import make_probe

    loaded = D.load("no-cxr")
    again = D.predict("det-screen", loaded)
    for col in ("p", "sensitive", "unfamiliar", "uncertain", "distance", "tta_sd", "threshold"):
        assert np.array_equal(again[col].to_numpy(), screened[col].to_numpy()), col
    assert loaded.meta["thresholds"] == det.meta["thresholds"] and loaded.fingerprint == det.fingerprint
    # the stored formula is scikit-learn's CalibratedClassifierCV, refitted here independently
    tr = cut["train"].images.drop_duplicates("id")
    X = load_embeddings("det-train", "color").take(np.flatnonzero(~cut["train"].images["id"].duplicated()))
    y = (tr["label"] == "sensitive").to_numpy()
    labelled = D.gather_labels(["det-train"]).table  # the rows train() used, in this order
    assert list(labelled["id"]) == list(tr["id"]) and (labelled["sensitive"].to_numpy() == y).all()
    rows, _ = D.stratified_split(y, 0.2, 0, labelled["group"].to_numpy())  # stratified by (source, class)
    trained = {i.decode() for i in det.arrays["train_ids"]}  # less the near-duplicates of validation images
    rows = rows[np.isin(labelled["id"].to_numpy()[rows], list(trained))]
    assert len(rows) == len(trained)
    clf = CalibratedClassifierCV(make_probe(1.0, seed=0), method="sigmoid", ensemble=False,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(X[rows], y[rows])
    Xs = load_embeddings("det-screen", "color").matrix()
    np.testing.assert_allclose(clf.predict_proba(Xs)[:, 1], screened["p"].to_numpy(), rtol=0, atol=1e-6)  # sklearn: float32


def test_fingerprint_mismatch_is_refused(det, cut, tiny_model, tmp_path, capsys):
    from lib.embeddings import embed, load_embeddings

    embed("det-screen", TINY, random_weights=True, backend=tiny_model, workers=0)
    with pytest.raises(D.FingerprintMismatch, match="only applied to embeddings of its own model"):
        D.apply_embeddings(det, load_embeddings("det-screen", TINY, random_weights=True))
    # a detector whose record names another fingerprint than its model has now
    import shutil

    shutil.copytree(D.detector_dir("no-cxr"), D.detector_dir("forged"))
    meta_path = D.detector_dir("forged") / "detector.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["fingerprint"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(D.FingerprintMismatch, match="now resolves to"):
        D.predict("det-screen", "forged")
    assert main(["predict", "det-screen", "--detector", "forged"]) == 2
    assert "retrain it" in capsys.readouterr().err
    assert not D.prediction_path("det-screen", "forged").exists()


def test_no_pickle_is_ever_loaded(det, cut, tmp_path, monkeypatch):
    import lib.detector as mod

    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(mod.np, "load", spy)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    loaded = D.load("no-cxr")
    assert calls and all(c is False for c in calls)
    D.predict("det-screen", loaded, tta=False, write=False)
    monkeypatch.undo()

    # a planted pickle, however well disguised, is refused and never run
    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = D.detector_dir("no-cxr")
    meta = json.loads((d / "detector.json").read_text())
    import io
    import shutil

    for kind in ("object array in the npz", "raw pickle"):
        target = D.detector_dir(f"planted-{kind[:3]}")
        shutil.copytree(d, target, dirs_exist_ok=True)
        arrays = dict(loaded.arrays)
        if kind == "raw pickle":
            data = pickle.dumps({"coef": Bomb()})
        else:
            arrays["coef"] = np.array([Bomb()] * loaded.dim, dtype=object)
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # numpy pickles object arrays into the npz
            data = buf.getvalue()
        (target / meta["arrays"]["file"]).write_bytes(data)
        forged = json.loads(json.dumps(meta))
        import hashlib

        forged["arrays"]["sha256"] = hashlib.sha256(data).hexdigest()  # the checksum agrees: only allow_pickle stops it
        forged["arrays"]["shapes"]["coef"] = [[loaded.dim], "|O"]
        (target / "detector.json").write_text(json.dumps(forged))
        with pytest.raises(D.DetectorFileError, match="without pickle"):
            D.load(target.name)
        assert not marker.exists(), kind
    # what save writes is refused too when it would need a pickle
    with pytest.raises(D.DetectorError, match="pickle"):
        D.save(D.Detector(dict(loaded.meta), {**loaded.arrays, "coef": np.array([None], dtype=object)}), "never")


@pytest.mark.parametrize("damage", ["truncated npz", "missing npz", "json garbage", "foreign json",
                                    "wrong shape", "not finite", "path in json"])
def test_damaged_or_foreign_detector_files_are_refused(det, damage):
    import shutil

    src = D.detector_dir("no-cxr")
    name = "dmg-" + damage.replace(" ", "-")
    d = D.detector_dir(name)
    shutil.copytree(src, d, dirs_exist_ok=True)
    meta = json.loads((d / "detector.json").read_text())
    npz = d / meta["arrays"]["file"]
    if damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:1000])
        match = "checksum"
    elif damage == "missing npz":
        npz.unlink()
        match = "cannot be read"
    elif damage == "json garbage":
        (d / "detector.json").write_text("{not json")
        match = "JSON"
    elif damage == "foreign json":
        (d / "detector.json").write_text(json.dumps({"format": "something-else", "coef": [1, 2]}))
        match = "not a workbench detector"
    elif damage == "wrong shape":
        meta["arrays"]["shapes"]["coef"] = [[3], "<f8"]
        (d / "detector.json").write_text(json.dumps(meta))
        match = "its JSON says"
    elif damage == "not finite":
        import hashlib
        import io

        arrays = dict(D.load("no-cxr").arrays)
        arrays["coef"] = arrays["coef"].copy()
        arrays["coef"][0] = np.nan
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        npz.write_bytes(buf.getvalue())
        meta["arrays"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (d / "detector.json").write_text(json.dumps(meta))
        match = "not finite"
    else:
        meta["arrays"]["file"] = "../no-cxr/" + meta["arrays"]["file"]
        (d / "detector.json").write_text(json.dumps(meta))
        match = "not one of its own"
    with pytest.raises(D.DetectorFileError, match=match):
        D.load(name)
    listed = D.list_detectors().set_index("name")
    assert listed.loc[name, "error"] and "not used" in listed.loc[name, "error"]
    shutil.rmtree(d)


# --------------------------------------------------------------------------- calibration and thresholds


def test_calibration_is_monotone(det, cut):
    from lib.embeddings import load_embeddings

    X = np.vstack([load_embeddings(n, "color").matrix() for n in ("det-train", "det-screen")])
    f, p = det.decision_function(X), det.predict_p(X)
    order = np.argsort(f, kind="stable")
    assert np.all(np.diff(p[order]) >= 0) and p[order][-1] > p[order][0]
    assert det.arrays["calib_a"][0] < 0  # Platt: p = expit(-(a f + b)) rises with f
    # isotonic calibration too, on a grid of scores beyond the data's range
    ds = cut["train"]
    first = np.flatnonzero(~ds.images["id"].duplicated())
    iso = D.fit_detector(load_embeddings("det-train", "color").take(first),
                         (ds.images["label"].to_numpy()[first] == "sensitive"), ds.unique_ids, calibration="isotonic")
    grid = np.linspace(-50, 50, 2001)
    assert np.all(np.diff(D._calibrate("isotonic", iso.arrays, grid)) >= 0)


def test_pr_chart_marks_every_rule_the_thesis_included(det):
    """The Screen page's PR chart: sklearn's validation curve, and the four operating points of
    det.thresholds() at their (recall, precision), the thesis's on the lower of max-F1 and R90."""
    import dataclasses

    from sklearn.metrics import precision_recall_curve

    pr = D.validation_pr(det)
    prec, rec, _ = precision_recall_curve(det.arrays["val_y"], det.arrays["val_p"])
    assert np.array_equal(pr["recall"], rec) and np.array_equal(pr["precision"], prec)
    pts, t = pr["points"].set_index("rule"), det.thresholds().set_index("rule")
    assert list(pts.index) == ["max_f1", "R90", "R95", "thesis"]
    for col in ("threshold", "recall", "precision", "specificity"):
        assert pts[col].tolist() == t.loc[pts.index, col].tolist(), col
    # the rule's own point is the screening one unless a group lowered it (then a point of its own)
    assert pts["screening"].tolist() == [bool(v) and pr["lowered"] is None for v in t.loc[pts.index, "screening"]]
    lower = "max_f1" if t.loc["max_f1", "threshold"] <= t.loc["R90", "threshold"] else "R90"
    assert pts.loc["thesis", ["recall", "precision"]].tolist() == pts.loc[lower, ["recall", "precision"]].tolist()
    fig = charts.detector_pr(pr)
    marks = {tr.name.split(":")[0]: tr for tr in fig.data[1:5]}
    assert list(marks) == ["max-F1", "90% recall", "95% recall", "lower of max-F1 and R90"]
    ring = marks["lower of max-F1 and R90"]
    assert ring.marker.symbol == "circle-open" and (ring.x[0], ring.y[0]) == tuple(pts.loc[lower, ["recall", "precision"]])
    assert [tr.name.endswith("(screening)") for tr in fig.data[1:5]] == pts["screening"].tolist()
    assert len(fig.data) == 5 + (pr["lowered"] is not None)  # the curve, the four rules, a lowered screening point
    # a file written before the thesis rule: the point is derived from the two it is made of
    meta = {**det.meta, "thresholds": {k: v for k, v in det.meta["thresholds"].items() if k != "thesis"}}
    again = D.validation_pr(dataclasses.replace(det, meta=meta))["points"].set_index("rule")
    assert again.loc["thesis", "threshold"] == pts.loc[lower, "threshold"]


def test_thresholds_hit_their_recall_targets_on_validation(det):
    from lib.metrics import metrics_at_threshold

    y, p = det.arrays["val_y"], det.arrays["val_p"]
    t = det.thresholds().set_index("rule")
    assert (y.sum(), len(y)) == (det.meta["validation"]["positives"], det.meta["validation"]["n"])
    for rule, target in (("R90", 0.90), ("R95", 0.95)):
        thr = t.loc[rule, "threshold"]
        assert (p[y] >= thr).mean() >= target
        higher = np.unique(p[y][p[y] > thr])  # any higher cut loses recall below the target
        assert all((p[y] >= h).mean() < target for h in higher)
        m = metrics_at_threshold(y, p, thr, positive=True)
        assert t.loc[rule, "recall"] == pytest.approx(m["recall"]) and t.loc[rule, "precision"] == pytest.approx(
            m["precision"])
        assert t.loc[rule, "specificity"] == pytest.approx(m["tn"] / (m["tn"] + m["fp"]))
    assert t.loc["R95", "threshold"] <= t.loc["R90", "threshold"]
    assert t.loc["thesis", "threshold"] == min(t.loc["max_f1", "threshold"], t.loc["R90", "threshold"])
    f1 = [metrics_at_threshold(y, p, c, positive=True)["f1"] for c in np.unique(p)]
    assert t.loc["max_f1", "f1"] == pytest.approx(np.nanmax(f1))
    # the screening threshold: the overall R95, lowered to the R95 of any group that holds its own promise
    assert bool(t.loc["R95", "screening"]) and det.threshold <= t.loc["R95", "threshold"]
    g = det.val_groups
    own = [max(c for c in np.unique(p[y & (g == k)]) if (p[y & (g == k)] >= c).mean() >= 0.95)
           for k in set(g) if (y & (g == k)).sum() >= D.MIN_GROUP_POSITIVES]
    assert own and det.threshold == min(t.loc["R95", "threshold"], *own)
    # the split: stratified, seeded, each content id once
    s = det.meta["split"]
    assert s["n_val"] == pytest.approx(0.2 * (s["n_train"] + s["n_val"] + (s["near_duplicates_dropped"] or 0)), abs=2)
    assert set(det.arrays["train_ids"].tolist()).isdisjoint(det.arrays["val_ids"].tolist())


# --------------------------------------------------------------------------- groups: the worst-group screening threshold


@pytest.fixture(scope="module")
def fuseg_azh(corpus_color, corpus_dir, tmp_path_factory):
    """det-fuseg (the fuseg ulcers, its source column dropped: one group, the dataset) and
    det-azh (the AZH images with their source column: group det-azh/azh), embedded with color.
    AZH is the minority (118 images to fuseg's 300) and the one the features separate worse."""
    from lib.embeddings import embed

    work = tmp_path_factory.mktemp("groups")
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m[m["source"] == "fuseg"].drop(columns=["source"]).to_csv(work / "fuseg.csv", index=False)
    m[m["source"] == "azh"].to_csv(work / "azh.csv", index=False)
    for name in ("det-fuseg", "det-azh"):
        dataset.ingest(work / f"{name[4:]}.csv", name, root=corpus_dir)
        embed(name, "color", workers=0)
    return ["det-fuseg", "det-azh"]


def test_screening_threshold_reaches_95_percent_recall_in_every_group(fuseg_azh, capsys):
    _, labels = D.train(fuseg_azh, "color", "fuseg-azh")
    assert set(labels.table["group"]) == {"det-fuseg", "det-azh/azh"}  # dataset, refined by its source column
    d = D.load("fuseg-azh")
    y, p, g = d.arrays["val_y"], d.arrays["val_p"], d.val_groups
    assert d.arrays["val_groups"].dtype.kind == "U"  # stored as text, no pickle
    # the split is stratified by (group, class): each stratum sends its share to validation
    lab = labels.table
    for grp in ("det-fuseg", "det-azh/azh"):
        for c in (True, False):
            n = int(((lab["group"] == grp) & (lab["sensitive"] == c)).sum())
            assert abs(int(((g == grp) & (y == c)).sum()) - 0.2 * n) <= 1, (grp, c)
    counted = sorted(k for k in set(g) if (y & (g == k)).sum() >= D.MIN_GROUP_POSITIVES)
    assert counted == ["det-azh/azh", "det-fuseg"]
    # the promise: 95% validation recall in every group that holds enough sensitive images, and overall
    for grp in counted:
        assert (p[y & (g == grp)] >= d.threshold).mean() >= 0.95, grp
    assert (p[y] >= d.threshold).mean() >= 0.95
    # the rule before groups, the overall R95, breaks it for the minority group here
    overall = d.meta["thresholds"]["R95"]["threshold"]
    assert d.meta["screening"]["overall_threshold"] == overall
    assert (p[y & (g == "det-azh/azh")] >= overall).mean() < 0.95
    assert d.threshold < overall and d.meta["screening"]["set_by"] == "det-azh/azh"
    words = D.screening_text(d.meta)  # what the Screen page's help says
    assert "worst group's 95% recall" in words and f"({overall:.3f})" in words and words.endswith("det-azh/azh")
    # the threshold is the least of the overall R95 and each counted group's own (highest reaching 95%)
    own = {k: max(c for c in np.unique(p[y & (g == k)]) if (p[y & (g == k)] >= c).mean() >= 0.95) for k in counted}
    assert d.threshold == min(overall, *own.values())
    # the stored per-group metrics are those of the arrays
    gm = d.group_metrics().set_index("group")
    assert list(gm.index) == ["all", "det-azh/azh", "det-fuseg"] and gm["counts"].all()
    for grp in counted:
        sel = g == grp
        assert gm.loc[grp, "recall"] == pytest.approx((p[sel & y] >= d.threshold).mean())
        assert gm.loc[grp, "recall_overall"] == pytest.approx((p[sel & y] >= overall).mean())
        assert gm.loc[grp, "rule_threshold"] == pytest.approx(own[grp])
        assert gm.loc[grp, "val"] == sel.sum() and gm.loc[grp, "train"] == (lab["group"] == grp).sum() - sel.sum()
    assert gm.loc["det-azh/azh", "specificity"] == pytest.approx((p[(g == "det-azh/azh") & ~y] < d.threshold).mean())
    assert np.isnan(gm.loc["det-fuseg", "specificity"])  # no safe fuseg image
    v = d.meta["validation"]
    assert v["recall"] == pytest.approx((p[y] >= d.threshold).mean())
    assert v["specificity"] == pytest.approx((p[~y] < d.threshold).mean())
    # the overall table stays as it was: R95 over the whole split, marked as the screening rule
    t = d.thresholds().set_index("rule")
    assert t.loc["R95", "threshold"] == overall and bool(t.loc["R95", "screening"])
    # the PR chart names the lowered point and the group that set it; the rule's own point is not the screening one
    pr = D.validation_pr(d)
    assert pr["lowered"]["set_by"] == "det-azh/azh" and pr["lowered"]["threshold"] == d.threshold
    assert not pr["points"]["screening"].any()
    names = [tr.name for tr in charts.detector_pr(pr).data]
    assert sum(n.startswith("screening: p ≥ ") and n.endswith("in group det-azh/azh)") for n in names) == 1
    # a rule that promises no recall is not lowered by any group
    f1, _ = D.train(fuseg_azh, "color", "fuseg-azh-f1", screening="max_f1")
    assert f1.threshold == f1.meta["thresholds"]["max_f1"]["threshold"] and f1.meta["screening"]["set_by"] is None
    assert D.screening_text(f1.meta) == f"max-F1 on the validation split: p ≥ {f1.threshold:.3f} flags"
    # one group (or none given) draws the split the ungrouped one does
    yy = lab["sensitive"].to_numpy()
    for a, b in zip(D.stratified_split(yy, 0.2, 0, np.full(len(yy), "one")), D.stratified_split(yy, 0.2, 0),
                    strict=True):
        assert np.array_equal(a, b)
    # the CLI prints the rule, the group that set it and the worst-group table beside the overall one
    assert main(["train", *fuseg_azh, "--model", "color", "--detector", "fuseg-azh-cli"]) == 0
    out = capsys.readouterr().out
    assert "thresholds on the whole validation split" in out and "* R95" in out
    assert "screening threshold: min over groups of R95 = " in out and "set by group det-azh/azh" in out
    assert "worst-group table" in out and "det-fuseg" in out and "recall at overall R95" in out


def test_a_detector_file_without_groups_loads_and_predicts_identically(det, screened):
    """A detector saved before groups (no val_groups array, no group fields) is one group and
    keeps the threshold it was saved with."""
    import hashlib
    import io
    import shutil

    d = D.detector_dir("legacy")
    shutil.copytree(D.detector_dir("no-cxr"), d, dirs_exist_ok=True)
    meta = json.loads((d / "detector.json").read_text())
    arrays = dict(D.load("no-cxr").arrays)
    assert "val_groups" in arrays
    del arrays["val_groups"]

    def write(arrays, meta):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        for old in d.glob("arrays-*.npz"):
            old.unlink()
        (d / f"arrays-{sha[:16]}.npz").write_bytes(data)
        meta["arrays"] = {"file": f"arrays-{sha[:16]}.npz", "sha256": sha,
                          "shapes": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}}
        (d / "detector.json").write_text(json.dumps(meta))

    for k in ("overall_threshold", "worst_group", "set_by", "min_group_positives", "metrics"):
        del meta["screening"][k]
    del meta["validation"]["groups"], meta["split"]["stratified_by"], meta["split"]["groups"]
    del meta["recipe"]["min_group_positives"]
    write(arrays, meta)
    old = D.load("legacy")
    assert "val_groups" not in old.arrays and set(old.val_groups) == {D.ONE_GROUP}
    assert old.threshold == det.threshold and old.thresholds().equals(det.thresholds())
    gm = old.group_metrics()
    y, p = old.arrays["val_y"], old.arrays["val_p"]
    assert list(gm["group"]) == ["all"] and gm["recall"].iat[0] == pytest.approx((p[y] >= old.threshold).mean())
    again = D.predict("det-screen", old)
    for col in ("p", "sensitive", "unfamiliar", "uncertain", "distance", "tta_sd", "threshold", "pred"):
        assert np.array_equal(again[col].to_numpy(), screened[col].to_numpy()), col
    assert charts.detector_pr(D.validation_pr(old)).data  # draws without the group fields
    # a val_groups array of the wrong length is refused, as any array that does not fit
    write({**arrays, "val_groups": np.array(["a", "b"])}, meta)
    with pytest.raises(D.DetectorFileError, match="do not fit together"):
        D.load("legacy")
    shutil.rmtree(d)


# --------------------------------------------------------------------------- familiarity and flips


def test_unfamiliar_fires_on_a_source_left_out_of_training(det, cut, screened):
    src = _source(cut["screen"])
    unf = screened["unfamiliar"].to_numpy(bool)
    assert unf[src == "figure1_cxr"].mean() >= 0.9  # chest X-rays: never seen
    familiar_kind = src != "figure1_cxr"
    assert familiar_kind.sum() >= 40
    assert unf[familiar_kind].mean() <= 0.1  # held-out images of the training sources
    # the training images themselves are at distance 0 from themselves
    from lib.embeddings import load_embeddings

    emb = load_embeddings("det-train", "color")
    trained = np.isin(np.asarray(emb.ids, dtype="S64"), det.arrays["train_ids"])
    tr = D.apply_embeddings(det, emb)
    assert trained.sum() == len(det.arrays["train_ids"])
    assert not tr["unfamiliar"][trained].any() and float(tr["distance"][trained].max()) < 1e-3
    assert tr["unfamiliar"][~trained].mean() <= 0.1  # its validation images: not trained on either
    # the cut is the 99th percentile of the training leave-one-out distances
    assert det.cut == pytest.approx(np.percentile(det.arrays["loo_distance"], 99))
    # the safe view never clears an unfamiliar image, whatever its p
    from lib.sensitivity import Screening, decide

    images = cut["screen"].images.drop(columns=["label"])
    dec = decide(images, screening=Screening(screened, det.threshold, "no-cxr"))
    assert dec.loc[unf, "censored"].all()
    groups = D.screen_groups(screened)
    assert (dec["censored"].to_numpy() == (groups != "cleared")).all()
    assert (groups == "cleared").any() and (groups == "flagged").any() and (groups == "unfamiliar").any()


def test_ivf_familiarity_round_trip(cut, monkeypatch):
    monkeypatch.setattr(D, "FAMILIAR_EXACT_MAX", 100)
    d, _ = D.train(["det-train"], "color", "no-cxr-ivf")
    assert d.meta["familiarity"]["index"] == "ivf" and "ivf_centroids" in d.arrays
    a = D.predict("det-screen", d, tta=False, write=False)
    b = D.predict("det-screen", D.load("no-cxr-ivf"), tta=False, write=False)
    assert np.array_equal(a["distance"].to_numpy(), b["distance"].to_numpy())
    # approximate search can only overestimate a nearest distance: it errs towards unfamiliar
    exact = D.load("no-cxr-ivf")
    exact._index = D._familiarity_index(D._reference(exact.reference_vectors()), None, None)
    from lib.embeddings import load_embeddings

    X = load_embeddings("det-screen", "color").matrix()
    assert np.all(exact.distances(X) <= b["distance"].to_numpy() + 1e-6)
    # the list-by-list search finds what faiss's own IndexIVFFlat finds with the same lists
    import faiss

    ref = D._reference(d.reference_vectors())
    cents = d.arrays["ivf_centroids"]
    q = faiss.IndexFlatIP(ref.shape[1])
    q.add(cents)
    ivf = faiss.IndexIVFFlat(q, ref.shape[1], len(cents), faiss.METRIC_INNER_PRODUCT)
    ivf.add(ref)
    ivf.nprobe = d.meta["familiarity"]["nprobe"]
    sims, rows = ivf.search(X, 1)
    mine, my_rows = D.Familiarity(ref, cents, ivf.nprobe).search(X)
    np.testing.assert_allclose(mine, sims[:, 0], atol=1e-5)
    assert (my_rows == rows[:, 0]).mean() > 0.99  # (ties aside)
    # stopping once familiar (the nearer half of the lists first) flags exactly the same images
    full = D.Familiarity(ref, cents, ivf.nprobe)
    for enough in (1.0 - d.cut, 0.97, 0.5):
        early, _ = full.search(X, enough=enough)
        assert np.array_equal(early >= enough, mine >= enough)
        assert np.all(early <= mine + 1e-6)  # a lower bound of the best product
        np.testing.assert_allclose(early[mine < enough], mine[mine < enough], atol=1e-6)  # exact where not reached
    # leave-one-out: a training vector never finds itself
    best, who = D.Familiarity(ref, cents, ivf.nprobe).search(ref[:50], exclude=np.arange(50))
    assert (who != np.arange(50)).all() and np.all(best <= 1.0 + 1e-6)


def test_flips_and_rotations_go_through_per_transform_caches(det, cut, screened):
    from lib.models import load_model

    ds = cut["screen"]
    stores = [D.tta_store(det.fingerprint, t) for t in D.TTA_TRANSFORMS]
    # one store per transform, each holding every image of the screened set (the stores are
    # per model fingerprint, shared with any other dataset screened in this data home)
    assert len({s.dir for s in stores}) == 7 and all(s.missing(list(ds.unique_ids)) == [] for s in stores)
    # a view is the backend's vector of the transformed file
    backend = load_model("color")
    row = 3
    from PIL import Image

    img = Image.open(ds.abspath(ds.images["path"].iat[row])).convert("RGB")
    views = D.embed_views(ds, det)  # nothing missing: nothing computed
    present, emb = views["rot90"]
    assert present.all()
    want = backend.encode_images([img.transpose(Image.Transpose.ROTATE_90)])[0]
    np.testing.assert_allclose(emb.take([row])[0], want, atol=2e-3)
    # uncertain: sd of the 8 p's above the cut, or 2 of 8 views across the threshold
    small = np.array([[0.5, 0.9, 0.45, 0.45]] * 5 + [[0.5, 0.9, 0.5, 0.45]] * 2)  # (7 views, 4 images)
    sd, unc = D.view_uncertainty(np.array([0.5, 0.5, 0.5, 0.5]), small, 0.47)
    assert list(unc) == [False, True, True, False]  # steady; sd 0.14; 3 of 8 above 0.47; 1 of 8 above
    assert sd[2] < D.TTA_SD_CUT and sd[1] > D.TTA_SD_CUT
    vp = np.stack([det.predict_p(e.matrix()) for _, e in views.values()])
    allp = np.vstack([screened["p"].to_numpy()[None], vp])
    above = (allp >= det.threshold).mean(0)
    flip = np.minimum(above, 1 - above) >= D.TTA_FLIP_CUT
    np.testing.assert_allclose(screened["tta_sd"].to_numpy(), allp.std(0))
    assert (screened["uncertain"].to_numpy(bool) == ((allp.std(0) > D.TTA_SD_CUT) | flip)).all()
    assert 0 < screened["uncertain"].astype(bool).sum() < len(screened)


# --------------------------------------------------------------------------- suggestions


def test_suggest_ranks_unfamiliar_first_and_never_repeats_a_reviewed_image(det, cut, screened):
    from lib.annotations import AnnotationStore

    store = AnnotationStore()
    ds = cut["screen"]
    src = _source(ds)
    cxr_ids = ds.images.loc[src == "figure1_cxr", "id"].tolist()
    store.set_label("det-screen", cxr_ids[0], "ann", "Ok")
    store.set_label("det-screen", ds.images["id"].iat[0], "bob", "Blur")
    out = D.suggest("det-screen", det, 20, store=store, table=screened)
    assert len(out) == 20 and out["id"].is_unique and list(out["rank"]) == list(range(1, 21))
    why = out["why"].tolist()
    n_unf = why.count("unfamiliar")
    assert n_unf >= 1 and why[:n_unf] == ["unfamiliar"] * n_unf  # unfamiliar first ...
    assert set(why[n_unf:]) <= {"uncertain", "diverse"} and "uncertain" in why  # ... then uncertain, diverse
    if "diverse" in why:
        assert why.index("diverse") > max(i for i, w in enumerate(why) if w == "uncertain")
    picked_unf = out.loc[out["why"] == "unfamiliar", "id"]
    assert screened.set_index("id").loc[picked_unf, "unfamiliar"].all() and picked_unf.isin(cxr_ids).mean() >= 0.5
    # farthest-point: the first pick is the candidate farthest from every training image
    cand = screened[~screened["id"].isin({cxr_ids[0], ds.images["id"].iat[0]})]
    assert screened.set_index("id").loc[out["id"].iat[0], "distance"] == cand["distance"].max()
    assert cxr_ids[0] not in set(out["id"]) and ds.images["id"].iat[0] not in set(out["id"])
    # the byte-identical pair is one image: at most one row, and its id once
    for pair in (DUP, DUP2):
        assert ds.images.loc[ds.images["path"].isin(pair), "id"].nunique() == 1
    # review what was suggested: none of it comes back
    for cid in out["id"]:
        store.set_label("det-screen", cid, "ann", "Blur")
    again = D.suggest("det-screen", det, 20, store=store, table=screened)
    assert set(again["id"]).isdisjoint(out["id"]) and again["id"].is_unique
    # the queue the Annotate page takes
    q = D.suggest_queue(out)
    assert list(q["id"]) == list(out["id"]) and (q["task"] == "suggest").all()
    assert (ds.images["id"].to_numpy()[q["row"].to_numpy()] == q["id"].to_numpy()).all()


# --------------------------------------------------------------------------- labels and bad input


def test_label_file_wins_and_unmatched_or_ambiguous_rows_are_listed(cut, tmp_path):
    ds = cut["train"]
    ids = ds.images.drop_duplicates("id")
    sens = ids[ids["label"] == "sensitive"].head(6)
    safe = ids[ids["label"] == "non_sensitive"].head(6)
    rows = [{"id": i[:12], "path": "", "label": "Ok" if k < 3 else "Blur"}  # 3 flipped: the file wins
            for k, i in enumerate(sens["id"])]
    rows += [{"id": "", "path": p, "label": "non_sensitive"} for p in safe["path"]]
    rows += [{"id": "deadbeef" * 2, "path": "", "label": "sensitive"}, {"id": "a", "path": "", "label": "Blur"},
             {"id": "", "path": "images/nowhere.png", "label": "Blur"},
             {"id": safe["id"].iat[0], "path": "", "label": "wobbly"}]
    f = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    lab = D.gather_labels(["det-train"], labels_file=f)
    t = lab.table.set_index("id")
    assert list(t.loc[sens["id"], "sensitive"]) == [False] * 3 + [True] * 3
    assert (t.loc[sens["id"], "source"] == "file").all()
    assert t.loc[ids[ids["label"] == "sensitive"]["id"].iloc[10], "source"] == "labels:det-train"
    assert "deadbeef" * 2 in lab.unmatched and "images/nowhere.png" in lab.unmatched and lab.ambiguous == ["a"]
    assert lab.unknown == {"wobbly": 1}
    assert len(lab.table) == len(ds.unique_ids)
    # file only: trains on the 12 rows that match
    d, lab2 = D.train(["det-train"], "color", "from-file", labels_file=f, dataset_labels=False)
    assert lab2.n_sensitive == 3 and lab2.n_safe == 9 and d.meta["recipe"]["labels_file"] == "labels.csv"
    assert (D.detector_dir("from-file") / "labels.csv").exists()
    # nothing matches: stop, listing them
    bad = tmp_path / "nothing.csv"
    pd.DataFrame({"id": ["ffff0000", "eeee1111"], "label": ["Blur", "Ok"]}).to_csv(bad, index=False)
    with pytest.raises(D.LabelError, match="ffff0000.*eeee1111"):
        D.train(["det-train"], "color", "nothing", labels_file=bad)
    no_cols = tmp_path / "cols.csv"
    pd.DataFrame({"image": ["x"], "class": ["Blur"]}).to_csv(no_cols, index=False)
    with pytest.raises(D.LabelError, match="needs a 'label' column"):
        D.gather_labels(["det-train"], labels_file=no_cols)


def test_too_few_labels_or_one_class_is_a_clear_error(cut, tmp_path):
    ids = cut["train"].images.drop_duplicates("id")
    one = pd.DataFrame({"id": ids["id"].head(5), "label": "Blur"})
    few = pd.concat([one, pd.DataFrame({"id": ids["id"].iloc[[-1]], "label": "Ok"})])
    for table, counts, what in ((one, "5 sensitive and 0 safe", "one class only"),
                                (few, "5 sensitive and 1 safe", "too few labels")):
        f = tmp_path / "few.csv"
        table.to_csv(f, index=False)
        with pytest.raises(D.LabelError, match=f"at least 2 labelled images of each class.*{counts}.*{what}"):
            D.train(["det-train"], "color", "few", labels_file=f, dataset_labels=False)
    # exactly 2 of each: trains (no folds to cross-validate the calibration with)
    two = pd.DataFrame({"id": [*ids["id"].head(2), *ids["id"].tail(2)], "label": ["Blur", "Blur", "Ok", "Ok"]})
    two.to_csv(tmp_path / "two.csv", index=False)
    d, _ = D.train(["det-train"], "color", "two", labels_file=tmp_path / "two.csv", dataset_labels=False)
    assert d.meta["classifier"]["calibration"] == "none" and d.meta["split"]["n_val"] == 2
    assert not D.known_names().count("few")


def test_a_dataset_not_embedded_with_the_model_names_the_embed_command(det, tmp_path):
    from PIL import Image

    folder = tmp_path / "fresh"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    dataset.ingest(folder, "det-fresh")
    with pytest.raises(D.NotEmbedded, match=r"3 of 3 images have no vector\); run: python -m lib embed det-fresh "
                                            r"--model color"):
        D.predict("det-fresh", det)
    labels = pd.DataFrame({"id": dataset.load("det-fresh").ids + cut_ids(4), "label": ["Blur", "Blur", "Ok"] * 2 + ["Ok"]})
    with pytest.raises(D.NotEmbedded, match="run: python -m lib embed det-fresh --model color"):
        D.train(["det-fresh", "det-train"], "color", "fresh", labels_file=labels, dataset_labels=False)
    with pytest.raises(D.DetectorError, match="no detector named 'nope'.*known: .*no-cxr"):
        D.load("nope")
    with pytest.raises(D.DetectorError, match="invalid detector name"):
        D.load("../escape")


def test_reviews_are_a_label_source_and_retrain_keeps_a_learning_curve(det, cut):
    from lib.annotations import AnnotationStore

    store = AnnotationStore()
    scr = cut["screen"].images.drop_duplicates("id")
    cxr = scr[scr["source"] == "figure1_cxr"]["id"].tolist()
    for cid in cxr[:6]:
        store.set_label("det-screen", cid, "carol", "Ok")
    store.set_label("det-screen", cxr[6], "carol", "Maybe")
    lab = D.gather_labels(["det-screen"], dataset_labels=False, from_annotations=True, store=store)
    counts = lab.counts.set_index("source")
    assert counts.loc["reviews:det-screen", "safe"] >= 6 and lab.unknown.get("Maybe") == 1
    import shutil

    shutil.copytree(D.detector_dir("no-cxr"), D.detector_dir("no-cxr-rt"))
    before = len(D.learning_curve(D.load("no-cxr-rt")))
    d, lab = D.retrain("no-cxr-rt", add_datasets=["det-screen"], store=store)
    assert d.meta["recipe"]["datasets"] == ["det-train", "det-screen"] and d.meta["recipe"]["from_annotations"]
    curve = D.learning_curve(D.load("no-cxr-rt"))
    assert len(curve) == before + 1 and curve["labels"].iloc[-1] > curve["labels"].iloc[0]
    assert curve[["auc", "recall", "specificity"]].notna().all().all()
    fig = charts.learning_curve_figure(curve)
    assert [tr.name for tr in fig.data] == ["AUC", "recall at R95", "specificity at R95"]
    # the reviewed X-rays are training images now: familiar once their group is trusted (earlier
    # tests of this module may have reviewed some X-rays Blur: a mixed group with too few
    # sensitive validation images, whose images stay unfamiliar)
    again = D.predict("det-screen", d, tta=False, write=False).set_index("id")
    fam = d.meta["familiarity"]
    group = "det-screen/figure1_cxr"
    assert (group in fam["trusted_groups"]) != (group in {r["group"] for r in fam["untrusted_groups"]})
    if group in fam["trusted_groups"]:
        assert not again.loc[cxr[:6], "unfamiliar"].any()
    else:
        assert again.loc[cxr, "unfamiliar"].all()


def test_a_few_labels_of_a_new_source_do_not_make_it_familiar(corpus_color):
    """Familiarity comes only from groups whose recall the validation split measured: 12
    labelled AZH images (a new clinic) leave every AZH image unfamiliar, those it trained on
    included; with all of AZH's labels the group holds enough sensitive validation images and
    its images become familiar. Groups without a sensitive label (blood smears) count as they are."""
    from lib.embeddings import load_embeddings

    ds = corpus_color
    first = np.flatnonzero(~ds.images["id"].duplicated().to_numpy())
    X = load_embeddings("corpus", "color").take(first)
    y = ds.images["label"].to_numpy()[first] == "sensitive"
    src = ds.images["source"].to_numpy()[first].astype(str)
    ids = ds.images["id"].to_numpy()[first].tolist()
    azh = np.flatnonzero(src == "azh")
    rng = np.random.default_rng(0)
    few = np.concatenate([rng.choice(azh[y[azh]], 9, replace=False), rng.choice(azh[~y[azh]], 3, replace=False)])
    for rows, trusted in ((np.concatenate([np.flatnonzero(src != "azh"), few]), False),
                          (np.arange(len(y)), True)):
        d = D.fit_detector(X[rows], y[rows], [ids[i] for i in rows], groups=src[rows], seed=0)
        fam = d.meta["familiarity"]
        assert ("azh" in fam["trusted_groups"]) == trusted, fam
        assert {"bccd", "figure1_cxr", "fuseg", "medetec"} <= set(fam["trusted_groups"])  # pure-safe or measured
        a = d.assess(X[azh])
        trained_azh = np.isin(np.asarray(ids)[azh], [i.decode() for i in d.arrays["train_ids"]])
        assert trained_azh.any()
        if trusted:
            assert not a["unfamiliar"][trained_azh].any()  # its own training images are familiar
            assert fam["reference"] == len(d.arrays["train_ids"])
        else:
            assert a["unfamiliar"][trained_azh].all()  # even the AZH images it trained on
            assert a["unfamiliar"].mean() >= 0.95  # (one may lie near another source's images)
            row = next(r for r in fam["untrusted_groups"] if r["group"] == "azh")
            assert row["sensitive"] == 9 and row["val_sensitive"] < D.MIN_GROUP_POSITIVES
            assert fam["reference"] == len(d.arrays["train_ids"]) - int(trained_azh.sum())
            assert f"azh ({row['val_sensitive']} of 10)" in D.familiarity_text(d.meta)
    assert D.familiarity_text(d.meta) is None  # every group counts
    # the rule itself
    g = np.array(["a"] * 30 + ["b"] * 5 + ["c"] * 6)
    yy = np.array([True] * 20 + [False] * 10 + [True] * 5 + [False] * 6)
    val = np.r_[0:10, 30:32, 35:37]  # a: 10 sensitive in validation; b: 2; c: none sensitive at all
    trusted, untrusted = D.trusted_groups(yy, g, val, 10)
    assert trusted == ["a", "c"] and untrusted == [{"group": "b", "val_sensitive": 2, "sensitive": 5}]


# --------------------------------------------------------------------------- CLI and the app's evidence


def test_cli_train_predict_suggest_detectors(cut, tmp_path, capsys):
    from lib import catalog, evidence

    assert main(["train", "det-train", "--model", "color", "--detector", "cli-det", "--val-frac", "0.25",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "labels:det-train" in out and "AUC" in out and "specificity" in out
    for rule in ("max_f1", "R90", "* R95", "thesis"):
        assert rule in out
    assert "screening threshold: min over groups of R95 = " in out and "set by " in out
    assert "worst-group table" in out and "det-train/azh" in out and "det-train/fuseg" in out
    csv = tmp_path / "pred.csv"
    assert main(["predict", "det-screen", "--detector", "cli-det", "--out", str(csv), "--slice-col", "source"]) == 0
    out = capsys.readouterr().out
    assert "safe_cleared" in out and "per source" in out and "figure1_cxr" in out
    table = pd.read_csv(csv)
    assert {"id", "path", "p", "sensitive", "uncertain", "unfamiliar", "threshold"} <= set(table.columns)
    assert table["threshold"].nunique() == 1 and len(table) == len(cut["screen"])
    path = D.prediction_path("det-screen", "cli-det")
    assert path in catalog.prediction_files("det-screen")
    s = evidence.screening_from_file(path)
    assert s.threshold == pytest.approx(table["threshold"].iat[0]) and s.name == "cli-det"
    assert main(["suggest", "det-screen", "--detector", "cli-det", "--n", "5", "--out", str(tmp_path / "s.csv")]) == 0
    sug = pd.read_csv(tmp_path / "s.csv")
    assert list(sug.columns[:3]) == ["id", "path", "why"] and len(sug) == 5
    assert main(["detectors"]) == 0
    out = capsys.readouterr().out
    assert "cli-det" in out and "det-train" in out and "val_auc" in out
    assert main(["predict", "det-screen", "--detector", "missing-one"]) == 2
    assert "no detector named 'missing-one'" in capsys.readouterr().err
    assert main(["train", "det-train", "--model", "color", "--detector", "x", "--val-frac", "1.5"]) == 2


def test_evaluation_protocol_functions(cut):
    """Leave-one-source-out and the simulated review loop on the real vectors (small)."""
    from lib.embeddings import load_embeddings

    ds = dataset.load("corpus")
    first = np.flatnonzero(~ds.images["id"].duplicated())
    X = load_embeddings("corpus", "color").take(first)
    y = (ds.images["label"].to_numpy()[first] == "sensitive")
    src = ds.images["source"].to_numpy()[first]
    ids = ds.images["id"].to_numpy()[first].tolist()
    loso = D.leave_one_source_out(X, y, ids, src).set_index("source")
    assert set(loso.index) == {"fuseg", "medetec", "azh", "figure1_cxr", "bccd"}
    assert np.isnan(loso.loc["fuseg", "auc"]) and np.isnan(loso.loc["bccd", "recall"])
    assert loso.loc["figure1_cxr", "unfamiliar"] >= 0.9
    pool = src == "azh"
    loops = [D.simulate_review_loop(X[~pool], y[~pool], [i for i, p in zip(ids, pool, strict=True) if not p],
                                    X[pool], y[pool], [i for i, p in zip(ids, pool, strict=True) if p],
                                    strategy=s, rounds=2, per_round=5) for s in ("suggest", "random")]
    for lp in loops:
        assert list(lp["labels_added"]) == [0, 5, 10] and list(lp["n"]) == [pool.sum(), pool.sum() - 5, pool.sum() - 10]
    assert loops[0]["unfamiliar_picked"].iloc[-1] >= 1  # azh is unfamiliar to the other sources
    # a detector that does not say which model it belongs to is never saved
    with pytest.raises(D.DetectorError, match="does not record its model"):
        D.save(D.fit_detector(X[:40], np.arange(40) % 2 == 0, ids[:40]), "anonymous")
    assert "anonymous" not in D.known_names()


def test_screen_and_annotate_pages(det, cut, screened):
    """The Screen page trains and screens; Annotate's detector queue, Retrain and learning curve (AppTest)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from app_pages import assert_clean, open_page

    at = open_page("views/10_Screen.py", dataset="det-screen", model="color")
    assert_clean(at, "screen")
    at.radio(key="sc-mode").set_value("Train a new detector").run()
    at.text_input(key="sc-name").input("page-det")
    at.multiselect(key="sc-sets").set_value(["det-train"])
    next(b for b in at.button if b.label == "Train").click().run()
    assert_clean(at, "screen, trained")
    assert "page-det" in D.known_names() and at.selectbox(key="sc-det").value == "page-det"
    assert [m.label for m in at.metric][:2] == ["AUC", "AP"]
    at.button(key="sc-run").click().run()
    assert_clean(at, "screen, screened")
    table = pd.read_parquet(D.prediction_path("det-screen", "page-det"))
    shown = {m.label: m.value for m in at.metric}
    counts = D.screen_counts(table).set_index("group")["images"]
    assert all(str(counts[g]) == str(shown[g]) for g in D.GROUPS)

    at = open_page("views/7_Annotate.py", dataset="det-screen", model="color")
    at.text_input(key="w:annotator").input("tess").run()
    at.radio(key="an-kind").set_value("Suggested by a detector").run()
    at.selectbox(key="an-det").set_value("page-det").run()
    assert_clean(at, "annotate, suggested")
    queue = at.session_state["an-queue"]
    assert len(queue) == 20 and set(queue["task"]) == {"suggest"} and queue["id"].is_unique
    before = len(D.learning_curve(D.load("page-det")))
    at.button(key="an-lab-0").click().run()  # label the first suggestion
    assert_clean(at, "annotate, labelled")
    assert not at.button(key="an-retrain").disabled
    at.button(key="an-retrain").click().run()
    assert_clean(at, "annotate, retrained")
    d = D.load("page-det")
    assert len(D.learning_curve(d)) == before + 1 and "det-screen" in d.meta["recipe"]["datasets"]
    assert queue["id"].iat[0] in d.labelled_ids()  # the label just given is learnt from


def test_training_leaves_out_near_duplicates_of_validation_images(corpus_color, corpus_dir, tmp_path, capsys):
    """The Medetec ulcers come as X, X_1, X_2, X_3 (rotations, flips): by default no training
    image is a perceptual-hash near-duplicate of a validation image (issue 13), and the
    output says how many were left out; --keep-near-duplicates keeps them."""
    from lib.cli import main
    from lib.embeddings import embed
    from lib.quality import near_duplicates_of

    m = pd.read_csv(corpus_dir / "manifest.csv")
    m[m["source"].isin(["medetec", "bccd"])].to_csv(tmp_path / "mb.csv", index=False)
    dataset.ingest(tmp_path / "mb.csv", "det-nd", root=corpus_dir)
    embed("det-nd", "color", workers=0)
    assert main(["train", "det-nd", "--model", "color", "--detector", "nd"]) == 0
    out = capsys.readouterr().out
    d = D.load("nd")
    dropped = d.meta["split"]["near_duplicates_dropped"]
    assert dropped > 0 and f"{dropped} near-duplicate(s) of validation images" in out
    train = [i.decode() for i in d.arrays["train_ids"]]
    val = [i.decode() for i in d.arrays["val_ids"]]
    assert not near_duplicates_of("det-nd", val, train)  # nothing of validation is in training, rotated or not
    assert d.meta["recipe"]["near_duplicates"] is True

    assert main(["train", "det-nd", "--model", "color", "--detector", "nd-keep", "--keep-near-duplicates"]) == 0
    keep = D.load("nd-keep")
    assert keep.meta["split"]["near_duplicates_dropped"] is None
    assert keep.meta["split"]["n_train"] == d.meta["split"]["n_train"] + dropped  # the same split, nothing left out
    assert near_duplicates_of("det-nd", [i.decode() for i in keep.arrays["val_ids"]],
                              [i.decode() for i in keep.arrays["train_ids"]])
