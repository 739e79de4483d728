"""Gather a dataset's safe-view evidence from disk and make the decision (:mod:`lib.sensitivity`).

The pieces are read here once each: the label policy, the annotation store's latest
reviews, EB scores, NudeNet scores checked so far, and a detector's (or any) prediction
table. :func:`decide_dataset` is what the CLI and the notebooks call; the app reads the
same pieces through its cached loaders (``lib/ui.py``) and calls
:func:`lib.sensitivity.decide` on them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import sensitivity


def reviews(name: str, store=None, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`lib.sensitivity.latest_reviews` of dataset ``name`` from the annotation store:
    the default label set's reviews, and those of every named label set whose value means
    sensitive or safe (``review_class``; a value that means nothing is no review here).
    ``image_ids``: only these images' reviews."""
    from .annotations import DEFAULT_SET, AnnotationStore, scope

    store = store or AnnotationStore()
    frames = []
    for schema in store.schemas(name):
        cur = store.current(scope(name, schema.name), columns=("image_id", "annotator", "label", "updated_at"),
                            image_ids=image_ids)
        if cur.empty:
            continue
        if schema.name == DEFAULT_SET:
            frames.append(cur.assign(review_class=None))
            continue
        cls = [schema.meaning_of(v) for v in cur["label"]]
        cur = cur.assign(review_class=cls)
        frames.append(cur[cur["review_class"].notna()])
    frames = [f for f in frames if len(f)]
    return sensitivity.latest_reviews(pd.concat(frames, ignore_index=True) if frames else None)


def screening_from_file(path: str | Path, threshold: float | None = None,
                        table: pd.DataFrame | None = None) -> sensitivity.Screening:
    """A prediction table file as evidence: its own screening threshold (a detector's
    ``threshold`` column) unless ``threshold`` is given, else 0.5; named after the file."""
    from .catalog import read_predictions

    path = Path(path)
    preds = read_predictions(path) if table is None else table
    if threshold is None:
        threshold = float(preds["threshold"].iloc[0]) if "threshold" in preds and len(preds) \
            else sensitivity.PRED_THRESHOLD
    at = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    name = path.stem.removeprefix("detect-") if path.name.startswith("detect-") else path.stem
    return sensitivity.Screening(preds.rename(columns={"score": "p"}), float(threshold), name, at)


def decide_dataset(ds, *, eb_threshold: float | None = sensitivity.EB_THRESHOLD, predictions: str | Path | None = None,
                   pred_threshold: float | None = None, store=None, nudity: bool = True,
                   progress=None) -> pd.DataFrame:
    """The safe view's decision for every row of dataset ``ds`` (:func:`lib.sensitivity.decide`).

    Parameters
    ----------
    eb_threshold : the EB cut; None leaves EB out (it is computed, and cached, otherwise).
    predictions : a prediction table file (e.g. a detector's ``detect-*.parquet``).
    nudity : use the NudeNet scores already computed (``python -m lib nudity NAME``).

    A policy file that cannot be read censors every image, with the error as the reason.
    """
    return sensitivity.decide(ds.images, reviews=reviews(ds.name, store), **dataset_evidence(
        ds, eb_threshold=eb_threshold, predictions=predictions, pred_threshold=pred_threshold, nudity=nudity,
        progress=progress))


def dataset_evidence(ds, *, eb_threshold: float | None = sensitivity.EB_THRESHOLD, predictions: str | Path | None = None,
                     pred_threshold: float | None = None, nudity: bool = True, progress=None) -> dict:
    """:func:`lib.sensitivity.decide`'s keyword arguments for dataset ``ds`` but the reviews:
    policy (or the error reading it), EB, NudeNet and screening (see :func:`decide_dataset`)."""
    from . import nudity as nudity_mod
    from .gallery import eb_scores

    try:
        policy, error = sensitivity.load_policy(ds.name), None
        sensitivity.vocabulary()
    except sensitivity.PolicyError as e:
        policy, error = sensitivity.LabelPolicy(), str(e)
    nud = nudity_mod.cached(ds.images["id"]) if nudity else None
    return dict(policy=policy, policy_error=error,
                eb=None if eb_threshold is None else eb_scores(ds, progress=progress),
                eb_threshold=sensitivity.EB_THRESHOLD if eb_threshold is None else float(eb_threshold),
                nudity=nud if nud is not None and len(nud) else None,
                screening=None if predictions is None else screening_from_file(predictions, pred_threshold))


def contact_sheet(ds, rows, *, decision: pd.DataFrame | None = None, captions=None, reasons: bool = False,
                  mode: str = "blur", side: int = 128, cols: int = 6):
    """A contact sheet of dataset rows through the safe view's decision (what the notebooks show).

    Parameters
    ----------
    rows : n dataset row positions.
    decision : :func:`decide_dataset` of ``ds`` (computed here when None); a tile is shown
        raw only where its row is not ``censored``.
    captions : n short texts; with ``reasons`` each is followed by the row's reason.

    Returns
    -------
    PIL RGB image (:func:`lib.safety.safe_grid`).
    """
    from .safety import safe_grid

    rows = [int(r) for r in rows]
    d = decide_dataset(ds) if decision is None else decision
    flags = d["censored"].to_numpy()[rows].tolist()
    caps = list(captions) if captions is not None else [""] * len(rows)
    if reasons:
        why = d["reason"].to_numpy()[rows]
        caps = [f"{c} · {w}" if c else str(w) for c, w in zip(caps, why, strict=True)]
    return safe_grid([ds.abspath(p) for p in ds.images["path"].to_numpy()[rows]], flags, mode=mode, side=side,
                     cols=cols, captions=caps if (captions is not None or reasons) else None)


def image_evidence(image_id: str, *, label, policy: sensitivity.LabelPolicy, eb: pd.DataFrame | None = None,
                   eb_threshold: float = sensitivity.EB_THRESHOLD, nudity: pd.DataFrame | None = None,
                   screening: sensitivity.Screening | None = None, labels: pd.DataFrame | None = None,
                   schemas=None) -> pd.DataFrame:
    """Every piece of safe-view evidence about one image, for its detail view.

    Parameters
    ----------
    eb : the dataset's EB table (``id, eb, blood, skin, error``); ``nudity`` its NudeNet table.
    labels : the image's current labels in every label set (``label_set, annotator, label,
        updated_at``); ``schemas`` {name: :class:`lib.annotations.LabelSchema`} says what each means.

    Returns
    -------
    DataFrame ``evidence, value, says`` (``flags``, ``clears``, ``nothing``), one row per piece,
    in the order :func:`lib.sensitivity.decide` weighs them.
    """
    rows = []
    cls = policy.classify(label) if sensitivity.normal_form(label) else sensitivity.UNKNOWN
    if cls == sensitivity.UNKNOWN and policy.all_sensitive:
        rows.append(("label policy", f"{label} (dataset marked all-sensitive)", "flags"))
    else:
        rows.append(("label policy", f"{label if sensitivity.normal_form(label) else '(no label)'} → {cls} "
                                     f"({policy.source_of(label)})",
                     {"sensitive": "flags", "safe": "clears"}.get(cls, "nothing")))
    for r in (labels.itertuples() if labels is not None else ()):
        schema = (schemas or {}).get(r.label_set)
        if schema is None or r.label_set == "safety":
            m = sensitivity.REVIEW_CLASSES.get(str(r.label).lower()) or policy.classify(r.label)
        else:
            m = schema.meaning_of(r.label) or "unknown"
        rows.append((f"review ({r.label_set})", f"{str(r.label).replace('|', ', ')} by {r.annotator}, "
                     f"{str(r.updated_at)[:16].replace('T', ' ')}",
                     {"sensitive": "flags", "safe": "clears"}.get(m, "nothing")))
    if screening is not None:
        t = screening.table.set_index(screening.table["id"].astype(str))
        if image_id in t.index:
            p = float(t.loc[image_id, "p"])
            unf = bool(t.loc[image_id, "unfamiliar"]) if "unfamiliar" in t else None
            unc = bool(t.loc[image_id, "uncertain"]) if "uncertain" in t and t.loc[image_id, "uncertain"] == \
                t.loc[image_id, "uncertain"] else False
            says = "flags" if p >= screening.threshold else "clears" if unf is False and not unc else "nothing"
            extra = "" if unf is None else f", {'unfamiliar' if unf else 'familiar'}" + (", uncertain" if unc else "")
            rows.append((f"detector {screening.name}", f"p {p:.3f} (threshold {screening.threshold:.2f}){extra}", says))
        else:
            rows.append((f"detector {screening.name}", "not screened", "nothing"))
    if nudity is not None and image_id in set(nudity["id"].astype(str)):
        n = nudity.set_index(nudity["id"].astype(str)).loc[image_id]
        rows.append(("NudeNet", f"{n['part'] or 'nothing exposed'} {float(n['nudity']):.2f}",
                     "flags" if float(n["nudity"]) >= sensitivity.NUDITY_THRESHOLD else "nothing"))
    else:
        rows.append(("NudeNet", "not checked", "nothing"))
    if eb is not None:
        e = eb[eb["id"].astype(str) == image_id]
        if len(e):
            e = e.iloc[0]
            v = float(e["eb"])
            if v == v:
                rows.append(("EB colour score", f"{v:+.2f} (cut {eb_threshold:g}; blood-like {e['blood']:.1%}, "
                                                f"skin-like {e['skin']:.1%})", "flags" if v > eb_threshold else "nothing"))
            else:
                rows.append(("EB colour score", f"unknown ({e.get('error') or 'not scored'})", "flags"))
    if policy.known_safe:
        rows.append(("known-safe dataset", f"marked by {policy.known_safe['by']}, {str(policy.known_safe['at'])[:10]}",
                     "clears"))
    return pd.DataFrame(rows, columns=["evidence", "value", "says"])


#: At most this many images labelled since the decision this process made last for the same
#: inputs: only their rows are decided again (more: the whole dataset).
REDECIDE_MAX = 5_000

# (data home, dataset) -> (key, review event, decision): the last decision made or read here,
# for the few datasets used last (a 1M-row decision holds ~0.2 GB)
_LAST: dict[tuple[str, str], tuple[list, int, pd.DataFrame]] = {}
_LAST_MAX = 4
_LAST_LOCK = threading.Lock()


def stored_decision(name: str, images: pd.DataFrame, key: tuple, inputs: Callable[[], dict], *, event: int,
                    store=None) -> pd.DataFrame:
    """The safe view's decision of dataset ``name``: :func:`lib.sensitivity.decide` of its
    ``images`` table with the reviews as of annotation event ``event`` (:func:`reviews`)
    and ``inputs()`` (the other evidence: policy, EB, NudeNet, screening; called only when
    something must be decided). Read from disk when an earlier process made it for the same
    inputs, else decided and stored for the next one (:func:`lib.files.stored_table`).

    ``key`` must change whenever an input other than the reviews does (the app's key:
    dataset, EB cut, prediction table and threshold, policy, vocabulary, NudeNet scores);
    the label sets' meanings (a changed meaning writes no event) and the deciding code are
    added here. A fresh server at 1M rows reads the table instead of gathering a million
    reviews and deciding again (~20 s). After a few labels (at most :data:`REDECIDE_MAX`
    images since the decision made here for the same key) only those images' rows are
    decided again: a row's decision depends on its own evidence alone, and deciding all of
    1M rows after each label took ~10 s.
    """
    import sys

    from . import config, files
    from .annotations import AnnotationStore

    store = store or AnnotationStore()
    full = [name, *key, [repr(s) for s in store.schemas(name)], files.code_stamp(sensitivity, sys.modules[__name__])]
    slot = (str(config.home()), name)

    def decide() -> pd.DataFrame:
        last = _LAST.get(slot)
        if last is not None and last[0] == full and last[1] < event and len(last[2]) == len(images):
            ids = store.labelled_since(name, last[1], REDECIDE_MAX)
            if ids is not None:
                return _redecided(last[2], images, ids, reviews(name, store, image_ids=ids), inputs())
        return sensitivity.decide(images, reviews=reviews(name, store), **inputs())

    table = files.stored_table("decisions", name, [*full, event], decide,
                               valid=lambda t: len(t) == len(images) and list(t.columns) == sensitivity.DECISION_COLUMNS)
    with _LAST_LOCK:  # the app's sessions run in threads
        _LAST.pop(slot, None)
        _LAST[slot] = (full, event, table)
        while len(_LAST) > _LAST_MAX:
            _LAST.pop(next(iter(_LAST)))
    return table


def _redecided(previous: pd.DataFrame, images: pd.DataFrame, ids: list[str], latest: pd.DataFrame,
               inputs: dict) -> pd.DataFrame:
    """``previous`` (a decision of ``images``) with the rows of content ids ``ids`` decided
    again on their ``latest`` reviews and ``inputs`` (narrowed to those ids here)."""
    rows = np.flatnonzero(images["id"].astype(str).isin(ids).to_numpy(dtype=bool, na_value=False))
    if not len(rows):
        return previous
    wanted = pd.Index(ids)

    def only(value):
        if isinstance(value, pd.DataFrame) and "id" in value:
            return value[value["id"].astype(str).isin(wanted).to_numpy(dtype=bool, na_value=False)]
        if isinstance(value, pd.Series):
            return value[value.index.astype(str).isin(wanted)]
        return value if value is None else np.asarray(value)[rows]  # an array per dataset row

    narrowed = dict(inputs)
    for k in ("eb", "nudity"):
        narrowed[k] = only(narrowed.get(k))
    if narrowed.get("screening") is not None:
        narrowed["screening"] = dataclasses.replace(narrowed["screening"], table=only(narrowed["screening"].table))
    part = sensitivity.decide(images.iloc[rows], reviews=latest, **narrowed)
    out = previous.copy()  # Arrow-backed text columns share their buffers until set
    for k, c in enumerate(sensitivity.DECISION_COLUMNS):
        was = pd.Series(previous[c].iloc[rows].to_numpy(), dtype=object)
        now = pd.Series(part[c].to_numpy(), dtype=object)
        if not ((was == now) | (was.isna() & now.isna())).all():  # setting rebuilds an Arrow column: ~50 ms at 1M
            out.iloc[rows, k] = part[c].to_numpy()
    return out
