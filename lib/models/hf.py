"""Hugging Face transformers image-text models: ``CLIPModel`` and ``SiglipModel``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelError
from . import weights as W
from .base import TorchBackend, limit_aspect, state_dict_hash


class HFBackend(TorchBackend):
    """``hf:MODEL_ID_OR_PATH``: a hub id (``openai/clip-vit-base-patch32``) or a local folder."""

    kind = "hf"
    has_text = True

    def __init__(self, ref: str, *, random_weights: bool = False, seed: int = 0,
                 device: str | None = None, precision: str = "auto"):
        import torch
        import transformers as T

        self.spec = f"hf:{ref}"
        local = Path(ref).expanduser()
        is_local = local.exists()
        if not is_local and (ref.startswith(("/", ".", "~")) or ref.count("/") > 1):
            raise W.missing_weights(f"hf:{ref}", None, "hf:/path/to/saved_model_folder")
        if not is_local and not W.hf_is_cached(ref, "config.json") and not W.hub_reachable():
            raise W.missing_weights(f"hf:{ref}", ref, "hf:/path/to/folder saved with save_pretrained()")
        src = str(local) if is_local else ref
        try:
            config = T.AutoConfig.from_pretrained(src)
            if config.model_type not in ("clip", "siglip", "siglip2"):
                raise ModelError(f"hf:{ref} is a {config.model_type!r} model; only CLIP and SigLIP "
                                 "image-text models are supported")
            if random_weights:
                torch.manual_seed(seed)
                model = T.AutoModel.from_config(config)
            else:
                model = T.AutoModel.from_pretrained(src)
            self.processor = T.AutoImageProcessor.from_pretrained(src)
            self.tokenizer = T.AutoTokenizer.from_pretrained(src)
        except ModelError:
            raise
        except OSError as e:
            raise W.missing_weights(f"hf:{ref} ({str(e).splitlines()[0][:200]})", None if is_local else ref,
                                    "hf:/path/to/folder saved with save_pretrained()") from None
        self.model_type = config.model_type
        self.logit_scale = float(model.logit_scale.exp().item())
        self.dim = int(getattr(config, "projection_dim", 0) or config.text_config.hidden_size)
        revision = "local" if is_local else (W.hf_cached_revision(ref) or "main")
        self.fingerprint_info = {
            "kind": "hf", "model_type": config.model_type, "weights": state_dict_hash(model),
            "source": f"random(seed={seed})" if random_weights else f"{Path(ref).name if is_local else ref}@{revision}",
            "preprocess": self.processor.to_dict(),
        }
        self.random_weights = random_weights
        self._setup(model, device, precision)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        if "shortest_edge" in (getattr(self.processor, "size", None) or {}):
            img = limit_aspect(img)  # CLIP's processor: short side up to the input size, then a crop
        return self.processor(images=img, return_tensors="np")["pixel_values"][0].astype(np.float32)

    def _image_forward(self, x):
        return _features(self.model.get_image_features(pixel_values=x))

    def _text_forward(self, texts):
        # SigLIP was trained on max-length padding; CLIP pads to the longest.
        padding = "max_length" if self.model_type.startswith("siglip") else True
        tok = self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(**tok))


def _features(out):
    """transformers 5 returns a model output whose pooler_output is the projected feature."""
    return out if hasattr(out, "shape") else out.pooler_output
