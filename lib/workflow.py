"""The MedGore annotation loop around the expansion: seeds, queues, review, agreement, export.

1. Annotators label seed images (:func:`seed_queue` lists the images to pick from;
   :func:`seeds_from_annotations` turns their labels into seeds).
2. The k nearest neighbours (1..99) of every seed inherit its class
   (:func:`lib.expansion.run_expansion`, saved under ``<home>/results/<dataset>/expansion-<name>/``).
3. Two annotators review a sample of seed-neighbour pairs per band of ranks
   (:func:`lib.expansion.review_sample`, saved with :func:`save_review_sample`; :func:`review_queue`).
4. A Beta-binomial estimate per band says how far the inherited labels can be trusted
   (:func:`lib.expansion.homogeneity_comparison`: review truth against the dataset's labels).
5. Disagreements are resolved (:func:`to_resolve`, then ``AnnotationStore.resolve``) and the
   expanded, reviewed set is exported as a manifest ``python -m lib ingest`` reads back
   (:func:`export_table`, :func:`write_manifest`).

Labels become classes in :mod:`lib.expansion` (:func:`lib.expansion.to_classes`,
:func:`lib.expansion.review_truth`), the one owner of review truth. ``WorkflowError`` is
defined there too and imported here, so ``workflow.WorkflowError`` names the same class.
No Streamlit here: the pages only draw what these functions return.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import dataset as ds_mod
from .annotations import CONSENSUS, AnnotationStore
from .expansion import (
    ExpansionResult,
    SavedExpansion,
    WorkflowError,
    review_truth,
    sample_by_rank,
    to_classes,
)
from .files import write_table

#: The columns of an annotation queue (one row per image to label).
QUEUE_COLUMNS = ["id", "row", "task", "seed_id", "seed_label", "rank", "band_label", "pairs"]

#: Seed-queue orders.
ORDERS = ("eb_desc", "eb_asc", "random", "dataset")

#: Manifest columns written by :func:`export_table`, in order (``keep_columns`` follow).
EXPORT_COLUMNS = ["path", "label", "split", "seed_id", "rank", "score", "reviewer", "review_label", "conflict",
                  "label_source", "expansion_label"]

# =========================================================================== seeds


def seeds_from_annotations(store: AnnotationStore, ds: ds_mod.Dataset, who: str = CONSENSUS,
                           mapping: Mapping[str, str | None] | None = None, n_per_class: int | None = None,
                           seed: int = 0) -> dict[str, list[str]]:
    """Seeds ``{class: [image id, ...]}`` from annotations (one annotator's or the consensus).

    Images whose label maps to no class (``Maybe``, undecided) and ids no longer in the
    dataset are left out. ``n_per_class`` keeps a seeded random choice of at most that
    many per class.
    """
    truth = review_truth(store, ds.name, who, mapping)
    known = set(ds.images["id"])
    truth = truth[truth.notna() & truth.index.isin(known)]
    if truth.empty:
        raise WorkflowError(
            f"no usable seed labels for dataset {ds.name!r} from {who!r}: label images on the Annotate page "
            "(Maybe does not count)")
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for cls in sorted(set(truth.tolist())):
        ids = sorted(truth.index[truth.to_numpy() == cls].tolist())
        if n_per_class is not None and len(ids) > n_per_class:
            ids = sorted(rng.choice(ids, size=n_per_class, replace=False).tolist())
        out[cls] = ids
    return out


def seed_counts(seeds: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """``class, seeds`` per class of a seed dict."""
    return pd.DataFrame({"class": list(seeds), "seeds": [len(v) for v in seeds.values()]})


# =========================================================================== queues


def _first_rows(images: pd.DataFrame) -> pd.Series:
    """Dataset row number of each id's first occurrence, indexed by id."""
    ids = images["id"].to_numpy()
    first = ~pd.Series(ids).duplicated().to_numpy()
    return pd.Series(np.flatnonzero(first), index=ids[first])


def _queue(df: pd.DataFrame, task: str) -> pd.DataFrame:
    out = df.copy()
    out["task"] = task
    for c in QUEUE_COLUMNS:
        if c not in out:
            out[c] = np.nan
    return out[QUEUE_COLUMNS + [c for c in out.columns if c not in QUEUE_COLUMNS]].reset_index(drop=True)


def seed_queue(ds: ds_mod.Dataset, *, store: AnnotationStore | None = None, annotator: str | None = None,
               labels: Sequence[str] | None = None, eb: pd.DataFrame | None = None,
               eb_range: tuple[float, float] | None = None, order: str = "eb_desc", seed: int = 0,
               limit: int | None = None, skip_labelled: bool = True, ids: Iterable[str] | None = None,
               task: str = "seed", label_scope: str | None = None) -> pd.DataFrame:
    """Images to pick seeds from (or to screen): each distinct image once, filtered and ordered.

    Parameters
    ----------
    ids : keep only these content ids (e.g. the images the safe view has not screened yet).
    task : the queue's task name, stored with each label (``seed``, ``screen``).
    label_scope : the label set whose labels ``skip_labelled`` looks at (:func:`lib.annotations.scope`;
        default the dataset's default set).
    labels : keep only images with one of these dataset labels (``"(none)"``: unlabelled).
    eb : EB table with ``id, eb`` (:func:`lib.gallery.eb_scores`); needed to order or filter by EB.
    eb_range : keep images with ``lo <= eb <= hi`` (unscored images are dropped).
    order : ``eb_desc`` (likely sensitive first), ``eb_asc``, ``random`` (seeded) or ``dataset``.
    skip_labelled : leave out images ``annotator`` already labelled in ``store``.
    limit : at most this many images.

    Returns
    -------
    DataFrame with :data:`QUEUE_COLUMNS` (task ``seed``) and ``eb``.
    """
    if order not in ORDERS:
        raise WorkflowError(f"order {order!r}: choose one of {', '.join(ORDERS)}")
    images = ds.images.drop_duplicates("id")
    df = pd.DataFrame({"id": images["id"].astype(str).to_numpy(), "row": _first_rows(ds.images).to_numpy(),
                       "dataset_label": images["label"].to_numpy()})
    if ids is not None:
        df = df[df["id"].isin(set(map(str, ids))).to_numpy()]
    if labels is not None:
        wanted = {str(v) for v in labels}
        lab = df["dataset_label"].astype(object).where(df["dataset_label"].notna(), "(none)").astype(str)
        df = df[lab.isin(wanted).to_numpy()]
    if eb is not None:
        df["eb"] = df["id"].map(eb.drop_duplicates("id").set_index("id")["eb"]).astype(float).to_numpy()
    elif order.startswith("eb") or eb_range is not None:
        raise WorkflowError("ordering or filtering by EB needs the EB table (eb=...)")
    else:
        df["eb"] = np.nan
    if eb_range is not None:
        lo, hi = eb_range
        df = df[df["eb"].between(lo, hi).to_numpy()]
    if skip_labelled and store is not None and annotator is not None:
        todo = set(store.unlabelled(label_scope or ds.name, annotator, df["id"].tolist()))
        df = df[df["id"].isin(todo).to_numpy()]
    if order == "eb_desc":
        df = df.sort_values(["eb", "row"], ascending=[False, True], na_position="first", kind="stable")
    elif order == "eb_asc":
        df = df.sort_values(["eb", "row"], ascending=[True, True], na_position="last", kind="stable")
    elif order == "random":
        df = df.iloc[np.random.default_rng(seed).permutation(len(df))]
    if limit is not None:
        df = df.head(int(limit))
    return _queue(df, task)


def review_queue(sample: pd.DataFrame, ds: ds_mod.Dataset) -> pd.DataFrame:
    """The distinct images of a review sample, in rank order, each with the pair that
    reached it first (lowest rank) and how many sampled pairs it stands for.

    Returns
    -------
    DataFrame with :data:`QUEUE_COLUMNS` (task ``review``).
    """
    if sample.empty:
        return _queue(pd.DataFrame(columns=["id", "row"]), "review")
    s = sample.sort_values(["rank", "score"], ascending=[True, False], kind="stable")
    first = s.drop_duplicates("id")[["id", "seed_id", "seed_label", "rank", "band_label"]].copy()
    first["pairs"] = first["id"].map(s.groupby("id").size()).to_numpy()
    rows = _first_rows(ds.images)
    missing = ~first["id"].isin(rows.index)
    if missing.any():
        raise WorkflowError(f"{int(missing.sum())} image(s) of the review sample are not in dataset {ds.name!r} "
                            "(was it ingested again?): build the sample again")
    first["row"] = rows.reindex(first["id"].to_numpy()).to_numpy()
    return _queue(first, "review")


#: Annotation states the Gallery filters by (:func:`annotation_status`).
STATUSES = ("unreviewed", "reviewed", "mine", "not mine", "disputed", "resolved")


def annotation_status(current: pd.DataFrame, annotator: str | None = None) -> dict[str, set[str]]:
    """Image ids by annotation state, from :meth:`AnnotationStore.current` of one dataset or
    label set: ``reviewed`` (anyone labelled it), ``mine`` / ``not mine`` (``annotator`` did /
    did not), ``disputed`` (annotators' current labels differ and no consensus),
    ``resolved`` (a consensus exists). ``unreviewed`` is every other image: it is not listed
    here (the caller knows the dataset's ids)."""
    out = {s: set() for s in STATUSES if s != "unreviewed"}
    if current is None or current.empty:
        return out
    votes = current[current["annotator"] != CONSENSUS]
    out["reviewed"] = set(current["image_id"])
    out["resolved"] = set(current.loc[current["annotator"] == CONSENSUS, "image_id"])
    if annotator:
        out["mine"] = set(votes.loc[votes["annotator"] == annotator, "image_id"])
    out["not mine"] = out["reviewed"] - out["mine"]
    n = votes.groupby("image_id")["label"].nunique()
    out["disputed"] = set(n.index[n > 1]) - out["resolved"]
    return out


def ids_with_status(ids: Sequence[str], states: Mapping[str, set[str]], wanted: Sequence[str]) -> set[str]:
    """The ids of ``ids`` in any of the ``wanted`` states (:data:`STATUSES`)."""
    ids = list(map(str, ids))
    keep: set[str] = set()
    for w in wanted:
        keep |= (set(ids) - states["reviewed"]) if w == "unreviewed" else states.get(w, set())
    return keep & set(ids)


def next_unlabelled(ids: Sequence[str], labelled: Iterable[str], start: int = 0) -> int | None:
    """Index of the first id at or after ``start`` not in ``labelled``, wrapping round; None when all are."""
    done = set(labelled)
    n = len(ids)
    for i in [*range(max(start, 0), n), *range(0, min(max(start, 0), n))]:
        if ids[i] not in done:
            return i
    return None


def label_context(rec: Mapping, queue: str) -> dict:
    """The JSON context stored with a label given from a queue row."""
    out = {"queue": queue}
    for key in ("seed_id", "seed_label", "rank", "band_label"):
        v = rec.get(key)
        if v is not None and not (isinstance(v, float) and v != v):
            out[key] = v.item() if hasattr(v, "item") else v
    return out


# =========================================================================== review samples


def sample_file_name(band_width: int, per_rank: int | None, per_band: int | None, stratify: str | None,
                     seed: int) -> str:
    how = f"r{per_rank}" if per_rank is not None else f"n{per_band}"
    strat = re.sub(r"[^A-Za-z0-9.-]+", "_", stratify) if stratify else "all"
    return f"review-b{int(band_width)}-{how}-{strat}-s{int(seed)}.parquet"


def save_review_sample(saved: SavedExpansion, sample: pd.DataFrame, file_name: str) -> Path:
    """Write a review sample beside its expansion; returns the file."""
    if not re.match(r"^review-[A-Za-z0-9_.+-]+\.parquet$", file_name):
        raise WorkflowError(f"invalid review sample file name {file_name!r}")
    return write_table(saved.path / file_name, sample)


def list_review_samples(saved: SavedExpansion) -> list[Path]:
    """Review samples saved beside an expansion, newest first."""
    if not saved.path.is_dir():
        return []
    return sorted(saved.path.glob("review-*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)


def load_review_sample(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"no review sample at {path}")
    return pd.read_parquet(path)


def review_summary(sample: pd.DataFrame, store: AnnotationStore | None = None, dataset: str | None = None,
                   annotators: Sequence[str] = ()) -> pd.DataFrame:
    """Per band: ``band_label, pairs, images, seeds`` and, per annotator, how many of the band's
    images they labelled (``done:<name>``)."""
    g = sample.groupby(["band", "band_label"], sort=True)
    out = g.agg(pairs=("id", "size"), images=("id", "nunique"), seeds=("seed_id", "nunique")).reset_index()
    if store is not None and dataset is not None:
        for who in annotators:
            done = set(store.current(dataset, who)["image_id"])
            out[f"done:{who}"] = [int(d["id"].drop_duplicates().isin(done).sum()) for _, d in g]
    return out.drop(columns="band")


# =========================================================================== agreement


def pair_agreement(store: AnnotationStore, dataset: str, a: str, b: str) -> dict | None:
    """Agreement of annotators ``a`` and ``b`` on the images both label (:func:`lib.metrics.agreement`
    over the label set: ``n, percent_agreement, kappa, ac1, f1_macro, confusion``); None when
    they share no image. ``dataset`` is a dataset or a label set's scope
    (:func:`lib.annotations.scope`): κ and AC1 are multi-class over the set's values."""
    from .metrics import agreement

    pairs = store.pairs(dataset, a, b)
    if pairs.empty:
        return None
    cats = list(store.label_set(dataset))
    seen = set(pairs["label_a"]) | set(pairs["label_b"])
    if not seen <= set(cats):  # a multi-label set: combinations of tags are the categories
        cats = cats + sorted(seen - set(cats))
    out = agreement(pairs["label_a"].to_numpy(), pairs["label_b"].to_numpy(), categories=cats)
    out["confusion"] = out["confusion"].rename_axis(index=a, columns=b)
    return out


def to_resolve(store: AnnotationStore, dataset: str, a: str, b: str, *, include_maybe: bool = True,
               unresolved_only: bool = False) -> pd.DataFrame:
    """Images to resolve: ``a`` and ``b`` label them differently
    (:meth:`lib.annotations.AnnotationStore.disagreements`) and, with ``include_maybe``,
    images either calls ``Maybe`` although they agree.

    ``include_maybe`` means what it means for ``disagreements``: False leaves out every pair
    in which either label is Maybe.

    Returns
    -------
    DataFrame ``image_id, label_a, label_b, consensus, reason`` (``disagree`` or ``maybe``),
    disagreements first.
    """
    df = store.pairs(dataset, a, b)
    differ = set(store.disagreements(dataset, a, b, include_maybe=include_maybe)["image_id"])
    maybe = ((df["label_a"].str.casefold() == "maybe") | (df["label_b"].str.casefold() == "maybe")).to_numpy()
    is_differ = df["image_id"].isin(differ).to_numpy()
    keep = is_differ | (maybe & include_maybe)
    out = df[keep].copy()
    out["reason"] = np.where(is_differ[keep], "disagree", "maybe")
    if unresolved_only:
        out = out[out["consensus"].isna()]
    return out.sort_values(["reason", "image_id"], kind="stable").reset_index(drop=True)


# =========================================================================== export


def assign_splits(labels: pd.Series | Sequence, val_frac: float = 0.1, test_frac: float = 0.0,
                  seed: int = 0) -> np.ndarray:
    """``train`` / ``val`` / ``test`` per item, stratified by label and seeded.

    Per class, ``round(n * val_frac)`` items go to ``val`` and ``round(n * test_frac)`` to
    ``test`` (a class of one item stays in train). Done per class by hand rather than with
    scikit-learn's stratified splitters, which refuse classes of a single item.

    Returns
    -------
    ndarray (n,) of str.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise WorkflowError(f"val_frac {val_frac} and test_frac {test_frac} must be >= 0 and sum below 1")
    y = pd.Series(list(labels)).astype(str).to_numpy()
    out = np.full(len(y), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for cls in sorted(set(y)):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(np.floor(len(idx) * val_frac + 0.5)) if len(idx) > 1 else 0
        n_test = int(np.floor(len(idx) * test_frac + 0.5)) if len(idx) > 1 else 0
        n_test = min(n_test, len(idx) - n_val - 1)
        out[idx[:n_val]] = "val"
        out[idx[n_val:n_val + max(n_test, 0)]] = "test"
    return out.astype(str)


def export_table(ds: ds_mod.Dataset, expansion: ExpansionResult | SavedExpansion, *,
                 reviews: pd.DataFrame | None = None, mapping: Mapping[str, str | None] | None = None,
                 first_n: int | None = None, last_n: int | None = None, include_seeds: bool = True,
                 unresolved: str = "drop", val_frac: float = 0.1, test_frac: float = 0.0, seed: int = 0,
                 keep_columns: Sequence[str] = (), absolute: bool = False) -> pd.DataFrame:
    """The expanded, reviewed label set as manifest rows (one per distinct image).

    Labels: a seed keeps its class; an expanded image its inherited class, unless a review
    decides it: a review label that maps to a class replaces it (``label_source`` ``review``;
    a seed stays ``seed`` unless the review changes its class),
    an undecided review (``Maybe``, an unresolved disagreement) drops the image
    (``unresolved='drop'``) or keeps the inherited class (``'keep'``). Images the expansion
    left unresolved (ties) are kept only when a review decides them.

    Parameters
    ----------
    reviews : :func:`review_labels` (``image_id, label, reviewer``) or None
    first_n, last_n : only the images reached at ranks 1..n (or k-n+1..k), labels resolved
        again within that band (:func:`lib.expansion.sample_by_rank`)
    include_seeds : keep the seeds (rank 0)
    val_frac, test_frac, seed : :func:`assign_splits`
    keep_columns : dataset columns copied along (e.g. ``source``, ``caption``, ``mask``)
    absolute : absolute paths (inside the dataset root) instead of paths relative to it

    Returns
    -------
    DataFrame with :data:`EXPORT_COLUMNS` then ``keep_columns``; ``rank`` 0 and ``score`` 1 for seeds.
    """
    res = expansion.result if isinstance(expansion, SavedExpansion) else expansion
    if unresolved not in ("drop", "keep"):
        raise WorkflowError(f"unresolved={unresolved!r}: choose 'drop' or 'keep'")
    if first_n is not None or last_n is not None:
        try:
            base = sample_by_rank(res, first_n=first_n, last_n=last_n, include_seeds=include_seeds)
        except ValueError as e:
            raise WorkflowError(str(e)) from None
        base = base.copy()
    else:
        base = res.labelled.copy()
        if not include_seeds:
            base = base[~base["is_seed"]]
    bad = [c for c in keep_columns if c not in ds.images or c in EXPORT_COLUMNS]
    if bad:
        raise WorkflowError(f"cannot keep column(s) {', '.join(bad)}: not dataset columns, or export columns")

    base["expansion_label"] = base["label"].astype(object).where(base["label"].notna(), None)
    if reviews is not None and len(reviews):
        rv = reviews.drop_duplicates("image_id").set_index("image_id")
        base["reviewer"] = base["id"].map(rv["reviewer"]).astype(object)
        base["review_label"] = base["id"].map(rv["label"]).astype(object)
    else:
        base["reviewer"] = None
        base["review_label"] = None
    base["reviewer"] = base["reviewer"].where(base["reviewer"].notna(), None)
    base["review_label"] = base["review_label"].where(base["review_label"].notna(), None)
    reviewed = base["reviewer"].notna().to_numpy()
    review_class = to_classes(base["review_label"], mapping).to_numpy()
    decided = reviewed & pd.notna(review_class)
    undecided = reviewed & ~decided
    label = base["expansion_label"].to_numpy(dtype=object).copy()
    label[decided] = review_class[decided]
    is_seed = base["is_seed"].to_numpy(dtype=bool)
    source = np.where(is_seed, "seed", "expansion").astype(object)
    # a seed stays a seed unless a review changes its class
    source[decided & (~is_seed | (review_class != base["expansion_label"].to_numpy(dtype=object)))] = "review"
    keep = pd.notna(label)
    if unresolved == "drop":
        keep &= ~undecided
    base["label"], base["label_source"] = label, source
    out = base[keep].copy()

    images = ds.images
    first = _first_rows(images)
    rows = first.reindex(out["id"].to_numpy())
    if rows.isna().any():
        raise WorkflowError(f"{int(rows.isna().sum())} image(s) of the expansion are not in dataset {ds.name!r} "
                            "(was it ingested again?): run the expansion again")
    rows = rows.to_numpy().astype(int)
    rel = images["path"].astype(str).to_numpy()[rows]
    out["path"] = [str(ds.abspath(p)) for p in rel] if absolute else rel
    out["seed_id"] = np.where(out["is_seed"].to_numpy(), out["id"].to_numpy(), out["seed_id"].to_numpy())
    out["rank"] = out["rank"].astype(int)
    out["score"] = out["score"].astype(float)
    out["conflict"] = out["conflict"].astype(bool)
    for c in keep_columns:
        out[c] = images[c].to_numpy()[rows]
    out = out.sort_values(["rank", "label", "path"], kind="stable").reset_index(drop=True)
    out["split"] = assign_splits(out["label"], val_frac, test_frac, seed) if len(out) else []
    return out[EXPORT_COLUMNS + list(keep_columns)]


def export_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per label and split (with totals), plus where the labels come from."""
    t = pd.crosstab(manifest["label"], manifest["split"], margins=True, margins_name="all")
    src = pd.crosstab(manifest["label"], manifest["label_source"], margins=True, margins_name="all")
    return t.join(src.add_prefix("from:"), how="left").reset_index()


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write an export as ``.csv`` or ``.parquet`` (atomically); returns the path."""
    path = Path(path).expanduser()
    if not path.name.lower().endswith((".csv", ".parquet", ".pq")):
        raise WorkflowError(f"cannot write a manifest to {path}: use a .csv or .parquet file name")
    return write_table(path, manifest)


def default_export_path(saved: SavedExpansion, first_n: int | None = None, last_n: int | None = None) -> Path:
    part = f"first{first_n}" if first_n is not None else f"last{last_n}" if last_n is not None else "all"
    return saved.path / f"export-{part}.csv"


def ingest_command(manifest_path: str | os.PathLike, name: str, root: str | os.PathLike) -> str:
    """The shell command that ingests an exported manifest as dataset ``name``."""
    return (f"python -m lib ingest {shlex.quote(str(manifest_path))} --name {shlex.quote(name)} "
            f"--root {shlex.quote(str(root))}")
