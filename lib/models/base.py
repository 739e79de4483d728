"""What every embedding backend exposes, and the torch plumbing CLIP-style ones share."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..errors import ModelError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "bf16-cast")


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), as oneDNN reports.

    Without it ``bf16-cast`` is emulated: on an AVX2-only host the ViT-B-32 forward ran about
    9x slower than fp32, so the "fast path" is one only where this is true.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def fingerprint_of(info: dict) -> str:
    """sha256 of a canonical JSON of what determines the vectors (spec, weights, preprocessing)."""
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()


#: Longest side at most this many times the shortest before a "resize the short side, then
#: centre-crop" preprocessing: it scales the short side up to the model's input size, so a
#: 1 x 100 000 image (a legal 0.1 Mpx) would become a 224 x 22 400 000 intermediate (15 GB).
MAX_ASPECT = 16


def limit_aspect(img: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Centre crop of ``img`` whose long side is at most ``max_aspect`` times its short side.

    Images within the ratio come back unchanged. Beyond it only the centre strip is kept:
    the square a short-side resize + centre crop keeps lies inside it.
    """
    w, h = img.size
    keep = max_aspect * min(w, h)
    if max(w, h) <= keep:
        return img
    keep += (max(w, h) - keep) % 2  # equal margins: the strip keeps the image's centre
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


class Backend:
    """An image (and maybe text) encoder producing L2-normalised float32 vectors.

    Subclasses set ``spec``, ``dim``, ``fingerprint_info`` and implement
    :meth:`preprocess` (PIL -> array, runs in loader workers, must be picklable or
    fork-inherited) and :meth:`encode_preprocessed` (stacked arrays -> vectors).
    """

    kind = "base"
    has_text = False
    uses_torch = False
    spec: str
    dim: int
    fingerprint_info: dict
    device = "cpu"
    precision = "fp32"
    #: Temperature for zero-shot logits (CLIP's learned scale, exp'ed).
    logit_scale = 100.0

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.fingerprint_info)

    @property
    def name(self) -> str:
        return self.spec

    def preprocess(self, img: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) preprocessed arrays -> (B, dim) float32, rows of unit norm."""
        raise NotImplementedError

    def input_side(self) -> int | None:
        """Largest side (px) :meth:`preprocess` resizes images to, or None if unknown. A
        JPEG at least twice as large may be reduced on decode to no less than this
        (:func:`lib.images.open_reduced`) before preprocessing."""
        return None

    def pixels_preprocess(self):
        """Optional fast path: a callable ``PIL -> uint8 array`` (the resized, cropped pixels,
        e.g. (3, H, W)) such that ``encode_pixels(stack(...))`` equals
        ``encode_preprocessed(stack(preprocess(img) ...))`` bit for bit; None when the
        backend has none. Decode workers then ship a quarter of the bytes, and the
        normalisation runs batched on the model's threads."""
        return None

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) uint8 arrays from :meth:`pixels_preprocess` -> (B, dim) float32 unit vectors."""
        raise NotImplementedError

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """PIL images -> (N, dim) float32 unit vectors."""
        out = [
            self.encode_preprocessed(np.stack([self.preprocess(im) for im in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (N, dim) float32 unit vectors; only for backends with a text tower."""
        raise ModelError(
            f"model {self.spec!r} has no text tower: text queries, zero-shot and caption "
            "embeddings need a CLIP-style model (e.g. open_clip:ViT-B-32@laion2b_s34b_b79k)"
        )

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "dim": self.dim, "text": self.has_text,
                "device": self.device, "precision": self.precision, "fingerprint": self.fingerprint}


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def select_device(device: str | None = None) -> str:
    """``device`` if given, else the best available: cuda, then mps, then cpu."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def state_dict_hash(module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        shape = tuple(t.shape)
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{shape}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TorchBackend(Backend):
    """Shared device/precision handling for torch image-text models."""

    uses_torch = True

    def _setup(self, model, device: str | None, precision: str) -> None:
        import torch

        if precision not in PRECISIONS:
            raise ModelError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.device = select_device(device)
        if precision == "auto":
            precision = "fp16" if self.device == "cuda" else "fp32"
        self.precision = precision
        model = model.eval().to(self.device)
        if precision == "bf16-cast" and self.device == "cpu" and not native_cpu_bf16():
            logging.getLogger(__name__).warning(
                "precision bf16-cast: this CPU has no native bf16 (%s only), so bf16 is emulated and "
                "several times slower than fp32 here; use --precision fp32 (or auto)",
                torch.backends.cpu.get_cpu_capability())
        if precision == "bf16-cast":
            # Casting the whole model (not autocast) uses the CPU's native bf16 matmuls
            # end to end; autocast keeps casting activations back and forth.
            model = model.to(torch.bfloat16)
        self.model = model
        self._input_dtype = torch.bfloat16 if precision == "bf16-cast" else torch.float32

    def _autocast(self):
        import contextlib

        import torch

        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            dev = "cuda" if self.device.startswith("cuda") else self.device
            return torch.autocast(dev, dtype=dtype)
        return contextlib.nullcontext()

    def _to_numpy(self, feats) -> np.ndarray:
        import torch

        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.to("cpu", torch.float32).numpy()

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self._input_dtype, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self._image_forward(x))

    def input_side(self) -> int | None:
        cfg = getattr(getattr(getattr(self, "model", None), "visual", None), "preprocess_cfg", None)
        size = cfg.get("size") if isinstance(cfg, dict) else None
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(max(size))
        return None

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, C, H, W) -> vectors: ToTensor's ``/255`` and Normalize's ``(x - mean) / std``
        in float32, in that order (the same floats as the PIL transform), then the forward."""
        import torch

        mean, std = self._pixel_norm
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        x = x.to(torch.float32).div(255)
        x = x.sub_(torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1))
        x = x.div_(torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1))
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self._image_forward(x.to(self._input_dtype)))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not self.has_text:
            return super().encode_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self._text_forward(list(texts)))

    def _image_forward(self, x):
        return self.image_module()(x)

    def _text_forward(self, texts: list[str]):
        raise NotImplementedError

    # ------------------------------------------------------------ fine-tuning (lib.finetune)

    def image_module(self):
        """The trainable image tower: a ``torch.nn.Module`` mapping a preprocessed batch
        (B, 3, H, W) to its pooled features (B, dim), before the L2 normalisation that
        :meth:`encode_preprocessed` applies. It shares its parameters with ``self.model``."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable image tower")

    def export_checkpoint(self, folder) -> str:
        """Write the whole model's current weights under ``folder`` (safetensors, through
        :mod:`lib.files`) and return the registry spec that loads them back."""
        raise ModelError(f"model {self.spec!r} cannot be saved as a checkpoint")


def tensors_bytes(state: dict, metadata: dict | None = None) -> bytes:
    """A state dict as safetensors bytes: tensors moved to the CPU, made contiguous and
    copied (safetensors refuses tensors that share memory, as tied weights do)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()} or None)
