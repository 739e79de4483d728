"""Detectors: learn "sensitive" from labels, screen a new collection, ask for the labels that teach it most.

A detector is a binary sensitive-vs-safe classifier over the cached embeddings of one
registry model, trained once and applied to any dataset embedded with the same model
(the same **fingerprint**; anything else is refused). Everything here is pure of the app:
the CLI (``train``, ``predict``, ``suggest``, ``detectors``), the Screen and Annotate pages,
``bench/screening.py`` and notebook 06 call these functions.

Training (:func:`train`, :func:`fit_detector`)
    Labels come from each dataset's label policy (:func:`lib.sensitivity.binary_truth`; an
    all-sensitive policy makes its unlabelled images sensitive, a known-safe mark makes them
    safe), from a label file (``id`` or a unique id prefix, or ``path``; and ``label``) and/or
    from the annotation store's reviews (Ok safe, Blur sensitive, Maybe unjudged). Precedence
    per image: the file, then reviews, then dataset labels; within one source a disagreement
    counts as sensitive. Each content id is used once, so byte-identical copies never
    straddle training and validation. Each image has a **group**: its dataset's name, refined
    by the dataset's ``source`` metadata column when it has one (``corpus/azh``; an image with
    an empty source is in the dataset's own group). A seeded validation split (default 20%,
    at least one image of each class on each side) stratified by (group, class) is held out
    (:func:`stratified_split`: every group of at least 1 / val_frac images of a class has one
    in validation). The classifier is
    :func:`lib.probe.make_probe` (standardised L2 logistic regression) inside scikit-learn's
    ``CalibratedClassifierCV`` (sigmoid, stratified 5-fold, ``ensemble=False``: one
    classifier refitted on the whole training split and one calibrator fitted on its
    cross-validated scores, so p is a monotone function of one linear score). With fewer than
    two training images of a class there is nothing to cross-validate: the logistic
    regression's own probability is used (``calibration: none``).

Thresholds, chosen on validation (:data:`RULES`)
    ``max_f1``, ``R90`` and ``R95`` (the highest thresholds whose validation recall reaches
    90% / 95%: the gore thesis's three operating points) and ``thesis`` (the lower of max-F1
    and R90), all on the whole validation split. The **screening threshold**, the one that
    clears images, is the **worst-group R95** by default: safety wants recall, in every group.
    It is the minimum of the overall R95 and the R95 of every group with at least
    :data:`MIN_GROUP_POSITIVES` sensitive validation images (:func:`screening_threshold`), so a
    small group the features separate badly is not cleared on the promise the big groups
    made. (With ``--screening R90`` the same holds at 90%; max-F1 and thesis, rules that are
    no recall target of their own, stay as they are over the whole split.) AUC, AP, Double F1 and precision / recall / specificity /
    F1 at each threshold, and each group's recall and specificity at the screening
    threshold, are stored with the detector; the validation rows' groups are stored too (a
    detector saved before groups existed is one group, ``all``, and keeps its threshold).

Familiarity (``unfamiliar``)
    The cosine distance from an image to its nearest training image (:class:`Familiarity`:
    exact up to :data:`FAMILIAR_EXACT_MAX` training images, IVF above, whose misses can only
    overestimate a distance, so they err towards *unfamiliar*) beyond the :data:`UNFAMILIAR_PERCENTILE`
    percentile of the training images' own leave-one-out distances.

Flips and rotations (``uncertain``)
    The 7 flips / rotations of each image (:data:`TTA_TRANSFORMS`) are embedded through the
    embedding cache, one store per transform (fingerprint = hash of the model's fingerprint
    and the transform, under ``<cache>/emb-tta/``). An image is uncertain when the sd of p
    over the 8 views exceeds :data:`TTA_SD_CUT` or when at least :data:`TTA_FLIP_CUT` of the
    views fall on the other side of the screening threshold (the thesis's spread across its
    0.5 gallery boundary; here the boundary that clears). On by default for cheap models
    (``color``), optional (``--tta``) otherwise; where not computed, ``uncertain`` is empty.

The safe view (:func:`lib.sensitivity.decide`) clears an image through a detector only when
``p`` is below the screening threshold, the image is familiar, and it is not uncertain.

Saved without pickle
    ``<home>/detectors/<DET>/detector.json`` (format, model spec and fingerprint, training
    datasets, label sources and counts, recipe, thresholds, validation metrics, learning
    history, creation time) and ``arrays-<sha>.npz`` (scaler, coefficients, calibration,
    training ids and vectors (float16, for familiarity), validation scores and groups). The JSON names
    the npz and its sha256; a file that is missing, damaged, foreign, of another shape or
    holding objects (``np.load(allow_pickle=False)``) is refused with the reason, and a
    detector is only ever built from a fully checked pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from .errors import UnsafePath, WorkbenchError

FORMAT = "workbench-detector"
VERSION = 1
#: Share of the labelled images held out for validation (stratified, seeded).
VAL_FRAC = 0.2
#: Cross-validation folds of the calibration (fewer when a class has fewer training images).
CALIBRATION_FOLDS = 5
CALIBRATIONS = ("sigmoid", "isotonic")
#: Operating points chosen on validation, in display order.
RULES = ("max_f1", "R90", "R95", "thesis")
RULE_NAMES = {"max_f1": "max-F1", "R90": "90% recall", "R95": "95% recall", "thesis": "lower of max-F1 and R90"}


def screening_text(meta: dict) -> str:
    """How a detector's screening threshold was chosen, in words (from its ``meta``)."""
    scr = meta["screening"]
    rule = RULE_NAMES.get(scr["rule"], scr["rule"])
    if not scr.get("worst_group"):
        return f"{rule} on the validation split: p ≥ {scr['threshold']:.3f} flags"
    text = (f"the worst group's {rule}: the lowest of the whole validation split's {rule} threshold "
            f"({scr['overall_threshold']:.3f}) and that of every group with at least "
            f"{scr.get('min_group_positives', MIN_GROUP_POSITIVES)} sensitive validation images")
    return text + (f"; set by group {scr['set_by']}" if scr.get("set_by") else "; set by the whole split")
def familiarity_text(meta: dict) -> str | None:
    """The groups whose images the detector does not make familiar (too few sensitive
    validation images to measure its recall there), in words; None when every group counts."""
    fam = meta.get("familiarity", {})
    rows = fam.get("untrusted_groups") or []
    if not rows:
        return None
    k = meta.get("screening", {}).get("min_group_positives", MIN_GROUP_POSITIVES)
    listed = ", ".join(f"{r['group']} ({r['val_sensitive']} of {k})" for r in rows)
    none = " No image can be cleared by this detector yet." if not fam.get("reference") else ""
    return (f"Its recall is not measured on {listed}: sensitive validation images of the {k} a group needs, "
            f"so images like those stay unfamiliar (censored) until more of them are labelled.{none}")


#: The rule whose threshold clears images: recall first.
SCREENING_RULE = "R95"
#: The recall each recall rule promises; the screening threshold of these rules is the worst group's.
RECALL_RULES = {"R90": 0.90, "R95": 0.95}
#: A group holds its own recall promise once its validation split has this many sensitive
#: images: below that, one image moves its recall by more than 10 points, too coarse to set
#: a threshold on (its images still count in the overall one). Generic, not fitted to any data.
MIN_GROUP_POSITIVES = 10
#: The metadata column that refines a dataset's images into groups.
GROUP_COLUMN = "source"
#: The one group of a detector trained without groups (or saved before groups existed).
ONE_GROUP = "all"
#: An image is unfamiliar beyond this percentile of the training images' leave-one-out
#: nearest-neighbour cosine distances (about 1% of images like the training ones are flagged).
UNFAMILIAR_PERCENTILE = 99.0
#: Exact (flat) familiarity search up to this many training images, IVF above: screening
#: 1M images against 5k flat vectors is 2.6e12 multiply-adds (~40 s on 2 cores), IVF with
#: lib.index's parameters (nlist ~ 2 sqrt(n), nprobe 10) reads ~8% of 5k, ~2% of 100k.
FAMILIAR_EXACT_MAX = 5_000
#: The 7 flips / rotations of the dihedral group (the identity is the image itself).
TTA_TRANSFORMS = ("rot90", "rot180", "rot270", "flip_lr", "flip_tb", "transpose", "transverse")
#: Uncertain when the sd of p over the 8 views exceeds this: a tenth of the probability range.
TTA_SD_CUT = 0.10
#: ... or when at least this share of the 8 views (2 of 8) lands on the other side of the threshold.
TTA_FLIP_CUT = 0.25
#: Model kinds whose 7 extra views are cheap enough to compute by default.
CHEAP_KINDS = ("color",)
#: After the unfamiliar images, this share of the remaining suggestions goes to uncertain
#: images near the threshold, the rest to diversity (k-means centres of what is left).
UNCERTAIN_SHARE = 0.5
#: Why an image is suggested, in words.
WHY = {"unfamiliar": "unlike anything the detector was trained on",
       "uncertain": "the detector is unsure of it (near its threshold, or unsteady under flips and rotations)",
       "diverse": "it stands for a part of this collection no label covers yet"}
#: Screening groups, exclusive, in precedence order (as the safe view decides).
GROUPS = ("flagged", "unfamiliar", "uncertain", "cleared")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ARRAYS_RE = re.compile(r"^arrays-[0-9a-f]{16}\.npz$")
_FILE_CLASSES = {"1": "sensitive", "0": "safe"}

Progress = Callable[[int, int], None] | None


# =========================================================================== errors


class DetectorError(WorkbenchError):
    """A detector cannot be trained, loaded or applied as asked (the message says why)."""


class LabelError(DetectorError):
    """The labels cannot train a detector: too few of a class, one class only, or a label
    file that matches nothing."""


class NotEmbedded(DetectorError):
    """A dataset lacks vectors of the detector's model (the message names the embed command)."""


class FingerprintMismatch(DetectorError):
    """Embeddings of another model (or of other weights / code) than the detector's."""


class DetectorFileError(DetectorError):
    """A detector's files are missing, damaged or foreign; nothing of it is used."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    if not _NAME_RE.match(str(name or "")):
        raise DetectorError(f"invalid detector name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                            "starting with a letter or digit")
    return str(name)


def detectors_dir() -> Path:
    return config.home() / "detectors"


def detector_dir(name: str) -> Path:
    return detectors_dir() / check_name(name)


def prediction_path(dataset: str, det: str) -> Path:
    """Where ``predict`` writes a dataset's screening: ``<home>/results/NAME/detect-DET.parquet``
    (the app lists it as the dataset's prediction table, :func:`lib.catalog.prediction_files`)."""
    from .files import results_dir

    return results_dir(dataset) / f"detect-{check_name(det)}.parquet"


def _embed_command(name: str, spec: str, random_weights: bool) -> str:
    return f"python -m lib embed {name} --model {spec}" + (" --random-weights" if random_weights else "")


# =========================================================================== labels


@dataclass
class Labels:
    """The labels a detector trains on, one row per content id.

    Attributes
    ----------
    table : DataFrame ``id, sensitive (bool), source, dataset, group``; ``source`` is ``file``,
        ``reviews:<dataset>`` or ``labels:<dataset>`` (the one that decided, by precedence);
        ``group`` is the dataset's name, refined by its :data:`GROUP_COLUMN` metadata column
        when it has one (``dataset/source``; :func:`image_groups`).
    counts : DataFrame ``source, sensitive, safe, total``, one row per source used, then ``all``.
    unmatched, ambiguous : label-file ids / paths that match no image, or several.
    unknown : ``{label value: rows}`` of file or review labels that are neither sensitive
        nor safe (Maybe reviews are counted here as unjudged).
    conflicts : images whose deciding source gave both classes (counted sensitive).
    file_rows : the label file's rows (``id, path, label``) as read, or None.
    """

    table: pd.DataFrame
    counts: pd.DataFrame
    unmatched: list = field(default_factory=list)
    ambiguous: list = field(default_factory=list)
    unknown: dict = field(default_factory=dict)
    conflicts: int = 0
    file_rows: pd.DataFrame | None = None

    @property
    def n_sensitive(self) -> int:
        return int(self.table["sensitive"].sum())

    @property
    def n_safe(self) -> int:
        return int((~self.table["sensitive"]).sum())

    def notes(self) -> list[str]:
        """One line per problem met (unmatched / ambiguous file rows, unknown labels, conflicts)."""
        out = []
        if self.unmatched:
            out.append(f"{len(self.unmatched)} label-file row(s) match no image and were left out: "
                       + ", ".join(map(str, self.unmatched[:20])) + (" …" if len(self.unmatched) > 20 else ""))
        if self.ambiguous:
            out.append(f"{len(self.ambiguous)} label-file id prefix(es) / path(s) match several images and were "
                       "left out: " + ", ".join(map(str, self.ambiguous[:20]))
                       + (" …" if len(self.ambiguous) > 20 else ""))
        if self.unknown:
            out.append("labels that are neither sensitive nor safe were left out: "
                       + ", ".join(f"{k!r} ({v})" for k, v in sorted(self.unknown.items())))
        if self.conflicts:
            out.append(f"{self.conflicts} image(s) labelled both ways by one source were counted sensitive")
        return out


def _policy_classes(images: pd.DataFrame, policy) -> pd.Series:
    """sensitive / safe / None per row by the dataset's label policy (labels; then
    all-sensitive or known-safe for the images the labels leave unknown)."""
    from .sensitivity import SAFE, SENSITIVE, binary_truth

    truth = binary_truth(images["label"].reset_index(drop=True), policy).astype(object)
    if policy.all_sensitive:
        truth = truth.where(truth.notna(), SENSITIVE)
    elif policy.known_safe:
        truth = truth.where(truth.notna(), SAFE)
    return truth


def _word_class(value, policy) -> str | None:
    """A review or file label as sensitive / safe / None (Ok/Blur/Maybe, 0/1, then the policy)."""
    from .sensitivity import REVIEW_CLASSES, UNKNOWN

    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    low = text.lower()
    if low == "maybe":
        return None
    if low in REVIEW_CLASSES:
        return REVIEW_CLASSES[low]
    if low in _FILE_CLASSES:
        return _FILE_CLASSES[low]
    c = policy.classify(text)
    return None if c == UNKNOWN else c


def read_label_file(path: str | Path) -> pd.DataFrame:
    """A label file (CSV or parquet) as ``id, path, label`` (str, missing as empty).

    Raises :class:`LabelError` naming the file when it cannot be read or lacks ``label``
    and one of ``id`` / ``path``.
    """
    path = Path(path)
    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else \
            pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LabelError(f"label file {path}: cannot be read ({e})") from None
    return _label_frame(df, str(path))


def _label_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    cols = {c.strip().lower(): c for c in df.columns}
    if "label" not in cols or not ({"id", "path"} & set(cols)):
        raise LabelError(f"label file {where}: needs a 'label' column and an 'id' (or unique id prefix) or 'path' "
                         f"column; it has {', '.join(map(str, df.columns)) or 'none'}")
    if df.empty:
        raise LabelError(f"label file {where}: has no rows")

    def col(name):
        if name not in cols:
            return [""] * len(df)
        return ["" if v is None or (isinstance(v, float) and v != v) else str(v).strip() for v in df[cols[name]]]

    return pd.DataFrame({"id": [v.lower() for v in col("id")], "path": col("path"), "label": col("label")})


def _match_file(rows: pd.DataFrame, datasets: Sequence) -> tuple[list, list, list]:
    """Label-file rows -> ([(row, content id, dataset name)], unmatched, ambiguous)."""
    all_ids = np.array(sorted({i for ds in datasets for i in ds.images["id"].astype(str)}))
    ds_of: dict[str, str] = {}
    by_path: dict[str, set] = {}
    for ds in datasets:
        for cid, rel in zip(ds.images["id"].astype(str), ds.images["path"].astype(str), strict=True):
            ds_of.setdefault(cid, ds.name)
            by_path.setdefault(rel, set()).add(cid)
            by_path.setdefault(str(Path(ds.root) / rel), set()).add(cid)
    matched, unmatched, ambiguous = [], [], []
    for k, (cid, rel) in enumerate(zip(rows["id"], rows["path"], strict=True)):
        if cid:
            lo = np.searchsorted(all_ids, cid, "left")
            hi = np.searchsorted(all_ids, cid + "\uffff", "left")  # every id starting with the prefix
            hits = set(all_ids[lo:hi].tolist())
            key = cid
        else:
            p = str(Path(rel).expanduser())
            hits = by_path.get(rel) or by_path.get(p) or by_path.get(str(Path(p).resolve())) or set()
            key = rel
        if len(hits) == 1:
            hit = next(iter(hits))
            matched.append((k, hit, ds_of[hit]))
        elif hits:
            ambiguous.append(key)
        else:
            unmatched.append(key)
    return matched, unmatched, ambiguous


def image_groups(ids: Iterable[str], dataset_names: Iterable[str], datasets: Sequence) -> list[str]:
    """The group of each (content id, dataset name): the dataset's name, refined by its
    :data:`GROUP_COLUMN` metadata column when it has one (``dataset/source``, the source of
    the id's first row there); an id whose source is empty is in the dataset's own group."""
    source_of: dict[str, dict[str, str]] = {}
    for ds in datasets:
        if GROUP_COLUMN not in ds.images.columns:
            source_of[ds.name] = {}
            continue
        col = ds.images[GROUP_COLUMN]
        col = col.astype(object).where(col.notna(), "").astype(str).str.strip()
        first = ~ds.images["id"].duplicated()
        source_of[ds.name] = {i: v for i, v in zip(ds.images["id"].astype(str)[first], col[first], strict=True) if v}
    out = []
    for cid, dsn in zip(ids, dataset_names, strict=True):
        src = source_of.get(str(dsn), {}).get(str(cid))
        out.append(f"{dsn}/{src}" if src else str(dsn))
    return out


def gather_labels(names: Sequence[str], *, dataset_labels: bool = True, labels_file: str | Path | pd.DataFrame | None = None,
                  from_annotations: bool = False, store=None, positive: str | None = None) -> Labels:
    """The labels of datasets ``names`` from the chosen sources (see the module docstring).

    ``positive`` (``--positive``): this label value is the sensitive class and every other
    value safe, instead of each dataset's policy (:func:`lib.sensitivity.run_policy`).

    ``labels_file`` is a path, or a DataFrame with ``label`` and ``id`` or ``path``. Rows
    that match nothing or several images are listed in the result and left out; when no
    row matches, :class:`LabelError` lists them.
    """
    from . import dataset as ds_mod
    from .sensitivity import SENSITIVE, latest_reviews, run_policy

    names = list(dict.fromkeys(names))
    if not names:
        raise LabelError("name at least one dataset to take labels from")
    datasets = [ds_mod.load(n) for n in names]
    policies = {ds.name: run_policy(ds.name, positive, ds.images["label"].dropna().unique()) for ds in datasets}
    rank = {"file": 0, "reviews": 1, "labels": 2}
    rows: list[tuple[str, str, str, str]] = []  # (id, class, source, dataset)
    unknown: dict[str, int] = {}

    def note_unknown(v) -> None:
        k = str(v)
        unknown[k] = unknown.get(k, 0) + 1

    if dataset_labels:
        for ds in datasets:
            cls = _policy_classes(ds.images, policies[ds.name])
            for cid, c in zip(ds.images["id"].astype(str), cls, strict=True):
                if c is not None:
                    rows.append((cid, c, f"labels:{ds.name}", ds.name))
    if from_annotations:
        from .annotations import AnnotationStore

        store = store or AnnotationStore()
        for ds in datasets:
            known = set(ds.images["id"].astype(str))
            rev = latest_reviews(store.current(ds.name))
            for cid, v in zip(rev["id"], rev["review"], strict=True):
                if cid not in known:
                    continue
                c = _word_class(v, policies[ds.name])
                if c is None:
                    note_unknown(v)
                else:
                    rows.append((cid, c, f"reviews:{ds.name}", ds.name))
    file_rows = unmatched = ambiguous = None
    if labels_file is not None:
        file_rows = labels_file if isinstance(labels_file, pd.DataFrame) and list(labels_file.columns) == [
            "id", "path", "label"] else (_label_frame(labels_file, "(table)") if isinstance(labels_file, pd.DataFrame)
                                         else read_label_file(labels_file))
        matched, unmatched, ambiguous = _match_file(file_rows, datasets)
        if not matched:
            shown = ", ".join(map(str, (unmatched + ambiguous)[:20]))
            raise LabelError(f"none of the {len(file_rows)} label-file rows matches exactly one image of "
                             f"{', '.join(names)} ({len(unmatched)} match nothing, {len(ambiguous)} several): {shown}")
        for k, cid, dsn in matched:
            v = file_rows["label"].iat[k]
            c = _word_class(v, policies[dsn])
            if c is None:
                note_unknown(v)
            else:
                rows.append((cid, c, "file", dsn))
    cols = ["id", "sensitive", "source", "dataset"]
    if not rows:
        table = pd.DataFrame({c: pd.Series(dtype=bool if c == "sensitive" else object) for c in [*cols, "group"]})
        conflicts = 0
    else:
        df = pd.DataFrame(rows, columns=["id", "cls", "source", "dataset"])
        df["rank"] = df["source"].str.split(":").str[0].map(rank)
        best = df.groupby("id")["rank"].transform("min")
        df = df[df["rank"] == best]
        g = df.assign(s=df["cls"] == SENSITIVE).groupby("id", sort=False)
        agg = g.agg(sensitive=("s", "max"), both=("s", lambda s: bool(s.any() and not s.all())),
                    source=("source", "first"), dataset=("dataset", "first"))
        conflicts = int(agg["both"].sum())
        table = agg.reset_index()[cols]
        table["sensitive"] = table["sensitive"].astype(bool)
        table["group"] = image_groups(table["id"], table["dataset"], datasets)
    counts = table.groupby("source", sort=True)["sensitive"].agg(sensitive="sum", total="size").reset_index()
    counts["safe"] = counts["total"] - counts["sensitive"]
    counts = counts[["source", "sensitive", "safe", "total"]]
    counts = pd.concat([counts, pd.DataFrame([{"source": "all", "sensitive": int(table["sensitive"].sum()),
                                               "safe": int((~table["sensitive"]).sum()), "total": len(table)}])],
                       ignore_index=True).astype({"sensitive": int, "safe": int, "total": int})
    return Labels(table, counts, unmatched or [], ambiguous or [], unknown, conflicts, file_rows)


# =========================================================================== the detector


@dataclass
class Detector:
    """A trained detector: its metadata (the JSON) and its arrays (the npz).

    Arrays: ``scaler_mean, scaler_scale, coef`` (dim,) float64, ``intercept`` (1,),
    ``calib_a, calib_b`` (1,) (sigmoid) or ``calib_x, calib_y`` (k,) (isotonic), ``train_ids``
    (n_train,) S64, ``train_vectors`` (n_train, dim) float16, ``reference`` (n_train,) bool
    (the rows of trusted groups: the familiarity reference; absent in files saved before, where
    every row is), ``loo_distance`` (n_ref,) float32, ``val_ids`` (n_val,) S64, ``val_p`` (n_val,) float64,
    ``val_y`` (n_val,) bool, ``val_groups`` (n_val,) unicode (absent from detectors saved
    before groups: one group, :data:`ONE_GROUP`), and with IVF familiarity ``ivf_centroids``
    (nlist, dim) float32.
    """

    meta: dict
    arrays: dict[str, np.ndarray]
    _index: object = field(default=None, repr=False, compare=False)

    # ---- what it is

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def spec(self) -> str:
        return str(self.meta["model"]["spec"])

    @property
    def random_weights(self) -> bool:
        return bool(self.meta["model"].get("random_weights", False))

    @property
    def fingerprint(self) -> str:
        return str(self.meta["model"]["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.arrays["coef"].shape[0])

    @property
    def threshold(self) -> float:
        """The screening threshold: p at or above it flags."""
        return float(self.meta["screening"]["threshold"])

    @property
    def cut(self) -> float:
        """Cosine distance beyond which an image is unfamiliar."""
        return float(self.meta["familiarity"]["cut"])

    @property
    def tta_default(self) -> bool:
        """Whether flips / rotations are computed by default (cheap models)."""
        return str(self.meta["model"].get("kind", "")) in CHEAP_KINDS

    def thresholds(self) -> pd.DataFrame:
        """``rule, threshold, precision, recall, specificity, f1, double_f1, flagged, screening``
        on the validation split, one row per :data:`RULES`."""
        rows = [{"rule": r, **self.meta["thresholds"][r], "screening": r == self.meta["screening"]["rule"]}
                for r in RULES]
        return pd.DataFrame(rows)

    @property
    def val_groups(self) -> np.ndarray:
        """The group of each validation row (n_val,) str; :data:`ONE_GROUP` for every row of
        a detector saved without groups."""
        g = self.arrays.get("val_groups")
        return np.full(len(self.arrays["val_y"]), ONE_GROUP) if g is None else np.asarray(g, dtype=str)

    def group_metrics(self) -> pd.DataFrame:
        """Each validation group at the screening threshold, the whole split first (``all``):
        ``group, train, train_sensitive, val, val_sensitive, val_safe, counts`` (whether the group
        holds its own recall promise: at least ``min_group_positives`` sensitive validation
        images), ``rule_threshold`` (the group's own threshold of the screening rule, where it
        has sensitive images), ``recall, specificity`` (at the screening threshold) and
        ``recall_overall`` (at the rule's threshold over the whole split). A detector saved
        without groups is one group, computed from its validation scores."""
        rows = self.meta.get("validation", {}).get("groups")
        if rows is None:
            y, p = self.arrays["val_y"].astype(bool), self.arrays["val_p"]
            rule = self.meta["screening"]["rule"]
            rows = _group_rows(y, p, np.full(len(y), ONE_GROUP), self.threshold,
                               float(self.meta["thresholds"][rule]["threshold"]), rule, MIN_GROUP_POSITIVES,
                               train_counts=None)
        return pd.DataFrame(rows, columns=list(_GROUP_ROW_KEYS))

    def labelled_ids(self) -> set[str]:
        """Content ids the detector was trained or validated on."""
        return {i.decode() for i in self.arrays["train_ids"]} | {i.decode() for i in self.arrays["val_ids"]}

    # ---- applying

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Vectors (n, dim) -> (n,) float64 logistic-regression scores."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise DetectorError(f"detector {self.name!r} takes vectors of dimension {self.dim}, got shape {X.shape}")
        a = self.arrays
        # ((x - mean) / scale) @ coef + intercept, with the scaler folded into the weights and
        # float64 blocks of 16k rows (no full-size temporaries at 1M rows)
        w = a["coef"] / a["scaler_scale"]
        b0 = a["intercept"][0] - float(a["scaler_mean"] @ w)
        out = np.empty(len(X), np.float64)
        for s in range(0, len(X), 16384):
            out[s:s + 16384] = X[s:s + 16384].astype(np.float64) @ w + b0
        return out

    def predict_p(self, X: np.ndarray) -> np.ndarray:
        """Vectors (n, dim) -> calibrated probability of *sensitive*, (n,) float64."""
        return _calibrate(self.meta["classifier"]["calibration"], self.arrays, self.decision_function(X))

    def reference_vectors(self) -> np.ndarray:
        """The training vectors that make an image familiar (n_ref, dim) float16: those of its
        trusted groups (:func:`trusted_groups`; every training vector in files saved before)."""
        ref = self.arrays.get("reference")
        v = self.arrays["train_vectors"]
        return v if ref is None else v[ref.astype(bool)]

    def index(self) -> Familiarity:
        """The search over the reference vectors (built once per loaded detector)."""
        if self._index is None:
            self._index = _familiarity_index(_reference(self.reference_vectors()),
                                             self.arrays.get("ivf_centroids"), self.meta["familiarity"].get("nprobe"))
        return self._index

    def distances(self, X: np.ndarray) -> np.ndarray:
        """Vectors (n, dim), unit norm -> (n,) float32 cosine distance to the nearest training image
        (reference vector). With IVF, for a familiar image it is the distance to the nearest one
        found in its nearer half of the probed lists: at most the cut, as the full search's."""
        q = np.ascontiguousarray(X, dtype=np.float32)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        # stop probing once an image is familiar: the same unfamiliar flags, about half the work
        best, _ = self.index().search(q, enough=1.0 - self.cut)
        return np.clip(1.0 - best, 0.0, 2.0).astype(np.float32)

    def assess(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Vectors (n, dim) -> ``p`` (n,) float64, ``sensitive`` (n,) bool, ``distance`` (n,)
        float32, ``unfamiliar`` (n,) bool."""
        p = self.predict_p(X)
        d = self.distances(X)
        return {"p": p, "sensitive": p >= self.threshold, "distance": d, "unfamiliar": d > self.cut}


def _calibrate(method: str, arrays: dict, f: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    if method == "sigmoid":  # sklearn's _SigmoidCalibration: expit(-(a f + b))
        return expit(-(arrays["calib_a"][0] * f + arrays["calib_b"][0]))
    if method == "isotonic":  # IsotonicRegression(out_of_bounds="clip")
        return np.interp(f, arrays["calib_x"], arrays["calib_y"])
    return expit(f)  # "none": the logistic regression's own probability


def _reference(vectors16: np.ndarray) -> np.ndarray:
    """Stored float16 training vectors -> unit-norm float32 (as the embedding cache serves them)."""
    ref = np.asarray(vectors16, dtype=np.float32)
    ref /= np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(ref)


class Familiarity:
    """Nearest-training-image search: the highest inner product (cosine, unit vectors) of each
    query with the training vectors.

    ``flat`` (no centroids): exact, faiss ``IndexFlatIP``. ``ivf``: each training vector lives
    in the list of its nearest centroid (faiss); a query is compared with the vectors of its
    ``nprobe`` nearest lists, exactly as faiss's ``IndexIVFFlat`` does, but list by list: all
    the queries of a batch that probe a list are multiplied with it in one BLAS product, so a
    list is read once per batch instead of once per query (5x faster than faiss's
    query-by-query scan at 1M queries). A nearest image in a list not probed is missed, so
    the distance found can only be larger than the true one: misses err towards *unfamiliar*.
    """

    BATCH = 131072

    def __init__(self, ref: np.ndarray, centroids: np.ndarray | None = None, nprobe: int | None = None):
        import faiss

        self.ref = np.ascontiguousarray(ref, dtype=np.float32)
        d = self.ref.shape[1]
        if centroids is None:
            self.kind, self.flat = "flat", faiss.IndexFlatIP(d)
            self.flat.add(self.ref)
            return
        self.kind = "ivf"
        self.quantizer = faiss.IndexFlatIP(d)
        self.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        self.nlist, self.nprobe = len(centroids), int(min(max(nprobe or 1, 1), len(centroids)))
        _, assign = self.quantizer.search(self.ref, 1)
        self.order = np.argsort(assign[:, 0], kind="stable")  # training rows, list by list
        self.position = np.empty(len(self.order), np.int64)
        self.position[self.order] = np.arange(len(self.order))
        self.bounds = np.searchsorted(assign[self.order, 0], np.arange(self.nlist + 1))
        self.sorted = self.ref[self.order]

    def search(self, q: np.ndarray, exclude: np.ndarray | None = None,
               enough: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Queries (m, dim) -> (best inner product (m,) float32, training row (m,) int64; -inf
        and -1 where nothing was found). ``exclude`` (m,) names one training row per query
        to leave out (leave-one-out), or -1.

        ``enough`` (IVF): a query whose best inner product over its nearer half of the
        ``nprobe`` lists already reaches it is not compared with the other half. More lists
        can only raise the best product, so which queries reach ``enough`` is the same as with
        every list probed; for those the product found is a lower bound. (The familiarity
        search passes 1 - cut: most queries of a collection like the training one are
        familiar after half the work.)
        """
        q = np.ascontiguousarray(q, dtype=np.float32)
        m = len(q)
        if m == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.kind == "flat":
            k = 1 if exclude is None else min(2, len(self.ref))
            sims, rows = self.flat.search(q, k)
            if exclude is None:
                return sims[:, 0], rows[:, 0]
            own = rows[:, 0] == exclude
            other = min(1, k - 1)
            pick = np.where(own, other, 0)
            best, row = sims[np.arange(m), pick], rows[np.arange(m), pick]
            lonely = own & (k == 1)
            return np.where(lonely, -np.inf, best).astype(np.float32), np.where(lonely, -1, row)
        best = np.full(m, -np.inf, np.float32)
        arg = np.full(m, -1, np.int64)
        half = (self.nprobe + 1) // 2 if enough is not None and self.nprobe > 1 else self.nprobe
        for s in range(0, m, self.BATCH):
            qq = q[s:s + self.BATCH]
            _, probes = self.quantizer.search(qq, self.nprobe)  # nearest centroid first
            b, a = best[s:s + self.BATCH], arg[s:s + self.BATCH]
            ex = None if exclude is None else np.asarray(exclude, np.int64)[s:s + self.BATCH]
            self._scan(qq, probes[:, :half], np.arange(len(qq)), b, a, ex)
            if half < self.nprobe:
                rest = np.flatnonzero(b < enough)
                self._scan(qq, probes[rest, half:], rest, b, a, ex)
        return best, arg

    def _scan(self, qq: np.ndarray, probes: np.ndarray, rows: np.ndarray, b: np.ndarray, a: np.ndarray,
              ex: np.ndarray | None) -> None:
        """Compare queries ``qq[rows]`` with the lists ``probes`` (len(rows), p) names, list by
        list, raising their best products ``b`` (and rows ``a``) in place."""
        if len(rows) == 0 or probes.shape[1] == 0:
            return
        lists = probes.ravel()
        who = np.repeat(rows, probes.shape[1])
        keep = lists >= 0
        lists, who = lists[keep], who[keep]
        o = np.argsort(lists, kind="stable")
        lists, who = lists[o], who[o]
        lb = np.searchsorted(lists, np.arange(self.nlist + 1))
        for L in range(self.nlist):
            lo, hi = self.bounds[L], self.bounds[L + 1]
            if lb[L] == lb[L + 1] or lo == hi:
                continue
            for c in range(lb[L], lb[L + 1], 8192):  # bounded block of (queries x list) products
                qs = who[c:min(c + 8192, lb[L + 1])]
                sims = qq[qs] @ self.sorted[lo:hi].T
                if ex is not None:
                    e = ex[qs]
                    pos = np.where(e >= 0, self.position[np.maximum(e, 0)], -1)
                    hit = (pos >= lo) & (pos < hi)
                    sims[np.flatnonzero(hit), pos[hit] - lo] = -np.inf
                j = sims.argmax(axis=1)
                v = sims[np.arange(len(qs)), j]
                better = v > b[qs]
                b[qs[better]] = v[better]
                a[qs[better]] = self.order[lo + j[better]]


def _familiarity_index(ref: np.ndarray, centroids: np.ndarray | None, nprobe: int | None) -> Familiarity:
    """Exact search over ``ref`` (n, dim), or IVF over the given centroids (nlist, dim)."""
    return Familiarity(ref, centroids, nprobe)


def _ivf_centroids(ref: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """k-means centroids (nlist, dim) of an IVF over ``ref`` and its nprobe (lib.index's parameters)."""
    import faiss

    from .index import IVF_NITER, IVF_TRAIN_PER_LIST, ivf_params

    n, d = ref.shape
    nlist, nprobe = ivf_params(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = IVF_NITER
    index.cp.seed = int(seed)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
    index.train(ref[sample])
    return index.quantizer.reconstruct_n(0, nlist), nprobe


def stratified_split(y: np.ndarray, val_frac: float = VAL_FRAC, seed: int = 0,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of bool labels y (n,): per class, round(val_frac * n_c)
    rows drawn with ``seed``, at least one and at most n_c - 1 (so both sides hold both classes).

    With ``groups`` (n,), stratified by (group, class): each class's validation rows are
    shared among its groups in proportion to their sizes (largest remainder, ties to the
    bigger group, then group order), so a (group, class) stratum of m images gets
    floor or ceil of about val_frac * m, and one of at least 1 / val_frac images has some in
    validation. A stratum of 2 or more keeps one in training where the class's count allows.
    One group (or None) draws exactly the rows the ungrouped split draws.
    """
    if not 0 < val_frac < 1:
        raise DetectorError(f"--val-frac must lie strictly between 0 and 1, got {val_frac}")
    y = np.asarray(y, dtype=bool)
    if groups is None:
        g = np.zeros(len(y), np.int64)
    else:
        _, g = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        if len(g) != len(y):
            raise DetectorError(f"groups ({len(g)},) and labels ({len(y)},) do not line up")
    rng = np.random.default_rng(seed)
    val = []
    for c in (True, False):
        rows = np.flatnonzero(y == c)
        k = min(max(1, int(round(val_frac * len(rows)))), len(rows) - 1)
        strata = [rows[g[rows] == s] for s in np.unique(g[rows])]
        if len(strata) <= 1:
            val.append(rng.choice(rows, size=k, replace=False))
            continue
        for part, kk in zip(strata, _allocate([len(x) for x in strata], k), strict=True):
            if kk:
                val.append(rng.choice(part, size=kk, replace=False))
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(y)), val)
    return train, val


def _allocate(sizes: Sequence[int], k: int) -> list[int]:
    """k items shared among strata of ``sizes`` in proportion (largest remainder); a stratum
    of 2 or more is filled up to all its items only when nothing else is left."""
    sizes = np.asarray(sizes, np.int64)
    quota = k * sizes / max(int(sizes.sum()), 1)
    take = np.floor(quota).astype(np.int64)
    for _ in range(int(k - take.sum())):
        room = take < sizes
        full = (take + 1 >= sizes) & (sizes >= 2)  # the stratum would lose its last training image
        order = sorted(np.flatnonzero(room), key=lambda i: (bool(full[i]), -(quota[i] - take[i]), -sizes[i], i))
        if not order:
            break
        take[order[0]] += 1
    return take.tolist()


def _recall_threshold(p_pos: np.ndarray, target: float) -> float:
    """The highest threshold whose recall over positive scores ``p_pos`` reaches ``target``
    (as :func:`lib.metrics.select_thresholds` picks it, with its tolerance)."""
    s = np.sort(np.asarray(p_pos, np.float64))[::-1]
    k = min(max(int(math.ceil((target - 1e-12) * len(s))), 1), len(s))
    return float(s[k - 1])


def screening_threshold(y: np.ndarray, p: np.ndarray, groups: np.ndarray, rule: str, overall: float,
                        min_positives: int = MIN_GROUP_POSITIVES) -> tuple[float, str | None, dict[str, float]]:
    """The screening threshold of a rule on validation labels y (n,) bool, scores p (n,) and
    groups (n,): for a recall rule (:data:`RECALL_RULES`), the minimum of ``overall`` (the
    rule's threshold over the whole split) and the rule's threshold within every group with
    at least ``min_positives`` sensitive images; any other rule's is ``overall``.

    Returns
    -------
    (threshold, the group that set it or None when the whole split did, {group: its own
    threshold} for every group with a sensitive image)
    """
    y = np.asarray(y, bool)
    p = np.asarray(p, np.float64)
    groups = np.asarray(groups).astype(str)
    own: dict[str, float] = {}
    if rule not in RECALL_RULES:
        return float(overall), None, own
    best, by = float(overall), None
    for grp in sorted(set(groups.tolist())):
        pos = p[(groups == grp) & y]
        if not len(pos):
            continue
        own[grp] = _recall_threshold(pos, RECALL_RULES[rule])
        if len(pos) >= max(int(min_positives), 1) and own[grp] < best:
            best, by = own[grp], grp
    return best, by, own


_GROUP_ROW_KEYS = ("group", "train", "train_sensitive", "val", "val_sensitive", "val_safe", "counts",
                   "rule_threshold", "recall", "specificity", "recall_overall")


def _group_rows(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float, overall: float, rule: str,
                min_positives: int, train_counts: dict[str, tuple[int, int]] | None,
                own: dict[str, float] | None = None) -> list[dict]:
    """The rows of :meth:`Detector.group_metrics`: the whole split (``all``), then each group
    by name (none more when there is only the one group :data:`ONE_GROUP`)."""
    y = np.asarray(y, bool)
    p = np.asarray(p, np.float64)
    groups = np.asarray(groups).astype(str)
    names = sorted(set(groups.tolist()))
    if own is None:
        _, _, own = screening_threshold(y, p, groups, rule, overall, min_positives)

    def share(mask, of):
        return float(mask[of].mean()) if of.any() else None

    tc_all = (None, None) if train_counts is None else (sum(v[0] for v in train_counts.values()),
                                                        sum(v[1] for v in train_counts.values()))

    def row(name, sel, counts, thr):
        tc = tc_all if name == ONE_GROUP and sel.all() else (train_counts or {}).get(name, (None, None))
        return {"group": name, "train": tc[0], "train_sensitive": tc[1], "val": int(sel.sum()),
                "val_sensitive": int((sel & y).sum()), "val_safe": int((sel & ~y).sum()), "counts": bool(counts),
                "rule_threshold": thr, "recall": share(p >= threshold, sel & y),
                "specificity": share(p < threshold, sel & ~y), "recall_overall": share(p >= overall, sel & y)}

    out = [row(ONE_GROUP, np.ones(len(y), bool), True, float(overall))]
    if names != [ONE_GROUP]:
        for name in names:
            sel = groups == name
            out.append(row(name, sel, rule in RECALL_RULES and int((sel & y).sum()) >= max(int(min_positives), 1),
                           own.get(name)))
    return out


def check_counts(n_sensitive: int, n_safe: int, where: str = "") -> None:
    """:class:`LabelError` unless there are at least 2 labelled images of each class."""
    if n_sensitive >= 2 and n_safe >= 2:
        return
    what = "one class only" if not n_sensitive or not n_safe else "too few labels"
    raise LabelError(f"a detector needs at least 2 labelled images of each class, and the labels{where} hold "
                     f"{n_sensitive} sensitive and {n_safe} safe ({what}); label more images, or add a label source "
                     "(--labels FILE.csv, --from-annotations)")


def _threshold_rows(y: np.ndarray, p: np.ndarray) -> dict[str, dict]:
    """Each of :data:`RULES` over the whole validation split: threshold and its metrics."""
    from .metrics import select_thresholds

    sel = select_thresholds(y, p, y, p, recalls=(0.90, 0.95), positive=True)
    thr = {"max_f1": float(sel["threshold"].iat[0]), "R90": float(sel["threshold"].iat[1]),
           "R95": float(sel["threshold"].iat[2])}
    thr["thesis"] = min(thr["max_f1"], thr["R90"])
    return {rule: _metrics_row(y, p, thr[rule]) for rule in RULES}


def _metrics_row(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from .metrics import metrics_at_threshold

    m = metrics_at_threshold(y, p, threshold, positive=True)
    spec = m["tn"] / (m["tn"] + m["fp"]) if m["tn"] + m["fp"] else float("nan")
    return {"threshold": float(threshold), "precision": m["precision"], "recall": m["recall"],
            "specificity": float(spec), "f1": m["f1"], "double_f1": m["double_f1"], "flagged": m["flagged"]}


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def fit_detector(X: np.ndarray, y: np.ndarray, ids: Sequence[str], *, groups: Sequence[str] | None = None,
                 val_frac: float = VAL_FRAC, seed: int = 0, C: float = 1.0, calibration: str = "sigmoid",
                 screening: str = SCREENING_RULE, min_group_positives: int = MIN_GROUP_POSITIVES,
                 exclude: Callable[[list[str], list[str]], set[str]] | None = None,
                 progress: Progress = None) -> Detector:
    """Fit a detector on vectors X (n, dim) (unit norm), labels y (n,) bool (True: sensitive)
    and their content ids (n,), each once. Nothing is written; :func:`save` does that.

    ``groups`` (n,): each image's group (:func:`image_groups`; None: one group,
    :data:`ONE_GROUP`). The validation split is stratified by (group, class) and the
    screening threshold is the worst group's (:func:`screening_threshold`).

    ``exclude(validation ids, training ids)`` returns training ids to leave out (:func:`train`
    passes the near-duplicates of validation images): a rotated or recompressed copy on both
    sides would make the validation recall, and so the screening threshold, optimistic.

    Familiarity (:func:`trusted_groups`): an image can only be familiar through the training
    images of a group whose recall the validation split measured (at least
    ``min_group_positives`` sensitive validation images), or of a group with no sensitive
    label at all. A handful of labels from a new collection does not make its images familiar,
    so the detector does not clear them on a recall nobody measured.

    Raises :class:`LabelError` with fewer than 2 images of a class.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from .probe import make_probe

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=bool)
    ids = [str(i) for i in ids]
    if X.ndim != 2 or len(X) != len(y) or len(ids) != len(y):
        raise DetectorError(f"vectors {X.shape}, labels ({len(y)},) and ids ({len(ids)},) do not line up")
    if len(set(ids)) != len(ids):
        raise DetectorError("each content id must be labelled once (byte-identical copies share an id)")
    if calibration not in CALIBRATIONS:
        raise DetectorError(f"calibration {calibration!r}: choose {' or '.join(CALIBRATIONS)}")
    if screening not in RULES:
        raise DetectorError(f"screening rule {screening!r}: choose one of {', '.join(RULES)}")
    grouped = groups is not None
    groups = np.full(len(y), ONE_GROUP) if groups is None else np.asarray([str(g) for g in groups])
    if len(groups) != len(y):
        raise DetectorError(f"groups ({len(groups)},) and labels ({len(y)},) do not line up")
    check_counts(int(y.sum()), int((~y).sum()))
    step = (lambda k: progress(k, 5)) if progress else (lambda k: None)
    tr, va = stratified_split(y, val_frac, seed, groups if grouped else None)
    dropped = 0
    if exclude is not None:
        gone = exclude([ids[i] for i in va], [ids[i] for i in tr])
        keep = np.array([ids[i] not in gone for i in tr], dtype=bool)
        dropped = int((~keep).sum())
        if keep.all() or (y[tr[keep]].any() and (~y[tr[keep]]).any()):
            tr = tr[keep]
        else:
            raise LabelError(f"once the {dropped} near-duplicate(s) of validation images are left out, training holds "
                             f"{int(y[tr[keep]].sum())} sensitive and {int((~y[tr[keep]]).sum())} safe images; "
                             "label more images, or keep them with --keep-near-duplicates")
    step(1)

    folds = min(CALIBRATION_FOLDS, int(y[tr].sum()), int((~y[tr]).sum()))
    base = make_probe(C, seed=seed)
    if folds >= 2:
        clf = CalibratedClassifierCV(base, method=calibration, ensemble=False,
                                     cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).fit(X[tr], y[tr])
        pipe, cal = clf.calibrated_classifiers_[0].estimator, clf.calibrated_classifiers_[0].calibrators[0]
        method = calibration
    else:
        pipe, cal, method = base.fit(X[tr], y[tr]), None, "none"
    step(2)
    scaler, lr = pipe[0], pipe[-1]
    arrays: dict[str, np.ndarray] = {
        "scaler_mean": np.asarray(scaler.mean_, np.float64), "scaler_scale": np.asarray(scaler.scale_, np.float64),
        "coef": np.asarray(lr.coef_[0], np.float64), "intercept": np.asarray(lr.intercept_, np.float64).reshape(1),
    }
    if method == "sigmoid":
        arrays["calib_a"] = np.array([cal.a_], np.float64)
        arrays["calib_b"] = np.array([cal.b_], np.float64)
    elif method == "isotonic":
        arrays["calib_x"] = np.asarray(cal.X_thresholds_, np.float64)
        arrays["calib_y"] = np.asarray(cal.y_thresholds_, np.float64)
    meta: dict = {"format": FORMAT, "version": VERSION,
                  "classifier": {"kind": "standardised logistic regression (lib.probe.make_probe)", "C": float(C),
                                 "calibration": method, "folds": int(folds) if folds >= 2 else 0}}
    det = Detector(meta, arrays)

    p_val = det.predict_p(X[va])
    y_val, g_val = y[va], groups[va]
    thresholds = _threshold_rows(y_val, p_val)
    overall = float(thresholds[screening]["threshold"])
    chosen, set_by, own = screening_threshold(y_val, p_val, g_val, screening, overall, min_group_positives)
    at = _metrics_row(y_val, p_val, chosen)
    train_counts = {k: (int((groups[tr] == k).sum()), int((y[tr] & (groups[tr] == k)).sum()))
                    for k in sorted(set(groups[tr].tolist()))}
    group_rows = _group_rows(y_val, p_val, g_val, chosen, overall, screening, min_group_positives, train_counts, own)
    step(3)
    trusted, untrusted = trusted_groups(y, groups, va, min_group_positives)
    in_ref = np.isin(groups[tr], trusted)
    ref16 = X[tr].astype(np.float16)
    ref = _reference(ref16[in_ref])
    centroids, nprobe = (_ivf_centroids(ref, seed) if len(ref) > FAMILIAR_EXACT_MAX else (None, None))
    index = _familiarity_index(ref, centroids, nprobe)
    best, _ = index.search(ref, exclude=np.arange(len(ref)))
    loo = np.clip(1.0 - best, 0.0, 2.0).astype(np.float32)
    # no reference: nothing is familiar (every distance is 2, beyond a cut of 0)
    cut = float(np.percentile(loo, UNFAMILIAR_PERCENTILE)) if len(loo) else 0.0
    step(4)
    arrays.update({"train_ids": np.asarray([ids[i] for i in tr], dtype="S64"), "train_vectors": ref16,
                   "reference": in_ref, "loo_distance": loo,
                   "val_ids": np.asarray([ids[i] for i in va], dtype="S64"),
                   "val_p": p_val.astype(np.float64), "val_y": y_val.astype(bool)})
    if grouped:
        arrays["val_groups"] = np.asarray(g_val, dtype=str)
    if centroids is not None:
        arrays["ivf_centroids"] = np.asarray(centroids, np.float32)
    det._index = index
    val_d = np.clip(1.0 - index.search(np.ascontiguousarray(X[va], dtype=np.float32))[0], 0.0, 2.0)
    n_groups = len(set(groups.tolist()))
    meta.update({
        "split": {"val_frac": float(val_frac), "seed": int(seed), "n_train": len(tr), "n_val": len(va),
                  "train_sensitive": int(y[tr].sum()), "val_sensitive": int(y_val.sum()),
                  "stratified_by": "group and class" if grouped and n_groups > 1 else "class", "groups": n_groups,
                  "near_duplicates_dropped": dropped if exclude is not None else None},
        "thresholds": {r: {k: _jsonable(v) for k, v in t.items()} for r, t in thresholds.items()},
        "screening": {"rule": screening, "threshold": float(chosen), "overall_threshold": overall,
                      "worst_group": screening in RECALL_RULES, "set_by": set_by,
                      "min_group_positives": int(min_group_positives),
                      "metrics": {k: _jsonable(v) for k, v in at.items()}},
        "validation": {"n": len(va), "positives": int(y_val.sum()), "auc": float(roc_auc_score(y_val, p_val)),
                       "ap": float(average_precision_score(y_val, p_val)), "double_f1": _jsonable(at["double_f1"]),
                       "recall": _jsonable(at["recall"]), "specificity": _jsonable(at["specificity"]),
                       "unfamiliar_rate": float((val_d > cut).mean()),
                       "groups": [{k: _jsonable(v) for k, v in r.items()} for r in group_rows]},
        "familiarity": {"percentile": UNFAMILIAR_PERCENTILE, "cut": cut, "reference": int(in_ref.sum()),
                        "trusted_groups": trusted, "untrusted_groups": untrusted,
                        "index": "flat" if centroids is None else "ivf",
                        "nlist": None if centroids is None else len(centroids), "nprobe": nprobe},
        "uncertainty": {"transforms": list(TTA_TRANSFORMS), "sd_cut": TTA_SD_CUT, "flip_cut": TTA_FLIP_CUT},
    })
    step(5)
    return det


# =========================================================================== saving and loading


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise DetectorError(f"array {k!r} has dtype object: it would need a pickle")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save(det: Detector, name: str | None = None) -> Path:
    """Write ``det`` as ``<home>/detectors/<name>/`` (JSON + npz, atomically); returns the folder.

    The npz is written under a name holding its hash first and the JSON that names it
    second, so a reader sees the old detector or the new one, never a mix.
    """
    from .files import write_bytes, write_json

    name = check_name(name or det.name)
    model = det.meta.get("model") or {}
    if not (model.get("spec") and model.get("fingerprint")):
        raise DetectorError(f"detector {name!r} does not record its model (spec and fingerprint): it could never be "
                            "checked against the embeddings it is applied to, so it is not saved")
    d = config.ensure(detector_dir(name))
    data = _npz_bytes(det.arrays)
    sha = hashlib.sha256(data).hexdigest()
    fname = f"arrays-{sha[:16]}.npz"
    write_bytes(d / fname, data)
    det.meta["name"] = name
    det.meta["arrays"] = {"file": fname, "sha256": sha,
                          "shapes": {k: [list(v.shape), v.dtype.str] for k, v in det.arrays.items()}}
    write_json(d / "detector.json", det.meta)
    for old in d.glob("arrays-*.npz"):
        if old.name != fname:
            old.unlink(missing_ok=True)
    return d


def known_names() -> list[str]:
    d = detectors_dir()
    return sorted(p.name for p in d.iterdir() if (p / "detector.json").is_file()) if d.is_dir() else []


_REQUIRED = {"scaler_mean", "scaler_scale", "coef", "intercept", "train_ids", "train_vectors", "loo_distance",
             "val_ids", "val_p", "val_y"}
#: Arrays a detector may hold: IVF familiarity; the validation rows' groups (none before groups).
_OPTIONAL = {"ivf_centroids", "val_groups", "reference"}
_CALIB_ARRAYS = {"sigmoid": {"calib_a", "calib_b"}, "isotonic": {"calib_x", "calib_y"}, "none": set()}


def load(name: str) -> Detector:
    """Read detector ``name``, checking everything before anything is used.

    Raises :class:`DetectorError` when there is no such detector and
    :class:`DetectorFileError` (naming the file and the reason) when its JSON or npz is
    missing, damaged, foreign, inconsistent, or holds objects (never unpickled).
    """
    d = detector_dir(name)
    path = d / "detector.json"
    if not path.is_file():
        known = ", ".join(known_names()) or "none yet"
        raise DetectorError(f"no detector named {name!r} in {detectors_dir()} (known: {known}); train one with: "
                            f"python -m lib train DATASET --model SPEC --detector {name}")

    def bad(why: str, where: Path = path) -> DetectorFileError:
        return DetectorFileError(f"detector {name!r}: {where} {why}; it is not used (train it again)")

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"is not a workbench detector (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise bad(f"has version {meta.get('version')!r}; this code reads version {VERSION}")
    try:
        info = meta["arrays"]
        fname, sha, shapes = str(info["file"]), str(info["sha256"]), dict(info["shapes"])
        method = str(meta["classifier"]["calibration"])
        for k in ("spec", "fingerprint"):
            str(meta["model"][k])
        threshold = float(meta["screening"]["threshold"])
        cut = float(meta["familiarity"]["cut"])
        for r in RULES:
            float(meta["thresholds"][r]["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"lacks a field or has one of the wrong type ({type(e).__name__}: {e})") from None
    if not _ARRAYS_RE.match(fname):
        raise bad(f"names an arrays file {fname!r} that is not one of its own")
    npz = d / fname
    try:
        data = npz.read_bytes()
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})", npz) from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise bad("does not match the checksum its detector.json records (damaged or replaced)", npz)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for k in z.files:
                arrays[k] = np.asarray(z[k])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise bad(f"cannot be read as numeric arrays without pickle ({e})", npz) from None
    need = _REQUIRED | _CALIB_ARRAYS.get(method, {"?"})
    if method not in _CALIB_ARRAYS:
        raise bad(f"names an unknown calibration {method!r}")
    missing, extra = need - set(arrays), set(arrays) - need - _OPTIONAL
    if missing or extra:
        raise bad(f"holds arrays {sorted(arrays)}; expected {sorted(need)}", npz)
    for k, a in arrays.items():
        want = shapes.get(k)
        if want is None or list(a.shape) != list(want[0]) or a.dtype.str != want[1]:
            raise bad(f"array {k!r} is {a.dtype.str}{list(a.shape)}, its JSON says {want}", npz)
        if a.dtype.kind == "O":
            raise bad(f"array {k!r} holds objects", npz)
    dim = arrays["coef"].shape
    n_train, n_val = len(arrays["train_ids"]), len(arrays["val_ids"])
    consistent = (len(dim) == 1 and arrays["scaler_mean"].shape == dim and arrays["scaler_scale"].shape == dim
                  and arrays["train_vectors"].shape == (n_train, dim[0])
                  and ("reference" not in arrays or (arrays["reference"].shape == (n_train,)
                                                     and arrays["reference"].dtype.kind == "b"))
                  and arrays["loo_distance"].shape == (int(arrays["reference"].sum()) if "reference" in arrays
                                                       else n_train,)
                  and arrays["val_p"].shape == (n_val,) and arrays["val_y"].shape == (n_val,) and n_train >= 1
                  and arrays["intercept"].shape == (1,) and int(meta["model"].get("dim", dim[0])) == dim[0]
                  and ("ivf_centroids" not in arrays or arrays["ivf_centroids"].shape[1:] == dim)
                  and ("val_groups" not in arrays or (arrays["val_groups"].shape == (n_val,)
                                                      and arrays["val_groups"].dtype.kind == "U")))
    if not consistent:
        raise bad("has arrays whose shapes do not fit together", npz)
    floats = [a for a in arrays.values() if a.dtype.kind == "f"]
    if not all(np.isfinite(a).all() for a in floats) or not (arrays["scaler_scale"] > 0).all() \
            or not (0.0 <= threshold <= 1.0) or not math.isfinite(cut):
        raise bad("holds values that are not finite or out of range", npz)
    meta["name"] = check_name(name)
    return Detector(meta, arrays)


def list_detectors() -> pd.DataFrame:
    """Saved detectors: ``name, model, datasets, sensitive, safe, val_auc, threshold, rule,
    created, error`` (a detector that cannot be loaded is listed with its error)."""
    rows = []
    for name in known_names():
        try:
            det = load(name)
        except DetectorError as e:
            rows.append({"name": name, "error": str(e)})
            continue
        m = det.meta
        lab = m.get("labels", {}).get("counts", [])
        tot = next((c for c in lab if c.get("source") == "all"), {})
        rows.append({"name": name, "model": det.spec + (" [random weights]" if det.random_weights else ""),
                     "datasets": ", ".join(d["name"] for d in m.get("datasets", [])),
                     "sensitive": tot.get("sensitive"), "safe": tot.get("safe"),
                     "val_auc": m["validation"].get("auc"), "threshold": det.threshold,
                     "rule": m["screening"]["rule"], "created": m.get("created"), "error": None})
    cols = ["name", "model", "datasets", "sensitive", "safe", "val_auc", "threshold", "rule", "created", "error"]
    return pd.DataFrame(rows, columns=cols)


# =========================================================================== embeddings of a dataset


def _model_fingerprint(spec: str, random_weights: bool, backend=None) -> str | None:
    from .models import resolve_fingerprint

    return backend.fingerprint if backend is not None else resolve_fingerprint(spec, random_weights=random_weights)


def check_fingerprint(det: Detector, emb) -> None:
    """:class:`FingerprintMismatch` unless embeddings ``emb`` are of the detector's model."""
    if emb.fingerprint != det.fingerprint:
        raise FingerprintMismatch(
            f"detector {det.name!r} was trained on {det.spec} embeddings (fingerprint {det.fingerprint[:12]}); "
            f"these are of fingerprint {str(emb.fingerprint)[:12]} (another model, other weights or other "
            "feature code): a detector is only applied to embeddings of its own model")


def dataset_embeddings(name: str, det: Detector):
    """The vectors of dataset ``name`` under the detector's model fingerprint, one per row.

    Raises :class:`FingerprintMismatch` when the detector's model spec now resolves to
    another fingerprint, :class:`NotEmbedded` (naming the embed command) when vectors are missing.
    """
    from . import dataset as ds_mod
    from .embeddings import EmbeddingStore

    ds = ds_mod.load(name)
    now = _model_fingerprint(det.spec, det.random_weights)
    if now is not None and now != det.fingerprint:
        raise FingerprintMismatch(
            f"detector {det.name!r} was trained on {det.spec} embeddings of fingerprint {det.fingerprint[:12]}, "
            f"but {det.spec} now resolves to {now[:12]} (its weights or feature code changed): retrain it with "
            f"python -m lib train ... --model {det.spec} --detector {det.name}")
    store = EmbeddingStore(det.fingerprint)
    missing = store.missing(ds.unique_ids)
    if missing:
        raise NotEmbedded(f"dataset {name!r} is not embedded with {det.spec}, the model of detector {det.name!r} "
                          f"({len(missing)} of {len(ds.unique_ids)} images have no vector); run: "
                          f"{_embed_command(name, det.spec, det.random_weights)}")
    emb = store.open(ds.ids)
    check_fingerprint(det, emb)
    return emb


def apply_embeddings(det: Detector, emb, *, chunk: int = 65536) -> dict[str, np.ndarray]:
    """:meth:`Detector.assess` over every row of ``emb`` (a
    :class:`lib.embeddings.DatasetEmbeddings`), in chunks; refuses other fingerprints."""
    check_fingerprint(det, emb)
    parts = [det.assess(x) for _, x in emb.iter_chunks(chunk)]
    if not parts:
        return {"p": np.zeros(0), "sensitive": np.zeros(0, bool), "distance": np.zeros(0, np.float32),
                "unfamiliar": np.zeros(0, bool)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# =========================================================================== flips and rotations


def _transpose_op(name: str):
    from PIL import Image

    T = Image.Transpose
    return {"rot90": T.ROTATE_90, "rot180": T.ROTATE_180, "rot270": T.ROTATE_270, "flip_lr": T.FLIP_LEFT_RIGHT,
            "flip_tb": T.FLIP_TOP_BOTTOM, "transpose": T.TRANSPOSE, "transverse": T.TRANSVERSE}[name]


def tta_fingerprint(fingerprint: str, transform: str) -> str:
    """The cache fingerprint of one view: a hash of the model's fingerprint and the transform."""
    from .models import fingerprint_of

    return fingerprint_of({"base": fingerprint, "tta": transform})


def tta_store(fingerprint: str, transform: str):
    """The embedding store of one transformed view (``<cache>/emb-tta/``, beside the model caches)."""
    from .embeddings import EmbeddingStore

    return EmbeddingStore(tta_fingerprint(fingerprint, transform), root=config.cache_dir() / "emb-tta")


class View:
    """A preprocessing applied to a flipped / rotated image (fork-inherited by decode workers):
    ``View(backend.preprocess, "rot90").preprocess(img)``. :func:`lib.signals.index` (``tta``)
    uses it too, so both fill the :func:`tta_store` stores with the same views."""

    def __init__(self, preprocess: Callable, transform: str):
        self.inner, self.op = preprocess, _transpose_op(transform)

    def preprocess(self, img):
        return self.inner(img.transpose(self.op))


def embed_views(ds, det: Detector, *, backend=None, batch_size: int = 64, workers: int | None = None,
                shard_size: int = 4096, progress: Progress = None) -> dict[str, tuple[np.ndarray, object]]:
    """Embed the 7 views of every image of dataset ``ds`` that their caches lack (the model
    is loaded only when something is missing). ``python -m lib index NAME --models SPEC --tta``
    (:func:`lib.signals.index`) fills the same stores from its one decode per image; then
    nothing is missing here and no image is read.

    Returns
    -------
    {transform: (present (n_rows,) bool, DatasetEmbeddings of the present rows)}; rows whose
    image could not be read have no view.
    """
    from .embeddings import default_workers, prefetch_batches

    stores = {t: tta_store(det.fingerprint, t) for t in TTA_TRANSFORMS}
    missing = {t: s.missing(ds.unique_ids) for t, s in stores.items()}
    total = sum(len(m) for m in missing.values())
    if total:
        if backend is None:
            from .models import load_model

            backend = load_model(det.spec, random_weights=det.random_weights)
        if backend.fingerprint != det.fingerprint:
            raise FingerprintMismatch(f"model {backend.spec} (fingerprint {backend.fingerprint[:12]}) is not the model "
                                      f"of detector {det.name!r} ({det.fingerprint[:12]})")
        path_of = dict(zip(ds.images["id"], ds.images["path"], strict=False))
        workers = default_workers(backend.uses_torch) if workers is None else workers
        done = 0
        for t, todo in missing.items():
            if not todo:
                continue
            store = stores[t]
            store.write_info({"base_fingerprint": det.fingerprint, "spec": f"{det.spec} [{t}]", "transform": t,
                              "dim": backend.dim})
            items = []
            for cid in todo:
                try:
                    items.append((cid, str(ds.abspath(path_of[cid]))))
                except UnsafePath:
                    done += 1
            view = View(backend.preprocess, t)
            buf_ids: list[str] = []
            buf: list[np.ndarray] = []
            for ok, arrays, errors in prefetch_batches(items, view.preprocess, batch_size, workers):
                if arrays is not None:
                    buf.append(backend.encode_preprocessed(arrays))
                    buf_ids += ok
                done += len(ok) + len(errors)
                if progress:
                    progress(done, total)
                while len(buf_ids) >= shard_size:
                    v = np.concatenate(buf)
                    store.write_shard(buf_ids[:shard_size], v[:shard_size])
                    buf_ids, buf = buf_ids[shard_size:], [v[shard_size:]]
            if buf_ids:
                store.write_shard(buf_ids, np.concatenate(buf))
    out = {}
    for t, s in stores.items():
        have = set(s.ids().astype(str)) if len(s) else set()
        present = np.array([i in have for i in ds.ids], bool)
        out[t] = (present, s.open([i for i, ok in zip(ds.ids, present, strict=True) if ok]))
    return out


def view_vectors(ds, det: Detector, *, backend=None, progress: Progress = None) -> np.ndarray:
    """(7, n_rows, dim) float32 vectors of the 7 views of every row of dataset ``ds``
    (:func:`embed_views`; NaN rows where an image has no view)."""
    out = np.full((len(TTA_TRANSFORMS), len(ds.images), det.dim), np.nan, np.float32)
    for k, (present, emb) in enumerate(embed_views(ds, det, backend=backend, progress=progress).values()):
        if len(emb):
            out[k, present] = emb.matrix()
    return out


def view_uncertainty(p: np.ndarray, views: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """p (n,) of the images and (7, n) of their views (NaN where a view is missing) ->
    (sd of the 8 p's (n,), uncertain (n,) bool: sd > :data:`TTA_SD_CUT`, or at least
    :data:`TTA_FLIP_CUT` of the 8 on the minority side of ``threshold``; a missing view is uncertain)."""
    allp = np.vstack([np.asarray(p, np.float64)[None], np.asarray(views, np.float64)])
    sd = allp.std(axis=0)
    above = (allp >= threshold).mean(axis=0)
    flip = np.minimum(above, 1.0 - above)
    uncertain = (sd > TTA_SD_CUT) | (flip >= TTA_FLIP_CUT - 1e-12) | ~np.isfinite(sd)
    return sd, uncertain


# =========================================================================== training, predicting


def train(names: Sequence[str], spec: str, det_name: str, *, random_weights: bool = False,
          labels_file: str | Path | pd.DataFrame | None = None, from_annotations: bool = False,
          dataset_labels: bool = True, val_frac: float = VAL_FRAC, seed: int = 0, C: float = 1.0,
          calibration: str = "sigmoid", screening: str = SCREENING_RULE,
          min_group_positives: int = MIN_GROUP_POSITIVES, near_duplicates: bool = True, positive: str | None = None,
          store=None, backend=None, progress: Progress = None) -> tuple[Detector, Labels]:
    """Gather the labels of datasets ``names``, fit on their cached ``spec`` embeddings,
    save as ``det_name``; returns the detector and the labels used.

    With ``near_duplicates`` (the default) training leaves out the images that are
    near-duplicates (perceptual hash, :func:`lib.quality.near_duplicates_of`) of a
    validation image of the same dataset; ``meta["split"]["near_duplicates_dropped"]`` counts them.

    Each image's group (for the split and the worst-group screening threshold) is its
    dataset, refined by the dataset's ``source`` column when it has one (``Labels.table["group"]``).

    ``positive``: the label value that is the sensitive class, every other value safe
    (:func:`gather_labels`); kept in the recipe.

    The label file is copied into the detector's folder (``labels.csv``) so :func:`retrain`
    finds it. A detector of the same name is replaced; its learning history is kept (same
    model only).
    """
    from . import dataset as ds_mod
    from .embeddings import EmbeddingStore
    from .files import write_table
    from .models import parse_spec

    check_name(det_name)
    kind = parse_spec(spec).kind
    names = list(dict.fromkeys(names))
    labels = gather_labels(names, dataset_labels=dataset_labels, labels_file=labels_file,
                           from_annotations=from_annotations, store=store, positive=positive)
    check_counts(labels.n_sensitive, labels.n_safe, f" of {', '.join(names)}")
    fp = _model_fingerprint(spec, random_weights, backend)
    store_ = EmbeddingStore(fp) if fp else None
    ids = labels.table["id"].tolist()
    missing = store_.missing(ids) if store_ is not None else ids
    if missing:
        lacking = sorted(set(labels.table.loc[labels.table["id"].isin(set(missing)), "dataset"]))
        raise NotEmbedded(f"{len(missing)} of the {len(ids)} labelled images have no {spec} vector; run: "
                          + " && ".join(_embed_command(n, spec, random_weights) for n in lacking))
    X = store_.open(ids).matrix()
    y = labels.table["sensitive"].to_numpy(bool)
    sub = (lambda k, n: progress(k, n + 1)) if progress else None
    det = fit_detector(X, y, ids, groups=labels.table["group"].astype(str).tolist(), val_frac=val_frac, seed=seed,
                       C=C, calibration=calibration, screening=screening, min_group_positives=min_group_positives,
                       exclude=_near_duplicate_rule(labels.table) if near_duplicates else None, progress=sub)
    d = config.ensure(detector_dir(det_name))
    label_file = None
    if labels.file_rows is not None:
        write_table(d / "labels.csv", labels.file_rows)
        label_file = "labels.csv"
    previous = []
    try:
        old = load(det_name)
        if old.fingerprint == fp:
            previous = list(old.meta.get("history", []))
    except DetectorError:
        pass
    v = det.meta["validation"]
    sizes = {n: len(ds_mod.load(n).unique_ids) for n in names}
    det.meta.update({
        "name": det_name, "created": _now(),
        "model": {"spec": spec, "random_weights": bool(random_weights), "fingerprint": fp, "dim": int(X.shape[1]),
                  "kind": kind},
        "datasets": [{"name": n, "images": sizes[n],
                      "labelled": int((labels.table["dataset"] == n).sum())} for n in names],
        "labels": {"counts": labels.counts.to_dict("records"), "conflicts": labels.conflicts,
                   "unmatched": len(labels.unmatched), "ambiguous": len(labels.ambiguous), "unknown": labels.unknown},
        "recipe": {"datasets": names, "dataset_labels": bool(dataset_labels), "labels_file": label_file,
                   "from_annotations": bool(from_annotations), "val_frac": float(val_frac), "seed": int(seed),
                   "C": float(C), "calibration": calibration, "screening": screening,
                   "min_group_positives": int(min_group_positives), "near_duplicates": bool(near_duplicates),
                   "positive": positive},
        "history": previous + [{"at": _now(), "labels": len(ids), "sensitive": labels.n_sensitive,
                                "safe": labels.n_safe, "auc": v["auc"], "ap": v["ap"], "recall": v["recall"],
                                "specificity": v["specificity"], "threshold": det.threshold}],
    })
    save(det, det_name)
    if progress:
        progress(6, 6)
    return det, labels


def _near_duplicate_rule(table: pd.DataFrame) -> Callable[[list[str], list[str]], set[str]]:
    """``exclude`` for :func:`fit_detector`: per dataset of the label table (``id``,
    ``dataset``), the training ids that are near-duplicates of a validation id."""
    from .quality import near_duplicates_of

    dataset_of = dict(zip(table["id"].astype(str), table["dataset"].astype(str), strict=True))

    def exclude(val_ids: list[str], train_ids: list[str]) -> set[str]:
        out: set[str] = set()
        for name in dict.fromkeys(dataset_of.values()):
            v = [i for i in val_ids if dataset_of[i] == name]
            t = [i for i in train_ids if dataset_of[i] == name]
            if v and t:
                out |= near_duplicates_of(name, v, t)
        return out

    return exclude


def retrain(det_name: str, *, add_datasets: Iterable[str] = (), from_annotations: bool = True, store=None,
            backend=None, progress: Progress = None) -> tuple[Detector, Labels]:
    """Refit detector ``det_name`` with its recipe on all labels so far: its datasets plus
    ``add_datasets``, its label file, and (by default) the annotation store's reviews."""
    old = load(det_name)
    r = old.meta.get("recipe") or {}
    names = list(dict.fromkeys([*r.get("datasets", [d["name"] for d in old.meta.get("datasets", [])]),
                                *add_datasets]))
    lf = r.get("labels_file")
    labels_file = detector_dir(det_name) / lf if lf else None
    return train(names, old.spec, det_name, random_weights=old.random_weights, labels_file=labels_file,
                 from_annotations=bool(from_annotations or r.get("from_annotations")),
                 dataset_labels=bool(r.get("dataset_labels", True)), val_frac=float(r.get("val_frac", VAL_FRAC)),
                 seed=int(r.get("seed", 0)), C=float(r.get("C", 1.0)), calibration=r.get("calibration", "sigmoid"),
                 screening=r.get("screening", SCREENING_RULE),
                 min_group_positives=int(r.get("min_group_positives", MIN_GROUP_POSITIVES)),
                 near_duplicates=bool(r.get("near_duplicates", True)), positive=r.get("positive"), store=store,
                 backend=backend, progress=progress)


def predict(name: str, det: Detector | str, *, tta: bool | None = None, backend=None, progress: Progress = None,
            write: bool = True) -> pd.DataFrame:
    """Screen dataset ``name`` with a detector; with ``write``, save the table as
    :func:`prediction_path` (the app's prediction table for the dataset).

    ``tta``: compute the flips / rotations (default: on for cheap models, :data:`CHEAP_KINDS`).

    Returns
    -------
    DataFrame, one row per dataset row: ``id, path, p`` (float), ``sensitive`` (p >= the
    screening threshold), ``uncertain`` (bool, or None where not computed), ``unfamiliar``
    (bool), ``threshold`` (the screening threshold, every row), ``distance`` (cosine to the
    nearest training image), ``tta_sd`` (NaN where not computed), ``pred`` (sensitive / safe)
    and ``detector``.
    """
    from . import dataset as ds_mod
    from .files import write_table

    det = load(det) if isinstance(det, str) else det
    ds = ds_mod.load(name)
    emb = dataset_embeddings(name, det)
    res = apply_embeddings(det, emb)
    n = len(ds.images)
    tta = det.tta_default if tta is None else bool(tta)
    if tta:
        views = np.full((len(TTA_TRANSFORMS), n), np.nan)
        for k, (present, vemb) in enumerate(embed_views(ds, det, backend=backend, progress=progress).values()):
            if len(vemb):
                views[k, present] = np.concatenate([det.predict_p(x) for _, x in vemb.iter_chunks()])
        sd, unc = view_uncertainty(res["p"], views, det.threshold)
        uncertain = pd.Series(unc, dtype=bool)
    else:
        sd, uncertain = np.full(n, np.nan), pd.Series([None] * n, dtype=object)
    table = pd.DataFrame({
        "id": ds.images["id"].astype(str).to_numpy(), "path": ds.images["path"].astype(str).to_numpy(),
        "p": res["p"], "sensitive": res["sensitive"], "uncertain": uncertain.to_numpy(), "unfamiliar": res["unfamiliar"],
        "threshold": np.full(n, det.threshold), "distance": res["distance"], "tta_sd": sd,
        "pred": np.where(res["sensitive"], "sensitive", "safe"), "detector": det.name,
    })
    if write:
        write_table(prediction_path(name, det.name), table)
    return table


def read_screening(path: str | Path) -> pd.DataFrame:
    """A table :func:`predict` wrote (all its columns)."""
    return pd.read_parquet(path)


# =========================================================================== reading a screening


def _table_threshold(table: pd.DataFrame) -> float:
    from .sensitivity import PRED_THRESHOLD

    if "threshold" in table:
        t = pd.to_numeric(table["threshold"], errors="coerce").dropna()
        if len(t):
            return float(t.iloc[0])
    return PRED_THRESHOLD


def trusted_groups(y: np.ndarray, groups: np.ndarray, val: np.ndarray,
                   min_group_positives: int = MIN_GROUP_POSITIVES) -> tuple[list[str], list[dict]]:
    """The groups whose training images may make an image familiar, and the others.

    Parameters
    ----------
    y : (n,) bool, sensitive; groups : (n,) str; val : row positions of the validation split.

    A group is trusted when its validation split holds at least ``min_group_positives``
    sensitive images (its recall at the screening threshold is measured, as the worst-group
    threshold needs), or when none of its labels is sensitive (no recall to measure). Returns
    the trusted group names (sorted) and, for the others, ``{"group", "val_sensitive",
    "sensitive"}`` rows: images near those are not cleared until more of them are labelled.
    """
    trusted, untrusted = [], []
    val_mask = np.zeros(len(y), bool)
    val_mask[np.asarray(val, dtype=np.int64)] = True
    for g in sorted(set(groups.tolist())):
        mine = groups == g
        n_pos, n_val_pos = int(y[mine].sum()), int(y[mine & val_mask].sum())
        if n_pos == 0 or n_val_pos >= min_group_positives:
            trusted.append(str(g))
        else:
            untrusted.append({"group": str(g), "val_sensitive": n_val_pos, "sensitive": n_pos})
    return trusted, untrusted


def screen_groups(table: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """Each row's group (:data:`GROUPS`, exclusive, as the safe view decides): ``flagged``
    (p >= threshold), else ``unfamiliar``, else ``uncertain``, else ``cleared``. (n,) object."""
    thr = _table_threshold(table) if threshold is None else float(threshold)
    col = "p" if "p" in table else "score"
    p = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64)
    unf = table["unfamiliar"].astype(object).where(table["unfamiliar"].notna(), True).astype(bool).to_numpy() \
        if "unfamiliar" in table else np.ones(len(table), bool)  # a table that cannot tell never clears
    unc = table["uncertain"].astype(object).where(table["uncertain"].notna(), False).astype(bool).to_numpy() \
        if "uncertain" in table else np.zeros(len(table), bool)
    return np.select([~(p < thr), unf, unc], ["flagged", "unfamiliar", "uncertain"], "cleared").astype(object)


def screen_counts(table: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """``group, images, share`` (distinct images) for every :data:`GROUPS`, plus ``unfamiliar (any p)``
    and ``uncertain (any p)`` (not exclusive) when those are known."""
    t = table.drop_duplicates("id")
    g = pd.Series(screen_groups(t, threshold))
    n = max(len(t), 1)
    rows = [{"group": k, "images": int((g == k).sum())} for k in GROUPS]
    rows.append({"group": "unfamiliar (any p)", "images": int(t["unfamiliar"].fillna(True).astype(bool).sum())})
    if "uncertain" in t and t["uncertain"].notna().any():
        rows.append({"group": "uncertain (any p)", "images": int(t["uncertain"].fillna(False).astype(bool).sum())})
    out = pd.DataFrame(rows)
    out["share"] = out["images"] / n
    return out


def screen_examples(table: pd.DataFrame, group: str, n: int = 6) -> pd.DataFrame:
    """Up to ``n`` distinct images of one :data:`GROUPS` of a :func:`predict` table, with
    their dataset ``row``: the highest p first (flagged), the farthest (unfamiliar), the
    least stable under flips (uncertain), the lowest p (cleared)."""
    by, ascending = {"flagged": ("p", False), "unfamiliar": ("distance", False), "uncertain": ("tta_sd", False),
                     "cleared": ("p", True)}[group]
    sub = table.assign(row=np.arange(len(table)), group=screen_groups(table))
    sub = sub[sub["group"] == group].drop_duplicates("id")
    return sub.sort_values([by, "row"], ascending=[ascending, True], kind="stable").head(n).reset_index(drop=True)


def filter_mask(images: pd.DataFrame, table: pd.DataFrame, *, groups: Sequence[str] | None = None,
                uncertain: bool | None = None, unfamiliar: bool | None = None,
                threshold: float | None = None) -> np.ndarray:
    """(n,) bool over a dataset's rows: the detector's group is in ``groups`` (empty: any), and
    ``uncertain`` / ``unfamiliar`` equal the given value (None: any). Rows the table lacks fail
    every active filter."""
    n = len(images)
    active = bool(groups) or uncertain is not None or unfamiliar is not None
    if not active:
        return np.ones(n, bool)
    thr = _table_threshold(table) if threshold is None else float(threshold)
    t = table.drop_duplicates("id").set_index("id")
    if "p" not in t and "score" in t:
        t = t.rename(columns={"score": "p"})
    t = t.reindex(images["id"].astype(str))
    keep = t["p"].notna().to_numpy().copy()  # (pandas may hand out a read-only view)
    if groups:
        keep &= np.isin(screen_groups(t, thr), list(groups))
    for col, want in (("uncertain", uncertain), ("unfamiliar", unfamiliar)):
        if want is not None:
            v = t[col] if col in t else pd.Series([None] * n)
            keep &= (v.astype(object).where(v.notna(), None).to_numpy() == bool(want))
    return keep


def evaluate(truth: np.ndarray, p: np.ndarray, threshold: float, unfamiliar: np.ndarray,
             uncertain: np.ndarray | None = None) -> dict:
    """Screening metrics against truth (n,) bool (True: sensitive).

    Returns ``n, sensitive, safe, auc, ap`` (NaN with one class), ``recall`` and
    ``specificity`` at ``threshold``, ``safe_cleared`` (share of safe images the safe view
    clears: p < threshold, familiar, certain), ``sensitive_cleared`` (share of sensitive
    images it clears: misses that would be shown), ``unfamiliar`` and ``uncertain`` shares.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(truth, bool)
    p = np.asarray(p, np.float64)
    unf = np.asarray(unfamiliar, bool)
    unc = np.zeros(len(y), bool) if uncertain is None else np.asarray(uncertain, bool)
    cleared = (p < threshold) & ~unf & ~unc
    both = 0 < y.sum() < len(y)
    nan = float("nan")

    def share(mask, of):
        return float(mask[of].mean()) if of.any() else nan

    return {"n": int(len(y)), "sensitive": int(y.sum()), "safe": int((~y).sum()),
            "auc": float(roc_auc_score(y, p)) if both else nan,
            "ap": float(average_precision_score(y, p)) if both else nan,
            "recall": share(p >= threshold, y), "specificity": share(p < threshold, ~y),
            "safe_cleared": share(cleared, ~y), "sensitive_cleared": share(cleared, y),
            "unfamiliar": float(unf.mean()) if len(y) else nan,
            "uncertain": float(unc.mean()) if uncertain is not None and len(y) else nan}


def dataset_truth(name: str, positive: str | None = None) -> pd.Series:
    """sensitive / safe / None per row of dataset ``name`` by its label policy (labels only),
    or with label value ``positive`` as the sensitive class and the others safe."""
    from . import dataset as ds_mod
    from .sensitivity import binary_truth, run_policy

    ds = ds_mod.load(name)
    labels = ds.images["label"].reset_index(drop=True)
    return binary_truth(labels, run_policy(name, positive, labels.dropna().unique()))


# =========================================================================== suggestions


def select_suggestions(X: np.ndarray, p: np.ndarray, distance: np.ndarray, threshold: float, cut: float, n: int,
                       *, uncertain: np.ndarray | None = None, seed: int = 0) -> list[tuple[int, str]]:
    """Which candidates to label next, best first: ``[(row, why)]``, at most ``n``.

    Parameters
    ----------
    X : (m, dim) unit-norm vectors of the candidates (each distinct image once)
    p, distance : (m,) the detector's p and cosine distance to its training images
    uncertain : (m,) bool from the flips / rotations, or None

    1. ``unfamiliar``: farthest-point sampling from the training set: the candidate farthest
       from every training image and every pick so far, while that distance is beyond
       ``cut`` (each pick covers its region of unfamiliar images).
    2. ``uncertain``: :data:`UNCERTAIN_SHARE` of what is left, the images the flips make
       uncertain first, then by closeness of p to the threshold.
    3. ``diverse``: the rest, the candidates nearest the centres of a k-means (scikit-learn)
       of the remaining candidates, largest cluster first.
    """
    X = np.asarray(X, np.float32)
    m = len(X)
    n = int(min(max(n, 0), m))
    picks: list[tuple[int, str]] = []
    taken = np.zeros(m, bool)
    md = np.asarray(distance, np.float64).copy()
    while len(picks) < n:
        i = int(np.argmax(np.where(taken, -np.inf, md)))
        if taken[i] or not md[i] > cut:
            break
        picks.append((i, "unfamiliar"))
        taken[i] = True
        md = np.minimum(md, 1.0 - X @ X[i])
    left = n - len(picks)
    if left:
        k_unc = int(math.ceil(left * UNCERTAIN_SHARE))
        unc = np.zeros(m, bool) if uncertain is None else np.asarray(
            pd.Series(uncertain).astype(object).where(pd.Series(uncertain).notna(), False).astype(bool))
        order = np.lexsort((np.abs(np.asarray(p, np.float64) - threshold), ~unc))
        target = len(picks) + k_unc
        for i in order:
            if len(picks) >= target:
                break
            if not taken[i]:
                picks.append((int(i), "uncertain"))
                taken[i] = True
    left = n - len(picks)
    rest = np.flatnonzero(~taken)
    if left and len(rest):
        if left >= len(rest):
            picks += [(int(i), "diverse") for i in rest]
        else:
            from sklearn.cluster import KMeans, MiniBatchKMeans

            km = (MiniBatchKMeans(left, random_state=seed, n_init=3, batch_size=4096) if len(rest) > 10_000
                  else KMeans(left, random_state=seed, n_init=3)).fit(X[rest])
            lab = km.labels_
            sizes = np.bincount(lab, minlength=left)
            for c in np.argsort(-sizes, kind="stable"):
                members = rest[lab == c]
                if not len(members):
                    continue
                dist = np.linalg.norm(X[members] - km.cluster_centers_[c], axis=1)
                for j in members[np.argsort(dist, kind="stable")]:
                    if not taken[j]:
                        picks.append((int(j), "diverse"))
                        taken[j] = True
                        break
            for j in rest:  # clusters that were all taken: fill in dataset order
                if len(picks) >= n:
                    break
                if not taken[j]:
                    picks.append((int(j), "diverse"))
                    taken[j] = True
    return picks[:n]


def reviewed_ids(name: str, store=None) -> set[str]:
    """Content ids of dataset ``name`` with a current label in the annotation store (anyone's)."""
    from .annotations import AnnotationStore

    store = store or AnnotationStore()
    return set(store.current(name)["image_id"].astype(str))


def suggest(name: str, det: Detector | str, n: int, *, store=None, tta: bool | None = None, seed: int = 0,
            backend=None, progress: Progress = None, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The next ``n`` images of dataset ``name`` to review, best first (:func:`select_suggestions`).

    Each distinct image once, never one already reviewed (any annotator) nor one the
    detector was trained or validated on. ``table``: a :func:`predict` table of this
    dataset and detector to reuse.

    Returns
    -------
    DataFrame ``rank, id, path, row, why, p, distance, uncertain``.
    """
    det = load(det) if isinstance(det, str) else det
    if n < 1:
        raise DetectorError(f"--n must be at least 1, got {n}")
    table = predict(name, det, tta=tta, backend=backend, progress=progress, write=False) if table is None else table
    emb = dataset_embeddings(name, det)
    first = ~table["id"].duplicated().to_numpy()
    skip = reviewed_ids(name, store) | det.labelled_ids()
    cand = np.flatnonzero(first & ~table["id"].isin(skip).to_numpy())
    cols = ["rank", "id", "path", "row", "why", "p", "distance", "uncertain"]
    if not len(cand):
        return pd.DataFrame(columns=cols)
    t = table.iloc[cand]
    picks = select_suggestions(emb.take(cand), t["p"].to_numpy(), t["distance"].to_numpy(), det.threshold, det.cut,
                               n, uncertain=t["uncertain"].to_numpy(), seed=seed)
    rows = [cand[i] for i, _ in picks]
    out = table.iloc[rows][["id", "path", "p", "distance", "uncertain"]].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["row"] = rows
    out["why"] = [w for _, w in picks]
    return out[cols]


def suggest_queue(suggestions: pd.DataFrame) -> pd.DataFrame:
    """:func:`suggest` rows as an Annotate queue (:data:`lib.workflow.QUEUE_COLUMNS`, task ``suggest``, and ``why``)."""
    from .workflow import QUEUE_COLUMNS

    q = pd.DataFrame({"id": suggestions["id"].astype(str).to_numpy(), "row": suggestions["row"].astype(int).to_numpy(),
                      "task": "suggest"})
    for c in QUEUE_COLUMNS:
        if c not in q:
            q[c] = np.nan
    q["why"] = suggestions["why"].to_numpy()
    return q[[*QUEUE_COLUMNS, "why"]]


# =========================================================================== evaluation protocol


def leave_one_source_out(X: np.ndarray, y: np.ndarray, ids: Sequence[str], groups: np.ndarray, *,
                         views: np.ndarray | None = None, seed: int = 0, **fit) -> pd.DataFrame:
    """Train on every source but one, screen the one left out, for each source.

    Parameters
    ----------
    X : (n, dim) vectors, each distinct image once; y (n,) bool; ids (n,); groups (n,) source names
    views : (7, n, dim) vectors of the flips / rotations, or None (``uncertain`` not computed)

    The training sources are the detector's groups: its screening threshold is the worst of
    theirs (:func:`screening_threshold`).

    Returns
    -------
    DataFrame, one row per source: ``source`` and :func:`evaluate`'s keys, ``threshold``,
    ``overall_threshold`` (the rule's over the whole validation split), ``set_by`` (the
    training source that set the threshold, or None), ``cut``.
    """
    groups = np.asarray(groups)
    rows = []
    for src in pd.unique(groups):
        test = groups == src
        det = fit_detector(X[~test], y[~test], [i for i, t in zip(ids, test, strict=True) if not t],
                           groups=groups[~test].astype(str), seed=seed, **fit)
        rows.append({"source": src, **_screen(det, X[test], y[test], None if views is None else views[:, test]),
                     "threshold": det.threshold, "overall_threshold": det.meta["screening"]["overall_threshold"],
                     "set_by": det.meta["screening"]["set_by"], "cut": det.cut})
    return pd.DataFrame(rows)


def _screen(det: Detector, X: np.ndarray, y: np.ndarray, views: np.ndarray | None) -> dict:
    r = det.assess(X)
    unc = None
    if views is not None:
        _, unc = view_uncertainty(r["p"], np.stack([det.predict_p(v) for v in views]), det.threshold)
    return evaluate(y, r["p"], det.threshold, r["unfamiliar"], unc)


def simulate_review_loop(X_base: np.ndarray, y_base: np.ndarray, ids_base: Sequence[str], X_pool: np.ndarray,
                         y_pool: np.ndarray, ids_pool: Sequence[str], *, strategy: str = "suggest", rounds: int = 5,
                         per_round: int = 10, views_pool: np.ndarray | None = None, seed: int = 0,
                         groups_base: np.ndarray | None = None, groups_pool: np.ndarray | None = None,
                         **fit) -> pd.DataFrame:
    """The review loop, simulated: a detector trained on the base labels screens the pool;
    each round ``per_round`` pool images are chosen (``suggest``: :func:`select_suggestions`;
    ``random``: seeded draw), their true labels revealed, the detector refitted on all
    labels so far, and the rest of the pool screened again.

    ``groups_base`` / ``groups_pool``: the groups of the images (:func:`fit_detector`); with
    neither, no groups; with one, the other side is one group (``base`` / ``pool``).

    Returns
    -------
    DataFrame, one row per round 0..rounds: ``strategy, round, labels_added`` and
    :func:`evaluate`'s keys on the pool images not yet labelled, ``unfamiliar_picked``,
    ``threshold`` (the screening threshold) and ``set_by`` (the group that set it, or None).
    """
    if strategy not in ("suggest", "random"):
        raise DetectorError(f"strategy {strategy!r}: suggest or random")
    rng = np.random.default_rng(seed)
    ids_base, ids_pool = list(ids_base), list(ids_pool)
    grouped = groups_base is not None or groups_pool is not None
    g_base = np.full(len(ids_base), "base") if groups_base is None else np.asarray(groups_base).astype(str)
    g_pool = np.full(len(ids_pool), "pool") if groups_pool is None else np.asarray(groups_pool).astype(str)
    labelled: list[int] = []
    out = []
    unfamiliar_picked = 0
    for r in range(rounds + 1):
        sel = np.asarray(labelled, int)
        det = fit_detector(np.vstack([X_base, X_pool[sel]]), np.concatenate([y_base, y_pool[sel]]),
                           ids_base + [ids_pool[i] for i in sel],
                           groups=np.concatenate([g_base, g_pool[sel]]) if grouped else None, seed=seed, **fit)
        rest = np.setdiff1d(np.arange(len(y_pool)), sel)
        v = None if views_pool is None else views_pool[:, rest]
        out.append({"strategy": strategy, "round": r, "labels_added": len(sel),
                    **_screen(det, X_pool[rest], y_pool[rest], v), "unfamiliar_picked": unfamiliar_picked,
                    "threshold": det.threshold, "set_by": det.meta["screening"].get("set_by")})
        if r == rounds or not len(rest):
            break
        if strategy == "random":
            picked = rng.choice(rest, size=min(per_round, len(rest)), replace=False).tolist()
        else:
            a = det.assess(X_pool[rest])
            unc = None
            if views_pool is not None:
                _, unc = view_uncertainty(a["p"], np.stack([det.predict_p(x) for x in views_pool[:, rest]]),
                                          det.threshold)
            got = select_suggestions(X_pool[rest], a["p"], a["distance"], det.threshold, det.cut, per_round,
                                     uncertain=unc, seed=seed + r)
            picked = [int(rest[i]) for i, _ in got]
            unfamiliar_picked += sum(w == "unfamiliar" for _, w in got)
        labelled += picked
    return pd.DataFrame(out)


# =========================================================================== chart data (drawn by lib.charts)


def validation_pr(det: Detector) -> dict:
    """What the validation precision-recall chart shows (:func:`lib.charts.detector_pr`).

    Returns
    -------
    dict with ``title``, ``curve_name``, ``recall`` and ``precision`` (the curve,
    scikit-learn's), ``prevalence``, ``points`` (a DataFrame, one row per rule of
    :data:`RULES`: ``rule, name, threshold, recall, precision, specificity, screening``, the
    thesis's lower of max-F1 and R90 included) and ``lowered`` (None, or the screening point
    when the worst group lowered the rule's threshold: ``recall, precision, threshold, rule,
    set_by``).
    """
    from sklearn.metrics import precision_recall_curve

    y, p = det.arrays["val_y"], det.arrays["val_p"]
    prec, rec, _ = precision_recall_curve(y, p)
    v, scr, thr = det.meta["validation"], det.meta["screening"], dict(det.meta["thresholds"])
    # files written before the thesis rule: it is the lower of the two it is made of
    thr.setdefault("thesis", min(thr["max_f1"], thr["R90"], key=lambda t: t["threshold"]))
    points = pd.DataFrame([{"rule": r, "name": RULE_NAMES[r], "threshold": float(thr[r]["threshold"]),
                            "recall": float(thr[r]["recall"]), "precision": float(thr[r]["precision"]),
                            "specificity": float(thr[r]["specificity"]),
                            "screening": r == scr["rule"] and not scr.get("set_by")} for r in RULES])
    lowered = None
    if scr.get("set_by") and scr.get("metrics"):  # the worst group lowered the rule's threshold
        lowered = {"recall": float(scr["metrics"]["recall"]), "precision": float(scr["metrics"]["precision"]),
                   "threshold": float(det.threshold), "rule": RULE_NAMES[scr["rule"]], "set_by": scr["set_by"]}
    return {"title": f"Validation precision-recall of {det.name} ({v['n']} images, {v['positives']} sensitive)",
            "curve_name": f"validation (AP {v['ap']:.3f}, AUC {v['auc']:.3f})", "recall": rec, "precision": prec,
            "prevalence": float(np.mean(y)), "points": points, "lowered": lowered}


def learning_curve(det: Detector) -> pd.DataFrame:
    """The detector's trainings so far: ``at, labels, sensitive, safe, auc, ap, recall,
    specificity, threshold`` (validation AUC, recall and specificity at the screening threshold)."""
    cols = ["at", "labels", "sensitive", "safe", "auc", "ap", "recall", "specificity", "threshold"]
    return pd.DataFrame(det.meta.get("history", []), columns=cols)
