"""open_clip models: pretrained tags, ``hf-hub:`` ids, ``local-dir:`` folders and local checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelError, WeightsMissing
from . import weights as W
from .base import TorchBackend, limit_aspect, state_dict_hash, tensors_bytes

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_configs() -> None:
    """Add the architectures shipped in ``lib/models/configs`` (tiny test models) to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


class OpenClipBackend(TorchBackend):
    """``open_clip:ARCH@PRETRAINED``, ``open_clip:ARCH@/path/ckpt``, ``open_clip:hf-hub:ORG/NAME``
    or ``open_clip:local-dir:/folder`` (an ``open_clip_config.json`` and its weights, as
    :meth:`export_checkpoint` writes for an hf-hub model)."""

    kind = "open_clip"
    has_text = True

    def __init__(self, arch: str, pretrained: str | None, *, random_weights: bool = False,
                 seed: int = 0, device: str | None = None, precision: str = "auto"):
        import open_clip
        import torch

        register_configs()
        self.arch, self.pretrained = arch, pretrained
        hub = arch.startswith(("hf-hub:", "local-dir:"))
        local = pretrained is not None and _looks_like_path(pretrained)
        self.spec = f"open_clip:{arch}" + (f"@{pretrained}" if pretrained else "")
        if not hub and arch not in open_clip.list_models():
            raise ModelError(
                f"unknown open_clip architecture {arch!r}; see open_clip.list_models() "
                "(e.g. ViT-B-32, ViT-B-16, ViT-L-14)"
            )
        if random_weights:
            if hub:
                raise ModelError("--random-weights needs an architecture name, not an hf-hub id")
            torch.manual_seed(seed)
            model = _call(lambda: _quiet(lambda: open_clip.create_model(arch, pretrained=None)), arch)
            source = f"random(seed={seed})"
        elif arch.startswith("local-dir:"):
            folder = Path(arch[len("local-dir:"):]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise WeightsMissing(f"open_clip {arch}: no open_clip_config.json in {folder}")
            model = _call(lambda: open_clip.create_model(arch), arch)
            source = f"local-dir:{folder.name}"
        elif hub:
            repo = arch[len("hf-hub:"):]
            if not (W.hf_is_cached(repo, "open_clip_config.json") or W.hub_reachable()):
                raise W.missing_weights(f"open_clip {arch}", repo,
                                        "open_clip:ARCH@/path/to/open_clip_model.safetensors")
            model = _call(lambda: open_clip.create_model(arch), arch)
            source = f"hf-hub:{repo}@{W.hf_cached_revision(repo) or 'main'}"
        elif local:
            state = W.load_state_dict(pretrained)
            model = _call(lambda: _quiet(lambda: open_clip.create_model(arch, pretrained=None)), arch)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ModelError(f"{pretrained}: does not match architecture {arch}: {str(e)[:400]}") from None
            source = f"file:{Path(pretrained).name}"
        elif pretrained:
            cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            if not cfg:
                tags = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch) or "none"
                raise ModelError(f"open_clip has no pretrained tag {pretrained!r} for {arch} (known: {tags})")
            repo = (cfg.get("hf_hub") or "").strip("/") or None
            cached = repo and any(W.hf_is_cached(repo, f) for f in (
                "open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
            if not cached and not W.hub_reachable():
                raise W.missing_weights(f"open_clip {arch} '{pretrained}'", repo or cfg.get("url"),
                                        f"open_clip:{arch}@/path/to/open_clip_model.safetensors")
            model = _call(lambda: open_clip.create_model(arch, pretrained=pretrained), f"{arch}@{pretrained}")
            source = f"tag:{pretrained}"
        else:
            raise ModelError(
                f"open_clip spec {self.spec!r} names no weights: use open_clip:{arch}@TAG, "
                f"open_clip:{arch}@/path/to/weights.safetensors, or --random-weights for tests"
            )
        self.tokenizer = _call(lambda: open_clip.get_tokenizer(arch), arch)
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        self._short_side_resize = model.visual.preprocess_cfg.get("resize_mode", "shortest") == "shortest"
        self.logit_scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       and hasattr(model.text_projection, "shape") else _probe_dim(model))
        self.fingerprint_info = {
            "kind": "open_clip", "arch": arch, "weights": state_dict_hash(model), "source": source,
            "preprocess": dict(model.visual.preprocess_cfg),
        }
        self.random_weights = random_weights
        self._setup(model, device, precision)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        if self._short_side_resize:
            img = limit_aspect(img)
        return self.transform(img).numpy()

    def pixels_preprocess(self):
        """open_clip's eval transform up to its last two steps (ToTensor, Normalize): the
        resized, cropped RGB pixels as uint8 (3, H, W); :meth:`encode_pixels` does the rest.
        None for a transform of another shape."""
        steps = list(getattr(self.transform, "transforms", []))
        if len(steps) < 2 or type(steps[-2]).__name__ not in ("MaybeToTensor", "ToTensor") \
                or type(steps[-1]).__name__ != "Normalize":
            return None
        from torchvision.transforms import Compose

        head = Compose(steps[:-2])
        self._pixel_norm = (tuple(steps[-1].mean), tuple(steps[-1].std))
        short_side = self._short_side_resize

        def pixels(img: Image.Image) -> np.ndarray:
            out = head(limit_aspect(img) if short_side else img)
            if not isinstance(out, Image.Image) or out.mode != "RGB":
                raise TypeError(f"transform gave {type(out).__name__} {getattr(out, 'mode', '')}, not an RGB image")
            return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)

        return pixels

    def _image_forward(self, x):
        return self.model.encode_image(x)

    def image_module(self):
        return self.model.visual  # encode_image(x) is visual(x) before normalisation

    def export_checkpoint(self, folder) -> str:
        """``open_clip_model.safetensors`` (the whole CLIP: the text tower too) and, for a
        model without a registered architecture name (hf-hub, local-dir), the
        ``open_clip_config.json`` and tokenizer files ``local-dir:`` loading needs."""
        import json
        import tempfile

        import open_clip

        from ..files import write_bytes, write_text

        folder = Path(folder).expanduser().resolve()
        write_bytes(folder / "open_clip_model.safetensors", tensors_bytes(self.model.state_dict()))
        if not self.arch.startswith(("hf-hub:", "local-dir:")):
            return f"open_clip:{self.arch}@{folder / 'open_clip_model.safetensors'}"
        cfg = {"model_cfg": open_clip.get_model_config(self.arch),
               "preprocess_cfg": dict(self.model.visual.preprocess_cfg)}
        write_text(folder / "open_clip_config.json", json.dumps(cfg, indent=2, default=str))
        hf_tok = getattr(self.tokenizer, "tokenizer", None)
        if hf_tok is not None and hasattr(hf_tok, "save_pretrained"):
            with tempfile.TemporaryDirectory() as tmp:
                hf_tok.save_pretrained(tmp)
                for f in Path(tmp).iterdir():
                    if f.is_file():
                        write_bytes(folder / f.name, f.read_bytes())
        return f"open_clip:local-dir:{folder}"

    def _text_forward(self, texts):
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)


def _quiet(fn):
    """open_clip logs a warning for every model built without pretrained weights; we load them ourselves."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return fn()
    finally:
        root.setLevel(level)


def _probe_dim(model) -> int:
    import torch

    size = model.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or s.endswith((".safetensors", ".pt", ".pth", ".bin"))


def _call(fn, what: str):
    try:
        return fn()
    except (ModelError, WeightsMissing):
        raise
    except Exception as e:
        text = str(e)
        if any(k in text for k in ("download", "connect", "Internet", "resolve", "cache")):
            first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
            raise W.missing_weights(f"open_clip {what} ({first}; an HF text tower needs its config and "
                                    "tokenizer from the hub or the HF cache)", None,
                                    "open_clip:ARCH@/path/to/weights.safetensors") from None
        raise ModelError(f"cannot load open_clip {what}: {text[:400]}") from None
