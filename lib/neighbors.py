"""Neighbourhoods in an embedding space: who is near an image, by how much, with what label.

Also the MedGore seed expansion built on them: :func:`expand` labels the k nearest
neighbours of seed images with the seed's class (resolving images reached by several
classes), :func:`sample_by_rank` / :func:`review_sample` draw the "First-n"/"Last-n"
subsets and review samples, and :func:`homogeneity` estimates, per band of ranks, how
often a neighbour really shares its seed's class (Beta-binomial, with a plotly figure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import dataset as ds_mod
from .embeddings import DatasetEmbeddings, load_embeddings
from .index import VectorIndex, get_index


@dataclass
class Space:
    """A dataset seen through one model: its rows, their vectors and a faiss index."""

    dataset: ds_mod.Dataset
    spec: str
    emb: DatasetEmbeddings
    index_kind: str = "auto"
    _index: VectorIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._index = get_index(self.emb, self.dataset.name, self.index_kind)
        return self._index

    def row_of(self, image_id: str) -> int:
        rows = np.flatnonzero(self.dataset.images["id"].to_numpy() == image_id)
        if not len(rows):
            raise ds_mod.DatasetError(f"image {image_id} is not in dataset {self.dataset.name!r}")
        return int(rows[0])


def open_space(name: str, spec: str, *, random_weights: bool = False, backend=None,
               index_kind: str = "auto") -> Space:
    """Dataset ``name`` embedded with ``spec`` (which must be cached: see ``lib embed``)."""
    ds = ds_mod.load(name)
    emb = load_embeddings(name, spec, random_weights=random_weights, backend=backend)
    return Space(ds, spec, emb, index_kind)


def search_vectors(space: Space, vectors: np.ndarray, k: int,
                   exclude_rows: list[int] | None = None) -> pd.DataFrame:
    """Top-``k`` rows for each query vector (q, dim), as a long table.

    Columns: query, rank (1-based), row, id, score, label, path, duplicate_of. Rows in
    ``exclude_rows`` (one per query, e.g. the query image itself) are skipped.
    """
    extra = 1 if exclude_rows is not None else 0
    scores, rows = space.index.search(vectors, k + extra)
    images = space.dataset.images
    out = []
    for q in range(len(rows)):
        keep = [(s, r) for s, r in zip(scores[q], rows[q], strict=True)
                if r >= 0 and (exclude_rows is None or r != exclude_rows[q])][:k]
        for rank, (s, r) in enumerate(keep, start=1):
            out.append((q, rank, int(r), float(s)))
    df = pd.DataFrame(out, columns=["query", "rank", "row", "score"])
    sub = images.iloc[df["row"].to_numpy()]
    for col in ("id", "label", "path", "duplicate_of"):
        df[col] = sub[col].to_numpy() if col in sub else None
    return df


def neighbours(space: Space, row: int, k: int = 10) -> pd.DataFrame:
    """The ``k`` nearest other rows of dataset row ``row`` (rank, row, id, score, label, path)."""
    df = search_vectors(space, space.emb.take([row]), k, exclude_rows=[row])
    return df.drop(columns="query")


def neighbours_of_image(space: Space, backend, img, k: int = 10) -> pd.DataFrame:
    """Neighbours of an outside image (PIL) embedded with ``backend`` (same fingerprint)."""
    if backend.fingerprint != space.emb.fingerprint:
        raise ds_mod.DatasetError(f"model {backend.spec} does not match the cached space {space.spec}")
    return search_vectors(space, backend.encode_images([img]), k).drop(columns="query")


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

    def save(self, path) -> list:
        """Write ``labelled`` to ``path`` (parquet) and ``-hits``/``-conflicts``/``-counts`` beside it."""
        from pathlib import Path

        from .files import write_table

        path = Path(path)
        out = [path, path.with_name(f"{path.stem}-hits.parquet"),
               path.with_name(f"{path.stem}-conflicts.parquet"), path.with_name(f"{path.stem}-counts.csv")]
        for p, df in zip(out, (self.labelled, self.hits, self.conflicts, self.counts), strict=True):
            write_table(p, df)
        return out


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


def _neighbour_table(space: Space, rows: np.ndarray, self_ids: np.ndarray, k: int) -> pd.DataFrame:
    """The k nearest distinct images of each query row, skipping the query's own id.

    Duplicate files share an id and a vector; they would otherwise fill the top ranks, so
    the search asks for extra results and keeps each id once. Returns ``query, rank, row,
    id, score`` (query indexes ``rows``).
    """
    ids = space.dataset.images["id"].to_numpy()
    n, n_unique = len(ids), len(set(ids))
    want = min(k, n_unique - 1)
    extra = n - n_unique
    kk = min(n, k + 1 + min(extra, k))
    pending = np.arange(len(rows))
    parts = []
    while len(pending):
        scores, found = space.index.search(space.emb.take(rows[pending]), kk)
        q = np.repeat(pending, found.shape[1])
        df = pd.DataFrame({"query": q, "row": found.ravel(), "score": scores.ravel()})
        df = df[df["row"] >= 0]
        df["id"] = ids[df["row"].to_numpy()]
        df = df[df["id"].to_numpy() != self_ids[df["query"].to_numpy()]]
        df = df.drop_duplicates(["query", "id"])  # results are sorted: keeps each id's best row
        df["rank"] = df.groupby("query").cumcount() + 1
        df = df[df["rank"] <= k]
        got = df.groupby("query").size().reindex(pending, fill_value=0)
        short = got.index[got.to_numpy() < want].to_numpy()
        done = df[~df["query"].isin(short)]
        parts.append(done)
        if not len(short) or kk >= n:
            if len(short):
                parts.append(df[df["query"].isin(short)])
            break
        pending, kk = short, min(n, kk * 2)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["query", "row", "score", "id", "rank"])
    return out.sort_values(["query", "rank"], ignore_index=True)[["query", "rank", "row", "id", "score"]]


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
    found = _neighbour_table(space, seed_df["row"].to_numpy(), seed_df["id"].to_numpy(), k)
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


def review_sample(expansion: ExpansionResult, band_width: int = 20, per_rank: int = 10,
                  stratify_col: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Seed-neighbour pairs to review: ``per_rank`` random pairs at every rank (per stratum).

    Parameters
    ----------
    band_width : int
        Ranks per band; adds ``band, rank_lo, rank_hi, band_label``.
    stratify_col : str, optional
        A column of ``hits`` (e.g. ``seed_label``): ``per_rank`` pairs per rank and value.

    Returns
    -------
    DataFrame, rows of ``expansion.hits`` sorted by rank. An image may appear in several
    pairs (it is the neighbour of several seeds); review it once and reuse the label.
    """
    hits = expansion.hits
    if stratify_col is not None and stratify_col not in hits:
        raise ValueError(f"stratify_col {stratify_col!r} is not a column of the hits ({list(hits)})")
    rng = np.random.default_rng(seed)
    keys = ["rank"] if stratify_col is None else ["rank", stratify_col]
    picks = []
    for _, g in hits.groupby(keys, sort=True):
        take = rng.choice(len(g), size=min(per_rank, len(g)), replace=False)
        picks.append(g.iloc[np.sort(take)])
    out = pd.concat(picks, ignore_index=True) if picks else hits.iloc[:0].copy()
    bands = rank_band(out["rank"].to_numpy(), band_width, expansion.k) if len(out) else \
        pd.DataFrame(columns=["band", "rank_lo", "rank_hi", "band_label"])
    return pd.concat([out.reset_index(drop=True), bands], axis=1)


def truth_from_dataset(dataset: ds_mod.Dataset) -> pd.Series:
    """The dataset's labels as a Series indexed by image id (first row of each id)."""
    images = dataset.images.drop_duplicates("id")
    return pd.Series(images["label"].to_numpy(), index=images["id"].to_numpy(), name="truth")


def truth_from_store(store, dataset: str, annotator: str = "consensus",
                     mapping: dict | None = None) -> pd.Series:
    """Review labels of one annotator from an :class:`lib.annotations.AnnotationStore`.

    ``mapping`` turns review labels into classes (e.g. ``{"Blur": "sensitive", "Ok":
    "non_sensitive"}``); labels it maps to None, or leaves out, count as unjudged.
    """
    cur = store.current(dataset, annotator)
    labels = cur["label"] if mapping is None else cur["label"].map(mapping)
    return pd.Series(labels.to_numpy(), index=cur["image_id"].to_numpy(), name="truth")


def homogeneity(expansion: ExpansionResult, truth: pd.Series, band_width: int = 20,
                by_class: bool = True) -> pd.DataFrame:
    """How often a neighbour shares its seed's class, per band of ranks (MedGore).

    A seed-neighbour pair is *confirmed* when the neighbour's truth equals the seed's
    label, *rejected* when it differs, *unjudged* when the neighbour has no truth. The share
    of confirmed pairs gets the beta-binomial estimate Beta(confirmed + 1, rejected + 1)
    (:func:`lib.metrics.beta_estimate`).

    Parameters
    ----------
    truth : Series of labels indexed by image id
        Dataset labels (:func:`truth_from_dataset`) or review labels (:func:`truth_from_store`).
    band_width : int
        Ranks per band: 1-20, 21-40, ...
    by_class : bool
        Also one block per seed class; ``scope`` is the class or ``all``.

    Returns
    -------
    DataFrame, one row per (scope, band): ``scope, band, band_label, rank_lo, rank_hi, pairs,
    confirmed, rejected, unjudged, alpha, beta, mean, sd``.
    """
    from .metrics import beta_estimate

    hits = expansion.hits
    if truth.index.has_duplicates:
        raise ValueError("truth has more than one label for some image ids")
    t = truth.reindex(hits["id"].to_numpy())
    judged = t.notna().to_numpy()
    t = t.astype(object).where(judged, "").astype(str).to_numpy()  # any NA flavour -> unjudged
    df = pd.concat([hits[["seed_label", "rank"]].reset_index(drop=True),
                    rank_band(hits["rank"].to_numpy(), band_width, expansion.k)], axis=1)
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


def homogeneity_figure(table: pd.DataFrame, title: str = "Neighbour homogeneity by rank"):
    """Plotly figure of :func:`homogeneity`: posterior mean per band, +-1 sd error bars, one line per scope."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for scope, d in table.groupby("scope", sort=False):
        d = d.sort_values("band")
        fig.add_trace(go.Scatter(
            x=d["band_label"], y=d["mean"], name=str(scope), mode="lines+markers",
            error_y={"type": "data", "array": d["sd"], "visible": True},
            customdata=np.stack([d["confirmed"], d["rejected"], d["pairs"]], axis=1),
            hovertemplate="ranks %{x}<br>mean %{y:.3f}<br>confirmed %{customdata[0]} / "
                          "rejected %{customdata[1]} (%{customdata[2]} pairs)<extra>" + str(scope) + "</extra>"))
    fig.update_layout(title=title, xaxis_title="neighbour rank band", yaxis_title="share confirmed (Beta mean)",
                      yaxis_range=[0, 1.05], legend_title="seed class")
    return fig
