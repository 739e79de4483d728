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
from PIL import Image, ImageFilter

from .colorscore import DEFAULT_PARAMS, ColorParams, color_masks
from .errors import ModelError
from .images import open_image, thumbnail

#: Censoring renderings, by name.
MODES = ("blur", "pixelate", "blackout")

#: Default Gaussian blur sigma as a fraction of the image's longest side (26 px on a
#: 512-px image, 13 px on a 256-px thumbnail): shapes and textures are gone, only broad
#: colour areas remain.
BLUR_FRACTION = 0.05

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


def pixelate(img: ImageLike, blocks: int = 16) -> Image.Image:
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
