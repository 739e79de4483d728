"""The one decision "may this image be shown raw?", fail-closed, with its evidence.

An image is shown raw only with **positive evidence that it is safe** and no evidence
that it is sensitive. The evidence kinds:

=============  =====================================  ======================================
evidence       clears (may show raw)                  flags (censor)
=============  =====================================  ======================================
label          the label policy maps it to *safe*     the policy maps it to *sensitive*
review         latest consensus, else latest: Ok      Blur, Maybe
detector       p < its screening threshold, and the   p >= the threshold
               image is neither unfamiliar nor
               uncertain (a table without an
               ``unfamiliar`` column never clears)
known-safe     the whole dataset, marked by a user    --
EB             never                                  EB above the cut, or EB unknown
NudeNet        never                                  an exposed intimate part
=============  =====================================  ======================================

No evidence at all means **not yet screened**: censored. A flag beats a clearance, with
one exception: a human Ok review newer than every flag. Dataset labels and EB count as
older than every review (they were there when the reviewer looked); detector and NudeNet
flags carry the time they were computed.

Label policy
------------
:data:`VOCABULARY_PATH` (shipped data) maps label words to sensitive or safe; a dataset's
own policy (``<home>/datasets/NAME/policy.json``, set at ingest, by ``python -m lib
policy`` or on the Home page; never needs a re-ingest) maps whole label values, can mark
every unlabelled or unknown image sensitive (``all_sensitive``), and can mark the dataset
known-safe (with who and when). The same policy decides the positive class of every
binary metric (:func:`positive_class`).

Everything here is pure: the callers (app, CLI, notebooks) read the annotation store,
the EB and NudeNet caches and prediction tables, and pass them in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import WorkbenchError

VOCABULARY_PATH = Path(__file__).with_name("label_policy.json")

SENSITIVE, SAFE, UNKNOWN = "sensitive", "safe", "unknown"
CLASSES = (SENSITIVE, SAFE, UNKNOWN)

#: Default EB z-score above which an image is flagged "sensitive by colour": one standard
#: deviation above the collection's mean, a generic cut, not fitted to any corpus.
EB_THRESHOLD = 1.0

#: A prediction table's threshold when it carries none of its own (the gore thesis's
#: gallery rule p >= 0.5).
PRED_THRESHOLD = 0.5

#: NudeNet exposure score at or above which an image is flagged: the midpoint of its
#: detection score, a generic cut (NudeNet itself reports detections from 0.2 up).
NUDITY_THRESHOLD = 0.5

#: Review labels of the default label set and what they are evidence of; other review
#: labels go through the dataset's label policy (a label set of wound types, say).
REVIEW_CLASSES = {"ok": SAFE, "blur": SENSITIVE, "maybe": SENSITIVE}

#: Status of a decision.
FLAGGED, CLEARED, UNSCREENED = "flagged", "cleared", "not yet screened"

#: Evidence kinds, in the order their reasons are listed.
KINDS = ("label", "review", "detector", "NudeNet", "EB", "known-safe")

#: The values of a decision table's ``evidence`` column (the Gallery's filter), in display order.
EVIDENCE_VALUES = (
    "not yet screened", "flagged by label", "flagged by review", "flagged by detector", "flagged by NudeNet",
    "flagged by EB", "cleared by review", "cleared by label", "cleared by detector",
    "cleared by known-safe", "censored: policy error",
)


class PolicyError(WorkbenchError):
    """A label policy cannot be read or set as asked (the message names the file or value)."""


# =========================================================================== words


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_TOKEN = re.compile(r"[a-z]+|[0-9]+")


def words(label) -> tuple[str, ...]:
    """The words of a label value: case- and separator-insensitive.

    ``"Leg-Ulcer_images"``, ``"leg ulcer images"`` and ``"LegUlcerImages"`` all give
    ``("leg", "ulcer", "images")``; missing values give ``()``.
    """
    if label is None or (not isinstance(label, str) and pd.isna(label)):
        return ()
    return tuple(_TOKEN.findall(_CAMEL.sub(" ", str(label)).lower()))


def normal_form(label) -> str:
    """The words of a label joined by single spaces (how explicit policy values compare)."""
    return " ".join(words(label))


@dataclass(frozen=True)
class Vocabulary:
    """Label words that mean sensitive or safe (see :data:`VOCABULARY_PATH`)."""

    sensitive: tuple[tuple[str, ...], ...]
    safe: tuple[tuple[str, ...], ...]
    source: str = ""

    def classify(self, label) -> str:
        """:data:`SENSITIVE`, :data:`SAFE` or :data:`UNKNOWN` for one label value.

        Every entry is looked for as a run of whole words; overlapping matches are
        resolved longest first (``non sensitive`` beats the ``sensitive`` inside it);
        any remaining sensitive match makes the label sensitive, else any safe one safe.
        """
        toks = words(label)
        if not toks:
            return UNKNOWN
        found = []
        for cls, entries in ((SENSITIVE, self.sensitive), (SAFE, self.safe)):
            for e in entries:
                n = len(e)
                for i in range(len(toks) - n + 1):
                    if toks[i:i + n] == e:
                        found.append((n, i, cls))
        taken = np.zeros(len(toks), bool)
        classes = set()
        for n, i, cls in sorted(found, key=lambda t: (-t[0], t[1])):
            if not taken[i:i + n].any():
                taken[i:i + n] = True
                classes.add(cls)
        return SENSITIVE if SENSITIVE in classes else SAFE if SAFE in classes else UNKNOWN


def _json_file(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{path}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Read a vocabulary file (default :data:`VOCABULARY_PATH`).

    Raises :class:`PolicyError` naming the file and line when it cannot be parsed.
    """
    path = Path(path) if path is not None else VOCABULARY_PATH
    data = _json_file(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in (SENSITIVE, SAFE)):
        raise PolicyError(f"{path}: needs lists 'sensitive' and 'safe' of label words")
    entries = {}
    for k in (SENSITIVE, SAFE):
        bad = [v for v in data[k] if not isinstance(v, str) or not words(v)]
        if bad:
            raise PolicyError(f"{path}: {k!r} holds entries that are not words: {bad[:5]}")
        entries[k] = tuple(dict.fromkeys(words(v) for v in data[k]))
    return Vocabulary(entries[SENSITIVE], entries[SAFE], str(path))


@lru_cache(maxsize=4)
def _vocabulary_cached(path: str, mtime_ns: int) -> Vocabulary:
    return load_vocabulary(path)


def vocabulary() -> Vocabulary:
    """The shipped vocabulary (read once per process and whenever the file changes)."""
    return _vocabulary_cached(str(VOCABULARY_PATH), VOCABULARY_PATH.stat().st_mtime_ns)


# =========================================================================== policy


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LabelPolicy:
    """A dataset's label policy.

    Attributes
    ----------
    sensitive, safe : explicit label values (compared by :func:`normal_form`) that mean
        sensitive / safe; they override the vocabulary.
    all_sensitive : images whose label is missing or unknown are flagged (a folder of
        wounds without labels).
    known_safe : ``{"by": name, "at": ISO time}`` when a user marked the whole dataset
        known-safe (every image without a flag is cleared), else None.
    history : the changes made, oldest first (``{"at", "by", "change"}``).
    """

    sensitive: tuple[str, ...] = ()
    safe: tuple[str, ...] = ()
    all_sensitive: bool = False
    known_safe: dict | None = None
    history: tuple[dict, ...] = ()
    vocab: Vocabulary | None = field(default=None, compare=False, repr=False)

    def classify(self, label) -> str:
        """:data:`SENSITIVE`, :data:`SAFE` or :data:`UNKNOWN` for one label value (no
        label is UNKNOWN)."""
        form = normal_form(label)
        if not form:
            return UNKNOWN
        if form in {normal_form(v) for v in self.sensitive}:
            return SENSITIVE
        if form in {normal_form(v) for v in self.safe}:
            return SAFE
        return (self.vocab or vocabulary()).classify(label)

    def source_of(self, label) -> str:
        """Where the class of ``label`` comes from: ``dataset policy`` or ``vocabulary``."""
        form = normal_form(label)
        explicit = {normal_form(v) for v in (*self.sensitive, *self.safe)}
        return "dataset policy" if form and form in explicit else "vocabulary"

    def to_json(self) -> dict:
        return {"version": 1, "sensitive": list(self.sensitive), "safe": list(self.safe),
                "all_sensitive": bool(self.all_sensitive), "known_safe": self.known_safe,
                "history": list(self.history)}

    @classmethod
    def from_json(cls, data, where: str = "policy") -> LabelPolicy:
        if not isinstance(data, dict):
            raise PolicyError(f"{where}: a policy is a JSON object, not {type(data).__name__}")
        for k in ("sensitive", "safe"):
            v = data.get(k, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise PolicyError(f"{where}: {k!r} must be a list of label values")
        ks = data.get("known_safe")
        if ks is not None and not (isinstance(ks, dict) and ks.get("by") and ks.get("at")):
            raise PolicyError(f"{where}: 'known_safe' must be null or {{\"by\": name, \"at\": time}}")
        if not isinstance(data.get("all_sensitive", False), bool):
            raise PolicyError(f"{where}: 'all_sensitive' must be true or false")
        return cls(tuple(data.get("sensitive", [])), tuple(data.get("safe", [])),
                   bool(data.get("all_sensitive", False)), ks, tuple(data.get("history", [])))


def policy_path(name: str) -> Path:
    from .dataset import dataset_dir

    return dataset_dir(name) / "policy.json"


def load_policy(name: str) -> LabelPolicy:
    """Dataset ``name``'s policy (the default, vocabulary only, when none was set).

    Raises :class:`PolicyError` naming the file and line when it cannot be parsed: callers
    that show images must then censor everything (:func:`decide` with ``policy_error``).
    """
    path = policy_path(name)
    if not path.exists():
        return LabelPolicy()
    return LabelPolicy.from_json(_json_file(path), str(path))


def save_policy(name: str, policy: LabelPolicy) -> Path:
    from .files import write_json

    return write_json(policy_path(name), policy.to_json())


def _check_values(values: Iterable[str], known: Sequence[str], flag: str) -> list[str]:
    values = [v.strip() for v in values if str(v).strip()]
    forms = {normal_form(k): k for k in known}
    missing = [v for v in values if normal_form(v) not in forms]
    if missing:
        shown = ", ".join(map(repr, sorted(known))) or "none (the dataset has no labels)"
        raise PolicyError(f"{flag}: {', '.join(map(repr, missing))} "
                          f"{'is' if len(missing) == 1 else 'are'} not a label of this dataset; its labels are {shown}")
    return [forms[normal_form(v)] for v in values]


def set_policy(name: str, *, sensitive: Iterable[str] | None = None, safe: Iterable[str] | None = None,
               unknown: Iterable[str] | None = None, all_sensitive: bool | None = None,
               known_safe: bool | None = None, by: str = "cli") -> LabelPolicy:
    """Change dataset ``name``'s policy and save it; returns the new policy.

    ``sensitive`` / ``safe`` values are added to that side (and taken off the other),
    ``unknown`` values are taken off both, so they fall back to the vocabulary. Every
    value must be a label of the dataset: anything else is a :class:`PolicyError` naming
    the dataset's labels. ``known_safe`` marks (True) or unmarks (False) the dataset,
    recording ``by`` and the time.
    """
    from .dataset import load

    ds = load(name)
    known = sorted(ds.images["label"].dropna().astype(str).unique().tolist())
    pol = load_policy(name)
    sens, safe_, changes = list(pol.sensitive), list(pol.safe), []

    def drop(lst, vals):
        forms = {normal_form(v) for v in vals}
        return [x for x in lst if normal_form(x) not in forms]

    for vals, flag, side in ((sensitive, "--sensitive-labels", SENSITIVE), (safe, "--safe-labels", SAFE),
                             (unknown, "--unknown-labels", UNKNOWN)):
        if vals is None:
            continue
        vals = _check_values(vals, known, flag)
        if not vals:
            continue
        sens, safe_ = drop(sens, vals), drop(safe_, vals)
        if side == SENSITIVE:
            sens += vals
        elif side == SAFE:
            safe_ += vals
        changes.append(f"{', '.join(vals)} -> {side}")
    both = {normal_form(v) for v in sens} & {normal_form(v) for v in safe_}
    if both:
        raise PolicyError(f"labels cannot be both sensitive and safe: {', '.join(sorted(both))}")
    ks = pol.known_safe
    if known_safe is True and not ks:
        ks = {"by": by, "at": _now()}
        changes.append("marked known-safe")
    elif known_safe is False and ks:
        ks = None
        changes.append("known-safe mark removed")
    alls = pol.all_sensitive if all_sensitive is None else bool(all_sensitive)
    if alls != pol.all_sensitive:
        changes.append("all-sensitive " + ("on" if alls else "off"))
    if not changes:
        return pol
    new = replace(pol, sensitive=tuple(sens), safe=tuple(safe_), all_sensitive=alls, known_safe=ks,
                  history=(*pol.history, *({"at": _now(), "by": by, "change": c} for c in changes)))
    save_policy(name, new)
    return new


def label_table(images: pd.DataFrame, policy: LabelPolicy) -> pd.DataFrame:
    """One row per label value of a dataset: ``label, images, class, source`` (the
    policy's table, as the Home page edits it), most frequent first; unlabelled rows
    are one row with label ``(none)``."""
    counts = images["label"].astype("string").fillna("(none)").value_counts()
    rows = []
    for lab, n in counts.items():
        if lab == "(none)":
            cls = SENSITIVE if policy.all_sensitive else UNKNOWN
            src = "all-sensitive" if policy.all_sensitive else "no label"
        else:
            cls = policy.classify(lab)
            src = policy.source_of(lab)
            if cls == UNKNOWN and policy.all_sensitive:
                cls, src = SENSITIVE, "all-sensitive"
        rows.append({"label": str(lab), "images": int(n), "class": cls, "source": src})
    return pd.DataFrame(rows, columns=["label", "images", "class", "source"])


def table_edits(before: pd.DataFrame, after: pd.DataFrame) -> dict:
    """The :func:`set_policy` arguments that turn :func:`label_table` ``before`` into the
    edited ``after`` (same rows, ``class`` changed): a label set to sensitive / safe is added
    to that side, one set to unknown loses its explicit entry; the ``(none)`` row (images
    without a label) switches ``all_sensitive``."""
    out: dict = {"sensitive": [], "safe": [], "unknown": [], "all_sensitive": None}
    was = dict(zip(before["label"], before["class"], strict=True))
    for lab, cls in zip(after["label"], after["class"], strict=True):
        if was.get(lab) == cls:
            continue
        if lab == "(none)":
            out["all_sensitive"] = cls == SENSITIVE
        elif cls in (SENSITIVE, SAFE, UNKNOWN):
            out[cls].append(lab)
    return out


def binary_truth(labels, policy: LabelPolicy) -> pd.Series:
    """Labels as the binary classes ``sensitive`` / ``safe`` under ``policy`` (None where
    unknown or missing), same index as ``labels``."""
    s = labels if isinstance(labels, pd.Series) else pd.Series(list(labels), dtype=object)
    cache: dict = {}
    out = []
    for v in s.tolist():
        key = normal_form(v)
        if key not in cache:
            c = policy.classify(v) if key else UNKNOWN
            cache[key] = None if c == UNKNOWN else c
        out.append(cache[key])
    return pd.Series(out, index=s.index, dtype=object, name=s.name)


def positive_class(labels: Iterable, policy: LabelPolicy | None = None):
    """The positive class of a binary task over these label values, by the policy.

    The one value the policy maps to sensitive when there is exactly one; else 1/True for
    0/1 labels; else None (the caller must ask for ``--positive``). With MedGore's
    Blur/Normal this is Blur, whichever sorts last.
    """
    values = [v for v in dict.fromkeys(labels) if v is not None and not (isinstance(v, float) and v != v)]
    pol = policy or LabelPolicy()
    sens = [v for v in values if not isinstance(v, (bool, int, float, np.number)) and pol.classify(v) == SENSITIVE]
    if len(sens) == 1:
        return sens[0]
    if values and all(v in (0, 1) for v in values if isinstance(v, (bool, int, np.integer))) \
            and all(isinstance(v, (bool, int, np.integer)) for v in values):
        return next((v for v in values if v == 1), 1)
    return None


def review_class_map(labels: Iterable, policy: LabelPolicy | None = None,
                     default: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Review label (Blur / Maybe / Ok) -> the dataset class it confirms, by the policy.

    Blur is the one label value the policy calls sensitive and Ok the one it calls safe
    (MedGore's Blur / Normal, or sensitive / non_sensitive); Maybe is none (unjudged). Where
    the policy does not single out one value per side, ``default`` applies (e.g.
    ``{"Blur": "sensitive", "Ok": "non_sensitive", "Maybe": None}``).
    """
    pol = policy or LabelPolicy()
    values = [v for v in dict.fromkeys(labels) if normal_form(v)]
    sens = [v for v in values if pol.classify(v) == SENSITIVE]
    safe = [v for v in values if pol.classify(v) == SAFE]
    out = dict(default or {"Blur": SENSITIVE, "Ok": "non_sensitive", "Maybe": None})
    if len(sens) == 1:
        out["Blur"] = sens[0]
    if len(safe) == 1:
        out["Ok"] = safe[0]
    out["Maybe"] = None
    return out


# =========================================================================== evidence


@dataclass(frozen=True)
class Screening:
    """A prediction table used as evidence: a detector's, or any table with a probability.

    Attributes
    ----------
    table : DataFrame with ``id`` and ``p`` (or ``score``), optionally ``unfamiliar`` and
        ``uncertain`` (bool). Without an ``unfamiliar`` column the table can flag but never
        clear: nothing says the model has seen images like these.
    threshold : p at or above it flags; below it clears (when familiar and certain).
    name : shown in reasons.
    at : when the table was computed (ISO time): a newer human Ok beats its flags.
    """

    table: pd.DataFrame
    threshold: float = PRED_THRESHOLD
    name: str = "predictions"
    at: str | None = None


def latest_reviews(current: pd.DataFrame, consensus: str = "consensus") -> pd.DataFrame:
    """Per image the review that counts: the consensus when there is one, else the latest
    label of any annotator.

    Parameters
    ----------
    current : :meth:`lib.annotations.AnnotationStore.current` of one dataset
        (``image_id, annotator, label, updated_at``).

    Returns
    -------
    DataFrame ``id, review, reviewer, reviewed_at``, one row per reviewed image.
    """
    cols = ["id", "review", "reviewer", "reviewed_at"]
    if current is None or current.empty:
        return pd.DataFrame(columns=cols)
    df = current.assign(_c=(current["annotator"] == consensus).astype(int))
    df = df.sort_values(["image_id", "_c", "updated_at"], kind="stable").drop_duplicates("image_id", keep="last")
    return pd.DataFrame({"id": df["image_id"].astype(str).to_numpy(), "review": df["label"].astype(str).to_numpy(),
                         "reviewer": df["annotator"].astype(str).to_numpy(),
                         "reviewed_at": df["updated_at"].astype(str).to_numpy()})


def _aligned(values, ids: np.ndarray, column: str, what: str, *, dtype=np.float64, fill=np.nan):
    """``column`` of a table by ``id`` (or a Series by id, or an array (n,)) aligned on ``ids``."""
    if isinstance(values, pd.DataFrame):
        if "id" not in values or column not in values:
            raise ValueError(f"{what} table needs columns 'id' and {column!r}, has {list(values.columns)}")
        values = values.drop_duplicates("id").set_index(values.drop_duplicates("id")["id"].astype(str))[column]
    if isinstance(values, pd.Series):
        s = values.reindex(ids)
        if dtype is np.float64:
            return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
        return s.astype(object).where(s.notna(), fill).to_numpy()
    arr = np.asarray(values, dtype=dtype if dtype is np.float64 else object)
    if arr.shape != (len(ids),):
        raise ValueError(f"{what} has shape {arr.shape}, expected ({len(ids)},) or a table by id")
    return arr


def _cut(t: float) -> str:
    """A threshold as people write it: 1.0, 0.25."""
    return f"{t:.1f}" if round(t, 1) == t else f"{t:.2f}"


def _short_time(at) -> str:
    return str(at)[:16].replace("T", " ") if at else "?"


def decide(
    images: pd.DataFrame,
    *,
    policy: LabelPolicy | None = None,
    reviews: pd.DataFrame | None = None,
    eb: pd.DataFrame | None = None,
    eb_threshold: float = EB_THRESHOLD,
    nudity: pd.DataFrame | None = None,
    nudity_threshold: float = NUDITY_THRESHOLD,
    nudity_at: str | None = None,
    screening: Screening | None = None,
    policy_error: str | None = None,
) -> pd.DataFrame:
    """The safe view's decision for every row of a dataset, with its reason.

    Parameters
    ----------
    images : a dataset's images table (``id``, ``label``), n rows.
    policy : the dataset's :class:`LabelPolicy` (default: the vocabulary alone).
    reviews : :func:`latest_reviews` (``id, review, reviewer, reviewed_at``).
    eb : EB table with ``id, eb`` (and optionally ``error``); when given, an image whose EB
        could not be computed is flagged, as an unreadable image.
    nudity : NudeNet table ``id, nudity`` (highest exposure score), optionally ``part`` and
        ``at`` (when it was computed; else ``nudity_at``); images missing from it (not
        checked) are not flagged by it.
    screening : a detector's (or any) prediction table, see :class:`Screening`.
    policy_error : the dataset's policy could not be read: every image is censored with this
        reason (the app never fails open).

    Returns
    -------
    DataFrame (n, 10), one row per dataset row in order: ``id, label, label_class``
    (sensitive / safe / unknown), ``eb, p`` (NaN when absent), ``censored`` (bool: what the
    safe view does), ``status`` (flagged / cleared / not yet screened), ``basis`` (the
    evidence kind that decided, or ``none``), ``evidence`` (``"<status> by <basis>"``, the
    Gallery's filter, one of :data:`EVIDENCE_VALUES`) and ``reason`` (one line, never empty).
    """
    policy = policy or LabelPolicy()
    ids = images["id"].astype(str).to_numpy()
    n = len(ids)
    labels = images["label"].tolist() if "label" in images else [None] * n

    # -- per distinct label: its class, once
    lab_cls: dict = {}
    for v in labels:
        k = normal_form(v)
        if k not in lab_cls:
            c = policy.classify(v) if k else UNKNOWN
            lab_cls[k] = SENSITIVE if (c == UNKNOWN and policy.all_sensitive) else c
    label_class = [lab_cls[normal_form(v)] for v in labels]
    raw_class = [policy.classify(v) if normal_form(v) else UNKNOWN for v in labels] if policy.all_sensitive \
        else label_class

    # -- reviews
    if reviews is not None and len(reviews):
        r = reviews.drop_duplicates("id", keep="last").set_index(reviews.drop_duplicates("id", keep="last")["id"])
        r = r.reindex(ids)
        rev_label, rev_by, rev_at = r["review"].tolist(), r["reviewer"].tolist(), r["reviewed_at"].tolist()
    else:
        rev_label = rev_by = rev_at = [None] * n

    def review_class(v):
        if v is None or (isinstance(v, float) and v != v):
            return None
        c = REVIEW_CLASSES.get(str(v).strip().lower()) or policy.classify(v)
        return None if c == UNKNOWN else c

    # -- machine evidence
    ebv = np.full(n, np.nan) if eb is None else _aligned(eb, ids, "eb", "eb")
    eb_err = _aligned(eb, ids, "error", "eb", dtype=object, fill=None) if eb is not None and "error" in eb \
        else [None] * n
    nud = np.full(n, np.nan) if nudity is None else _aligned(nudity, ids, "nudity", "nudity")
    part = _aligned(nudity, ids, "part", "nudity", dtype=object, fill=None) \
        if nudity is not None and "part" in nudity else [None] * n
    nud_at = _aligned(nudity, ids, "at", "nudity", dtype=object, fill=None) \
        if nudity is not None and "at" in nudity else [nudity_at] * n
    if screening is not None:
        t = screening.table
        col = "p" if "p" in t else "score"
        p = _aligned(t, ids, col, "screening")
        familiar_known = "unfamiliar" in t
        unfam = _aligned(t, ids, "unfamiliar", "screening", dtype=object, fill=None) if familiar_known else [None] * n
        uncert = _aligned(t, ids, "uncertain", "screening", dtype=object, fill=None) if "uncertain" in t \
            else [None] * n
    else:
        p = np.full(n, np.nan)
        familiar_known, unfam, uncert = False, [None] * n, [None] * n

    censored = np.ones(n, bool)
    status, basis, reason = [UNSCREENED] * n, ["none"] * n, [""] * n
    eb_list, p_list, nud_list = ebv.tolist(), p.tolist(), nud.tolist()
    for i in range(n):
        if policy_error:
            status[i], basis[i], reason[i] = FLAGGED, "policy error", f"censored: {policy_error}"
            continue
        flags: list[tuple[str, str, str | None]] = []  # (kind, reason, time; None: older than any review)
        clears: list[tuple[str, str]] = []
        lab = labels[i]
        if label_class[i] == SENSITIVE:
            flags.append(("label", f"label {lab} → sensitive" if raw_class[i] == SENSITIVE else
                          "dataset marked all-sensitive" + (f" (label {lab} → unknown)" if normal_form(lab) else ""),
                          None))
        elif label_class[i] == SAFE:
            clears.append(("label", f"label {lab} → safe"))
        rc = review_class(rev_label[i])
        rtxt = f"review: {rev_label[i]} ({rev_by[i]}, {_short_time(rev_at[i])})" if rc else ""
        if rc == SENSITIVE:
            flags.append(("review", rtxt, rev_at[i]))
        elif rc == SAFE:
            clears.insert(0, ("review", rtxt))
        detector_note = ""
        if screening is not None and np.isfinite(p_list[i]):
            name, thr = screening.name, screening.threshold
            if p_list[i] >= thr:
                flags.append(("detector", f"{name}: p {p_list[i]:.2f} ≥ {thr:.2f}", screening.at))
            elif not familiar_known:  # a table that cannot tell familiar images never clears
                detector_note = f" ({name}: p {p_list[i]:.2f} < {thr:.2f}, but it has no familiarity check)"
            elif unfam[i] is None or bool(unfam[i]):
                detector_note = f" ({name}: unfamiliar image)"
            elif uncert[i] is not None and bool(uncert[i]):
                detector_note = f" ({name}: uncertain under flips and rotations)"
            else:
                clears.append(("detector", f"{name}: p {p_list[i]:.2f} < {thr:.2f}, familiar"))
        if np.isfinite(nud_list[i]) and nud_list[i] >= nudity_threshold:
            flags.append(("NudeNet", f"NudeNet: {part[i] or 'exposed'} {nud_list[i]:.2f}", nud_at[i]))
        if eb is not None:
            if not np.isfinite(eb_list[i]):
                flags.append(("EB", f"unreadable: {eb_err[i]}" if eb_err[i] else "EB unknown", None))
            elif eb_list[i] > eb_threshold:
                flags.append(("EB", f"EB {eb_list[i]:.2f} > {_cut(eb_threshold)}", None))
        if policy.known_safe:
            clears.append(("known-safe", f"known-safe dataset ({policy.known_safe.get('by')}, "
                                         f"{_short_time(policy.known_safe.get('at'))})"))
        if flags:
            flags.sort(key=lambda f: KINDS.index(f[0]))
            newest = max((str(f[2]) for f in flags if f[2]), default=None)
            if rc == SAFE and (newest is None or str(rev_at[i]) > newest):
                censored[i] = False
                status[i], basis[i] = CLEARED, "review"
                reason[i] = f"{rtxt}, newer than: " + "; ".join(f[1] for f in flags)
            else:
                status[i], basis[i] = FLAGGED, flags[0][0]
                reason[i] = "; ".join(f[1] for f in flags)
        elif clears:
            censored[i] = False
            status[i], basis[i], reason[i] = CLEARED, clears[0][0], clears[0][1]
        else:
            reason[i] = UNSCREENED + (detector_note or (f" (label {lab} → unknown)" if normal_form(lab) else ""))
    evidence = [UNSCREENED if s == UNSCREENED else "censored: policy error" if b == "policy error" else f"{s} by {b}"
                for s, b in zip(status, basis, strict=True)]
    return pd.DataFrame({
        "id": ids, "label": np.asarray(labels, dtype=object), "label_class": label_class, "eb": ebv, "p": p,
        "censored": censored, "status": status, "basis": basis, "evidence": evidence, "reason": reason,
    })


def breakdown(decision: pd.DataFrame) -> pd.DataFrame:
    """Counts of a :func:`decide` table: ``shown`` (censored / raw), ``evidence``, ``images``,
    one row per evidence value present, censored first."""
    shown = np.where(decision["censored"].to_numpy(bool), "censored", "raw")
    out = (pd.DataFrame({"shown": shown, "evidence": decision["evidence"].to_numpy()})
           .value_counts().rename("images").reset_index())
    order = {v: i for i, v in enumerate(EVIDENCE_VALUES)}
    return (out.assign(_o=out["evidence"].map(order).fillna(99), _s=(out["shown"] == "raw").astype(int))
            .sort_values(["_s", "_o"]).drop(columns=["_o", "_s"]).reset_index(drop=True))


def censored_by_id(decision: pd.DataFrame) -> Mapping[str, bool]:
    """{content id: censored} of a :func:`decide` table. Byte-identical copies share one
    entry, censored when any of their rows is (their labels may differ)."""
    ids, cens = decision["id"].tolist(), decision["censored"].astype(bool).tolist()
    out: dict[str, bool] = {}
    for i, c in zip(ids, cens, strict=True):
        out[i] = out.get(i, False) or c
    return out


def by_id(decision: pd.DataFrame) -> dict[str, tuple[bool, str]]:
    """{content id: (censored, reason)} of a :func:`decide` table. Byte-identical copies
    share one entry, censored when any of their rows is (their labels may differ), with
    the reason of that row."""
    out: dict[str, tuple[bool, str]] = {}
    for i, c, r in zip(decision["id"].tolist(), decision["censored"].astype(bool).tolist(),
                       decision["reason"].tolist(), strict=True):
        if i not in out or (c and not out[i][0]):
            out[i] = (c, r)
    return out



def must_censor(censored) -> bool:
    """Whether an image with this ``censored`` flag must be censored.

    Fail-safe: only an explicit False (bool, numpy bool or 0) shows the image; True, None,
    NaN, pandas NA, strings and anything else censor it.
    """
    if isinstance(censored, (bool, np.bool_)):
        return bool(censored)
    if isinstance(censored, (int, np.integer)) and censored in (0, 1):
        return bool(censored)
    return True
