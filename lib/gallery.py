"""The tables behind the app's pages: a dataset's EB scores, filters and pages of rows,
neighbour-set overlap, model agreement, edited class sets, mask overlays and uploads.

No Streamlit here: the pages only draw what these functions return.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .colorscore import DEFAULT_PARAMS, ColorParams
from .errors import ImageError

#: Columns never offered as filters (unique per image, or numbers shown elsewhere).
NOT_FILTERS = ("id", "path", "caption", "width", "height", "duplicate_of", "mask")

#: Largest upload accepted for a query image.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


# --------------------------------------------------------------------------- EB


def eb_scores(ds, params: ColorParams = DEFAULT_PARAMS, *, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """EB colour scores of every row of a dataset (fractions cached on disk per content id).

    Returns
    -------
    DataFrame (n, 10), one row per dataset row in order: id, label, split, blood, skin,
    z_blood, z_skin, eb (NaN where the image could not be scored), error, row. z-scores
    are taken over the dataset's own images.
    """
    from . import catalog, colorscore, files

    token = catalog.dataset_token(ds.name)
    if token == "0":  # not a saved dataset: nothing to key a stored table by
        return _eb_scores(ds, params, workers, progress)
    parts = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in colorscore.FractionCache(params).parts()]
    key = [ds.name, token, len(ds.images), repr(params), parts, files.code_stamp(colorscore, sys.modules[__name__])]
    # Stored only when every image was scored: a failed one is tried again by the next process.
    return files.stored_table("eb", ds.name, key, lambda: _eb_scores(ds, params, workers, progress),
                              valid=lambda t: len(t) == len(ds.images) and list(t.columns) == EB_COLUMNS,
                              keep=lambda t: not t["error"].notna().any())


#: The columns of :func:`eb_scores`, in order.
EB_COLUMNS = ["id", "label", "split", "blood", "skin", "z_blood", "z_skin", "eb", "error", "row"]


def _eb_scores(ds, params: ColorParams, workers: int | None, progress) -> pd.DataFrame:
    from .colorscore import eb_table, score_dataset_rows

    images = ds.images
    frac = score_dataset_rows(ds, params, workers=workers, progress=progress)
    if np.isfinite(frac["blood"].to_numpy()).any() and np.isfinite(frac["skin"].to_numpy()).any():
        table = eb_table(frac)
    else:  # nothing scorable: no mean/sd to take
        table = frac.assign(z_blood=np.nan, z_skin=np.nan, eb=np.nan)
    out = pd.DataFrame({"id": table["id"].to_numpy(), "label": images["label"].to_numpy(),
                        # None for a missing split, as a stored table reads back (never pd.NA)
                        "split": images["split"].to_numpy(dtype=object, na_value=None) if "split" in images else None})
    for c in ("blood", "skin", "z_blood", "z_skin", "eb", "error"):
        out[c] = table[c].to_numpy()
    out["row"] = np.arange(len(out))
    return out


# --------------------------------------------------------------------------- filters


def filter_options(images: pd.DataFrame, max_values: int = 50) -> dict[str, list]:
    """Columns worth a multiselect filter and their values (sorted, missing as ``"(none)"``).

    label and split come first when present; other metadata columns are offered when they
    have between 2 and ``max_values`` distinct values.
    """
    out: dict[str, list] = {}
    cols = [c for c in ("label", "split") if c in images] + \
        [c for c in images.columns if c not in ("label", "split", *NOT_FILTERS)]
    for c in cols:  # distinct values first, then strings: 1M rows hold a few dozen values
        uniq = pd.Series(images[c].unique()).astype("string").fillna("(none)").unique()
        if c in ("label", "split") and len(uniq) >= 1 and not (len(uniq) == 1 and uniq[0] == "(none)") \
                or 2 <= len(uniq) <= max_values:
            out[c] = sorted(map(str, uniq))
    return out


def filter_rows(
    images: pd.DataFrame,
    *,
    equals: Mapping[str, Sequence] | None = None,
    eb: pd.DataFrame | None = None,
    eb_range: tuple[float, float] | None = None,
    preds: pd.DataFrame | None = None,
    pred_values: Sequence | None = None,
    score_range: tuple[float, float] | None = None,
    ids: Iterable[str] | None = None,
    id_prefix: str | None = None,
    path_contains: str | None = None,
    decision: pd.DataFrame | None = None,
    evidence: Sequence[str] | None = None,
    censored: bool | None = None,
) -> np.ndarray:
    """Row numbers (into ``images``) that pass every given filter, in order.

    Parameters
    ----------
    equals : {column: allowed values}; ``"(none)"`` matches a missing value; an empty list
        allows everything.
    eb, eb_range : table from :func:`eb_scores` (aligned with the rows) and an inclusive
        range; rows without an EB fail a range filter.
    preds, pred_values, score_range : a prediction table (id, score, pred) and the allowed
        predicted classes / score range; rows without a prediction fail these filters.
    ids : keep only these content ids (e.g. a selection made on another page).
    id_prefix : keep ids starting with this (case-insensitive).
    path_contains : keep rows whose path (folders and file name) contains this, case-insensitive.
    decision, evidence, censored : the safe view's table (:func:`lib.sensitivity.decide`,
        aligned with the rows), the wanted values of its ``evidence`` column (empty: all) and
        of its ``censored`` column (None: both).
    """
    n = len(images)
    keep = np.ones(n, bool)
    for col, allowed in (equals or {}).items():
        if not allowed or col not in images:
            continue
        values = images[col].astype("string").fillna("(none)")
        keep &= values.isin([str(a) for a in allowed]).to_numpy(dtype=bool)
    if eb_range is not None and eb is not None:
        v = eb["eb"].to_numpy(dtype=np.float64)
        keep &= (v >= eb_range[0]) & (v <= eb_range[1])
    if preds is not None and (pred_values or score_range is not None):
        p = preds.drop_duplicates("id").set_index("id").reindex(images["id"].astype(str))
        if pred_values:
            keep &= p["pred"].astype("string").isin([str(v) for v in pred_values]).fillna(False).to_numpy(bool)
        if score_range is not None:
            s = pd.to_numeric(p["score"], errors="coerce").to_numpy(dtype=np.float64)
            keep &= (s >= score_range[0]) & (s <= score_range[1])
    if ids is not None:
        keep &= images["id"].astype(str).isin(set(map(str, ids))).to_numpy(bool)
    if id_prefix:
        keep &= images["id"].astype(str).str.startswith(id_prefix.strip().lower()).to_numpy(bool)
    if path_contains and path_contains.strip():
        keep &= images["path"].astype(str).str.lower().str.contains(path_contains.strip().lower(), regex=False) \
            .to_numpy(bool)
    if decision is not None and evidence:
        keep &= decision["evidence"].isin(list(evidence)).to_numpy(bool)
    if decision is not None and censored is not None:
        keep &= decision["censored"].to_numpy(bool) == bool(censored)
    return np.flatnonzero(keep)


def file_name(path: str, limit: int = 40) -> str:
    """The file name of a dataset path, shortened in the middle past ``limit`` characters
    (the start and the extension both stay readable)."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep - keep // 3] + "…" + name[-(keep // 3):]


def where_rows(images: pd.DataFrame, conditions: Sequence[str]) -> np.ndarray:
    """Row numbers matching every condition: ``col=value`` (equal, case-insensitive),
    ``col~text`` (contains, case-insensitive), ``col!=value``; e.g. ``path~foot``, ``source=azh``.

    Raises :class:`lib.errors.DatasetError` naming a malformed condition or an unknown column.
    """
    import re

    from .errors import DatasetError

    keep = np.ones(len(images), bool)
    for cond in conditions:
        m = re.fullmatch(r"\s*([A-Za-z_][\w.:-]*)\s*(!=|=|~)\s*(.*?)\s*", str(cond))
        if not m:
            raise DatasetError(f"--where {cond!r}: write COLUMN=VALUE, COLUMN!=VALUE or COLUMN~TEXT")
        col, op, value = m.groups()
        if col not in images.columns:
            raise DatasetError(f"--where {cond!r}: no column {col!r} (columns: {', '.join(images.columns)})")
        text = images[col].astype("string").fillna("").str.lower()
        v = value.lower()
        hit = text.str.contains(v, regex=False) if op == "~" else (text == v)
        hit = hit.to_numpy(bool)
        keep &= ~hit if op == "!=" else hit
    return np.flatnonzero(keep)


def find_image(images: pd.DataFrame, query: str) -> str:
    """The content id an id prefix or a file-name / path fragment names; a clear error when it
    names none or several (with a few of them)."""
    from .errors import DatasetError

    q = str(query).strip().lower()
    if not q:
        raise DatasetError("give an id prefix or part of a file name")
    ids = images["id"].astype(str)
    hits = ids[ids.str.startswith(q)].unique()
    if len(hits) == 0:
        paths = images["path"].astype(str)
        exact = ids[paths.str.lower().str.rsplit("/", n=1).str[-1] == q].unique()
        hits = exact if len(exact) else ids[paths.str.lower().str.contains(q, regex=False)].unique()
    if len(hits) == 1:
        return str(hits[0])
    if len(hits) == 0:
        raise DatasetError(f"no image id starts with, and no path contains, {query!r}")
    some = images.loc[ids.isin(hits[:5]), "path"].tolist()
    raise DatasetError(f"{query!r} matches {len(hits)} images (e.g. {', '.join(some)}): say more")


def metadata_table(rec) -> pd.DataFrame:
    """One dataset row as ``field, value`` rows (missing values left out), for a detail view."""
    items = [(k, v) for k, v in dict(rec).items() if k != "id" and not (v is None or (isinstance(v, float) and v != v)
                                                                        or v is pd.NA)]
    return pd.DataFrame({"field": [k for k, _ in items], "value": [str(v) for _, v in items]})


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def shown_summary(n_rows: int, n_total: int, decision: pd.DataFrame, safe_view: bool = True) -> str:
    """The Gallery's headline: how many images pass the filters, and how the safe view shows them.

    ``decision`` is the :func:`lib.sensitivity.decide` table of the rows that pass.
    """
    from .sensitivity import FLAGGED, UNSCREENED

    cens = decision["censored"].to_numpy(bool)
    flagged = int((decision["status"] == FLAGGED).sum())  # vectorised on arrow strings: no 1M objects
    unscreened = int((decision["status"] == UNSCREENED).sum())
    head = f"**{n_rows}** of {plural(n_total, 'image')}"
    if not safe_view:
        return f"{head} · **safe view off**: all shown unblurred ({flagged} flagged, {unscreened} not yet screened)"
    return (f"{head} · {int(cens.sum())} censored ({flagged} flagged, {unscreened} not yet screened) · "
            f"{int((~cens).sum())} shown raw (safe evidence)")


def rows_of_ids(images: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """First dataset row of each content id (ids not in the dataset are skipped), in the order given."""
    first = pd.Series(np.arange(len(images)), index=images["id"].astype(str).to_numpy())
    first = first[~first.index.duplicated()]
    return first.reindex([str(i) for i in ids]).dropna().astype(np.int64).to_numpy()


def page_bounds(n: int, page_size: int, page: int) -> tuple[int, int, int, int]:
    """(start, stop, n_pages, page) of 1-based ``page`` of ``n`` items, clamped to a valid page."""
    page_size = max(1, int(page_size))
    n_pages = max(1, math.ceil(n / page_size))
    page = min(max(1, int(page)), n_pages)
    start = (page - 1) * page_size
    return start, min(n, start + page_size), n_pages, page


# --------------------------------------------------------------------------- overlap & agreement


def jaccard(a: Iterable, b: Iterable) -> float:
    """|A & B| / |A | B| of two sets of ids; 1.0 for two empty sets."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def zeroshot_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """A zero-shot predictions table in the probe's form (id, label, pred, p:<class>, score).

    ``label`` becomes the dataset value mapped to a class name (``truth``), so it can be
    compared with ``pred``; rows whose value maps to no class are dropped.
    """
    out = df[df["truth"].notna()].copy()
    out["label"] = out["truth"]
    out = out.rename(columns={c: "p:" + c[2:] for c in out.columns if c.startswith("p_")})
    keep = ["id", "label", "pred", *[c for c in out.columns if c.startswith("p:")]]
    return out[keep + (["score"] if "score" in out else [])].reset_index(drop=True)


def agreement_matrix(predictions: Mapping[str, pd.DataFrame], stat: str = "kappa") -> pd.DataFrame:
    """Pairwise agreement of models' predicted labels on their common images.

    Parameters
    ----------
    predictions : {model: table with id and pred}
    stat : a key of :func:`lib.metrics.agreement`: ``kappa`` (Cohen), ``ac1`` (Gwet),
        ``percent_agreement`` or ``f1_macro``

    Returns
    -------
    DataFrame (m, m) indexed and columned by model; the diagonal is the statistic of a
    model with itself.
    """
    from .metrics import agreement

    models = list(predictions)
    tables = {m: d[d["pred"].notna()].drop_duplicates("id").set_index("id")["pred"].astype(str)
              for m, d in predictions.items()}
    common = sorted(set.intersection(*(set(t.index) for t in tables.values()))) if tables else []
    out = pd.DataFrame(np.nan, index=models, columns=models)
    for i, a in enumerate(models):
        for b in models[i:]:
            if not common:
                continue
            v = agreement(tables[a].loc[common].to_numpy(), tables[b].loc[common].to_numpy())[stat]
            out.loc[a, b] = out.loc[b, a] = float(v)
    return out


def mistakes(predictions: pd.DataFrame, positive, threshold: float) -> pd.DataFrame:
    """Images wrongly flagged (FP) or missed (FN) when ``score >= threshold`` flags the positive class.

    Parameters
    ----------
    predictions : zero-shot predictions, one row per dataset row in order, with ``truth``
        (class name or None) and ``score``
    positive : the positive class name

    Returns
    -------
    DataFrame with columns row (dataset row), id, truth, score, kind (``FP`` or ``FN``),
    most confident mistakes first; rows without a truth are left out.
    """
    df = predictions.reset_index(drop=True)
    known = df["truth"].notna().to_numpy()
    is_pos = (df["truth"].astype(str) == str(positive)).to_numpy() & known
    flagged = df["score"].to_numpy(dtype=np.float64) >= threshold
    kind = np.where(flagged & ~is_pos & known, "FP", np.where(~flagged & is_pos, "FN", ""))
    out = pd.DataFrame({"row": np.arange(len(df)), "id": df["id"].to_numpy(), "truth": df["truth"].to_numpy(),
                        "score": df["score"].to_numpy(dtype=np.float64), "kind": kind})
    out = out[out["kind"] != ""]
    # FP: highest scores first; FN: lowest first (the most confident mistakes).
    out = out.assign(_c=np.where(out["kind"] == "FP", -out["score"], out["score"]))
    return out.sort_values(["kind", "_c"], kind="stable").drop(columns="_c").reset_index(drop=True)


# --------------------------------------------------------------------------- class sets


def edited_class_set(base: str | None, names: Sequence[str], positive: str | None = None,
                     texts: Mapping[str, Sequence[str]] | None = None):
    """A :class:`lib.zeroshot.ClassSet` from edited class names, keeping what still applies
    of the shipped set ``base`` (its prompt texts, label map and positive class for the
    names that remain).

    Parameters
    ----------
    base : name of a shipped class set, or None
    names : the class names, in order
    positive : positive class of a two-class set (default: the base set's, if kept)
    texts : {class: prompt texts}; a class given here uses these texts instead of the
        base set's (an empty list means: the class name itself)

    Raises :class:`lib.zeroshot.PromptError` for fewer than two distinct names.
    """
    from .zeroshot import ClassSet, PromptError, load_classes

    names = [str(n).strip() for n in names if n is not None and str(n).strip()]
    if len(set(names)) != len(names) or len(names) < 2:
        raise PromptError(f"need at least two distinct class names, got {names}")
    ref = load_classes(base) if base else None
    new_texts = {c: tuple(t for t in (ref.texts.get(c, ()) if ref else ())) for c in names}
    for c, t in (texts or {}).items():
        if c in new_texts:
            new_texts[c] = tuple(str(x).strip() for x in t if str(x).strip())
    new_texts = {c: t for c, t in new_texts.items() if t}
    label_map = {k: v for k, v in (ref.label_map.items() if ref else []) if v in names}
    pos = positive if positive in names else (ref.positive if ref and ref.positive in names else None)
    if ref is not None and tuple(names) == ref.classes and new_texts == dict(ref.texts) and pos == ref.positive:
        return ref
    return ClassSet("custom" if ref is None else f"{ref.name}-edited", tuple(names), new_texts, pos,
                    ref.templates if ref else None, ref.label_column if ref else "label", label_map)


# --------------------------------------------------------------------------- masks


def mask_overlay(img: Image.Image, blood: np.ndarray, skin: np.ndarray | None = None,
                 alpha: float = 0.55) -> Image.Image:
    """``img`` with blood-like pixels tinted red and skin-like pixels tinted blue.

    Masks are bool (h, w) of any size (resized with nearest neighbour to the image).
    """
    from .safety import region_mask

    base = np.asarray(img.convert("RGB"), dtype=np.float32)
    out = base.copy()
    for mask, colour in ((skin, (40, 90, 255)), (blood, (255, 0, 0))):
        if mask is None:
            continue
        m = region_mask(img.size, mask=np.asarray(mask, bool))
        out[m] = (1 - alpha) * base[m] + alpha * np.asarray(colour, np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool (h, w) mask as an RGB image: white inside, black outside."""
    return Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).convert("RGB")


def colour_evidence(ds, row: int, params: ColorParams = DEFAULT_PARAMS) -> dict:
    """The EB masks of one dataset image and, when it has a ``mask``, their IoU with it.

    Returns
    -------
    dict with ``blood``, ``skin`` (bool (h, w) at scoring size), ``truth`` (bool (h, w) or
    None), ``iou`` (cleaned blood-like mask vs truth, or None).
    """
    from .colorscore import color_masks
    from .images import open_image
    from .safety import clean_mask, load_mask, mask_iou

    rec = ds.images.iloc[int(row)]
    blood, skin = color_masks(open_image(ds.abspath(rec["path"])), params)
    truth = iou = None
    mask = rec.get("mask")
    if isinstance(mask, str) and mask:
        truth = load_mask(ds.abspath(mask), shape=blood.shape)
        iou = mask_iou(clean_mask(blood), truth)
    return {"blood": blood, "skin": skin, "truth": truth, "iou": iou}


def map_frame(points: pd.DataFrame, eb: pd.DataFrame | None = None, preds: pd.DataFrame | None = None) -> pd.DataFrame:
    """A 2-D map's points (x, y, id, ... aligned with the dataset rows) with ``EB`` and
    ``prediction`` columns added where given (predictions joined by id)."""
    out = points.copy()
    if eb is not None:
        out["EB"] = eb["eb"].round(3).to_numpy()
    if preds is not None:
        out["prediction"] = out["id"].map(preds.drop_duplicates("id").set_index("id")["pred"])
    return out


def mask_ious(ds, rows: Sequence[int], params: ColorParams = DEFAULT_PARAMS, *,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """IoU of the cleaned blood-like mask with each row's ground-truth mask (``mask`` column).

    Returns
    -------
    DataFrame, one row per given row: row, id, label, iou (NaN with ``error`` when the image
    or its mask cannot be read).
    """
    from .safety import mask_iou_paths

    images = ds.images
    out = []
    for i, r in enumerate(rows):
        rec = images.iloc[int(r)]
        iou, err = np.nan, None
        try:
            if pd.isna(rec.get("mask")):
                raise ImageError("no ground-truth mask")
            iou = mask_iou_paths(ds.abspath(rec["path"]), ds.abspath(str(rec["mask"])), params=params)
        except Exception as e:  # one unreadable mask must not stop the table
            err = str(e)
        out.append({"row": int(r), "id": rec["id"], "label": rec["label"], "iou": iou, "error": err})
        if progress is not None:
            progress(i + 1, len(rows))
    return pd.DataFrame(out, columns=["row", "id", "label", "iou", "error"])


# --------------------------------------------------------------------------- uploads


def decode_upload(data: bytes, name: str = "upload", max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """An uploaded file decoded in memory like any dataset image
    (:func:`lib.images.open_image_bytes`: pixel limit, EXIF, modes, DICOM); never written
    to disk, and its name is only a label.

    Raises :class:`ImageError` when it is too large or not a readable image.
    """
    from .images import open_image_bytes

    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data) / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB upload limit")
    return open_image_bytes(bytes(data), name)


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    """Deterministic JPEG bytes of an RGB image."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()
