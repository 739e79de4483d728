"""The MedGore seed expansion, its review truth and homogeneity: one owner for all three.

Seeds of known class are expanded through their k nearest neighbours (:func:`expand`);
every image a seed reaches inherits the seed's class, resolving images reached by several
classes (:data:`RESOLUTION_RULES`). :func:`sample_by_rank` draws MedGore's "First-n" /
"Last-n" subsets and :func:`review_sample` the seed-neighbour pairs to review. The truth
those pairs are judged against comes from the dataset (:func:`dataset_truth`) or from
reviews (:func:`review_truth`: annotation labels mapped to classes, an unmapped label
counting as unjudged), and :func:`homogeneity` estimates per band of ranks how often a
neighbour really shares its seed's class (Beta-binomial; :func:`homogeneity_figure`).

An expansion is saved in one format, a folder (:meth:`ExpansionResult.save`), by the CLI
and the app alike; the CLI's older parquet trio is migrated to it the first time it is
loaded (:func:`load_expansion`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from . import dataset as ds_mod
from .annotations import CONSENSUS, AnnotationStore
from .errors import WorkbenchError
from .files import results_dir, slug, write_table, write_text
from .neighbors import Space, distinct_neighbours


class WorkflowError(WorkbenchError):
    """A step of the annotation workflow (expansion, review, export) cannot run as asked
    (the message says why)."""


#: Annotation label -> dataset class; None: the annotator could not decide (unjudged).
#: A label missing from the mapping counts only if it spells a class (:func:`to_classes`).

LABEL_TO_CLASS: dict[str, str | None] = {"Blur": "sensitive", "Ok": "non_sensitive", "Maybe": None}

#: Dataset class -> annotation label (to show or simulate a class as a label).
CLASS_TO_LABEL: dict[str, str] = {"sensitive": "Blur", "non_sensitive": "Ok"}


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,120}$")

#: The saved layout (:meth:`ExpansionResult.save`). Format 1 was the ``expand`` verb's
#: ``X.parquet`` + ``X-hits.parquet`` + ``X-conflicts.parquet`` + ``X-counts.csv``.
SAVE_FORMAT = 2
_PARTS = ("seeds", "hits", "labelled", "conflicts")

# ------------------------------------------------------------------ seed expansion (MedGore)
#
# Seeds of known class are expanded through their k nearest neighbours; every image a
# seed reaches inherits the seed's class. The reviewer then checks how far down the
# ranking that inheritance still holds (homogeneity per band of ranks).

#: How an image reached by seeds of more than one class gets its label.
#: ``best_rank``: the class whose best (lowest) rank is lowest; a tie leaves it unlabelled.
#: ``majority``: the class reaching it from the most seeds; a tie falls back to best_rank.
#: ``drop``: every multi-class image is left unlabelled.
RESOLUTION_RULES = ("best_rank", "majority", "drop")


@dataclass
class ExpansionResult:
    """What :func:`expand` found.

    Attributes
    ----------
    k : int
        Neighbours taken per seed.
    rule : str
        The conflict rule (one of :data:`RESOLUTION_RULES`).
    seeds : DataFrame (n_seeds, 3)
        ``id, label, row``.
    hits : DataFrame (n_seeds * k, ...)
        One row per (seed, neighbour): ``seed_id, seed_label, rank (1..k), id, row, score
        (cosine), dataset_label``. A neighbour that is itself a seed appears here too.
    labelled : DataFrame (n_images, ...)
        The expanded labelled set, one row per image (seeds included, rank 0): ``id, label
        (NA when unresolved), seed_id, seed_label, rank, score`` of the hit the label comes from
        (for an unresolved image, its best hit), ``n_seeds_reaching, n_classes, classes,
        conflict`` (reached by more than one class), ``is_seed, resolution`` (``seed``,
        ``single``, ``best_rank``, ``majority``, ``tie``, ``drop``).
    conflicts : DataFrame
        The images reached by more than one class: ``id, is_seed, classes, n_seeds_reaching,
        label, resolution`` and ``best_rank:<class>`` / ``n_seeds:<class>`` per class (a
        seed counts as reaching itself at rank 0).
    counts : DataFrame
        Per seed class (and ``all``): ``seeds, hits`` (seed-neighbour pairs), ``unique``
        (distinct images reached), ``share_unique`` (unique / hits: MedGore's "unique"
        statistic, low when seeds of the class share neighbours), ``exclusive`` (reached by no
        other class), ``conflicts`` and ``labelled`` (final count, seeds included).
    """

    k: int
    rule: str
    seeds: pd.DataFrame
    hits: pd.DataFrame
    labelled: pd.DataFrame
    conflicts: pd.DataFrame
    counts: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        return sorted(self.seeds["label"].unique().tolist())

    def save(self, path: str | os.PathLike, meta: Mapping | None = None) -> dict:
        """Write the expansion to folder ``path``, the one format the CLI and the app share.

        Files: ``seeds.parquet``, ``hits.parquet``, ``labelled.parquet``,
        ``conflicts.parquet``, ``counts.csv`` and ``meta.json`` (format, k, rule, created,
        seeds per class, labelled and conflict counts, then ``meta``). ``meta.json`` is
        written last, so a folder that has one is complete. Returns the meta written.
        """
        path = config.ensure(Path(path).expanduser())
        for part in _PARTS:
            write_table(path / f"{part}.parquet", getattr(self, part))
        write_table(path / "counts.csv", self.counts)
        info = {
            "format": SAVE_FORMAT, "k": int(self.k), "rule": self.rule,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seeds": {str(c): int(n) for c, n in self.seeds["label"].value_counts().sort_index().items()},
            "labelled": int(self.labelled["label"].notna().sum()), "conflicts": int(len(self.conflicts)),
            **dict(meta or {}),
        }
        write_text(path / "meta.json", json.dumps(info, indent=2, default=str))
        return info

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[ExpansionResult, dict]:
        """Read a folder written by :meth:`save`: ``(result, meta)``."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        counts = pd.read_csv(path / "counts.csv") if (path / "counts.csv").exists() else pd.DataFrame()
        parts = {part: pd.read_parquet(path / f"{part}.parquet") for part in _PARTS}
        return cls(int(meta["k"]), meta["rule"], parts["seeds"], parts["hits"], parts["labelled"],
                   parts["conflicts"], counts), meta


def seeds_from_labels(dataset: ds_mod.Dataset, n_per_class: int, seed: int = 0,
                      labels: list[str] | None = None) -> dict[str, list[str]]:
    """A seeded random choice of ``n_per_class`` image ids per dataset label.

    Each id is drawn once (duplicates of a file share an id); unlabelled rows are never drawn.
    """
    images = dataset.images.drop_duplicates("id")
    images = images[images["label"].notna()]
    if images.empty:
        raise ds_mod.DatasetError(f"dataset {dataset.name!r} has no labels to draw seeds from")
    rng = np.random.default_rng(seed)
    out = {}
    for label in labels or sorted(images["label"].unique().tolist()):
        ids = images.loc[images["label"] == label, "id"].to_numpy()
        if not len(ids):
            raise ds_mod.DatasetError(f"no image labelled {label!r} in dataset {dataset.name!r}")
        out[str(label)] = rng.choice(ids, size=min(n_per_class, len(ids)), replace=False).tolist()
    return out


def read_seeds(path, dataset: ds_mod.Dataset | None = None) -> dict[str, list[str]]:
    """Seeds from a CSV/parquet with columns ``id`` (or ``image_id``; a unique prefix is enough
    when ``dataset`` is given) and ``label``, or a JSON ``{label: [ids]}``."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ds_mod.DatasetError(f"seed file {path} does not exist")
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        pairs = [(str(i), str(lab)) for lab, ids in raw.items() for i in ids]
    else:
        df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
        id_col = "id" if "id" in df else "image_id" if "image_id" in df else None
        if id_col is None or "label" not in df:
            raise ds_mod.DatasetError(f"seed file {path} needs columns 'id' (or 'image_id') and 'label'")
        df = df.dropna(subset=[id_col, "label"])
        pairs = list(zip(df[id_col].astype(str), df["label"].astype(str), strict=True))
    seeds: dict[str, list[str]] = {}
    for i, lab in pairs:
        seeds.setdefault(lab, []).append(dataset.resolve_id(i) if dataset is not None else i)
    return seeds


def _check_seeds(space: Space, seeds: dict) -> pd.DataFrame:
    if not seeds or not any(len(v) for v in seeds.values()):
        raise ds_mod.DatasetError("no seeds given")
    rows, seen = [], {}
    for label, ids in seeds.items():
        for i in dict.fromkeys(ids):  # a seed listed twice under one label counts once
            if i in seen and seen[i] != label:
                raise ds_mod.DatasetError(f"seed {i[:16]} is given as both {seen[i]!r} and {label!r}")
            seen[i] = label
            rows.append((i, str(label), space.row_of(i)))
    return pd.DataFrame(rows, columns=["id", "label", "row"]).drop_duplicates("id", ignore_index=True)


def _resolve(hits: pd.DataFrame, seeds: pd.DataFrame, rule: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels from seed hits: (labelled, conflicts); see :data:`RESOLUTION_RULES`."""
    if rule not in RESOLUTION_RULES:
        raise ValueError(f"rule {rule!r} not in {RESOLUTION_RULES}")
    # Each seed reaches itself at rank 0: it then counts as its own class in conflicts.
    own = pd.DataFrame({"seed_id": seeds["id"], "seed_label": seeds["label"], "rank": 0,
                        "id": seeds["id"], "score": 1.0})
    cols = ["seed_id", "seed_label", "rank", "id", "score"]
    allhits = pd.concat([own[cols], hits[cols]], ignore_index=True)
    # Per (image, class): its best hit (lowest rank, then highest score) and how many seeds.
    best = allhits.sort_values(["id", "seed_label", "rank", "score"], ascending=[True, True, True, False])
    per_class = best.drop_duplicates(["id", "seed_label"]).set_index(["id", "seed_label"])
    per_class["n_seeds"] = allhits.groupby(["id", "seed_label"]).size()
    per_class = per_class.reset_index()

    reaching = hits.groupby("id")["seed_id"].nunique()
    n_classes = per_class.groupby("id").size()
    classes = per_class.groupby("id")["seed_label"].agg(lambda s: "|".join(sorted(s)))

    # Ranking of the candidate classes of each image, by the rule; the first one wins
    # unless the runner-up is tied with it on every key.
    keys = ["n_seeds_neg", "rank"] if rule == "majority" else ["rank"]
    per_class["n_seeds_neg"] = -per_class["n_seeds"]
    per_class["seed_first"] = ~(per_class["rank"] == 0)  # a seed's own class always wins
    order = per_class.sort_values(["id", "seed_first", *keys, "score"],
                                  ascending=[True, True, *[True] * len(keys), False])
    first = order.drop_duplicates("id").set_index("id")
    second = order[order.duplicated("id")].drop_duplicates("id").set_index("id")
    tied = pd.Series(False, index=first.index)
    common = second.index
    if len(common):
        f, s = first.loc[common], second.loc[common]
        tied.loc[common] = ((f["seed_first"] == s["seed_first"]).to_numpy()
                            & np.all([(f[c] == s[c]).to_numpy() for c in keys], axis=0))

    lab = first[["seed_id", "seed_label", "rank", "score"]].copy()
    lab["n_seeds_reaching"] = reaching.reindex(lab.index, fill_value=0).astype(int)
    lab["n_classes"] = n_classes.reindex(lab.index).astype(int)
    lab["classes"] = classes.reindex(lab.index)
    lab["conflict"] = lab["n_classes"] > 1
    lab["is_seed"] = lab.index.isin(seeds["id"])
    tie = tied.reindex(lab.index).to_numpy()
    res = np.select([lab["is_seed"].to_numpy(), ~lab["conflict"].to_numpy(), np.full(len(lab), rule == "drop"),
                     tie], ["seed", "single", "drop", "tie"], default=rule)
    lab["resolution"] = res
    lab["label"] = lab["seed_label"].where(~np.isin(res, ["tie", "drop"]))
    lab = lab.reset_index()
    labelled = lab[["id", "label", "seed_id", "seed_label", "rank", "score", "n_seeds_reaching",
                    "n_classes", "classes", "conflict", "is_seed", "resolution"]]
    labelled = labelled.sort_values(["is_seed", "rank", "score"], ascending=[False, True, False],
                                    ignore_index=True)

    conf_ids = labelled.loc[labelled["conflict"], "id"]
    pc = per_class[per_class["id"].isin(conf_ids)]
    wide_rank = pc.pivot(index="id", columns="seed_label", values="rank").add_prefix("best_rank:")
    wide_n = pc.pivot(index="id", columns="seed_label", values="n_seeds").add_prefix("n_seeds:")
    conflicts = (labelled.loc[labelled["conflict"], ["id", "is_seed", "classes", "n_seeds_reaching",
                                                      "label", "resolution"]]
                 .set_index("id").join(wide_rank).join(wide_n).reset_index())
    return labelled, conflicts


def _class_counts(seeds: pd.DataFrame, hits: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    reached_by = hits.groupby("id")["seed_label"].nunique()
    multi = set(reached_by.index[reached_by.to_numpy() > 1])
    conflict_ids = set(labelled.loc[labelled["conflict"], "id"])
    rows = []
    for label in [*sorted(seeds["label"].unique()), None]:
        h = hits if label is None else hits[hits["seed_label"] == label]
        reached = set(h["id"])
        rows.append({
            "class": "all" if label is None else label,
            "seeds": int(len(seeds) if label is None else (seeds["label"] == label).sum()),
            "hits": len(h),
            "unique": len(reached),
            "share_unique": len(reached) / len(h) if len(h) else np.nan,
            "exclusive": len(reached - multi),
            "conflicts": len(reached & conflict_ids),
            "labelled": int(labelled["label"].notna().sum() if label is None
                            else (labelled["label"] == label).sum()),
        })
    return pd.DataFrame(rows)


def expand(space: Space, seeds: dict[str, list[str]], k: int = 99, rule: str = "best_rank") -> ExpansionResult:
    """MedGore seed expansion: each seed's ``k`` nearest images inherit the seed's class.

    Parameters
    ----------
    space : Space
    seeds : dict {label: [image id, ...]}
        Full content ids. An id under two labels is an error.
    k : int, default 99
        Neighbours per seed, the seed itself and its byte-identical copies excluded.
    rule : str, default 'best_rank'
        How images reached by more than one class are labelled (:data:`RESOLUTION_RULES`).
        Seeds always keep their own label.

    Returns
    -------
    ExpansionResult
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seed_df = _check_seeds(space, seeds)
    found = distinct_neighbours(space, seed_df["row"].to_numpy(), seed_df["id"].to_numpy(), k)
    q = found["query"].to_numpy()
    hits = pd.DataFrame({
        "seed_id": seed_df["id"].to_numpy()[q], "seed_label": seed_df["label"].to_numpy()[q],
        "rank": found["rank"].to_numpy(), "id": found["id"].to_numpy(), "row": found["row"].to_numpy(),
        "score": found["score"].to_numpy().astype(np.float64),
    })
    hits["dataset_label"] = space.dataset.images["label"].to_numpy()[hits["row"].to_numpy()]
    labelled, conflicts = _resolve(hits, seed_df, rule)
    return ExpansionResult(k, rule, seed_df, hits, labelled, conflicts, _class_counts(seed_df, hits, labelled))


def rank_band(rank, band_width: int = 20, k: int | None = None) -> pd.DataFrame:
    """Band of each rank: ``band`` (0-based), ``rank_lo``, ``rank_hi`` (capped at ``k``), ``band_label``."""
    r = np.asarray(rank, dtype=np.int64)
    if (r < 1).any():
        raise ValueError("ranks start at 1")
    band = (r - 1) // band_width
    lo = band * band_width + 1
    hi = lo + band_width - 1
    if k is not None:
        hi = np.minimum(hi, k)
    return pd.DataFrame({"band": band, "rank_lo": lo, "rank_hi": hi,
                         "band_label": [f"{a}-{b}" for a, b in zip(lo, hi, strict=True)]})


def sample_by_rank(expansion: ExpansionResult, first_n: int | None = None, last_n: int | None = None,
                   n_per_class: int | None = None, include_seeds: bool = False, seed: int = 0) -> pd.DataFrame:
    """MedGore's "First-n" (ranks 1..n) or "Last-n" (ranks k-n+1..k) labelled subset.

    Labels are resolved again from the in-band hits only (same rule), so an image's label
    in "Last-3" never comes from a rank-1 hit. Unresolved images are dropped.

    Parameters
    ----------
    first_n, last_n : int
        Exactly one of them.
    n_per_class : int, optional
        Keep at most this many images per label (seeded random choice).
    include_seeds : bool
        Add the seeds themselves (rank 0).

    Returns
    -------
    DataFrame, the columns of ``ExpansionResult.labelled``.
    """
    if (first_n is None) == (last_n is None):
        raise ValueError("give exactly one of first_n or last_n")
    k = expansion.k
    lo, hi = (1, first_n) if first_n is not None else (k - last_n + 1, k)
    if lo < 1 or hi > k or lo > hi:
        raise ValueError(f"band {lo}..{hi} is outside ranks 1..{k}")
    hits = expansion.hits[expansion.hits["rank"].between(lo, hi)]
    seeds = expansion.seeds if include_seeds else expansion.seeds.iloc[:0]
    labelled, _ = _resolve(hits, seeds, expansion.rule)
    out = labelled[labelled["label"].notna()]
    if n_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = [np.sort(rng.choice(idx, size=min(n_per_class, len(idx)), replace=False))
                for _, idx in sorted(out.groupby("label").indices.items())]
        out = out.iloc[np.sort(np.concatenate(keep))]
    return out.reset_index(drop=True)


# =========================================================================== review truth


def to_classes(labels: pd.Series | Sequence, mapping: Mapping[str, str | None] | None = None,
               classes: Sequence[str] | None = None) -> pd.Series:
    """Annotation labels (n,) as classes: an object Series (n,), None where unjudged.

    ``mapping`` (default :data:`LABEL_TO_CLASS`) is matched case-insensitively. A label it
    does not name counts only when it spells a class: one of ``classes`` (default: the
    classes the mapping maps to), so a label set that spells the classes works. Any other
    label is unjudged: an unmapped label is not evidence (fail closed; a typo or a label of
    another set must not confirm or reject a neighbour). A missing label stays None.
    """
    mapping = LABEL_TO_CLASS if mapping is None else mapping
    folded = {str(k).casefold(): v for k, v in mapping.items()}
    known = [c for c in mapping.values() if c is not None] if classes is None else list(classes)
    spelled = {str(c).casefold(): str(c) for c in known}
    s = labels if isinstance(labels, pd.Series) else pd.Series(list(labels), dtype=object)

    def one(v):
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            return None
        key = str(v).casefold()
        return folded[key] if key in folded else spelled.get(key)

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
    """Review labels as classes, indexed by image id: the ``truth`` of :func:`homogeneity`.

    ``who`` is one annotator or ``consensus`` (:func:`consensus_labels`); ``mapping``
    defaults to :func:`class_mapping`. None where the label is Maybe, undecided, or maps to
    no class (:func:`to_classes`: the mapping's classes and the dataset's own labels count).

    Returns
    -------
    Series (n_labelled_images,) of object, name ``truth``.
    """
    mapping = class_mapping(dataset) if mapping is None else mapping
    classes = [c for c in mapping.values() if c is not None]
    if ds_mod.exists(dataset):
        classes += ds_mod.load(dataset).images["label"].dropna().astype(str).unique().tolist()
    df = review_labels(store, dataset, who)
    return pd.Series(to_classes(df["label"], mapping, classes).to_numpy(), index=df["image_id"].to_numpy(),
                     name="truth", dtype=object)


def dataset_truth(ds: ds_mod.Dataset) -> pd.Series:
    """The dataset's labels indexed by image id (first row of each id): Series
    (n_distinct_images,) of object, None where unlabelled."""
    images = ds.images.drop_duplicates("id")
    labels = images["label"].astype(object).where(images["label"].notna(), None)
    return pd.Series(labels.to_numpy(), index=images["id"].to_numpy(), name="truth", dtype=object)

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


def save_expansion(result: ExpansionResult, dataset: str, name: str, meta: Mapping | None = None, *,
                   path: str | os.PathLike | None = None) -> SavedExpansion:
    """Save ``result`` with :meth:`ExpansionResult.save` in :func:`expansion_path` (or ``path``):
    the one way the app and the CLI write an expansion."""
    folder = Path(path).expanduser() if path is not None else expansion_path(dataset, name)
    info = result.save(folder, {"name": name, "dataset": dataset, **dict(meta or {})})
    return SavedExpansion(name, folder, result, info)


def run_expansion(space: Space, seeds: Mapping[str, Sequence[str]], k: int = 99, rule: str = "best_rank", *,
                  origin: str = "", name: str | None = None, random_weights: bool = False,
                  save: bool = True) -> SavedExpansion:
    """:func:`expand` with checked inputs, saved under the data home (:func:`save_expansion`).

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


def _read_format1(path: Path, dataset: str) -> tuple[ExpansionResult, dict]:
    """The ``expand`` verb's older output (``X.parquet`` + ``X-hits.parquet`` + ...): its seeds
    are the rank-0 rows of the labelled table and the rule is inferred from the resolutions."""
    stem = path.with_suffix("")
    hits_p, conf_p, counts_p = (Path(f"{stem}-hits.parquet"), Path(f"{stem}-conflicts.parquet"),
                                Path(f"{stem}-counts.csv"))
    if not hits_p.exists():
        raise WorkflowError(f"{path} has no hits table beside it ({hits_p.name}): is it an `expand` output?")
    labelled = pd.read_parquet(path)
    hits = pd.read_parquet(hits_p)
    seeds = labelled.loc[labelled["is_seed"], ["id", "seed_label"]].rename(columns={"seed_label": "label"})
    ids = ds_mod.load(dataset).images["id"].to_numpy()
    first = pd.Series(np.arange(len(ids))).groupby(ids).first()  # row of each id's first file
    seeds["row"] = first.reindex(seeds["id"].to_numpy()).to_numpy()
    res_values = set(labelled["resolution"].astype(str))
    rule = next((r for r in ("majority", "drop") if r in res_values), "best_rank")
    result = ExpansionResult(int(hits["rank"].max()), rule, seeds.reset_index(drop=True), hits, labelled,
                             pd.read_parquet(conf_p) if conf_p.exists() else labelled.iloc[:0],
                             pd.read_csv(counts_p) if counts_p.exists() else pd.DataFrame())
    return result, {"origin": f"file:{path}", "migrated_from": str(path.resolve())}


def migrated_path(path: str | os.PathLike) -> Path:
    """Where an old ``expand`` parquet ``DIR/X.parquet`` is migrated to: ``DIR/expansion-X/``
    (for the verb's default output, that is :func:`expansion_path` of ``X``)."""
    path = Path(path)
    return path.parent / f"expansion-{_check_expansion_name(path.stem)}"


def load_expansion(dataset: str, name: str | os.PathLike) -> SavedExpansion:
    """A saved expansion: by name (``results/<dataset>/expansion-<name>``) or by folder.

    An older ``expand`` parquet (format 1) is migrated once: saved in the current format to
    :func:`migrated_path` (its original files are left alone), which later loads read.
    """
    p = Path(name)
    if p.suffix == ".parquet" and p.is_file():
        target = migrated_path(p)
        if not (target / "meta.json").exists():
            result, meta = _read_format1(p, dataset)
            return save_expansion(result, dataset, p.stem, meta, path=target)
        p = target
    path = p if p.is_dir() else expansion_path(dataset, str(name))
    if not (path / "meta.json").exists():
        known = ", ".join(list_expansions(dataset)["name"]) or "none yet"
        raise WorkflowError(f"no saved expansion {str(name)!r} for dataset {dataset!r} (known: {known})")
    result, meta = ExpansionResult.load(path)
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
    per_rank : pairs drawn at every rank (and stratum), without replacement
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
    banded = pd.concat([hits.reset_index(drop=True), rank_band(hits["rank"].to_numpy(), band_width, res.k)],
                       axis=1) if len(hits) else hits.assign(band=[], rank_lo=[], rank_hi=[], band_label=[])
    rng = np.random.default_rng(seed)
    by = "rank" if per_rank is not None else "band"
    keys = [by] if stratify is None else [by, stratify]
    picks = [g.iloc[np.sort(rng.choice(len(g), size=min(n, len(g)), replace=False))]
             for _, g in banded.groupby(keys, sort=True)]
    out = pd.concat(picks) if picks else banded.iloc[:0]
    if per_rank is not None:  # already in (rank, stratum) order, each group in hits order
        return out.reset_index(drop=True)
    return out.sort_values(["rank", "seed_id"], kind="stable").reset_index(drop=True)

# =========================================================================== homogeneity


def sample_pairs(expansion: ExpansionResult, pairs: pd.DataFrame | None) -> ExpansionResult:
    """The expansion restricted to the seed-neighbour pairs of a review sample (all pairs when None)."""
    if pairs is None:
        return expansion
    key = ["seed_id", "rank", "id"]
    wanted = pairs[key].drop_duplicates()
    hits = expansion.hits.merge(wanted, on=key, how="inner")
    return dataclasses.replace(expansion, hits=hits)


def homogeneity(expansion: ExpansionResult | SavedExpansion, truth: pd.Series, band_width: int = 20,
                by_class: bool = True, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """How often a neighbour shares its seed's class, per band of ranks (MedGore).

    A seed-neighbour pair is *confirmed* when the neighbour's truth equals the seed's
    label, *rejected* when it differs, *unjudged* when the neighbour has no truth. The share
    of confirmed pairs gets the beta-binomial estimate Beta(confirmed + 1, rejected + 1)
    (:func:`lib.metrics.beta_estimate`).

    Parameters
    ----------
    truth : Series of labels indexed by image id
        Dataset labels (:func:`dataset_truth`) or review labels (:func:`review_truth`).
    band_width : int
        Ranks per band: 1-20, 21-40, ...
    by_class : bool
        Also one block per seed class; ``scope`` is the class or ``all``.
    pairs : DataFrame with ``seed_id, rank, id``, optional
        A review sample: only its pairs count (:func:`sample_pairs`); otherwise every pair
        of the expansion whose neighbour has a truth counts.

    Returns
    -------
    DataFrame, one row per (scope, band): ``scope, band, band_label, rank_lo, rank_hi, pairs,
    confirmed, rejected, unjudged, alpha, beta, mean, sd``.
    """
    from .metrics import beta_estimate

    res = sample_pairs(expansion.result if isinstance(expansion, SavedExpansion) else expansion, pairs)
    hits = res.hits
    if truth.index.has_duplicates:
        raise ValueError("truth has more than one label for some image ids")
    t = truth.reindex(hits["id"].to_numpy())
    judged = t.notna().to_numpy()
    t = t.astype(object).where(judged, "").astype(str).to_numpy()  # any NA flavour -> unjudged
    df = pd.concat([hits[["seed_label", "rank"]].reset_index(drop=True),
                    rank_band(hits["rank"].to_numpy(), band_width, res.k)], axis=1)
    df["confirmed"] = judged & (t == hits["seed_label"].astype(str).to_numpy())
    df["rejected"] = judged & ~df["confirmed"].to_numpy()
    df["unjudged"] = ~judged
    scopes = [("all", df)]
    if by_class:
        scopes = [(c, df[df["seed_label"] == c]) for c in sorted(df["seed_label"].unique())] + scopes
    parts = []
    for scope, d in scopes:
        g = d.groupby(["band", "band_label", "rank_lo", "rank_hi"], as_index=False).agg(
            pairs=("rank", "size"), confirmed=("confirmed", "sum"), rejected=("rejected", "sum"),
            unjudged=("unjudged", "sum"))
        g.insert(0, "scope", scope)
        parts.append(g)
    table = pd.concat(parts, ignore_index=True)
    for c in ("pairs", "confirmed", "rejected", "unjudged"):
        table[c] = table[c].astype(int)
    table["alpha"] = table["confirmed"] + 1
    table["beta"] = table["rejected"] + 1
    mean, sd = beta_estimate(table["confirmed"].to_numpy(), table["rejected"].to_numpy())
    table["mean"], table["sd"] = np.atleast_1d(mean), np.atleast_1d(sd)
    return table


def homogeneity_comparison(expansion: ExpansionResult | SavedExpansion, truths: Mapping[str, pd.Series],
                           band_width: int = 20, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`homogeneity` (per class and ``all``) for several truths (e.g. ``{"review": ...,
    "dataset": ...}``), stacked with a ``truth`` column."""
    parts = [homogeneity(expansion, t, band_width, pairs=pairs).assign(truth=name) for name, t in truths.items()]
    return pd.concat(parts, ignore_index=True)


def homogeneity_figure(table: pd.DataFrame, title: str = "Neighbour homogeneity per band of ranks"):
    """The one plotly figure of :func:`homogeneity`: Beta mean +-1 sd per band of ranks.

    A table with a ``truth`` column (:func:`homogeneity_comparison`) gets one panel per
    scope (each seed class, then ``all``) and one line per truth; a plain table gets one
    panel with one line per scope (a notebook may put model names in ``scope``).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by_truth = "truth" in table
    scopes = list(dict.fromkeys(table["scope"])) if by_truth else [None]
    lines = "truth" if by_truth else "scope"
    fig = make_subplots(rows=1, cols=len(scopes), shared_yaxes=True,
                        subplot_titles=[f"{s} seeds" if s != "all" else "all seeds" for s in scopes]
                        if by_truth else None)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for j, (name, t) in enumerate(table.groupby(lines, sort=False)):
        for i, scope in enumerate(scopes, start=1):
            d = (t if scope is None else t[t["scope"] == scope]).sort_values("band")
            where = f"{name} · {scope}" if scope is not None else str(name)
            fig.add_trace(go.Scatter(
                x=d["band_label"], y=d["mean"], name=str(name), legendgroup=str(name), showlegend=i == 1,
                mode="lines+markers", line={"color": palette[j % len(palette)]},
                error_y={"type": "data", "array": d["sd"], "visible": True},
                customdata=np.stack([d["confirmed"], d["rejected"], d["unjudged"]], axis=1),
                hovertemplate="ranks %{x}<br>mean %{y:.3f}<br>confirmed %{customdata[0]}, rejected "
                              "%{customdata[1]}, unjudged %{customdata[2]}<extra>" + where + "</extra>"),
                row=1, col=i)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="share confirmed (Beta mean ± sd)")
    fig.update_xaxes(title_text="neighbour ranks")
    fig.update_layout(title=title, height=380, legend_title=lines if by_truth else "seed class",
                      margin={"t": 70})
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



#: MedGore's k (neighbours per seed); the Expand page's default only on collections large enough for it.
MEDGORE_K = 99


def default_k(n_images: int, n_seeds: int) -> int:
    """A k (neighbours per seed) for a dataset of ``n_images`` expanded from ``n_seeds`` seeds:
    the seeds' neighbourhoods together reach about half the dataset, between 5 and
    :data:`MEDGORE_K` (MedGore's 99 on a small set makes almost every image a conflict)."""
    if n_images <= 1:
        return 1
    k = round(0.5 * n_images / max(int(n_seeds), 1))
    return int(min(max(k, 5), MEDGORE_K, n_images - 1))


def mapping_text(mapping: dict, limit: int = 6) -> str:
    """``label → class`` pairs for a caption, the first ``limit`` and how many more."""
    items = [f"{k} → {v or 'unjudged'}" for k, v in mapping.items()]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")
