"""``color``: a deterministic, hand-crafted colour/texture embedding that needs no weights.

It is the offline backend: it makes every page work on a machine without CLIP weights,
and it is the natural baseline for sensitive-image work, where the evidence MedGore's
EB score and the gore-censoring thesis point at is colour (red, rosy and skin tones).

Blocks (each L1-normalised, square-rooted (Hellinger) and weighted, then the whole
vector L2-normalised):

===================  ====  ===================================================
block                dims  what
===================  ====  ===================================================
hsv                  108   joint histogram, 12 hue x 3 saturation x 3 value bins
cbcr                  64   8 x 8 histogram of YCbCr chroma
evidence               2   blood-like and skin-like pixel fractions (EB masks)
gradient magnitude     8   histogram of |grad| of luminance (log-spaced bins)
gradient orientation   8   orientation histogram weighted by magnitude
layout                48   mean RGB on a 4 x 4 grid
===================  ====  ===================================================
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..colorscore import DEFAULT_PARAMS, ColorParams, blood_mask_hsv, skin_mask_ycbcr
from .base import Backend, fingerprint_of, l2_normalize

#: Bump when the feature definition changes: it is part of the cache fingerprint.
FEATURE_VERSION = 1
SIDE = 128
_MAG_EDGES = np.array([0, 2, 4, 8, 16, 32, 64, 128, np.inf], dtype=np.float32)
_WEIGHTS = {"hsv": 1.0, "cbcr": 0.8, "evidence": 0.6, "grad_mag": 0.5, "grad_ori": 0.5, "layout": 0.7}
DIM = 108 + 64 + 2 + 8 + 8 + 48


def color_features(img: Image.Image, params: ColorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Unnormalised feature vector (DIM,) float32 of an RGB image."""
    img = img.convert("RGB")
    if max(img.size) > SIDE:
        img = img.copy()
        img.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    hsv = np.asarray(img.convert("HSV"))
    ycc = np.asarray(img.convert("YCbCr"))
    n = hsv.shape[0] * hsv.shape[1]

    h = hsv[..., 0].astype(np.int32) * 12 >> 8
    s = hsv[..., 1].astype(np.int32) * 3 >> 8
    v = hsv[..., 2].astype(np.int32) * 3 >> 8
    hsv_hist = np.bincount((h * 9 + s * 3 + v).ravel(), minlength=108) / n
    cb = ycc[..., 1].astype(np.int32) >> 5
    cr = ycc[..., 2].astype(np.int32) >> 5
    cbcr_hist = np.bincount((cb * 8 + cr).ravel(), minlength=64) / n
    evidence = np.array([blood_mask_hsv(hsv, params).mean(), skin_mask_ycbcr(ycc, params).mean()])

    lum = ycc[..., 0].astype(np.float32)
    # np.gradient needs two samples along an axis: a 1-pixel-wide image has no gradient across it.
    gy = np.gradient(lum, axis=0) if lum.shape[0] > 1 else np.zeros_like(lum)
    gx = np.gradient(lum, axis=1) if lum.shape[1] > 1 else np.zeros_like(lum)
    mag = np.hypot(gx, gy)
    mag_hist = np.histogram(mag, bins=_MAG_EDGES)[0] / n
    ori = (np.arctan2(gy, gx) % np.pi) / np.pi  # edge direction, sign-free
    ori_bins = np.minimum((ori * 8).astype(np.int32), 7)
    ori_hist = np.bincount(ori_bins.ravel(), weights=mag.ravel(), minlength=8)
    ori_hist = ori_hist / max(ori_hist.sum(), 1e-6)
    layout = np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.float32).ravel() / 255.0

    blocks = {
        "hsv": np.sqrt(hsv_hist), "cbcr": np.sqrt(cbcr_hist), "evidence": np.sqrt(evidence),
        "grad_mag": np.sqrt(mag_hist), "grad_ori": np.sqrt(ori_hist), "layout": layout / 4.0,
    }
    return np.concatenate([_WEIGHTS[k] * blocks[k] for k in _WEIGHTS]).astype(np.float32)


class ColorBackend(Backend):
    """The ``color`` spec. Image-only: it has no text tower."""

    kind = "color"

    def __init__(self, params: ColorParams = DEFAULT_PARAMS):
        self.params = params
        self.spec = "color"
        self.dim = DIM
        self.fingerprint_info = color_fingerprint_info(params)

    def input_side(self) -> int:
        return SIDE

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return color_features(img, self.params)

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(batch)


def color_fingerprint_info(params: ColorParams = DEFAULT_PARAMS) -> dict:
    return {"kind": "color", "version": FEATURE_VERSION, "side": SIDE, "params": params.key(),
            "weights": _WEIGHTS}


def color_fingerprint(params: ColorParams = DEFAULT_PARAMS) -> str:
    return fingerprint_of(color_fingerprint_info(params))
