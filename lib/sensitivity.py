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
import threading
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


#: Words that turn the safe word after them into no evidence ("not normal" is not safe).
NEGATIONS = frozenset({"not", "non", "no", "never", "without", "un", "ab"})


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
        A safe word right after a negation (:data:`NEGATIONS`: ``not normal``, ``non ok``)
        is no evidence of safety: fail-closed, the label stays unknown unless an entry
        names the whole phrase (``not sensitive``).
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
                if not (cls == SAFE and i > 0 and toks[i - 1] in NEGATIONS):
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


def with_positive(policy: LabelPolicy, labels: Iterable, positive, *, where: str = "this dataset") -> LabelPolicy:
    """``policy`` for one run where label value ``positive`` (a ``--positive`` flag) is the
    sensitive class and every other label value safe; ``positive=None`` keeps ``policy``.

    Only labels count then (all-sensitive and known-safe are off for the run). Raises
    :class:`PolicyError` naming the known values when ``positive`` is not one of ``labels``.
    """
    if positive is None:
        return policy
    known = sorted({str(v) for v in labels if normal_form(v)})
    forms = {normal_form(k): k for k in known}
    pos = forms.get(normal_form(positive))
    if pos is None:
        shown = ", ".join(map(repr, known)) or "none (no labels)"
        raise PolicyError(f"--positive {positive!r} is not a label of {where}; its labels are {shown}")
    return replace(policy, sensitive=(pos,), safe=tuple(k for k in known if k != pos), all_sensitive=False,
                   known_safe=None)


def run_policy(name: str, positive=None, labels: Iterable | None = None) -> LabelPolicy:
    """The label policy a run over dataset ``name`` uses to decide its binary classes: the
    dataset's own (:func:`load_policy`), or with ``positive`` as the sensitive class
    (:func:`with_positive`; ``labels`` default to the dataset's)."""
    pol = load_policy(name)
    if positive is None:
        return pol
    if labels is None:
        from .dataset import load

        labels = load(name).images["label"].dropna().unique()
    return with_positive(pol, labels, positive, where=f"dataset {name!r}")


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

        Optionally ``review_class`` (sensitive / safe, from a label set's meanings), kept.

    Returns
    -------
    DataFrame ``id, review, reviewer, reviewed_at`` (and ``review_class`` when given), one
    row per reviewed image.
    """
    cols = ["id", "review", "reviewer", "reviewed_at"]
    if current is None or current.empty:
        return pd.DataFrame(columns=cols)
    # Only images with several labels need ordering (1.1M labels, a tenth doubled: 2.3 -> 0.5 s);
    # the rest keep their one row, in input order, which is by image_id from the store.
    current = current.reset_index(drop=True)
    several = current["image_id"].duplicated(keep=False).to_numpy(dtype=bool)
    keep = ~several
    if several.any():
        sub = current[several].assign(_c=(current["annotator"][several] == consensus).astype(int))
        chosen = sub.sort_values(["image_id", "_c", "updated_at"], kind="stable").drop_duplicates("image_id", keep="last")
        keep[chosen.index.to_numpy()] = True
    df = current[keep]
    if not df["image_id"].is_monotonic_increasing:
        df = df.sort_values("image_id", kind="stable")
    out = pd.DataFrame({"id": df["image_id"].astype(str).to_numpy(), "review": df["label"].astype(str).to_numpy(),
                        "reviewer": df["annotator"].astype(str).to_numpy(),
                        "reviewed_at": df["updated_at"].astype(str).to_numpy()})
    if "review_class" in df:
        out["review_class"] = df["review_class"].to_numpy()
    return out


# per thread: the app's sessions are threads, and a memo keyed by object ids must never
# outlive (or be cleared under) the decide() that filled it
_POSITIONS = threading.local()


def _positions(table: pd.DataFrame, ids: np.ndarray) -> np.ndarray | None:
    """Row of ``table`` for each of ``ids`` (-1 where absent; the first row of a repeated id),
    or None when the table is already aligned with ``ids`` (the common case: one row per
    dataset row, in order). Memoised per (table, ids) object pair for one :func:`decide`."""
    memo = _POSITIONS.__dict__.setdefault("memo", {})
    key = (id(table), id(ids))
    if key in memo:
        return memo[key]
    tid = table["id"].astype(str).to_numpy()
    if len(tid) == len(ids) and np.array_equal(tid, ids):
        pos = None
    elif not len(tid):  # an empty table (none of these images scored): absent everywhere
        pos = np.full(len(ids), -1, dtype=np.intp)
    else:
        index = pd.Index(tid)
        if not index.is_unique:
            keep = ~index.duplicated(keep="first")
            index, rows = index[keep], np.flatnonzero(keep)
        else:
            rows = np.arange(len(tid))
        found = index.get_indexer(ids)
        pos = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
    memo[key] = pos
    return pos


def _aligned(values, ids: np.ndarray, column: str, what: str, *, dtype=np.float64, fill=np.nan):
    """``column`` of a table by ``id`` (or a Series by id, or an array (n,)) aligned on ``ids``."""
    if isinstance(values, pd.DataFrame):
        if "id" not in values or column not in values:
            raise ValueError(f"{what} table needs columns 'id' and {column!r}, has {list(values.columns)}")
        pos = _positions(values, ids)
        col = values[column]
        if dtype is np.float64:
            arr = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            arr = np.asarray(col.astype(object).where(col.notna(), fill).tolist(), dtype=object)
        if pos is None:
            return arr
        out = arr[np.maximum(pos, 0)] if len(arr) else np.full(len(ids), fill, dtype=arr.dtype)
        out[pos < 0] = fill
        return out
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
    _POSITIONS.memo = {}
    policy = policy or LabelPolicy()
    ids = images["id"].astype(str).to_numpy()
    n = len(ids)
    label_s = images["label"] if "label" in images else pd.Series([None] * n)
    labels = np.asarray(label_s.astype(object).where(label_s.notna(), None).tolist(), dtype=object)
    if policy_error:
        return _frame(ids, labels, np.full(n, UNKNOWN, object), np.full(n, np.nan), np.full(n, np.nan),
                      np.ones(n, bool), np.full(n, FLAGGED, object), np.full(n, "policy error", object),
                      np.full(n, f"censored: {policy_error}", object))

    # -- labels: once per distinct value
    codes, uniq = pd.factorize(pd.Series(labels, dtype=object), use_na_sentinel=True)
    u_cls, u_flag, u_clear = [], [], []
    for v in uniq.tolist():
        c = policy.classify(v)
        if c == UNKNOWN and policy.all_sensitive:
            u_cls.append(SENSITIVE)
            u_flag.append(f"dataset marked all-sensitive (label {v} → unknown)" if normal_form(v)
                          else "dataset marked all-sensitive")
            u_clear.append("")
        else:
            u_cls.append(c)
            u_flag.append(f"label {v} → sensitive" if c == SENSITIVE else "")
            u_clear.append(f"label {v} → safe" if c == SAFE else "")
    none_cls = SENSITIVE if policy.all_sensitive else UNKNOWN
    none_flag = "dataset marked all-sensitive" if policy.all_sensitive else ""

    def per_row(values, missing):
        arr = np.asarray([*values, missing], dtype=object)
        return arr[np.where(codes < 0, len(values), codes)]

    label_class = per_row(u_cls, none_cls)
    r_label = per_row(u_flag, none_flag)
    c_label = per_row(u_clear, "")
    f_label = r_label != ""
    unknown_note = per_row([f" (label {v} → unknown)" if c == UNKNOWN and normal_form(v) else ""
                            for v, c in zip(uniq.tolist(), u_cls, strict=True)], "")

    # -- reviews: joined to the rows by id (every copy of an id gets its review), classes per
    # distinct label value (a loop over 1M reviewed images cost seconds of a page's first run)
    rc = np.full(n, None, dtype=object)
    r_review = np.full(n, "", dtype=object)
    t_review = np.full(n, "", dtype=object)
    if reviews is not None and len(reviews):
        r = reviews.drop_duplicates("id", keep="last")
        r = r[r["review"].notna().to_numpy(bool)]
        labs = r["review"].to_numpy(dtype=object)
        by_value = {v: REVIEW_CLASSES.get(str(v).strip().lower()) or policy.classify(v) for v in pd.unique(labs)}
        cls = np.array([by_value[v] for v in labs], dtype=object) if len(labs) else np.zeros(0, dtype=object)
        if "review_class" in r:
            given = r["review_class"].to_numpy(dtype=object, copy=True)
            own = np.isin(given, np.array([SENSITIVE, SAFE], dtype=object))
            cls[own] = given[own]
        keep = cls != UNKNOWN
        at = r["reviewed_at"]
        at_s = at.astype(str).to_numpy(dtype=object, copy=True)
        short = pd.Series(at_s, dtype=object).str.slice(0, 16).str.replace("T", " ", regex=False).to_numpy(
            dtype=object, copy=True)
        short[(at.isna() | (at.astype(str) == "")).to_numpy(bool)] = "?"
        text = ("review: " + pd.Series(labs, dtype=object).astype(str) + " (" + r["reviewer"].astype(str).to_numpy(
            dtype=object) + ", " + short + ")").to_numpy(dtype=object)
        rows_of = pd.DataFrame({"id": pd.Series(ids, dtype=object).astype(str).to_numpy(dtype=object),
                                "row": np.arange(n)})
        hits = rows_of.merge(pd.DataFrame({"id": r["id"].astype(str).to_numpy(dtype=object)[keep],
                                           "k": np.flatnonzero(keep)}), on="id", how="inner")
        rows, k = hits["row"].to_numpy(np.int64), hits["k"].to_numpy(np.int64)
        rc[rows], r_review[rows], t_review[rows] = cls[k], text[k], at_s[k]
    f_review = rc == SENSITIVE
    ok = rc == SAFE

    # -- detector
    p = np.full(n, np.nan)
    f_det = np.zeros(n, bool)
    c_det = np.zeros(n, bool)
    det_note = np.full(n, "", dtype=object)
    r_det = np.full(n, "", dtype=object)
    if screening is not None:
        t = screening.table
        p = _aligned(t, ids, "p" if "p" in t else "score", "screening")
        thr, name = float(screening.threshold), screening.name
        have = np.isfinite(p)
        f_det = have & (p >= thr)
        below = have & (p < thr)
        ptxt = np.char.mod("%.2f", np.nan_to_num(p)).astype(object)
        r_det[f_det] = f"{name}: p " + ptxt[f_det] + f" ≥ {thr:.2f}"
        if "unfamiliar" not in t:  # a table that cannot tell familiar images never clears
            det_note[below] = f" ({name}: p " + ptxt[below] + f" < {thr:.2f}, but it has no familiarity check)"
        else:
            unfam = _bool_or_true(_aligned(t, ids, "unfamiliar", "screening", dtype=object, fill=None))
            uncert = _bool_or_false(_aligned(t, ids, "uncertain", "screening", dtype=object, fill=None)) \
                if "uncertain" in t else np.zeros(n, bool)
            det_note[below & unfam] = f" ({name}: unfamiliar image)"
            det_note[below & ~unfam & uncert] = f" ({name}: uncertain under flips and rotations)"
            c_det = below & ~unfam & ~uncert
        c_reason_det = np.full(n, "", dtype=object)
        c_reason_det[c_det] = f"{name}: p " + ptxt[c_det] + f" < {thr:.2f}, familiar"
    else:
        c_reason_det = np.full(n, "", dtype=object)
    t_det = str(screening.at) if screening is not None and screening.at else ""

    # -- NudeNet
    f_nud = np.zeros(n, bool)
    r_nud = np.full(n, "", dtype=object)
    t_nud = np.full(n, "", dtype=object)
    if nudity is not None:
        nud = _aligned(nudity, ids, "nudity", "nudity")
        f_nud = np.isfinite(nud) & (nud >= nudity_threshold)
        part = _aligned(nudity, ids, "part", "nudity", dtype=object, fill=None) if "part" in nudity \
            else np.full(n, None, dtype=object)
        at = _aligned(nudity, ids, "at", "nudity", dtype=object, fill=None) if "at" in nudity \
            else np.full(n, nudity_at, dtype=object)
        for k in np.flatnonzero(f_nud).tolist():
            r_nud[k] = f"NudeNet: {str(part[k] or 'exposed').replace('_', ' ').lower()} {nud[k]:.2f}"
            t_nud[k] = str(at[k]) if at[k] else ""

    # -- EB
    ebv = np.full(n, np.nan) if eb is None else _aligned(eb, ids, "eb", "eb")
    f_eb = np.zeros(n, bool)
    r_eb = np.full(n, "", dtype=object)
    if eb is not None:
        missing = ~np.isfinite(ebv)
        high = ~missing & (ebv > eb_threshold)
        f_eb = missing | high
        r_eb[high] = "EB " + np.char.mod("%.2f", ebv[high]).astype(object) + f" > {_cut(eb_threshold)}"
        err = _aligned(eb, ids, "error", "eb", dtype=object, fill=None) if "error" in eb \
            else np.full(n, None, dtype=object)
        for k in np.flatnonzero(missing).tolist():
            r_eb[k] = f"unreadable: {err[k]}" if err[k] else "EB unknown"

    # -- the decision
    flags = [("label", f_label, r_label), ("review", f_review, np.where(f_review, r_review, "")), ("detector", f_det, r_det),
             ("NudeNet", f_nud, r_nud), ("EB", f_eb, r_eb)]  # in KINDS order
    any_flag = np.zeros(n, bool)
    for _, f, _ in flags:
        any_flag |= f
    known_safe = bool(policy.known_safe)
    any_clear = ok | (c_label != "") | c_det | known_safe
    # A human Ok beats every flag older than it (labels and EB count as older than any review).
    # (an Ok row is no sensitive review: its rivals are the detector's and NudeNet's times)
    ok_wins = ok & any_flag
    tr = t_review.astype(str)
    for t, f in ((np.full(n, str(t_det), dtype=object), f_det), (t_nud.astype(str), f_nud)):
        rival = np.asarray(f, bool) & (t != "")
        ok_wins &= ~rival | np.asarray(tr > t.astype(str), bool)
    censored = np.where(any_flag, ~ok_wins, ~any_clear)
    status = np.where(~censored, CLEARED, np.where(any_flag, FLAGGED, UNSCREENED)).astype(object)
    basis = np.full(n, "none", dtype=object)
    for kind, f, _ in reversed(flags):
        basis[f & censored] = kind
    cleared = ~censored
    for kind, c in (("known-safe", np.full(n, known_safe)), ("detector", c_det), ("label", c_label != ""),
                    ("review", ok)):
        basis[cleared & c] = kind
    reason = np.full(n, "", dtype=object)
    # "; ".join of each row's non-empty flag reasons, column by column (a per-row join cost
    # seconds at 1M rows)
    flag_text = np.full(n, "", dtype=object)
    for _, _, r in flags:
        r = np.asarray(r, dtype=object)
        has, had = r != "", flag_text != ""
        both = has & had
        flag_text[both] = flag_text[both] + "; " + r[both]
        only = has & ~had
        flag_text[only] = r[only]
    flag_text[~any_flag] = ""
    reason[any_flag & censored] = flag_text[any_flag & censored]
    reason[ok_wins] = r_review[ok_wins] + ", newer than: " + flag_text[ok_wins]
    plain = cleared & ~any_flag
    ks_text = f"known-safe dataset ({policy.known_safe.get('by')}, {_short_time(policy.known_safe.get('at'))})" \
        if known_safe else ""
    clear_text = np.where(ok, r_review, np.where(c_label != "", c_label, np.where(c_det, c_reason_det, ks_text)))
    reason[plain] = clear_text[plain]
    uns = status == UNSCREENED
    reason[uns] = UNSCREENED + np.where(det_note != "", det_note, unknown_note)[uns]
    _POSITIONS.memo = {}
    return _frame(ids, labels, label_class, ebv, p, censored, status, basis, reason)


def _bool_or_true(values) -> np.ndarray:
    """Booleans of an object array; a missing value (None, NaN) is True (unfamiliar: fail-closed)."""
    return np.asarray([True if v is None or (isinstance(v, float) and v != v) else bool(v) for v in values], bool)


def _bool_or_false(values) -> np.ndarray:
    return np.asarray([False if v is None or (isinstance(v, float) and v != v) else bool(v) for v in values], bool)


#: The columns of a :func:`decide` table, in order.
DECISION_COLUMNS = ["id", "label", "label_class", "eb", "p", "censored", "status", "basis", "evidence", "reason"]


def _frame(ids, labels, label_class, ebv, p, censored, status, basis, reason) -> pd.DataFrame:
    status = np.asarray(status, dtype=object)
    basis = np.asarray(basis, dtype=object)
    evidence = np.where(status == UNSCREENED, UNSCREENED,
                        np.where(basis == "policy error", "censored: policy error", status + " by " + basis))
    return pd.DataFrame({
        "id": ids, "label": labels, "label_class": np.asarray(label_class, dtype=object), "eb": ebv, "p": p,
        "censored": np.asarray(censored, bool), "status": status, "basis": basis, "evidence": evidence.astype(object),
        "reason": np.asarray(reason, dtype=object),
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


def served(decision: pd.DataFrame, copies=None) -> tuple[np.ndarray, np.ndarray]:
    """What the safe view serves for each row of a :func:`decide` table: (censored (n,) bool,
    source (n,) int64: the row whose reason it shows). Byte-identical copies (rows sharing a
    content id) are served alike: censored when any of them is, with the reason of that id's
    first censored row, else of its first row; every other row is its own source.

    ``copies``: (n,) bool, True on the rows whose id has more than one row (the dataset knows
    them: :attr:`lib.dataset.Dataset.copy_rows`); None finds them here. Only those rows are
    grouped, so a collection without copies costs one column read (1M rows: ms, where a
    dict of every id took seconds of a fresh server's first page).
    """
    censored = decision["censored"].to_numpy(dtype=bool).copy()
    source = np.arange(len(decision), dtype=np.int64)
    if copies is None:
        copies = decision["id"].duplicated(keep=False).to_numpy(dtype=bool)
    rows = np.flatnonzero(np.asarray(copies, dtype=bool))
    if len(rows):
        codes = pd.factorize(decision["id"].iloc[rows].to_numpy(dtype=object))[0]
        order = np.lexsort((np.arange(len(rows)), ~censored[rows], codes))  # per id: censored rows first, in order
        first = np.r_[True, codes[order][1:] != codes[order][:-1]]
        rep = np.empty(codes.max() + 1, np.int64)
        rep[codes[order][first]] = rows[order][first]
        source[rows] = rep[codes]
        censored[rows] = censored[source[rows]]
    return censored, source


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
