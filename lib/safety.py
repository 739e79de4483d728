"""Safe viewing of sensitive images: censoring, mask clean-up and scoring, safe thumbnails.

Whole-image renderings (:func:`blur`, :func:`pixelate`, :func:`blackout`) make a thumbnail
unrecognisable; :func:`censor_regions` applies one of them only inside a mask or boxes
(e.g. the EB colour masks or detector boxes). :func:`safe_thumbnail_bytes` is what the
app serves: a sensitive image only ever leaves it censored.

:class:`NudeNetDetector` is an optional detector of exposed body parts (NudeNet 3, an
ONNX model shipped inside the ``nudenet`` wheel, run by onnxruntime).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from .colorscore import DEFAULT_PARAMS, ColorParams, color_masks
from .errors import ModelError
from .images import open_image, thumbnail

#: Censoring renderings, by name.
MODES = ("blur", "pixelate", "blackout")

#: Default Gaussian blur sigma as a fraction of the image's longest side (41 px on a
#: 512-px image, 20 px on a 256-px thumbnail). At 5% the outline of an ulcer was still
#: readable on thumbnails; at 8% only broad colour areas remain.
BLUR_FRACTION = 0.08

#: NudeNet 3 classes that show an exposed intimate body part. Exposed feet, belly,
#: armpits and male chest are left out: they are not sensitive on their own.
EXPOSED_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)

ImageLike = Image.Image | str | Path


def _rgb(img: ImageLike) -> Image.Image:
    if isinstance(img, (str, Path)):
        return open_image(img)
    return img if img.mode == "RGB" else img.convert("RGB")


# --------------------------------------------------------------------------- renderings


def blur(img: ImageLike, radius: float | None = None) -> Image.Image:
    """Gaussian-blurred copy, same size.

    Parameters
    ----------
    radius : Gaussian sigma in pixels; default ``BLUR_FRACTION`` x the longest side.
    """
    img = _rgb(img)
    sigma = BLUR_FRACTION * max(img.size) if radius is None else float(radius)
    if sigma <= 0:
        return img.copy()
    # Blur at a reduced size where sigma is still >= 8 px: the box reduction and the
    # bilinear enlargement change pixels by a few grey levels only, and a 4000-px photo
    # is censored in milliseconds.
    factor = max(1, int(sigma // 8))
    if factor == 1:
        return img.filter(ImageFilter.GaussianBlur(sigma))
    small = img.reduce(factor).filter(ImageFilter.GaussianBlur(sigma / factor))
    return small.resize(img.size, Image.Resampling.BILINEAR)


def pixelate(img: ImageLike, blocks: int = 12) -> Image.Image:
    """Copy made of ``blocks`` flat squares across the longest side (each the mean colour
    of its area), same size."""
    img = _rgb(img)
    w, h = img.size
    longest = max(w, h)
    grid = (max(1, round(w * blocks / longest)), max(1, round(h * blocks / longest)))
    return img.resize(grid, Image.Resampling.BOX).resize(img.size, Image.Resampling.NEAREST)


def blackout(img: ImageLike) -> Image.Image:
    """Black image of the same size."""
    return Image.new("RGB", _rgb(img).size, (0, 0, 0))


def render(img: ImageLike, mode: str = "blur") -> Image.Image:
    """Whole-image censoring by name: one of :data:`MODES`."""
    renderers: dict[str, Callable[[Image.Image], Image.Image]] = {
        "blur": blur, "pixelate": pixelate, "blackout": blackout,
    }
    if mode not in renderers:
        raise ValueError(f"censoring mode must be one of {', '.join(MODES)}, not {mode!r}")
    return renderers[mode](_rgb(img))


# --------------------------------------------------------------------------- regions


def region_mask(
    size: tuple[int, int],
    mask: np.ndarray | None = None,
    boxes: Iterable[Sequence[float]] | None = None,
) -> np.ndarray:
    """Boolean region (H, W) of an image of ``size`` = (W, H) from a mask and/or boxes.

    Parameters
    ----------
    mask : bool array (h, w) of any size; resized to (H, W) with nearest neighbour.
    boxes : (x0, y0, x1, y1) in pixels, x1/y1 exclusive; every pixel a box touches is in.
    """
    w, h = size
    region = np.zeros((h, w), dtype=bool)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
        if m.shape != (h, w):
            m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
        region |= m
    for box in boxes or ():
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {tuple(box)} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
        c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        c1, r1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        if c1 > c0 and r1 > r0:
            region[r0:r1, c0:c1] = True
    return region


def censor_regions(
    img: ImageLike,
    mask: np.ndarray | None = None,
    boxes: Iterable[Sequence[float]] | None = None,
    mode: str = "blur",
) -> Image.Image:
    """Copy of ``img`` censored (``mode`` of :data:`MODES`) inside a mask and/or boxes only.

    See :func:`region_mask` for ``mask`` and ``boxes``; pixels outside them are unchanged.
    """
    img = _rgb(img)
    region = region_mask(img.size, mask, boxes)
    censored = render(img, mode)  # validates mode even when the region is empty
    if not region.any():
        return img.copy()
    return Image.composite(censored, img, Image.fromarray(region.astype(np.uint8) * 255))


# --------------------------------------------------------------------------- masks


def clean_mask(mask: np.ndarray, *, median_size: int = 5, close_size: int = 5, open_size: int = 5) -> np.ndarray:
    """Post-process a per-pixel colour mask into regions.

    A median filter drops isolated pixels, a closing fills small holes and gaps, an
    opening removes specks narrower than ``open_size``; square windows, sizes in pixels
    (0 or 1 skips a step).

    Parameters
    ----------
    mask : bool array (H, W)

    Returns
    -------
    bool array (H, W)

    Notes
    -----
    Grey-level morphology on the 0/1 image equals binary morphology, and its
    ``mode="nearest"`` border keeps regions touching the image edge (scipy's binary
    closing would erode them away).
    """
    from scipy import ndimage

    m = np.asarray(mask).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if median_size > 1:
        m = ndimage.median_filter(m, size=median_size, mode="nearest")
    if close_size > 1:
        m = ndimage.grey_closing(m, size=(close_size, close_size), mode="nearest")
    if open_size > 1:
        m = ndimage.grey_opening(m, size=(open_size, open_size), mode="nearest")
    return m.astype(bool)


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union TP / (TP + FP + FN) of two bool masks (H, W); 1.0 when both are empty."""
    p, t = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: prediction {p.shape}, truth {t.shape}")
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth mask file as bool (H, W), resized to ``shape`` (H, W) with nearest neighbour.

    255 marks positive pixels (values >= 128 count, for anti-aliased edges). Masks stored
    as 0/1 (as the Medetec masks are) are recognised by their maximum and read as 1 = positive.
    """
    with Image.open(path) as im:
        values = np.asarray(im.convert("L"))
    positive = values >= (1 if values.max() <= 1 else 128)
    if shape is not None and positive.shape != tuple(shape):
        positive = np.asarray(Image.fromarray(positive).resize((shape[1], shape[0]), Image.Resampling.NEAREST))
    return positive


def mask_iou_paths(
    image_path: str | Path,
    mask_path: str | Path,
    *,
    params: ColorParams = DEFAULT_PARAMS,
    predictor: Callable[[Image.Image], np.ndarray] | None = None,
    clean: bool = True,
) -> float:
    """IoU of a predicted mask of an image file against its ground-truth mask file.

    The prediction is ``predictor(img)`` (bool (h, w)), by default the blood-like colour mask
    at scoring size, cleaned with :func:`clean_mask` when ``clean``; the ground truth (see
    :func:`load_mask`) is resized to the prediction's shape with nearest neighbour.
    """
    img = open_image(image_path)
    pred = np.asarray(predictor(img) if predictor is not None else color_masks(img, params)[0], dtype=bool)
    if clean:
        pred = clean_mask(pred)
    return mask_iou(pred, load_mask(mask_path, shape=pred.shape))


# --------------------------------------------------------------------------- thumbnails


def must_censor(sensitive) -> bool:
    """Whether an image with this ``sensitive`` flag must be censored.

    Fail-safe: only an explicit False (bool, numpy bool or 0) shows the image; True, None,
    NaN, pandas NA, strings and anything else censor it.
    """
    if isinstance(sensitive, (bool, np.bool_)):
        return bool(sensitive)
    if isinstance(sensitive, (int, np.integer)) and sensitive in (0, 1):
        return bool(sensitive)
    return True


def safe_thumbnail(img: ImageLike, *, sensitive, mode: str = "blur", side: int = 256) -> Image.Image:
    """Thumbnail fitted inside ``side`` x ``side``; censored with ``mode`` when
    :func:`must_censor` (``sensitive``)."""
    if mode not in MODES:
        raise ValueError(f"censoring mode must be one of {', '.join(MODES)}, not {mode!r}")
    thumb = thumbnail(_rgb(img), side)
    return render(thumb, mode) if must_censor(sensitive) else thumb


def safe_thumbnail_bytes(
    img: ImageLike, *, sensitive, mode: str = "blur", side: int = 256, quality: int = 85
) -> bytes:
    """JPEG bytes of :func:`safe_thumbnail`: deterministic for the same input (no metadata,
    fixed encoder settings), so they can be cached and compared."""
    buf = io.BytesIO()
    safe_thumbnail(img, sensitive=sensitive, mode=mode, side=side).save(
        buf, format="JPEG", quality=quality, optimize=False, progressive=False
    )
    return buf.getvalue()


# --------------------------------------------------------------------------- sensitivity

#: Dataset labels that mark an image as sensitive, compared case-insensitively after
#: stripping ("non_sensitive" is not one of them: whole values are compared, not substrings).
SENSITIVE_LABELS = ("sensitive", "blur", "gore", "wound", "surgery", "nudity", "nsfw")

#: Default EB z-score above which an image counts as "sensitive by colour": one standard
#: deviation above the collection's mean, a generic cut, not fitted to any corpus.
EB_THRESHOLD = 1.0

#: A model's positive-class probability at or above this flags the image (the MedGore
#: gore-thesis gallery rule).
PRED_THRESHOLD = 0.5


def is_sensitive_label(value, labels: Iterable[str] = SENSITIVE_LABELS) -> bool:
    """Whether one dataset label is a sensitive label (missing values are not)."""
    if value is None or (not isinstance(value, str) and _isna(value)):
        return False
    return str(value).strip().lower() in {str(v).strip().lower() for v in labels}


def _isna(value) -> bool:
    try:
        return bool(value != value)  # NaN and pandas NA (whose != is NA -> TypeError below)
    except TypeError:
        return True


def _by_id(values, ids, column: str, name: str):
    """Align ``values`` (Series indexed by id, or DataFrame with ``id`` and ``column``) on ``ids``."""
    import pandas as pd

    if isinstance(values, pd.DataFrame):
        if "id" not in values or column not in values:
            raise ValueError(f"{name} table needs columns 'id' and {column!r}, has {list(values.columns)}")
        values = values.drop_duplicates("id").set_index("id")[column]
    elif not isinstance(values, pd.Series):
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (len(ids),):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({len(ids)},) or a table by id")
        return arr
    return pd.to_numeric(values.reindex(ids), errors="coerce").to_numpy(dtype=np.float64)


def sensitivity_table(
    ds,
    eb=None,
    preds=None,
    threshold: float = EB_THRESHOLD,
    *,
    labels: Iterable[str] = SENSITIVE_LABELS,
    pred_threshold: float = PRED_THRESHOLD,
):
    """Which images of a dataset are sensitive, and why: the safe view's decision.

    An image is sensitive when its label is one of ``labels``, or its EB score is above
    ``threshold``, or a model's positive-class probability is >= ``pred_threshold``.
    Fail-safe: when EB scores are given, an image without a finite EB (it could not be
    scored) counts as sensitive too.

    Parameters
    ----------
    ds : Dataset, or its images DataFrame (columns id and, optionally, label)
    eb : optional EB scores: DataFrame with columns id, eb (e.g.
        :func:`lib.colorscore.eb_table`), Series indexed by id, or array (n,) aligned with the rows
    preds : optional predictions: DataFrame with columns id, score (positive-class
        probability), Series indexed by id, or array (n,) aligned with the rows; rows
        without a prediction are not flagged by it
    threshold : EB cut
    labels : sensitive label values
    pred_threshold : probability cut

    Returns
    -------
    DataFrame (n, 8), one row per dataset row in order: id, label, eb, p (float, NaN when
    absent), by_label, by_eb, by_pred, sensitive (bool) and reason (text; "" when not
    sensitive).
    """
    import pandas as pd

    images = ds.images if hasattr(ds, "images") else ds
    ids = images["id"].astype(str).to_numpy()
    n = len(ids)
    label = images["label"] if "label" in images else pd.Series([None] * n)
    wanted = {str(v).strip().lower() for v in labels}
    lab = label.astype("string").str.strip().str.lower()
    by_label = lab.isin(wanted).fillna(False).to_numpy(dtype=bool)
    ebv = np.full(n, np.nan) if eb is None else _by_id(eb, ids, "eb", "eb")
    by_eb = np.zeros(n, bool) if eb is None else ~(ebv <= threshold)  # NaN -> sensitive
    p = np.full(n, np.nan) if preds is None else _by_id(preds, ids, "score", "preds")
    by_pred = np.nan_to_num(p, nan=-np.inf) >= pred_threshold
    sensitive = by_label | by_eb | by_pred
    reasons = [""] * n
    label_list = label.tolist()  # plain lists: per-row pandas access costs seconds at 100k rows
    for i in np.flatnonzero(sensitive).tolist():
        why = []
        if by_label[i]:
            why.append(f"label {label_list[i]}")
        if by_eb[i]:
            why.append(f"EB {ebv[i]:.2f} > {threshold:g}" if np.isfinite(ebv[i]) else "EB unknown")
        if by_pred[i]:
            why.append(f"p {p[i]:.2f} >= {pred_threshold:g}")
        reasons[i] = "; ".join(why)
    return pd.DataFrame({
        "id": ids, "label": label.to_numpy(), "eb": ebv, "p": p, "by_label": by_label, "by_eb": by_eb,
        "by_pred": by_pred, "sensitive": sensitive, "reason": reasons,
    })


def display_mode(sensitive, *, safe_view: bool = True, revealed: bool = False, censor: str = "blur") -> str:
    """How to render one image: ``"raw"`` or the censoring mode ``censor``.

    Raw only when safe view is off, the user revealed this image, or it is explicitly
    not sensitive (:func:`must_censor`); everything else is censored.
    """
    if censor not in MODES:
        raise ValueError(f"censoring mode must be one of {', '.join(MODES)}, not {censor!r}")
    if not safe_view or revealed:
        return "raw"
    return censor if must_censor(sensitive) else "raw"


# --------------------------------------------------------------------------- NudeNet


class NudeNetDetector:
    """Exposed-body-part detector: NudeNet 3 (320 px YOLO, ONNX) on onnxruntime.

    Raises :class:`lib.errors.ModelError` when ``nudenet``/``onnxruntime`` is missing or
    the model cannot be loaded.
    """

    def __init__(self, model_path: str | Path | None = None):
        try:
            from nudenet import NudeDetector
        except ImportError as e:
            raise ModelError(
                "the NudeNet detector needs the 'nudenet' and 'onnxruntime' packages "
                f"(pip install nudenet onnxruntime): {e}"
            ) from None
        try:
            self._detector = NudeDetector(model_path=str(model_path) if model_path else None)
        except Exception as e:  # onnxruntime raises its own types for bad/missing models
            raise ModelError(f"cannot load the NudeNet ONNX model: {e}") from None

    def detect(self, img: ImageLike) -> list[dict]:
        """Detections, best first: ``{"label": str, "score": float in [0, 1],
        "box": (x0, y0, x1, y1)}`` in pixels of the (EXIF-oriented) image, x1/y1 exclusive."""
        rgb = _rgb(img)
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])  # NudeNet expects OpenCV's BGR
        out = []
        for d in self._detector.detect(bgr):
            x, y, w, h = (int(v) for v in d["box"])
            out.append({"label": str(d["class"]), "score": float(d["score"]), "box": (x, y, x + w, y + h)})
        return sorted(out, key=lambda d: -d["score"])

    def exposure_score(self, img: ImageLike, classes: Iterable[str] = EXPOSED_CLASSES) -> float:
        """Highest score among detections of ``classes`` (exposed intimate parts); 0.0 if none."""
        wanted = set(classes)
        return max((d["score"] for d in self.detect(img) if d["label"] in wanted), default=0.0)


@functools.lru_cache(maxsize=1)
def nudenet_detector() -> NudeNetDetector:
    """One shared :class:`NudeNetDetector` per process (loading the model takes ~0.3 s)."""
    return NudeNetDetector()


def mask_iou_dataset(ds, *, params: ColorParams = DEFAULT_PARAMS, mask_col: str = "mask",
                     clean: bool = True) -> pd.DataFrame:
    """Colour-mask IoU of every row of a dataset that has a ground-truth mask.

    Mask paths are relative to the dataset root and read only inside it. Returns columns
    id, path, label and every metadata column, plus ``iou`` (NaN with ``error`` when the
    image or mask cannot be read).
    """
    from .errors import WorkbenchError

    if mask_col not in ds.images.columns:
        raise WorkbenchError(f"dataset {ds.name!r} has no {mask_col!r} column with ground-truth masks")
    rows = ds.images[ds.images[mask_col].notna() & (ds.images[mask_col].astype(str) != "")].copy()
    ious, errors = [], []
    for path, mask in zip(rows["path"], rows[mask_col], strict=True):
        try:
            ious.append(mask_iou_paths(ds.abspath(path), ds.abspath(str(mask)), params=params, clean=clean))
            errors.append(None)
        except (WorkbenchError, OSError, ValueError) as e:
            ious.append(np.nan)
            errors.append(str(e))
    rows["iou"] = ious
    rows["error"] = errors
    return rows.reset_index(drop=True)


# --------------------------------------------------------------------------- contact sheets


def safe_grid(
    images: Sequence[ImageLike],
    sensitive=True,
    *,
    mode: str | Sequence[str] = "blur",
    side: int = 128,
    cols: int = 6,
    captions: Sequence[str] | None = None,
    pad: int = 4,
) -> Image.Image:
    """Contact sheet of :func:`safe_thumbnail` tiles (what the notebooks display).

    Parameters
    ----------
    images : sequence of n PIL images or paths
    sensitive : one flag for all tiles, or a sequence of n flags; each tile is censored
        with ``mode`` unless its flag is explicitly False (:func:`must_censor`).
    mode : one of :data:`MODES` for all tiles, or a sequence of n modes.
    side : each tile is fitted inside ``side`` x ``side`` and centred in its cell.
    cols : tiles per row.
    captions : optional n short texts, one line under each tile (cut to fit).

    Returns
    -------
    PIL RGB image of size (pad + cols' * (side + pad), pad + rows * (side + caption + pad)),
    cols' = min(cols, n), on a white background.
    """
    from PIL import ImageDraw

    n = len(images)
    if n == 0:
        raise ValueError("no images to put in a grid")
    flags = list(sensitive) if isinstance(sensitive, (list, tuple, np.ndarray, pd.Series)) else [sensitive] * n
    modes = [mode] * n if isinstance(mode, str) else list(mode)
    if len(flags) != n or len(modes) != n or (captions is not None and len(captions) != n):
        raise ValueError(f"{n} images need {n} sensitivity flags, modes and captions")
    if cols < 1 or side < 8:
        raise ValueError("cols must be >= 1 and side >= 8")
    cols = min(cols, n)
    text_h = 14 if captions is not None else 0
    cell_w, cell_h = side + pad, side + text_h + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + math.ceil(n / cols) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, flag, m) in enumerate(zip(images, flags, modes, strict=True)):
        tile = safe_thumbnail(img, sensitive=flag, mode=m, side=side)
        x, y = pad + (i % cols) * cell_w, pad + (i // cols) * cell_h
        sheet.paste(tile, (x + (side - tile.width) // 2, y + (side - tile.height) // 2))
        if captions is not None:
            text = str(captions[i])
            while text and draw.textlength(text) > side:
                text = text[:-1]
            draw.text((x, y + side + 1), text, fill=(0, 0, 0))
    return sheet


# --------------------------------------------------------------------------- censoring pipelines

#: Censoring strategies compared by :func:`pipeline_iou`: what is censored, and on which images.
CENSOR_STRATEGIES = ("colour mask, every image", "colour mask, flagged only",
                     "whole image, every image", "whole image, flagged only")


def censoring_table(ds, *, params: ColorParams = DEFAULT_PARAMS, mask_col: str = "mask", clean: bool = True,
                    labels: Iterable[str] = SENSITIVE_LABELS, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """The cleaned blood-like colour mask of each image against the region that should be censored.

    The true region is the ground-truth mask for rows that have one, and *empty* for rows
    whose label is known and not sensitive (nothing there needs hiding). Sensitive rows
    without a mask cannot be scored and are left out.

    Parameters
    ----------
    ds : Dataset
    rows : optional dataset row numbers to consider (default all).

    Returns
    -------
    DataFrame, one row per scored image: ``row, id, path, label, has_mask, truth_fraction``
    (share of pixels in the true region), ``colour_fraction`` (share in the colour mask),
    ``iou_colour`` (colour mask vs true region; 1.0 when both are empty) and ``error``
    (NaN values with the reason when the image or mask cannot be read).
    """
    from .errors import WorkbenchError

    images = ds.images.reset_index(drop=True)
    if rows is not None:
        images = images.iloc[list(rows)]
    masks = images[mask_col] if mask_col in images else pd.Series(pd.NA, index=images.index)
    has_mask = (masks.notna() & (masks.astype("string").str.strip() != "")).fillna(False).to_numpy(bool)
    known = images["label"].notna().to_numpy(bool)
    clear = known & ~np.array([is_sensitive_label(v, labels) for v in images["label"]], dtype=bool)
    keep = has_mask | clear
    out = []
    for (row, r), masked in zip(images[keep].iterrows(), has_mask[keep], strict=True):
        rec = {"row": int(row), "id": r["id"], "path": r["path"], "label": r["label"], "has_mask": bool(masked),
               "truth_fraction": np.nan, "colour_fraction": np.nan, "iou_colour": np.nan, "error": None}
        try:
            pred = color_masks(open_image(ds.abspath(r["path"])), params)[0]
            pred = clean_mask(pred) if clean else np.asarray(pred, dtype=bool)
            truth = load_mask(ds.abspath(str(r[mask_col])), shape=pred.shape) if masked \
                else np.zeros(pred.shape, dtype=bool)
            rec.update(truth_fraction=float(truth.mean()), colour_fraction=float(pred.mean()),
                       iou_colour=mask_iou(pred, truth))
        except (WorkbenchError, OSError, ValueError) as e:
            rec["error"] = str(e)
        out.append(rec)
    return pd.DataFrame(out, columns=["row", "id", "path", "label", "has_mask", "truth_fraction",
                                      "colour_fraction", "iou_colour", "error"])


def pipeline_iou(table: pd.DataFrame, flagged) -> pd.DataFrame:
    """IoU of the :data:`CENSOR_STRATEGIES` over a :func:`censoring_table`.

    "Flagged only" strategies censor an image only when a classifier flagged it (the
    classify-then-censor pipeline); the others censor every image. "Colour mask" censors
    the image's colour mask, "whole image" its whole frame. An image left uncensored scores
    IoU 1 when its true region is empty and 0 otherwise; a whole frame scores the true
    region's share of the frame (0 when that region is empty).

    Parameters
    ----------
    table : DataFrame from :func:`censoring_table`
    flagged : bool array-like (n,) aligned with ``table``, or Series of bools indexed by id
        (ids it lacks count as not flagged).

    Returns
    -------
    DataFrame, one row per (strategy, group) with group ``wound (has mask)`` or ``needs no
    censoring``: ``strategy, group, n, mean_iou, images_censored`` (share of images with any
    pixel censored) and ``pixels_censored`` (mean share of each image's pixels censored).
    Rows of ``table`` with an error are left out.
    """
    if isinstance(flagged, pd.Series) and not flagged.index.equals(table.index):
        flagged = flagged.reindex(table["id"]).fillna(False).to_numpy(bool)
    flagged = np.asarray(flagged, dtype=bool)
    if flagged.shape != (len(table),):
        raise ValueError(f"flagged has shape {flagged.shape}, expected ({len(table)},)")
    ok = table["iou_colour"].notna().to_numpy()
    t, f = table[ok], flagged[ok]
    iou_c, truth, colour = (t[c].to_numpy(float) for c in ("iou_colour", "truth_fraction", "colour_fraction"))
    empty_truth = truth == 0
    uncensored_iou = empty_truth.astype(float)
    whole_iou = truth  # the true region lies inside the frame: |T| / |frame|
    strategies = {
        CENSOR_STRATEGIES[0]: (iou_c, colour),
        CENSOR_STRATEGIES[1]: (np.where(f, iou_c, uncensored_iou), np.where(f, colour, 0.0)),
        CENSOR_STRATEGIES[2]: (whole_iou, np.ones(len(t))),
        CENSOR_STRATEGIES[3]: (np.where(f, whole_iou, uncensored_iou), f.astype(float)),
    }
    groups = {"wound (has mask)": t["has_mask"].to_numpy(bool), "needs no censoring": ~t["has_mask"].to_numpy(bool)}
    out = []
    for name, (iou, pixels) in strategies.items():
        for group, g in groups.items():
            out.append({"strategy": name, "group": group, "n": int(g.sum()),
                        "mean_iou": float(iou[g].mean()) if g.any() else np.nan,
                        "images_censored": float((pixels[g] > 0).mean()) if g.any() else np.nan,
                        "pixels_censored": float(pixels[g].mean()) if g.any() else np.nan})
    return pd.DataFrame(out)
