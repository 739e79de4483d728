"""The papers' experiment matrix in one run: datasets x models x tasks, one long table, and
the papers' reported numbers beside ours (in the spirit of LAION's CLIP_benchmark).

``python -m lib benchmark --datasets A,B --models X,Y --tasks zeroshot,probe,retrieval,detector``

Tasks (:data:`TASKS`)
    ``zeroshot``      zero-shot with a class set (default MedGore's Blur / Normal) on every labelled image
    ``probe``         the linear probe (5-fold CV, or the dataset's train/test split)
    ``retrieval``     caption Recall@K both ways, ``mean_R`` (MedicalNarratives' average)
    ``detector``      a calibrated detector (:func:`lib.detector.fit_detector`) trained on the
                      training part, thresholds (max-F1, R90, R95, thesis) chosen on its
                      validation split, scored on the held-out test part
    ``eb``            MedGore's EB colour score at its operating points (EB > 0, the safe view's
                      cut), and its AUC; model-free (model column ``EB colour score``)
    ``segmentation``  the colour mask against ground-truth masks: IoU, Dice, pixel Double F1,
                      MSE, per image and pooled; model-free (``colour mask``)
    ``grid``          MedGore's experiment: train on automatic labels (seed expansion over the
                      training part: all, First-3, Last-3, each capped) vs on the manual labels,
                      test on the same gold test part (a linear probe on frozen embeddings
                      stands for the fine-tuned model)
    ``finetune``      :func:`lib.finetune.finetune` on the training part, scored on the test part

Every dataset's test part is its ``split == "test"`` rows when it has them, else a
stratified seeded ``test_frac`` of its labelled images (one per content id); training,
validation and threshold choice never see it.

The long table (``results.csv``) has one row per number: ``dataset, model, task, variant,
metric, value, n, seed, random_weights, note``. A task a dataset cannot run (no labels,
no captions, no text tower, no masks) is one row with ``metric = "skipped"`` and the reason
in ``note``; a model whose weights are missing is one such row per dataset, and the rest of
the matrix runs.

The papers' numbers ship as data (``lib/papers/*.json``, with dataset, model, metric and the
exact definition). ``comparison.csv`` and the report put each paper number beside the runs
here with the same task and metric, and say for each whether it is comparable: only the same
model (real weights) on the paper's own dataset (declared with ``paper_datasets``) is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import WorkbenchError

TASKS = ("zeroshot", "probe", "retrieval", "detector", "eb", "segmentation", "grid", "finetune")
DEFAULT_TASKS = ("zeroshot", "probe", "retrieval", "detector")
MODEL_FREE = {"eb": "EB colour score", "segmentation": "colour mask"}
COLUMNS = ["dataset", "model", "task", "variant", "metric", "value", "n", "seed", "random_weights", "note"]
PAPERS_DIR = Path(__file__).with_name("papers")
#: The classification metrics reported per task (both macro conventions, the thesis's binary ones).
CLASSIFICATION_KEYS = ("accuracy", "precision_macro_zero", "recall_macro_zero", "f1_macro_zero", "precision_macro",
                       "recall_macro", "f1_macro", "roc_auc", "average_precision", "precision", "recall", "f1",
                       "precision_negative", "recall_negative", "specificity", "double_f1", "double_f1_weighted")
#: Metrics the report's summary table shows per task (the long table has them all).
SUMMARY = {
    "zeroshot": ("accuracy", "precision_macro_zero", "recall_macro_zero", "f1_macro_zero", "roc_auc",
                 "predicted_classes"),
    "probe": ("accuracy", "f1_macro_zero", "roc_auc", "double_f1"),
    "retrieval": ("mean_R", "mean_R_ks", "t2i_R@5", "i2t_R@5", "gallery"),
    "detector": ("roc_auc", "precision", "recall", "f1", "double_f1", "double_f1_weighted", "specificity"),
    "eb": ("roc_auc", "precision", "recall", "f1", "double_f1"),
    "segmentation": ("mean_iou", "mean_dice", "mean_double_f1", "mean_mse", "pooled_iou", "pooled_dice"),
    "grid": ("n_train", "label_agreement", "f1_macro_zero", "roc_auc", "double_f1"),
    "finetune": ("best_epoch", "f1_macro_zero", "roc_auc", "double_f1"),
}


class BenchmarkError(WorkbenchError):
    """The benchmark cannot run at all (unknown task, no dataset)."""


class Skip(Exception):
    """A cell of the matrix cannot run; its message is the reason row's note."""


@dataclass
class BenchmarkResult:
    """The long table, the paper comparison and the files written."""

    table: pd.DataFrame
    comparison: pd.DataFrame
    files: list[Path] = field(default_factory=list)


# =========================================================================== papers' numbers


def paper_results(folder: Path = PAPERS_DIR) -> pd.DataFrame:
    """Every paper's reported number, one row each: ``paper, table, dataset, model, spec, task,
    variant, metric, value`` (as printed), ``scale``, ``definition`` and ``value_fraction``
    (percent / 100, so the same scale as the workbench's values)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        for r in data.get("results", []):
            missing = [k for k in ("dataset", "model", "task", "metric", "value", "scale", "definition") if k not in r]
            if missing:
                raise BenchmarkError(f"{path.name}: a result lacks {', '.join(missing)}: {r}")
            if r["scale"] not in ("percent", "fraction"):
                raise BenchmarkError(f"{path.name}: scale {r['scale']!r} is neither percent nor fraction")
            rows.append({"paper": data["paper"], "table": r.get("table", ""), "dataset": r["dataset"],
                         "model": r["model"], "spec": r.get("spec"), "task": r["task"],
                         "variant": r.get("variant", ""), "metric": r["metric"], "value": float(r["value"]),
                         "scale": r["scale"], "definition": r["definition"],
                         "value_fraction": float(r["value"]) / (100.0 if r["scale"] == "percent" else 1.0)})
    return pd.DataFrame(rows)


def _canonical(spec) -> str | None:
    if not isinstance(spec, str) or not spec:
        return None
    from .models import parse_spec

    try:
        return parse_spec(spec).text
    except WorkbenchError:
        return spec


def compare_with_papers(table: pd.DataFrame, papers: pd.DataFrame | None = None,
                        paper_datasets: dict[str, str] | None = None) -> pd.DataFrame:
    """Each paper number beside the runs here with the same task and metric (and variant,
    where the paper names one).

    Returns
    -------
    DataFrame, one row per (paper number, run here) pair, or per paper number alone when
    nothing comparable-in-kind ran: ``paper, table, task, variant, metric, definition,
    paper_dataset, paper_model, paper_value`` (fraction), ``here_dataset, here_model,
    here_value, n, comparable`` (``yes`` / ``no`` / ``not run here``) and ``why``.
    """
    papers = paper_results() if papers is None else papers
    paper_datasets = paper_datasets or {}
    ok = table[table["metric"] != "skipped"] if len(table) else table
    out = []
    for _, p in papers.iterrows():
        here = ok[(ok["task"] == p["task"]) & (ok["metric"] == p["metric"])] if len(ok) else ok
        if len(here) and p["variant"]:
            here = here[here["variant"] == p["variant"]]
        elif len(here) and p["task"] in ("detector", "finetune"):
            here = here[here["variant"] == "thesis"]  # thresholded metrics: at the thesis rule
        base = {"paper": p["paper"], "table": p["table"], "task": p["task"], "variant": p["variant"],
                "metric": p["metric"], "definition": p["definition"], "paper_dataset": p["dataset"],
                "paper_model": p["model"], "paper_value": p["value_fraction"]}
        if not len(here):
            out.append({**base, "here_dataset": None, "here_model": None, "here_value": np.nan, "n": pd.NA,
                        "comparable": "not run here", "why": "no run here of this task and metric"})
            continue
        want = _canonical(p["spec"])
        for _, h in here.iterrows():
            why = []
            if paper_datasets.get(h["dataset"]) != p["dataset"]:
                why.append(f"different data ({h['dataset']} is not {p['dataset']})")
            if want is None:
                why.append(f"the paper's model ({p['model']}) has no workbench spec")
            elif _canonical(h["model"]) != want:
                why.append(f"different model ({h['model']} vs {p['model']})")
            if bool(h["random_weights"]):
                why.append("random weights")
            out.append({**base, "here_dataset": h["dataset"], "here_model": h["model"], "here_value": h["value"],
                        "n": h["n"], "comparable": "no" if why else "yes", "why": "; ".join(why) or "same data and model"})
    cols = ["paper", "table", "task", "variant", "metric", "definition", "paper_dataset", "paper_model", "paper_value",
            "here_dataset", "here_model", "here_value", "n", "comparable", "why"]
    return pd.DataFrame(out, columns=cols)


# =========================================================================== data


def test_split(name: str, *, test_frac: float = 0.2, seed: int = 0, positive: str | None = None) -> pd.DataFrame:
    """The labelled images of dataset ``name``, one per content id, with their binary truth and part.

    Returns
    -------
    DataFrame with ``row, id, path, label, y`` (1 sensitive, 0 safe, by the dataset's label
    policy) and ``part`` (``train`` / ``test``): the ``split == "test"`` rows are the test
    part when there are any, else a stratified seeded ``test_frac``.

    Raises
    ------
    Skip : no labels the policy can read, or fewer than 2 images of a class.
    """
    from sklearn.model_selection import train_test_split

    from . import dataset as ds_mod
    from .sensitivity import SENSITIVE, binary_truth, run_policy

    ds = ds_mod.load(name)
    df = ds.images.reset_index(drop=True).assign(row=lambda d: np.arange(len(d)))
    df = df[~df["id"].duplicated()]
    truth = binary_truth(df["label"], run_policy(name, positive, df["label"].dropna().unique()))
    df = df[truth.notna().to_numpy()].assign(y=(truth.dropna() == SENSITIVE).astype(int).to_numpy())
    counts = np.bincount(df["y"].to_numpy(), minlength=2) if len(df) else np.zeros(2, int)
    if counts.min() < 4:
        raise Skip(f"dataset {name!r} has {counts[1]} sensitive and {counts[0]} safe images by its label policy; "
                   "a train/test task needs at least 4 of each")
    split = df["split"].astype("string").str.lower() if "split" in df else pd.Series(pd.NA, index=df.index)
    if split.eq("test").any():
        part = np.where(split.eq("test").fillna(False).to_numpy(bool), "test", "train")
    else:
        if not 0 < test_frac < 1:
            raise BenchmarkError(f"--test-frac must lie strictly between 0 and 1, got {test_frac}")
        _, te = train_test_split(np.arange(len(df)), test_size=max(2, int(round(test_frac * len(df)))),
                                 stratify=df["y"], random_state=seed)
        part = np.full(len(df), "train", dtype=object)
        part[te] = "test"
    out = df[["row", "id", "path", "label", "y"]].assign(part=part).reset_index(drop=True)
    for p in ("train", "test"):
        c = np.bincount(out.loc[out["part"] == p, "y"].to_numpy(), minlength=2)
        if c.min() < 1 or (p == "train" and c.min() < 3):
            raise Skip(f"the {p} part of {name!r} holds {c[1]} sensitive and {c[0]} safe images: too few")
    return out


def derive_dataset(source: str, name: str, *, rows: Sequence[int] | np.ndarray | None = None,
                   split: Sequence[str] | None = None, link: bool = True):
    """A new dataset ``name`` made of rows of dataset ``source`` (e.g. one source, or a split).

    The images (and masks) are hard-linked (copied where linking fails) under
    ``<home>/derived/<name>/`` beside a manifest with every metadata column, so the new
    dataset is ingested like any other and its content ids are the source's (the embedding
    cache is shared). ``split`` (one value per chosen row) replaces the ``split`` column.

    Returns the ingest report.
    """
    from . import config
    from . import dataset as ds_mod
    from .files import copy_file, link_or_copy, write_table

    src = ds_mod.load(source)
    images = src.images.reset_index(drop=True)
    if rows is not None:
        images = images.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    if split is not None:
        if len(split) != len(images):
            raise BenchmarkError(f"split has {len(split)} values for {len(images)} rows")
        images = images.assign(split=list(split))
    root = config.home() / "derived" / ds_mod.check_name(name)
    root.mkdir(parents=True, exist_ok=True)

    def place(rel: str) -> str:
        target = root / rel
        if not target.exists():  # one already there is whole (placed atomically): kept
            (link_or_copy if link else copy_file)(src.abspath(rel), target)
        return rel

    manifest = images.drop(columns=[c for c in ("id", "duplicate_of") if c in images])
    manifest["path"] = [place(p) for p in manifest["path"]]
    if "mask" in manifest:
        manifest["mask"] = [place(str(m)) if isinstance(m, str) and m.strip() else None for m in manifest["mask"]]
    write_table(root / "manifest.csv", manifest)
    return ds_mod.ingest(root / "manifest.csv", name)


# =========================================================================== the tasks


def _rows(task: str, variant: str, metrics: dict, n: int, keys: Sequence[str] | None = None,
          note: str = "") -> list[dict]:
    keys = keys or [k for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    return [{"task": task, "variant": variant, "metric": k, "value": float(metrics[k]), "n": int(n), "note": note}
            for k in keys if k in metrics and metrics[k] is not None]


def _embedded(ctx, name: str):
    from .embeddings import embed, load_embeddings

    embed(name, ctx.model)
    return load_embeddings(name, ctx.model)


def _task_zeroshot(ctx, name: str) -> list[dict]:
    from .zeroshot import run_zeroshot

    if not ctx.backend.has_text:
        raise Skip(f"model {ctx.spec} has no text tower: zero-shot needs an image-text model")
    res = run_zeroshot(name, ctx.model, classes=ctx.classes, write=False)
    if not res.metrics:
        raise Skip(f"no label of {name!r} maps to the classes of {res.classes.name!r} ({', '.join(res.classes.classes)})")
    scored = res.predictions[res.predictions["truth"].notna()]
    m = dict(res.metrics)
    m["predicted_classes"] = int(scored["pred"].nunique())
    note = f"classes {res.classes.name} ({', '.join(res.classes.classes)}), templates {res.templates.name}"
    if m["predicted_classes"] == 1:
        note += f"; every image predicted {scored['pred'].iat[0]!r} (MedGore's degenerate case)"
    return _rows("zeroshot", "", m, res.n_scored, (*CLASSIFICATION_KEYS, "predicted_classes"), note)


def _task_probe(ctx, name: str) -> list[dict]:
    from . import dataset as ds_mod
    from .probe import ProbeError, run_probe

    _embedded(ctx, name)
    images = ds_mod.load(name).images
    split = images["split"].astype("string") if "split" in images else pd.Series(pd.NA, index=images.index)
    use_split = bool(split.eq("train").any() and split.eq("test").any())
    try:
        res = run_probe(name, ctx.model, "image", use_split=use_split, seed=ctx.seed, positive=ctx.positive)
    except ProbeError as e:
        raise Skip(str(e)) from None
    return _rows("probe", res.mode, res.metrics, res.metrics["n"], CLASSIFICATION_KEYS,
                 f"linear probe, {res.mode}, positive {res.positive}")


def _task_retrieval(ctx, name: str) -> list[dict]:
    from .errors import DatasetError
    from .retrieval import run_retrieval_eval

    if not ctx.backend.has_text:
        raise Skip(f"model {ctx.spec} has no text tower: caption retrieval needs an image-text model")
    try:
        ev = run_retrieval_eval(name, ctx.model, write=False)
    except DatasetError as e:
        raise Skip(str(e)) from None
    row = ev.table.iloc[0]
    gallery = int(row["gallery"])
    note = f"{ev.pairs} captioned images"
    if gallery <= 200:
        note += f"; K >= the gallery ({gallery}) is trivially 1.0, so mean_R (K = 5, 50, 200) is inflated"
    m = {k: row[k] for k in row.index if k not in ("group", "pairs")}
    return _rows("retrieval", "", m, ev.pairs, None, note)


def _binary_rows(task: str, y: np.ndarray, p: np.ndarray, thresholds: dict[str, float], note: str) -> list[dict]:
    """Threshold-free rows (AUC, AP) once, then every classification metric at each rule."""
    from .metrics import classification_metrics

    out = []
    free = classification_metrics(y, p, positive=1, labels=[0, 1])
    out += _rows(task, "", free, len(y), ("roc_auc", "average_precision"), note)
    for rule, thr in thresholds.items():
        m = classification_metrics(y, p, positive=1, labels=[0, 1], threshold=float(thr))
        m["threshold"] = float(thr)
        keys = [k for k in CLASSIFICATION_KEYS if k not in ("roc_auc", "average_precision")] + ["threshold"]
        out += _rows(task, rule, m, len(y), keys, note)
    return out


def _task_detector(ctx, name: str) -> list[dict]:
    from .detector import fit_detector

    parts = ctx.parts(name)
    emb = _embedded(ctx, name)
    tr, te = parts[parts["part"] == "train"], parts[parts["part"] == "test"]
    det = fit_detector(emb.take(tr["row"].to_numpy()), tr["y"].to_numpy(bool), tr["id"].tolist(), seed=ctx.seed)
    p = det.predict_p(emb.take(te["row"].to_numpy()))
    rules = {"max_f1": "max_f1", "R90": "R90", "R95": "R95", "thesis": "thesis"}
    thresholds = {name_: float(det.meta["thresholds"][r]["threshold"]) for name_, r in rules.items()}
    note = (f"calibrated detector trained on {len(tr)} images (thresholds on its validation split), "
            f"tested on {len(te)} held-out images")
    return _binary_rows("detector", te["y"].to_numpy(), p, thresholds, note)


def _task_eb(ctx, name: str) -> list[dict]:
    from . import colorscore
    from . import dataset as ds_mod
    from .metrics import classification_metrics, eb_operating_points
    from .sensitivity import SENSITIVE, binary_truth, run_policy

    ds = ds_mod.load(name)
    scores = colorscore.score_dataset(ds)
    labels = ds.images["label"].reset_index(drop=True)
    truth = binary_truth(labels, run_policy(name, ctx.positive, labels.dropna().unique()))
    ok = truth.notna().to_numpy() & np.isfinite(scores["eb"].to_numpy(float))
    ok &= ~ds.images["id"].reset_index(drop=True).duplicated().to_numpy()
    y = (truth[ok] == SENSITIVE).astype(int).to_numpy()
    if len(y) == 0 or y.min() == y.max():
        raise Skip(f"dataset {name!r} needs labelled images of both classes (by its policy) for EB metrics")
    eb = scores["eb"].to_numpy(float)[ok]
    out = _rows("eb", "", classification_metrics(y, eb, positive=1, labels=[0, 1], threshold=0.0), len(y),
                ("roc_auc", "average_precision"), "EB = max(z_blood, z_skin), z-scored over the dataset")
    for _, r in eb_operating_points(y, eb, positive=1).iterrows():
        m = {k: r[k] for k in ("precision", "recall", "f1", "precision_negative", "recall_negative", "specificity",
                               "double_f1", "double_f1_weighted", "accuracy", "cut")}
        m.update(_macro_at(y, eb > r["cut"]))
        out += _rows("eb", r["rule"], m, len(y), None, r["definition"])
    return out


def _macro_at(y: np.ndarray, flagged: np.ndarray) -> dict:
    from .metrics import classification_metrics

    m = classification_metrics(y, flagged.astype(int), positive=1, labels=[0, 1])
    return {k: m[k] for k in ("precision_macro_zero", "recall_macro_zero", "f1_macro_zero")}


def _task_segmentation(ctx, name: str) -> list[dict]:
    from . import dataset as ds_mod
    from .colorscore import color_masks
    from .images import open_image
    from .metrics import segmentation_metrics
    from .safety import clean_mask, load_mask

    ds = ds_mod.load(name)
    images = ds.images
    if "mask" not in images:
        raise Skip(f"dataset {name!r} has no 'mask' column of ground-truth masks")
    rows = images[images["mask"].notna() & (images["mask"].astype("string").str.strip() != "")]
    rows = rows[~rows["id"].duplicated()]
    if rows.empty:
        raise Skip(f"dataset {name!r} has no ground-truth masks")
    preds, truths, errors = [], [], 0
    for path, mask in zip(rows["path"], rows["mask"], strict=True):
        try:
            pred = clean_mask(color_masks(open_image(ds.abspath(path)))[0])
            truths.append(load_mask(ds.abspath(str(mask)), shape=pred.shape))
            preds.append(pred)
        except (WorkbenchError, OSError, ValueError):
            errors += 1
    if not preds:
        raise Skip(f"none of the {len(rows)} masks of {name!r} could be read")
    _, pooled = segmentation_metrics(preds, truths)
    note = "cleaned blood-like colour mask vs ground truth" + (f"; {errors} unreadable" if errors else "")
    return _rows("segmentation", "", {k: v for k, v in pooled.items() if k not in ("n", "pixels")},
                 pooled["n"], None, note)


def _fit_probe_eval(X_tr: np.ndarray, y_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    from .metrics import classification_metrics
    from .probe import make_probe

    model = make_probe(seed=seed).fit(X_tr, y_tr)
    p = model.predict_proba(X_te)[:, list(model.classes_).index(1)]
    return classification_metrics(y_te, p, positive=1, labels=[0, 1])


def _task_grid(ctx, name: str) -> list[dict]:
    from . import dataset as ds_mod
    from .expansion import expand, sample_by_rank, seeds_from_labels
    from .index import VectorIndex
    from .neighbors import Space
    from .sensitivity import SENSITIVE, binary_truth, run_policy

    parts = ctx.parts(name)
    emb = _embedded(ctx, name)
    ds = ds_mod.load(name)
    policy = run_policy(name, ctx.positive, ds.images["label"].dropna().unique())
    tr, te = parts[parts["part"] == "train"], parts[parts["part"] == "test"]
    X_te, y_te = emb.take(te["row"].to_numpy()), te["y"].to_numpy()
    # The expansion runs over the training part only: no test image can become a training label.
    pool_ds = replace(ds, images=ds.images.iloc[tr["row"].to_numpy()].reset_index(drop=True))
    pool_emb = _PoolEmbeddings(emb, tr["row"].to_numpy())
    import faiss

    flat = faiss.IndexFlatIP(pool_emb.dim)  # exact, in memory: the pool is a part of one dataset
    flat.add(np.ascontiguousarray(pool_emb.matrix(), dtype=np.float32))
    space = Space(pool_ds, ctx.spec, pool_emb, "flat", VectorIndex(flat, "flat", None))
    k = min(ctx.grid_k, len(tr) - 1)
    seeds = seeds_from_labels(pool_ds, ctx.grid_seeds, seed=ctx.seed)
    expansion = expand(space, seeds, k=k)
    cap = ctx.grid_cap
    row_of = dict(zip(tr["id"], range(len(tr)), strict=True))
    gold = dict(zip(tr["id"], tr["y"], strict=True))

    def train_set(labelled: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
        lab = labelled[labelled["label"].notna()]
        y = (binary_truth(lab["label"].reset_index(drop=True), policy) == SENSITIVE).astype(int).to_numpy()
        ids = lab["id"].tolist()
        if len(ids) > cap:
            pick = np.sort(np.random.default_rng(ctx.seed).choice(len(ids), size=cap, replace=False))
            ids, y = [ids[i] for i in pick], y[pick]
        agree = float(np.mean([gold[i] == v for i, v in zip(ids, y, strict=True)])) if ids else float("nan")
        return pool_emb.take([row_of[i] for i in ids]), y, agree

    sets = {"manual": tr.assign(label=tr["label"])[["id", "label"]]}
    sets[f"auto (ranks 1-{k})"] = expansion.labelled[["id", "label"]]
    band = min(3, k)
    half = max(1, cap // 2)
    sets[f"first{band}"] = sample_by_rank(expansion, first_n=band, n_per_class=half, seed=ctx.seed)[["id", "label"]]
    sets[f"last{band}"] = sample_by_rank(expansion, last_n=band, n_per_class=half, seed=ctx.seed)[["id", "label"]]
    out = []
    counts = expansion.counts.set_index(expansion.counts.columns[0])
    for cls, col in (("sensitive", "share_unique_sensitive"), ("non_sensitive", "share_unique_non_sensitive")):
        labels = [c for c in counts.index if c != "all" and policy.classify(c) == ("sensitive" if cls == "sensitive"
                                                                                     else "safe")]
        if labels and "share_unique" in counts:
            out += _rows("grid", "expansion", {col: float(counts.loc[labels, "share_unique"].mean())},
                         len(expansion.hits), None, f"seed expansion, k={k}, {ctx.grid_seeds} seeds per label")
    note_base = f"linear probe on frozen embeddings; gold test part of {len(te)} images; cap {cap}"
    for variant, labelled in sets.items():
        X, y, agree = train_set(labelled)
        if len(y) < 4 or y.min() == y.max():
            out.append({"task": "grid", "variant": variant, "metric": "skipped", "value": np.nan, "n": len(y),
                        "note": f"training set {variant} has {int(y.sum())} sensitive and {int(len(y) - y.sum())} safe"})
            continue
        m = _fit_probe_eval(X, y, X_te, y_te, ctx.seed)
        m.update({"n_train": len(y), "label_agreement": agree})
        out += _rows("grid", variant, m, len(y_te), (*CLASSIFICATION_KEYS, "n_train", "label_agreement"), note_base)
    return out


class _PoolEmbeddings:
    """The vectors (n, dim) of some dataset rows, as the part of DatasetEmbeddings that
    :func:`lib.expansion.expand` reads (``take``, ``dim``, ``len``)."""

    def __init__(self, emb, rows: np.ndarray):
        self._m = emb.take(rows)

    def __len__(self) -> int:
        return len(self._m)

    @property
    def dim(self) -> int:
        return self._m.shape[1]

    def take(self, rows) -> np.ndarray:
        return self._m[np.asarray(rows, dtype=np.int64)]

    def matrix(self) -> np.ndarray:
        return self._m


def _task_finetune(ctx, name: str) -> list[dict]:
    from .embeddings import embed, load_embeddings
    from .files import slug
    from .finetune import finetune, head_probabilities, load_head

    if not ctx.backend.uses_torch:
        raise Skip(f"model {ctx.spec} has no trainable weights")
    parts = ctx.parts(name)
    te = parts[parts["part"] == "test"]
    out_dir = ctx.out / "finetune" / f"{name}-{slug(ctx.spec)}"
    res = finetune(name, ctx.spec, out_dir, random_weights=ctx.random_weights, epochs=ctx.finetune_epochs,
                   seed=ctx.seed, exclude_ids=te["id"].tolist(), positive=ctx.positive)
    w, b, meta = load_head(out_dir)
    spec, rnd = res.best["spec"], bool(res.best.get("random_weights"))
    embed(name, spec, random_weights=rnd)
    emb = load_embeddings(name, spec, random_weights=rnd)
    p = head_probabilities(emb.take(te["row"].to_numpy()), w, b)
    short = {"max-F1": "max_f1", "R90": "R90", "R95": "R95"}
    thresholds = {short.get(k, "thesis"): v for k, v in res.best["thresholds"].items()}
    note = (f"fine-tuned {ctx.finetune_epochs} epochs (best epoch {res.best['epoch']} on validation), "
            f"tested on {len(te)} held-out images")
    rows = _binary_rows("finetune", te["y"].to_numpy(), p, thresholds, note)
    rows += _rows("finetune", "", {"best_epoch": res.best["epoch"]}, len(te), None, note)
    return rows


TASK_FUNCS = {"zeroshot": _task_zeroshot, "probe": _task_probe, "retrieval": _task_retrieval,
              "detector": _task_detector, "eb": _task_eb, "segmentation": _task_segmentation, "grid": _task_grid,
              "finetune": _task_finetune}


# =========================================================================== the run


@dataclass
class _Context:
    spec: str
    backend: object
    random_weights: bool
    seed: int
    test_frac: float
    classes: str
    grid_seeds: int
    grid_k: int
    grid_cap: int
    finetune_epochs: int
    out: Path
    positive: str | None = None  # --positive: this label sensitive, the others safe (None: each policy)

    def parts(self, name: str) -> pd.DataFrame:
        """:func:`test_split` of dataset ``name`` under this run's seed, share and classes."""
        return test_split(name, test_frac=self.test_frac, seed=self.seed, positive=self.positive)

    @property
    def model(self):
        """The cell's model as the run_* take it (:class:`lib.models.ResolvedModel`, already loaded)."""
        from .models import resolve_model

        return resolve_model(self.spec, random_weights=self.random_weights, seed=self.seed, backend=self.backend)


def run_benchmark(datasets: Sequence[str], models: Sequence[str], tasks: Sequence[str] = DEFAULT_TASKS, *,
                  out: str | Path | None = None, random_weights: bool = False, seed: int = 0, test_frac: float = 0.2,
                  classes: str = "medgore", paper_datasets: dict[str, str] | None = None, grid_seeds: int = 10,
                  grid_k: int = 99, grid_cap: int = 2000, finetune_epochs: int = 10, positive: str | None = None,
                  progress: bool = False, write: bool = True) -> BenchmarkResult:
    """Run every task on every (dataset, model) and write the table, the comparison and the report.

    Parameters
    ----------
    datasets, models : names and specs; ``tasks`` from :data:`TASKS`
    random_weights : build every model that has weights with seeded random weights (``color``
        has none and is built as it is); the table marks the rows
    paper_datasets : {local dataset: the paper's dataset name} for data that is the paper's own
    positive : a label value that is the sensitive class in every dataset, the others safe
        (default: each dataset's label policy); a dataset without it is refused up front
    out : folder (default ``<home>/results/benchmark``)

    Returns
    -------
    BenchmarkResult (the table has :data:`COLUMNS`)
    """
    from tqdm import tqdm

    from . import dataset as ds_mod
    from .errors import ModelError, WeightsMissing
    from .files import results_dir
    from .models import load_model, parse_spec

    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise BenchmarkError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    datasets = list(dict.fromkeys(datasets))
    models = list(dict.fromkeys(models))
    if not datasets or not models:
        raise BenchmarkError("give at least one dataset and one model")
    from .sensitivity import run_policy

    for name in datasets:
        ds_mod.load(name)  # an unknown dataset is a typo: stop before running anything
        run_policy(name, positive)  # ... and so is a --positive that is not one of its labels
    out_dir = Path(out) if out else results_dir("benchmark")
    started = time.time()
    rows: list[dict] = []

    def add(dataset: str, model: str, rnd: bool, items: list[dict]) -> None:
        for r in items:
            rows.append({"dataset": dataset, "model": model, "seed": seed, "random_weights": rnd, **r})

    def skip(dataset: str, model: str, rnd: bool, task: str, why: str) -> None:
        add(dataset, model, rnd, [{"task": task, "variant": "", "metric": "skipped", "value": np.nan, "n": 0,
                                   "note": why}])

    model_tasks = [t for t in tasks if t not in MODEL_FREE]
    free_tasks = [t for t in tasks if t in MODEL_FREE]
    cells = len(datasets) * (len(models) * len(model_tasks) + len(free_tasks))
    bar = tqdm(total=cells, desc="benchmark", unit="cell", disable=not progress, dynamic_ncols=True)
    for task in free_tasks:
        for name in datasets:
            _run_cell(add, skip, _Context("", None, False, seed, test_frac, classes, grid_seeds, grid_k, grid_cap,
                                          finetune_epochs, out_dir, positive), name, MODEL_FREE[task], False, task)
            bar.update(1)
    for spec in models:
        try:
            rnd = bool(random_weights) and parse_spec(spec).kind != "color"
            backend = load_model(spec, random_weights=rnd, seed=seed)
        except (WeightsMissing, ModelError) as e:
            why = f"model not loaded: {str(e).splitlines()[0]}"
            for name in datasets:
                for task in model_tasks:
                    skip(name, spec, bool(random_weights), task, why)
            bar.update(len(datasets) * len(model_tasks))
            continue
        ctx = _Context(spec, backend, rnd, seed, test_frac, classes, grid_seeds, grid_k, grid_cap, finetune_epochs,
                       out_dir, positive)
        for name in datasets:
            for task in model_tasks:
                _run_cell(add, skip, ctx, name, spec, rnd, task)
                bar.update(1)
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    papers = paper_results()
    comparison = compare_with_papers(table, papers, paper_datasets)
    files: list[Path] = []
    if write:
        files = write_report(table, comparison, out_dir, meta={
            "datasets": datasets, "models": models, "tasks": tasks, "seed": seed, "random_weights": random_weights,
            "test_frac": test_frac, "classes": classes, "paper_datasets": paper_datasets or {},
            "grid": {"seeds": grid_seeds, "k": grid_k, "cap": grid_cap}, "finetune_epochs": finetune_epochs,
            "positive": positive,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1)})
    return BenchmarkResult(table, comparison, files)


def _run_cell(add, skip, ctx, name: str, model: str, rnd: bool, task: str) -> None:
    """One (dataset, model, task): its rows, or one reason row when it cannot run."""
    from .errors import WeightsMissing

    try:
        add(name, model, rnd, TASK_FUNCS[task](ctx, name))
    except Skip as e:
        skip(name, model, rnd, task, str(e))
    except (WorkbenchError, WeightsMissing, ValueError) as e:
        skip(name, model, rnd, task, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


# =========================================================================== the report


def summary_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The headline metrics of each task: {task: DataFrame with ``dataset, model, variant``
    and one column per metric of :data:`SUMMARY` [task]} (the long table has them all)."""
    ok = table[table["metric"] != "skipped"]
    out = {}
    for task, keys in SUMMARY.items():
        t = ok[(ok["task"] == task) & ok["metric"].isin(keys)]
        if t.empty:
            continue
        if task in ("detector", "finetune", "eb"):
            # Threshold-free rows (variant "") carry AUC; the thresholded ones the rest.
            t = t[(t["variant"] != "") | t["metric"].isin(("roc_auc", "best_epoch"))]
        wide = t.pivot_table(index=["dataset", "model", "variant"], columns="metric", values="value",
                             aggfunc="first").reset_index()
        rnd = t.groupby(["dataset", "model"])["random_weights"].any()
        wide["model"] = [m + (" (random weights)" if rnd.get((d, m), False) else "")
                         for d, m in zip(wide["dataset"], wide["model"], strict=True)]
        out[task] = wide[["dataset", "model", "variant", *[k for k in keys if k in wide.columns]]]
    return out


def paper_side_by_side(comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per paper number: ``paper, table, metric, paper_model, paper_value``, every run
    here of that task and metric as ``here`` ("model value; ..."), and ``comparable`` (``yes``
    when any of them is the paper's model on its data, ``no``, or ``not run here``)."""
    if comparison.empty:
        return pd.DataFrame(columns=["paper", "table", "variant", "metric", "paper_model", "paper_value", "here",
                                     "comparable"])
    keys = ["paper", "table", "variant", "metric", "paper_model", "paper_value"]
    rows = []
    for key, g in comparison.groupby(keys, sort=False, dropna=False):
        ran = g[g["comparable"] != "not run here"]
        here = "; ".join(f"{_short(m)} {v:.3f}" for m, v in zip(ran["here_model"], ran["here_value"], strict=True)
                         if np.isfinite(v))
        comparable = "yes" if (ran["comparable"] == "yes").any() else ("no" if len(ran) else "not run here")
        rows.append({**dict(zip(keys, key, strict=True)), "here": here, "comparable": comparable})
    return pd.DataFrame(rows)


def _short(model: str) -> str:
    from .charts import short_name

    return short_name(model, 48) if isinstance(model, str) else str(model)


def _markdown(df: pd.DataFrame, digits: int = 4) -> str:
    if df.empty:
        return "(none)\n"
    def cell(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def write_report(table: pd.DataFrame, comparison: pd.DataFrame, out: str | Path, meta: dict) -> list[Path]:
    """``results.csv`` (the long table), ``comparison.csv``, ``report.md`` and ``report.html``
    (tables and plotly figures, self-contained) in ``out``; returns the paths."""
    from .charts import benchmark_bars
    from .files import write_json, write_table, write_text

    out = Path(out)
    files = [write_table(out / "results.csv", table), write_table(out / "comparison.csv", comparison),
             write_json(out / "run.json", meta)]
    summaries = summary_tables(table)
    skipped = table[table["metric"] == "skipped"][["dataset", "model", "task", "note"]]
    side = comparison[comparison["comparable"] != "not run here"]
    not_run = comparison[comparison["comparable"] == "not run here"].drop_duplicates(
        ["paper", "table", "paper_model", "metric"])
    rnd = bool(table["random_weights"].any()) if len(table) else False
    lines = [
        "# Benchmark matrix", "",
        f"Datasets: {', '.join(meta['datasets'])}. Models: {', '.join(meta['models'])}. "
        f"Tasks: {', '.join(meta['tasks'])}. Seed {meta['seed']}; {meta['seconds']} s.", "",
        "Every value is a fraction (the papers' percentages are divided by 100). The long table is "
        "`results.csv`; the definitions are those of `lib/metrics.py` (macro `_zero`: zero_division=0, "
        "MedGore's; `mean_R`: MedicalNarratives' mean of T2I and I2T Recall@K at K = 5, 50, 200; "
        "`double_f1`: the thesis's mean of the positive- and negative-class F1; thresholded metrics at the "
        "thesis rule, the lower of max-F1 and R90, chosen on validation).", "",
    ]
    if rnd:
        lines += ["**Random weights.** Rows marked `random_weights` come from architectures with seeded random "
                  "weights: they exercise the code path and say nothing about the model.", ""]
    lines += ["## Results here", ""]
    for task, df in summaries.items():
        lines += [f"### {task}", "", _markdown(df), ""]
    lines += ["## The papers beside ours", "",
              _markdown(paper_side_by_side(comparison)), "",
              "### Each paper number beside each run here", "",
              "Each paper number beside the runs here of the same task and metric. `comparable` is `yes` only "
              "for the paper's own model (real weights) on the paper's own dataset; otherwise `why` says what "
              "differs.", "",
              _markdown(side[["paper", "table", "metric", "paper_dataset", "paper_model", "paper_value",
                              "here_dataset", "here_model", "here_value", "n", "comparable", "why"]]), "",
              "### Paper numbers with no run here", "",
              _markdown(not_run[["paper", "table", "task", "metric", "paper_model", "paper_value", "definition"]]), "",
              "## Skipped", "", _markdown(skipped)]
    md = "\n".join(lines)
    files.append(write_text(out / "report.md", md))
    html = ["<!doctype html><html><head><meta charset='utf-8'><title>Benchmark matrix</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
            f"<h1>Benchmark matrix</h1><p>Datasets: {', '.join(meta['datasets'])}. Models: "
            f"{', '.join(meta['models'])}. Tasks: {', '.join(meta['tasks'])}. Seed {meta['seed']}.</p>"]
    if rnd:
        html.append("<p><b>Random weights</b>: rows marked random_weights say nothing about the model.</p>")
    for i, fig in enumerate(benchmark_bars(table, comparison)):
        html.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    html.append("<h2>Results here</h2>")
    for task, df in summaries.items():
        html += [f"<h3>{task}</h3>", df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")]
    html += ["<h2>The papers beside ours</h2>",
             paper_side_by_side(comparison).to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""),
             "<h3>Each paper number beside each run here</h3>",
             side.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""),
             "<h3>Paper numbers with no run here</h3>", not_run.to_html(index=False, na_rep=""),
             "<h2>Skipped</h2>", skipped.to_html(index=False), "</body></html>"]
    files.append(write_text(out / "report.html", "\n".join(html)))
    return files
