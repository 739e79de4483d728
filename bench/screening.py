"""Detectors (lib/detector.py, issue 12): leave-one-source-out on the corpus, the simulated
review loop (suggested vs random labels, side by side in one run), and speed at 100k
training / 1M screened vectors.

Corpus part: the real corpus (``../shared/corpus``), embedded with the offline ``color``
backend, each distinct image once, with its 7 flips / rotations (so ``uncertain`` is
computed, as it is by default for ``color``). For each source, a detector is trained on the
other four and screens it: AUC (when the source holds both classes), recall at the
screening threshold (the worst-group R95: the minimum of the overall R95 and that of every
training source with enough sensitive validation images, :data:`lib.detector.MIN_GROUP_POSITIVES`;
the sources are the detector's groups), the share of safe images the safe view clears (p below the threshold,
familiar, steady under flips) and the share of sensitive images it would clear (misses
shown raw). The review loop then reveals the manifest labels of 10 images of the left-out
source per round for 5 rounds, chosen by :func:`lib.detector.select_suggestions` or at
random, refits on all labels so far (each image in the group of its source, so the labels
of the new source become a group of their own) and screens the rest of that source again; both
strategies are averaged over the same seeds.

Speed part: synthetic clustered 512-d unit vectors (:func:`bench.common.clustered_vectors`,
shared with ``bench/search.py``); labels from a noisy random hyperplane (30% positive).
Training on 100k (the classifier, its calibration and the familiarity index with its
leave-one-out distances) and screening 1M held in RAM (p and the unfamiliar search through
IVF) are timed; the list-by-list IVF search is compared with faiss's own IndexIVFFlat and
with exact search side by side.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .common import CORPUS, Recorder, clustered_vectors, fresh_home

SOURCES = ("fuseg", "medetec", "azh", "figure1_cxr", "bccd")
METRICS = ("auc", "recall", "safe_cleared", "sensitive_cleared", "unfamiliar")


def _fmt(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def corpus_vectors(progress=None) -> dict:
    """The corpus in a fresh home, embedded with color with its 7 views: X (n, d), views
    (7, n, d), y (n,) bool, source (n,), ids (n,), one row per distinct image."""
    from lib import dataset
    from lib import detector as D
    from lib.embeddings import embed, load_embeddings

    if not dataset.exists("corpus"):
        dataset.ingest(CORPUS / "manifest.csv", "corpus")
    embed("corpus", "color")
    ds = dataset.load("corpus")
    first = np.flatnonzero(~ds.images["id"].duplicated())
    X = load_embeddings("corpus", "color").take(first)
    y = ds.images["label"].to_numpy()[first] == "sensitive"
    ids = ds.images["id"].to_numpy()[first].tolist()
    # any detector of this model names the views' caches; one on the whole corpus
    det = D.fit_detector(X, y, ids)
    det.meta["model"] = {"spec": "color", "fingerprint": load_embeddings("corpus", "color").fingerprint,
                         "random_weights": False, "kind": "color", "dim": X.shape[1]}
    det.meta["name"] = "bench"
    views = D.view_vectors(ds, det, progress=progress)[:, first]
    return {"X": X, "views": views, "y": y, "source": ds.images["source"].to_numpy()[first], "ids": ids}


def run_corpus(rec: Recorder, seeds=(0, 1, 2), rounds: int = 5, per_round: int = 10) -> dict:
    from lib import detector as D

    fresh_home("screening")
    t = time.perf_counter()
    c = corpus_vectors()
    X, V, y, src, ids = c["X"], c["views"], c["y"], c["source"], c["ids"]
    rec.explain(f"Corpus: {len(y)} distinct images ({int(y.sum())} sensitive, {int((~y).sum())} safe), color "
                f"embeddings ({X.shape[1]}-d) and their 7 flips / rotations in {time.perf_counter() - t:.0f} s "
                "(cached per transform: a second run reads them).")
    t = time.perf_counter()
    loso = D.leave_one_source_out(X, y, ids, src, views=V)
    rec.add("leave-one-source-out: 5 trainings and screenings", time.perf_counter() - t, "s")
    lines = ["| left out | images | sensitive | AUC | recall at screening | safe cleared | sensitive cleared | "
             "unfamiliar | uncertain | threshold | overall R95 | set by |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loso.itertuples():
        lines.append(f"| {r.source} | {r.n} | {r.sensitive} | {_fmt(r.auc)} | {_fmt(r.recall)} | "
                     f"{_fmt(r.safe_cleared)} | {_fmt(r.sensitive_cleared)} | {_fmt(r.unfamiliar)} | "
                     f"{_fmt(r.uncertain)} | {r.threshold:.3f} | {r.overall_threshold:.3f} | {r.set_by or 'all'} |")
        for m in METRICS:
            v = getattr(r, m)
            if np.isfinite(v):
                rec.add(f"LOSO {r.source}: {m.replace('_', ' ')}", v)
    rec.explain("Leave-one-source-out (train on four sources, screen the fifth; color; screening threshold: "
                "the worst-group R95 on the training sources' validation split, stratified by source and class; "
                "'set by' names the training source whose R95 it is, 'all' the whole split's; '–' where the "
                "source has one class):\n\n"
                + "\n".join(lines))

    loops = []
    t = time.perf_counter()
    for s in SOURCES:
        pool = src == s
        base_ids = [i for i, p in zip(ids, pool, strict=True) if not p]
        pool_ids = [i for i, p in zip(ids, pool, strict=True) if p]
        for strategy in ("suggest", "random"):
            for seed in seeds:
                lp = D.simulate_review_loop(X[~pool], y[~pool], base_ids, X[pool], y[pool], pool_ids,
                                            strategy=strategy, rounds=rounds, per_round=per_round,
                                            views_pool=V[:, pool], seed=seed, groups_base=src[~pool],
                                            groups_pool=src[pool])
                loops.append(lp.assign(source=s, seed=seed))
    loop = pd.concat(loops, ignore_index=True)
    loop["pool_sets"] = (loop["set_by"] == loop["source"]).astype(float)  # the new source's labels set the threshold
    rec.add(f"review loop: {len(SOURCES)} sources x 2 strategies x {len(seeds)} seeds x {rounds + 1} trainings",
            time.perf_counter() - t, "s")
    mean = loop.groupby(["source", "strategy", "round", "labels_added"], sort=False)[
        ["n", *METRICS, "unfamiliar_picked", "pool_sets"]].mean().reset_index()
    lines = ["| source | labels | AUC suggested | AUC random | recall suggested | recall random | "
             "safe cleared suggested | safe cleared random | sensitive cleared suggested | sensitive cleared random | "
             "unfamiliar picked (suggested) | set by the new source (suggested / random) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in SOURCES:
        for r in sorted(mean.loc[mean["source"] == s, "round"].unique()):  # a small source runs out early
            a = mean[(mean["source"] == s) & (mean["round"] == r) & (mean["strategy"] == "suggest")].iloc[0]
            b = mean[(mean["source"] == s) & (mean["round"] == r) & (mean["strategy"] == "random")].iloc[0]
            lines.append(f"| {s} | {int(a.labels_added)} | {_fmt(a.auc)} | {_fmt(b.auc)} | {_fmt(a.recall)} | "
                         f"{_fmt(b.recall)} | {_fmt(a.safe_cleared)} | "
                         f"{_fmt(b.safe_cleared)} | {_fmt(a.sensitive_cleared)} | {_fmt(b.sensitive_cleared)} | "
                         f"{a.unfamiliar_picked:.1f} | {a.pool_sets:.2f} / {b.pool_sets:.2f} |")
        here = mean[(mean["source"] == s) & (mean["n"] > 0)]
        last = here[here["round"] == here["round"].max()].set_index("strategy")  # the last round with images left
        n_lab = int(last["labels_added"].iloc[0]) if len(last) else 0
        for m in ("auc", "safe_cleared", "sensitive_cleared"):
            if len(last) and np.isfinite(last.loc["suggest", m]) and np.isfinite(last.loc["random", m]):
                rec.add(f"loop {s}: {m.replace('_', ' ')} after {n_lab} labels, suggested", last.loc["suggest", m])
                rec.add(f"loop {s}: {m.replace('_', ' ')} after {n_lab} labels, random", last.loc["random", m])
    rec.explain(f"Review loop on each left-out source ({per_round} labels per round from the manifest, {rounds} "
                f"rounds, mean of seeds {list(seeds)}; metrics on the images of that source not yet labelled; "
                "'set by the new source': share of the runs whose worst-group threshold the new source's own "
                "validation labels set):\n\n"
                + "\n".join(lines))
    return {"loso": loso, "loop": loop}


def run_speed(rec: Recorder, n_train: int = 100_000, n_apply: int = 1_000_000) -> None:
    import faiss

    from lib import detector as D

    t = time.perf_counter()
    allx = clustered_vectors(1_000_000 + 300, 512, seed=0)  # bench/search.py's vectors
    X = np.array(allx[:n_apply], dtype=np.float32)  # in RAM: the screen is timed, not the disk
    rec.explain(f"Speed: {n_apply:,} x 512 synthetic vectors ({time.perf_counter() - t:.0f} s to make or load); the "
                f"first {n_train:,} train; labels from a noisy random hyperplane. faiss {faiss.__version__}, "
                f"{faiss.omp_get_max_threads()} threads.")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(512).astype(np.float32)
    s = X[:n_train] @ w + rng.standard_normal(n_train).astype(np.float32) * 0.02
    y = s > np.quantile(s, 0.7)
    ids = [f"{i:064x}" for i in range(n_train)]
    stages: list[float] = []
    t = time.perf_counter()
    det = D.fit_detector(X[:n_train], y, ids, progress=lambda k, n: stages.append(time.perf_counter()))
    train_s = time.perf_counter() - t
    det.meta["model"] = {"spec": "synthetic", "fingerprint": f"synthetic-{n_train}", "random_weights": False,
                         "dim": 512, "kind": "synthetic"}
    rec.add(f"train on {n_train // 1000}k vectors", train_s, "s", ("<", 60.0),
            note=f"classifier + calibration {stages[1] - t:.1f} s, familiarity ({det.meta['familiarity']['index']}, "
                 f"nlist {det.meta['familiarity']['nlist']}, nprobe {det.meta['familiarity']['nprobe']}) with "
                 f"leave-one-out {stages[3] - stages[2]:.1f} s; validation AUC {det.meta['validation']['auc']:.3f}")
    fresh_home("screening-speed")
    t = time.perf_counter()
    D.save(det, "speed")
    t_save = time.perf_counter() - t
    t = time.perf_counter()
    det = D.load("speed")
    det.index()
    rec.add("save + load (npz + JSON, checksummed) + rebuild the index", t_save + time.perf_counter() - t, "s",
            note=f"{sum(p.stat().st_size for p in D.detector_dir('speed').iterdir()) / 2**20:.0f} MiB on disk")

    tp = td = 0.0
    unfamiliar = 0
    for s0 in range(0, n_apply, 65536):
        chunk = X[s0:s0 + 65536]
        t = time.perf_counter()
        p = det.predict_p(chunk)
        tp += time.perf_counter() - t
        t = time.perf_counter()
        d = det.distances(chunk)
        td += time.perf_counter() - t
        unfamiliar += int((d > det.cut).sum())
        del p
    label = f"{n_apply // 1_000_000}M" if n_apply >= 1_000_000 else f"{n_apply // 1000}k"
    rec.add(f"screen {label} vectors: p + unfamiliar (IVF)", tp + td, "s", ("<", 60.0),
            note=f"p {tp:.1f} s, unfamiliar search {td:.1f} s; {unfamiliar / n_apply:.2%} unfamiliar "
                 "(same distribution as the training vectors: ~1% expected)")
    rec.add(f"screen {label}: vectors per second", n_apply / (tp + td), "vec/s")

    # the list-by-list search beside faiss's own IndexIVFFlat, and beside exact search
    q = X[n_train:n_train + 50_000]
    fam = det.index()
    t = time.perf_counter()
    mine, _ = fam.search(q)
    t_mine = time.perf_counter() - t
    t = time.perf_counter()
    early, _ = fam.search(q, enough=1.0 - det.cut)
    t_early = time.perf_counter() - t
    same = int(((1 - early) > det.cut).sum() == ((1 - mine) > det.cut).sum()
               and np.array_equal((1 - early) > det.cut, (1 - mine) > det.cut))
    rec.add("familiarity: every list / stop once familiar (50k queries)", t_mine / max(t_early, 1e-9), "x",
            note=f"{t_mine:.1f} s vs {t_early:.1f} s; unfamiliar flags identical: {'yes' if same else 'NO'}")
    ivf = faiss.IndexIVFFlat(fam.quantizer, 512, fam.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.add(fam.ref)
    ivf.nprobe = fam.nprobe
    t = time.perf_counter()
    theirs, _ = ivf.search(q, 1)
    t_faiss = time.perf_counter() - t
    rec.add("IVF search, faiss IndexIVFFlat / list by list (50k queries)", t_faiss / t_mine, "x",
            note=f"{t_faiss:.1f} s vs {t_mine:.1f} s; max |difference| {float(np.abs(theirs[:, 0] - mine).max()):.1e}")
    qe = q[:10_000]
    t = time.perf_counter()
    exact, _ = faiss.knn(qe, fam.ref, 1, metric=faiss.METRIC_INNER_PRODUCT)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    fam.search(qe)
    t_ivf = time.perf_counter() - t
    rec.add("exact / IVF search time (10k queries)", t_exact / max(t_ivf, 1e-9), "x",
            note=f"{t_exact:.1f} s vs {t_ivf:.1f} s")
    found = mine[:10_000] >= exact[:, 0] - 1e-5
    rec.add("IVF finds the true nearest training vector", float(found.mean()), "", (">=", 0.9),
            note="a miss only overestimates the distance (errs towards unfamiliar)")
    rec.add("unfamiliar share, IVF vs exact (10k in-distribution queries)",
            float(((1 - mine[:10_000]) > det.cut).mean() - ((1 - exact[:, 0]) > det.cut).mean()), "",
            note="extra flags caused by IVF misses")


def run_slider(rec: Recorder, n: int = 1_000_000) -> None:
    """The threshold slider recomputes :func:`lib.metrics.metrics_at_threshold` on every move."""
    from lib.metrics import metrics_at_threshold

    rng = np.random.default_rng(2)
    y, s = rng.integers(0, 2, n), rng.random(n)
    metrics_at_threshold(y, s, 0.5)  # warm
    t = time.perf_counter()
    for thr in np.linspace(0.05, 0.95, 10):
        metrics_at_threshold(y, s, float(thr))
    rec.add(f"metrics at one threshold, {n // 1_000_000}M scores (the threshold slider)",
            (time.perf_counter() - t) / 10, "s", ("<", 1.0), note="one O(n) pass, mean of 10 thresholds")


def run(rec: Recorder) -> None:
    run_corpus(rec, seeds=(0,) if rec.quick else (0, 1, 2))
    run_speed(rec, n_apply=300_000 if rec.quick else 1_000_000)
    run_slider(rec)
