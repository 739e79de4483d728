"""Hugging Face transformers models: ``CLIPModel`` / ``SiglipModel`` image-text models, and
image-only ``AutoModel`` vision backbones (DINOv2, ViT, ...).

``hf:REF`` is a hub id (``openai/clip-vit-base-patch32``, ``facebook/dinov2-large``), a
local folder (``save_pretrained``), or the name of a tiny architecture shipped as data in
``lib/models/configs/hf/`` (``wb-tiny-dinov2``, ``wb-tiny-vit``: a config and an image
processor, no weights, so only with ``--random-weights``). What the config's
``model_type`` is decides the backend: CLIP and SigLIP get :class:`HFBackend` (both towers),
any other model with an image processor :class:`HFVisionBackend` (image tower only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError
from . import weights as W
from .base import TorchBackend, limit_aspect, state_dict_hash

#: Tiny architectures shipped as data (config + image processor, no weights).
CONFIG_DIR = Path(__file__).parent / "configs" / "hf"
#: model types read by both towers.
TEXT_IMAGE_TYPES = ("clip", "siglip", "siglip2")
#: Vision transformers whose image feature is the CLS token after the final layer norm (what
#: their image-classification heads read; for DINOv2 it is also its ``pooler_output``).
CLS_TYPES = ("dinov2", "dinov2_with_registers", "vit", "deit", "beit", "vit_mae", "vit_msn", "data2vec-vision",
             "ijepa")


def shipped(ref: str) -> Path | None:
    """The folder of a tiny architecture shipped in :data:`CONFIG_DIR`, if ``ref`` names one."""
    folder = CONFIG_DIR / ref
    return folder if "/" not in ref and (folder / "config.json").is_file() else None


def _source(ref: str) -> tuple[str, bool, bool]:
    """(what to pass to ``from_pretrained``, is a local folder, is a shipped tiny architecture)."""
    tiny = shipped(ref)
    if tiny is not None:
        return str(tiny), True, True
    local = Path(ref).expanduser()
    if local.exists():
        return str(local), True, False
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:
        raise W.missing_weights(f"hf:{ref}", None, "hf:/path/to/saved_model_folder")
    if not W.hf_is_cached(ref, "config.json") and not W.hub_reachable():
        raise W.missing_weights(f"hf:{ref}", ref, "hf:/path/to/folder saved with save_pretrained()")
    return ref, False, False


def _missing(ref: str, e: Exception, is_local: bool):
    return W.missing_weights(f"hf:{ref} ({str(e).splitlines()[0][:200]})", None if is_local else ref,
                             "hf:/path/to/folder saved with save_pretrained()")


def load_hf(ref: str, *, random_weights: bool = False, seed: int = 0, device: str | None = None,
            precision: str = "auto") -> TorchBackend:
    """The backend for ``hf:ref``: :class:`HFBackend` for CLIP/SigLIP, :class:`HFVisionBackend` otherwise."""
    import transformers as T

    src, is_local, tiny = _source(ref)
    if tiny and not random_weights:
        raise ModelError(f"hf:{ref} is a tiny architecture shipped for tests and benchmarks: it has no "
                         "weights; add --random-weights")
    try:
        config = T.AutoConfig.from_pretrained(src)
    except OSError as e:
        raise _missing(ref, e, is_local) from None
    cls = HFBackend if config.model_type in TEXT_IMAGE_TYPES else HFVisionBackend
    return cls(ref, src, config, is_local=is_local, random_weights=random_weights, seed=seed, device=device,
               precision=precision)


def _build(T, src: str, config, random_weights: bool, seed: int):
    if random_weights:
        torch.manual_seed(seed)
        return T.AutoModel.from_config(config)
    return T.AutoModel.from_pretrained(src)


class _HFCommon(TorchBackend):
    kind = "hf"

    def _revision(self, ref: str, is_local: bool) -> str:
        return "local" if is_local else (W.hf_cached_revision(ref) or "main")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        if "shortest_edge" in (getattr(self.processor, "size", None) or {}):
            img = limit_aspect(img)  # short side up to the input size, then a crop
        return self.processor(images=img, return_tensors="np")["pixel_values"][0].astype(np.float32)

    def export_checkpoint(self, folder) -> str:
        """``save_pretrained`` of the model and its processor(s) into ``folder/model`` (safetensors),
        each file written through :mod:`lib.files`; the spec is ``hf:<that folder>``."""
        import tempfile

        from ..files import write_bytes

        out = Path(folder).expanduser().resolve() / "model"
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.processor.save_pretrained(tmp)
            if getattr(self, "tokenizer", None) is not None:
                self.tokenizer.save_pretrained(tmp)
            for f in sorted(Path(tmp).iterdir()):
                if f.is_file():
                    write_bytes(out / f.name, f.read_bytes())
        return f"hf:{out}"


class HFBackend(_HFCommon):
    """``hf:REF`` of a ``CLIPModel`` / ``SiglipModel``: image and text towers."""

    has_text = True

    def __init__(self, ref: str, src: str, config, *, is_local: bool, random_weights: bool = False, seed: int = 0,
                 device: str | None = None, precision: str = "auto"):
        import transformers as T

        self.spec = f"hf:{ref}"
        try:
            model = _build(T, src, config, random_weights, seed)
            self.processor = T.AutoImageProcessor.from_pretrained(src)
            self.tokenizer = T.AutoTokenizer.from_pretrained(src)
        except OSError as e:
            raise _missing(ref, e, is_local) from None
        self.model_type = config.model_type
        self.logit_scale = float(model.logit_scale.exp().item())
        self.dim = int(getattr(config, "projection_dim", 0) or config.text_config.hidden_size)
        self.fingerprint_info = {
            "kind": "hf", "model_type": config.model_type, "weights": state_dict_hash(model),
            "source": f"random(seed={seed})" if random_weights else
            f"{Path(ref).name if is_local else ref}@{self._revision(ref, is_local)}",
            "preprocess": self.processor.to_dict(),
        }
        self.random_weights = random_weights
        self._setup(model, device, precision)

    def image_module(self):
        return _ClipImageTower(self.model)

    def _image_forward(self, x):
        return _features(self.model.get_image_features(pixel_values=x))

    def _text_forward(self, texts):
        # SigLIP was trained on max-length padding; CLIP pads to the longest.
        padding = "max_length" if self.model_type.startswith("siglip") else True
        tok = self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(**tok))


class HFVisionBackend(_HFCommon):
    """``hf:REF`` of an image-only ``AutoModel`` backbone (DINOv2, ViT, ConvNeXt, ...).

    Embeds with the model's own image processor. The pooled feature is the CLS token after
    the final layer norm for the ViT family (:data:`CLS_TYPES`; DINOv2's ``pooler_output``),
    else the model's ``pooler_output`` flattened (global average pooling for CNNs). No text
    tower: text queries and zero-shot say so.
    """

    has_text = False

    def __init__(self, ref: str, src: str, config, *, is_local: bool, random_weights: bool = False, seed: int = 0,
                 device: str | None = None, precision: str = "auto"):
        import transformers as T
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

        self.spec = f"hf:{ref}"
        if config.model_type not in MODEL_FOR_IMAGE_MAPPING_NAMES:
            raise ModelError(f"hf:{ref} is a {config.model_type!r} model, not an image model: hf: loads CLIP/SigLIP "
                             "image-text models and vision backbones (DINOv2, ViT, ConvNeXt, ...)")
        try:
            self.processor = T.AutoImageProcessor.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise _missing(ref, e, is_local) from None
        try:
            model = _build(T, src, config, random_weights, seed)
        except OSError as e:
            raise _missing(ref, e, is_local) from None
        self.model_type = config.model_type
        self.pooling = "cls" if config.model_type in CLS_TYPES else "pooler_output"
        self.dim = int(_vision_dim(model, config))
        self.fingerprint_info = {
            "kind": "hf-vision", "model_type": config.model_type, "weights": state_dict_hash(model),
            "source": f"random(seed={seed})" if random_weights else
            f"{Path(ref).name if is_local else ref}@{self._revision(ref, is_local)}",
            "preprocess": self.processor.to_dict(), "pooling": self.pooling,
        }
        self.random_weights = random_weights
        self._setup(model, device, precision)
        self._tower = _VisionPool(self.model, self.pooling)

    def image_module(self):
        return self._tower


def _vision_dim(model, config) -> int:
    for attr in ("hidden_size", "hidden_sizes"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, (list, tuple)) and v:
            return int(v[-1])
    raise ModelError(f"cannot tell the feature size of a {config.model_type!r} model")


class _VisionPool(torch.nn.Module):
    """(B, 3, H, W) -> (B, dim) pooled features of a transformers vision backbone."""

    def __init__(self, model, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, x):
        out = self.model(pixel_values=x)
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]
        return out.pooler_output.flatten(1)


class _ClipImageTower(torch.nn.Module):
    """(B, 3, H, W) -> (B, dim) projected image features of a CLIP/SigLIP model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _features(self.model.get_image_features(pixel_values=x))


def _features(out):
    """transformers 5 returns a model output whose pooler_output is the projected feature."""
    return out if hasattr(out, "shape") else out.pooler_output
