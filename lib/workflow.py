"""The MedGore annotation loop, end to end: seeds, expansion, review, agreement, export.

1. Annotators label seed images (:func:`seed_queue` lists the images to pick from).
2. The k nearest neighbours (1..99) of every seed inherit its class
   (:func:`run_expansion`, saved under ``<home>/results/<dataset>/expansion-<name>/``).
3. Two annotators review a sample of seed-neighbour pairs per band of ranks
   (:func:`review_sample`, :func:`review_queue`).
4. A Beta-binomial estimate per band says how far the inherited labels can be trusted,
   from the review labels and, for comparison, from the dataset's own labels
   (:func:`band_homogeneity`, :func:`homogeneity_comparison`).
5. Disagreements are resolved (:func:`to_resolve`, then ``AnnotationStore.resolve``) and the
   expanded, reviewed set is exported as a manifest ``python -m lib ingest`` reads back
   (:func:`export_table`, :func:`write_manifest`).

Annotation labels are not classes: :func:`class_mapping` maps the default label set
(``Blur`` / ``Maybe`` / ``Ok``) to the dataset's classes by its label policy (Blur to the
label it calls sensitive, Ok to the safe one; :data:`LABEL_TO_CLASS` where it names no
single one), ``Maybe`` to none (unjudged).
No Streamlit here: the pages only draw what these functions return.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from . import dataset as ds_mod
from .annotations import CONSENSUS, AnnotationStore
from .errors import WorkbenchError
from .files import results_dir, slug, write_table, write_text
from .neighbors import (
    RESOLUTION_RULES,
    ExpansionResult,
    Space,
    expand,
    homogeneity,
    rank_band,
    sample_by_rank,
)
from .neighbors import review_sample as review_sample_per_rank


class WorkflowError(WorkbenchError):
    """A step of the annotation workflow cannot run as asked (the message says why)."""


#: Annotation label -> dataset class; None: the annotator could not decide (unjudged).
#: Labels missing from the mapping are taken as class names themselves (a label set
#: that spells the classes, e.g. ``sensitive`` / ``non_sensitive``).
LABEL_TO_CLASS: dict[str, str | None] = {"Blur": "sensitive", "Ok": "non_sensitive", "Maybe": None}

#: Dataset class -> annotation label (to show or simulate a class as a label).
CLASS_TO_LABEL: dict[str, str] = {"sensitive": "Blur", "non_sensitive": "Ok"}

#: The columns of an annotation queue (one row per image to label).
QUEUE_COLUMNS = ["id", "row", "task", "seed_id", "seed_label", "rank", "band_label", "pairs"]

#: Seed-queue orders.
ORDERS = ("eb_desc", "eb_asc", "random", "dataset")

#: Manifest columns written by :func:`export_table`, in order (``keep_columns`` follow).
EXPORT_COLUMNS = ["path", "label", "split", "seed_id", "rank", "score", "reviewer", "review_label", "conflict",
                  "label_source", "expansion_label"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,120}$")


# =========================================================================== labels -> classes


def to_classes(labels: pd.Series | Sequence, mapping: Mapping[str, str | None] | None = None) -> pd.Series:
    """Annotation labels as classes (object Series, None where unjudged).

    ``mapping`` (default :data:`LABEL_TO_CLASS`) is matched case-insensitively; a label
    it does not name is its own class; a missing label stays None.
    """
    mapping = LABEL_TO_CLASS if mapping is None else mapping
    folded = {str(k).casefold(): v for k, v in mapping.items()}
    s = labels if isinstance(labels, pd.Series) else pd.Series(list(labels), dtype=object)

    def one(v):
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            return None
        return folded.get(str(v).casefold(), str(v))

    return pd.Series([one(v) for v in s.tolist()], index=s.index, dtype=object, name=s.name)


def consensus_labels(store: AnnotationStore, dataset: str, annotators: Sequence[str] | None = None,
                     min_votes: int = 1) -> pd.DataFrame:
    """One decision per image from everyone's current labels.

    A resolved label (annotator ``consensus``) wins; otherwise an image whose annotators
    all give the same label gets it (``unanimous``, or ``single`` with one vote); an image
    they label differently (or with fewer than ``min_votes`` votes) gets none.

    Parameters
    ----------
    annotators : names whose labels count (default: everyone); the consensus always counts.

    Returns
    -------
    DataFrame, one row per labelled image, sorted by id: ``image_id, label`` (NaN when
    undecided), ``source`` (``resolved``, ``unanimous``, ``single``, ``disagree``,
    ``too_few``), ``reviewer`` (``consensus`` or the annotators joined by ``+``), ``votes``
    (``name:label`` joined by spaces), ``n_votes``.
    """
    cur = store.current(dataset)
    cols = ["image_id", "label", "source", "reviewer", "votes", "n_votes"]
    if cur.empty:
        return pd.DataFrame(columns=cols).astype({"n_votes": int})
    resolved = cur[cur["annotator"] == CONSENSUS].set_index("image_id")["label"]
    votes = cur[cur["annotator"] != CONSENSUS]
    if annotators is not None:
        votes = votes[votes["annotator"].isin(list(annotators))]
    rows = []
    grouped = {i: g for i, g in votes.groupby("image_id", sort=True)}
    for image_id in sorted(set(grouped) | set(resolved.index)):
        g = grouped.get(image_id)
        names = g["annotator"].tolist() if g is not None else []
        labs = g["label"].tolist() if g is not None else []
        vote_txt = " ".join(f"{a}:{b}" for a, b in zip(names, labs, strict=True))
        if image_id in resolved.index:
            rows.append((image_id, resolved[image_id], "resolved", CONSENSUS, vote_txt, len(names)))
        elif len(set(labs)) > 1:
            rows.append((image_id, None, "disagree", "+".join(names), vote_txt, len(names)))
        elif len(names) < min_votes:
            rows.append((image_id, None, "too_few", "+".join(names), vote_txt, len(names)))
        else:
            rows.append((image_id, labs[0], "single" if len(names) == 1 else "unanimous", "+".join(names),
                         vote_txt, len(names)))
    return pd.DataFrame(rows, columns=cols)


def review_labels(store: AnnotationStore, dataset: str, who: str = CONSENSUS) -> pd.DataFrame:
    """Image labels from one annotator, or (``who='consensus'``) from :func:`consensus_labels`.

    Returns
    -------
    DataFrame with ``image_id, label, reviewer`` (label NaN where undecided).
    """
    if who == CONSENSUS:
        return consensus_labels(store, dataset)[["image_id", "label", "reviewer"]]
    cur = store.current(dataset, who)
    return pd.DataFrame({"image_id": cur["image_id"].to_numpy(), "label": cur["label"].to_numpy(),
                         "reviewer": who})


def class_mapping(dataset: str) -> dict[str, str | None]:
    """Review label -> class of dataset ``dataset`` by its label policy
    (:func:`lib.sensitivity.review_class_map`): with MedGore's labels, Blur -> Blur and Ok -> Normal."""
    from .sensitivity import load_policy, review_class_map

    if not ds_mod.exists(dataset):
        return dict(LABEL_TO_CLASS)
    labels = ds_mod.load(dataset).images["label"].dropna().astype(str).unique().tolist()
    return review_class_map(labels, load_policy(dataset), LABEL_TO_CLASS)


def review_truth(store: AnnotationStore, dataset: str, who: str = CONSENSUS,
                 mapping: Mapping[str, str | None] | None = None) -> pd.Series:
    """Review labels as classes, indexed by image id (None where Maybe or undecided): the
    ``truth`` of :func:`band_homogeneity`. ``mapping`` defaults to :func:`class_mapping`."""
    mapping = class_mapping(dataset) if mapping is None else mapping
    df = review_labels(store, dataset, who)
    return pd.Series(to_classes(df["label"], mapping).to_numpy(), index=df["image_id"].to_numpy(), name="truth",
                     dtype=object)


def dataset_truth(ds: ds_mod.Dataset) -> pd.Series:
    """The dataset's labels indexed by image id (first row of each id)."""
    images = ds.images.drop_duplicates("id")
    labels = images["label"].astype(object).where(images["label"].notna(), None)
    return pd.Series(labels.to_numpy(), index=images["id"].to_numpy(), name="truth", dtype=object)


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


# =========================================================================== expansions on disk


@dataclass
class SavedExpansion:
    """An expansion with where it lives and how it was made (``meta``: spec, k, rule, seeds' origin, ...)."""

    name: str
    path: Path
    result: ExpansionResult
    meta: dict

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]


def _check_expansion_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise WorkflowError(f"invalid expansion name {name!r}: letters, digits, '_', '.', '+' and '-'")
    return name


def expansion_path(dataset: str, name: str) -> Path:
    """``<home>/results/<dataset>/expansion-<name>/``."""
    return results_dir(dataset) / f"expansion-{_check_expansion_name(name)}"


def seeds_digest(seeds: Mapping[str, Sequence[str]]) -> str:
    """8 hex digits that change with the seed set (its (class, id) pairs, order ignored)."""
    pairs = sorted((str(c), str(i)) for c, ids in seeds.items() for i in ids)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:8]


def expansion_name(spec: str, k: int, rule: str, seeds: Mapping[str, Sequence[str]],
                   random_weights: bool = False) -> str:
    """Default name: ``<model slug>[-random]-k<k>-<rule>-<seeds digest>``."""
    return f"{slug(spec, 60)}{'-random' if random_weights else ''}-k{int(k)}-{rule}-{seeds_digest(seeds)}"


def save_expansion(result: ExpansionResult, dataset: str, name: str, meta: Mapping | None = None) -> SavedExpansion:
    """Write an expansion to :func:`expansion_path` (``meta.json`` last: a folder with it is complete)."""
    path = config.ensure(expansion_path(dataset, name))
    for part in ("seeds", "hits", "labelled", "conflicts"):
        write_table(path / f"{part}.parquet", getattr(result, part))
    write_table(path / "counts.csv", result.counts)
    info = {
        "name": name, "dataset": dataset, "k": int(result.k), "rule": result.rule,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seeds": {str(c): int(n) for c, n in result.seeds["label"].value_counts().sort_index().items()},
        "labelled": int(result.labelled["label"].notna().sum()), "conflicts": int(len(result.conflicts)),
        **dict(meta or {}),
    }
    write_text(path / "meta.json", json.dumps(info, indent=2, default=str))
    return SavedExpansion(name, path, result, info)


def run_expansion(space: Space, seeds: Mapping[str, Sequence[str]], k: int = 99, rule: str = "best_rank", *,
                  origin: str = "", name: str | None = None, random_weights: bool = False,
                  save: bool = True) -> SavedExpansion:
    """:func:`lib.neighbors.expand` with checked inputs, saved under the data home.

    Parameters
    ----------
    space : the dataset under one model (:func:`lib.neighbors.open_space`)
    seeds : ``{class: [image id, ...]}``; at least one class with a seed
    k : neighbours per seed, 1..99 (MedGore's range)
    origin : how the seeds were chosen (kept in ``meta.json``), e.g. ``annotations:consensus``
    name : default :func:`expansion_name`
    """
    if not 1 <= int(k) <= 99:
        raise WorkflowError(f"k must lie in 1..99, got {k}")
    if rule not in RESOLUTION_RULES:
        raise WorkflowError(f"rule {rule!r}: choose one of {', '.join(RESOLUTION_RULES)}")
    seeds = {str(c): list(v) for c, v in seeds.items() if len(v)}
    if not seeds:
        raise WorkflowError("no seeds: label some images first, or draw seeds from the dataset's labels")
    result = expand(space, seeds, k=int(k), rule=rule)
    name = name or expansion_name(space.spec, k, rule, seeds, random_weights)
    meta = {"spec": space.spec, "random_weights": bool(random_weights), "fingerprint": space.emb.fingerprint,
            "origin": origin}
    if not save:
        return SavedExpansion(name, expansion_path(space.dataset.name, name), result,
                              {"name": name, "dataset": space.dataset.name, "k": int(k), "rule": rule, **meta})
    return save_expansion(result, space.dataset.name, name, meta)


def _legacy_expansion(path: Path, dataset: str) -> SavedExpansion:
    """An ``expand`` verb output (``X.parquet`` + ``X-hits.parquet`` + ...) read as an expansion."""
    stem = path.with_suffix("")
    hits_p, conf_p, counts_p = (Path(f"{stem}-hits.parquet"), Path(f"{stem}-conflicts.parquet"),
                                Path(f"{stem}-counts.csv"))
    if not hits_p.exists():
        raise WorkflowError(f"{path} has no hits table beside it ({hits_p.name}): is it an `expand` output?")
    labelled = pd.read_parquet(path)
    hits = pd.read_parquet(hits_p)
    seeds = labelled.loc[labelled["is_seed"], ["id", "seed_label"]].rename(columns={"seed_label": "label"})
    ds = ds_mod.load(dataset)
    seeds["row"] = _first_rows(ds.images).reindex(seeds["id"].to_numpy()).to_numpy()
    res_values = set(labelled["resolution"].astype(str))
    rule = next((r for r in ("majority", "drop") if r in res_values), "best_rank")
    result = ExpansionResult(int(hits["rank"].max()), rule, seeds.reset_index(drop=True), hits, labelled,
                             pd.read_parquet(conf_p) if conf_p.exists() else labelled.iloc[:0],
                             pd.read_csv(counts_p) if counts_p.exists() else pd.DataFrame())
    meta = {"name": stem.name, "dataset": dataset, "k": result.k, "rule": rule, "origin": f"file:{path}"}
    return SavedExpansion(stem.name, path, result, meta)


def load_expansion(dataset: str, name: str | os.PathLike) -> SavedExpansion:
    """A saved expansion: by name (``results/<dataset>/expansion-<name>``), by folder, or an
    ``expand`` verb parquet (its seeds are the rank-0 rows; the rule is inferred)."""
    p = Path(name)
    if p.suffix == ".parquet" and p.is_file():
        return _legacy_expansion(p, dataset)
    path = p if p.is_dir() else expansion_path(dataset, str(name))
    meta_p = path / "meta.json"
    if not meta_p.exists():
        known = ", ".join(list_expansions(dataset)["name"]) or "none yet"
        raise WorkflowError(f"no saved expansion {str(name)!r} for dataset {dataset!r} (known: {known})")
    meta = json.loads(meta_p.read_text())
    counts = pd.read_csv(path / "counts.csv") if (path / "counts.csv").exists() else pd.DataFrame()
    parts = {part: pd.read_parquet(path / f"{part}.parquet") for part in ("seeds", "hits", "labelled", "conflicts")}
    result = ExpansionResult(int(meta["k"]), meta["rule"], parts["seeds"], parts["hits"], parts["labelled"],
                             parts["conflicts"], counts)
    return SavedExpansion(meta.get("name", path.name.removeprefix("expansion-")), path, result, meta)


def list_expansions(dataset: str) -> pd.DataFrame:
    """Saved expansions of ``dataset``, newest first: ``name, created, spec, k, rule, seeds, labelled,
    conflicts, origin, path``."""
    cols = ["name", "created", "spec", "k", "rule", "seeds", "labelled", "conflicts", "origin", "path"]
    root = results_dir(dataset)
    rows = []
    if root.is_dir():
        for d in root.glob("expansion-*/meta.json"):
            try:
                m = json.loads(d.read_text())
            except (OSError, ValueError):
                continue
            rows.append({"name": m.get("name"), "created": m.get("created"), "spec": m.get("spec"),
                         "k": m.get("k"), "rule": m.get("rule"),
                         "seeds": ", ".join(f"{c}={n}" for c, n in m.get("seeds", {}).items()),
                         "labelled": m.get("labelled"), "conflicts": m.get("conflicts"),
                         "origin": m.get("origin", ""), "path": str(d.parent), "_mtime": d.stat().st_mtime})
    df = pd.DataFrame(rows, columns=[*cols, "_mtime"])
    return df.sort_values("_mtime", ascending=False, kind="stable").drop(columns="_mtime").reset_index(drop=True)


# =========================================================================== review samples


def _hits_with(expansion: ExpansionResult, ds: ds_mod.Dataset | None, column: str | None) -> pd.DataFrame:
    """The hits, with dataset column ``column`` of each neighbour added when it is not a hits column."""
    hits = expansion.hits
    if column is None or column in hits:
        return hits
    if ds is None or column not in ds.images:
        raise WorkflowError(f"stratify column {column!r} is neither a hits column ({', '.join(hits.columns)}) "
                            "nor a dataset column")
    values = ds.images[column].astype(object).where(ds.images[column].notna(), "(none)").astype(str).to_numpy()
    return hits.assign(**{column: values[hits["row"].to_numpy()]})


def review_sample(expansion: ExpansionResult | SavedExpansion, ds: ds_mod.Dataset | None = None, *,
                  band_width: int = 20, per_rank: int | None = 10, per_band: int | None = None,
                  stratify: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Seed-neighbour pairs for two annotators to review, per band of ranks.

    Parameters
    ----------
    band_width : ranks per band (1-20, 21-40, ...)
    per_rank : pairs drawn at every rank (and stratum): :func:`lib.neighbors.review_sample`
    per_band : instead, pairs drawn per band (and stratum), without replacement
    stratify : a hits column (``seed_label``) or a dataset column of the neighbour (``source``)
    seed : random seed of the draw

    Returns
    -------
    DataFrame: rows of the hits (plus the ``stratify`` column) with ``band, rank_lo, rank_hi,
    band_label``, sorted by rank. An image may stand in several pairs; it is reviewed once.
    """
    res = expansion.result if isinstance(expansion, SavedExpansion) else expansion
    if band_width < 1:
        raise WorkflowError(f"band width must be >= 1, got {band_width}")
    if (per_rank is None) == (per_band is None):
        raise WorkflowError("give exactly one of per_rank or per_band")
    n = per_rank if per_rank is not None else per_band
    if n < 1:
        raise WorkflowError(f"the number of pairs to draw must be >= 1, got {n}")
    hits = _hits_with(res, ds, stratify)
    if per_rank is not None:
        return review_sample_per_rank(dataclasses.replace(res, hits=hits), band_width=band_width, per_rank=per_rank,
                                stratify_col=stratify, seed=seed)
    banded = pd.concat([hits.reset_index(drop=True), rank_band(hits["rank"].to_numpy(), band_width, res.k)],
                       axis=1)
    rng = np.random.default_rng(seed)
    keys = ["band"] if stratify is None else ["band", stratify]
    picks = [g.iloc[np.sort(rng.choice(len(g), size=min(per_band, len(g)), replace=False))]
             for _, g in banded.groupby(keys, sort=True)]
    out = pd.concat(picks) if picks else banded.iloc[:0]
    return out.sort_values(["rank", "seed_id"], kind="stable").reset_index(drop=True)


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


# =========================================================================== homogeneity


def sample_pairs(expansion: ExpansionResult, pairs: pd.DataFrame | None) -> ExpansionResult:
    """The expansion restricted to the seed-neighbour pairs of a review sample (all pairs when None)."""
    if pairs is None:
        return expansion
    key = ["seed_id", "rank", "id"]
    wanted = pairs[key].drop_duplicates()
    hits = expansion.hits.merge(wanted, on=key, how="inner")
    return dataclasses.replace(expansion, hits=hits)


def band_homogeneity(expansion: ExpansionResult | SavedExpansion, truth: pd.Series, band_width: int = 20,
                     pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per band of ranks and per seed class (and ``all``): confirmed / rejected pairs and the
    Beta(confirmed + 1, rejected + 1) mean and sd (:func:`lib.neighbors.homogeneity`).

    ``pairs`` (a review sample) restricts the count to the sampled pairs; otherwise every
    pair of the expansion whose neighbour has a truth counts.
    """
    res = expansion.result if isinstance(expansion, SavedExpansion) else expansion
    truth = truth[~truth.index.duplicated()]
    return homogeneity(sample_pairs(res, pairs), truth, band_width=band_width, by_class=True)


def homogeneity_comparison(expansion: ExpansionResult | SavedExpansion, truths: Mapping[str, pd.Series],
                           band_width: int = 20, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`band_homogeneity` for several truths (e.g. ``{"review": ..., "dataset": ...}``),
    stacked with a ``truth`` column."""
    parts = [band_homogeneity(expansion, t, band_width, pairs).assign(truth=name) for name, t in truths.items()]
    return pd.concat(parts, ignore_index=True)


def homogeneity_comparison_figure(table: pd.DataFrame, title: str = "Neighbour homogeneity per band of ranks"):
    """One panel per scope (each seed class, then ``all``): Beta mean +-1 sd per band, one line per truth."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    scopes = list(dict.fromkeys(table["scope"]))
    fig = make_subplots(rows=1, cols=len(scopes), shared_yaxes=True,
                        subplot_titles=[f"{s} seeds" if s != "all" else "all seeds" for s in scopes])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for j, (name, t) in enumerate(table.groupby("truth", sort=False)):
        for i, scope in enumerate(scopes, start=1):
            d = t[t["scope"] == scope].sort_values("band")
            fig.add_trace(go.Scatter(
                x=d["band_label"], y=d["mean"], name=str(name), legendgroup=str(name), showlegend=i == 1,
                mode="lines+markers", line={"color": palette[j % len(palette)]},
                error_y={"type": "data", "array": d["sd"], "visible": True},
                customdata=np.stack([d["confirmed"], d["rejected"], d["unjudged"]], axis=1),
                hovertemplate="ranks %{x}<br>mean %{y:.3f}<br>confirmed %{customdata[0]}, rejected "
                              "%{customdata[1]}, unjudged %{customdata[2]}<extra>" + f"{name} · {scope}</extra>"),
                row=1, col=i)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="share confirmed (Beta mean ± sd)")
    fig.update_xaxes(title_text="neighbour ranks")
    fig.update_layout(title=title, height=380, legend_title="truth", margin={"t": 70})
    return fig


def score_by_rank_figure(hits: pd.DataFrame, band_width: int = 20):
    """Cosine score of each seed-neighbour pair against its rank: a box per band, one colour per seed class."""
    import plotly.express as px

    bands = rank_band(hits["rank"].to_numpy(), band_width)
    df = pd.DataFrame({"band": bands["band_label"].to_numpy(), "order": bands["band"].to_numpy(),
                       "score": hits["score"].to_numpy(), "seed class": hits["seed_label"].astype(str).to_numpy()})
    df = df.sort_values("order", kind="stable")
    fig = px.box(df, x="band", y="score", color="seed class", points=False,
                 title="Cosine score of the neighbours per band of ranks")
    fig.update_layout(height=360, xaxis_title="neighbour ranks", yaxis_title="cosine score")
    return fig


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
        again within that band (:func:`lib.neighbors.sample_by_rank`)
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
