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
from .sensitivity import must_censor

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


def region_censored(img: ImageLike, params: ColorParams = DEFAULT_PARAMS) -> Image.Image:
    """The image with its cleaned blood-like colour regions blacked out, the rest unchanged:
    the middle step between a censored and a revealed image (the gore thesis's segmenter
    output, by colour)."""
    img = _rgb(img)
    return censor_regions(img, mask=clean_mask(color_masks(img, params)[0]), mode="blackout")


def rendered(img: ImageLike, mode: str, *, strength: float | None = None, grey: bool = False) -> Image.Image:
    """One rendering of an image by name: ``raw``, ``regions`` (:func:`region_censored`) or a
    censoring mode of :data:`MODES`; ``strength`` is the blur sigma as a fraction of the
    longest side (default :data:`BLUR_FRACTION`); ``grey`` turns the result greyscale."""
    img = _rgb(img)
    if mode == "raw":
        out = img
    elif mode == "regions":
        out = region_censored(img)
    elif mode == "blur" and strength is not None:
        out = blur(img, radius=float(strength) * max(img.size))
    else:
        out = render(img, mode)
    return out.convert("L").convert("RGB") if grey else out


def safe_thumbnail(img: ImageLike, *, sensitive, mode: str = "blur", side: int = 256,
                   strength: float | None = None) -> Image.Image:
    """Thumbnail fitted inside ``side`` x ``side``; censored with ``mode`` when
    :func:`must_censor` (``sensitive``)."""
    if mode not in MODES:
        raise ValueError(f"censoring mode must be one of {', '.join(MODES)}, not {mode!r}")
    thumb = thumbnail(_rgb(img), side)
    return rendered(thumb, mode, strength=strength) if must_censor(sensitive) else thumb


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    """Deterministic JPEG bytes (no metadata, fixed encoder settings): cacheable and comparable."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def thumbnail_rendering_bytes(img: ImageLike, mode: str, *, side: int = 256, strength: float | None = None,
                              grey: bool = False) -> bytes:
    """JPEG bytes of a thumbnail fitted inside ``side`` x ``side`` in rendering ``mode``
    (see :func:`rendered`); censored renderings are made from the thumbnail's own pixels."""
    return jpeg(rendered(thumbnail(_rgb(img), side), mode, strength=strength, grey=grey))


def safe_thumbnail_bytes(img: ImageLike, *, sensitive, mode: str = "blur", side: int = 256, quality: int = 85,
                         strength: float | None = None) -> bytes:
    """JPEG bytes of :func:`safe_thumbnail` (deterministic for the same input)."""
    return jpeg(safe_thumbnail(img, sensitive=sensitive, mode=mode, side=side, strength=strength), quality)


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
                    policy=None, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """The cleaned blood-like colour mask of each image against the region that should be censored.

    The true region is the ground-truth mask for rows that have one, and *empty* for rows
    whose label the label policy maps to safe (nothing there needs hiding). Other rows
    without a mask cannot be scored and are left out.

    Parameters
    ----------
    ds : Dataset
    policy : :class:`lib.sensitivity.LabelPolicy` (default: the dataset's own).
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
    from .sensitivity import SAFE, binary_truth, load_policy  # noqa: I001 (beside its one use)

    policy = load_policy(ds.name) if policy is None else policy
    clear = (binary_truth(images["label"], policy) == SAFE).to_numpy(bool)
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
