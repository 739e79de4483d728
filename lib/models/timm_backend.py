"""timm image backbones: ``timm:NAME[@PRETRAINED_TAG | @/path/weights.safetensors]``.

* ``timm:resnet50`` (timm's default pretrained tag), ``timm:resnet50.a1_in1k`` or
  ``timm:resnet50@a1_in1k``: pretrained weights from the Hugging Face hub (``timm/...``),
  downloaded once into the HF cache; offline and not cached, a fast "weights missing".
* ``timm:NAME@/path/to/weights.safetensors``: a local checkpoint (safetensors, or a
  weights-only torch file), e.g. what ``python -m lib finetune`` writes. A full timm state
  dict is accepted too: its classifier weights are left out.
* ``timm:wb-tiny-vit`` / ``wb-tiny-resnet`` / ``wb-tiny-swin``: tiny architectures shipped as
  data (``lib/models/configs/timm/*.json``: a timm model name, constructor kwargs and the
  input size), for tests and benchmarks with ``--random-weights``.

Features are timm's pooled pre-logits (the model built with ``num_classes=0``: global
average pooling for CNNs and Swin, the class token for ViT), L2-normalised; preprocessing is
timm's own eval transform from ``resolve_data_config``. No text tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelError, WeightsMissing
from . import weights as W
from .base import TorchBackend, limit_aspect, state_dict_hash, tensors_bytes

CONFIG_DIR = Path(__file__).parent / "configs" / "timm"


def tiny_config(name: str) -> dict | None:
    """The shipped tiny architecture ``name`` (model, kwargs, input_size), if there is one."""
    path = CONFIG_DIR / f"{name}.json"
    if "/" in name or not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def tiny_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or s.endswith((".safetensors", ".pt", ".pth", ".bin"))


def _cached(cfg) -> bool:
    """Whether timm's pretrained weights for ``cfg`` are already on this machine."""
    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        repo = hub.split("@")[0]
        return any(W.hf_is_cached(repo, f) for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    url = getattr(cfg, "url", None)
    if url:
        import torch

        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists()
    return False


class TimmBackend(TorchBackend):
    """A timm model as an image-only embedding backend (see the module docstring)."""

    kind = "timm"
    has_text = False

    def __init__(self, name: str, weights: str | None = None, *, random_weights: bool = False, seed: int = 0,
                 device: str | None = None, precision: str = "auto"):
        import timm
        import torch
        from timm.data import create_transform, resolve_data_config

        self.spec = f"timm:{name}" + (f"@{weights}" if weights else "")
        tiny = tiny_config(name)
        local = weights is not None and looks_like_path(weights)
        if tiny is not None:
            base, kwargs, args = tiny["model"], dict(tiny.get("kwargs", {})), {"input_size": tuple(tiny["input_size"])}
            if weights and not local:
                raise ModelError(f"timm:{name} is a tiny architecture shipped for tests: it has no pretrained tag "
                                 f"{weights!r}; use --random-weights or timm:{name}@/path/to/weights.safetensors")
            full = name
        else:
            full = f"{name}.{weights}" if weights and not local else name
            base, kwargs, args = full, {}, {}
            if not timm.is_model(timm.models.split_model_name_tag(full)[0]):
                raise ModelError(f"unknown timm architecture {name!r}; see timm.list_models('*resnet*') "
                                 "(e.g. resnet50, vit_base_patch16_224, swin_base_patch4_window7_224)")
        if random_weights:
            torch.manual_seed(seed)
            model = timm.create_model(base, pretrained=False, num_classes=0, **kwargs)
            source = f"random(seed={seed})"
        elif local:
            model = timm.create_model(base, pretrained=False, num_classes=0, **kwargs)
            _load_backbone(model, W.load_state_dict(weights), weights, name)
            source = f"file:{Path(weights).name}"
        elif tiny is not None:
            raise ModelError(f"timm:{name} is a tiny architecture shipped for tests and benchmarks: it has no "
                             "weights; add --random-weights")
        else:
            cfg = timm.models.get_pretrained_cfg(full)
            if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
                tags = ", ".join(timm.list_pretrained(f"{timm.models.split_model_name_tag(full)[0]}.*")[:8]) or "none"
                raise ModelError(f"timm has no pretrained weights {full!r} (known: {tags})")
            if not _cached(cfg) and not W.hub_reachable():
                raise W.missing_weights(f"timm {full}", (getattr(cfg, "hf_hub_id", None) or "").split("@")[0] or None,
                                        f"timm:{name}@/path/to/weights.safetensors")
            try:
                model = timm.create_model(full, pretrained=True, num_classes=0)
            except (ModelError, WeightsMissing):
                raise
            except Exception as e:
                text = str(e)
                if any(k in text.lower() for k in ("connect", "internet", "resolve", "download", "offline")):
                    raise W.missing_weights(f"timm {full}", None, f"timm:{name}@/path/to/weights.safetensors") from None
                raise ModelError(f"cannot load timm {full}: {text[:400]}") from None
            tag = getattr(cfg, "tag", None) or timm.models.split_model_name_tag(full)[1]
            source = f"pretrained:{timm.models.split_model_name_tag(full)[0]}.{tag}"
        self.arch = name
        self.data_config = resolve_data_config(args, model=model)
        self.transform = create_transform(**self.data_config, is_training=False)
        self._short_side_resize = self.data_config.get("crop_mode", "center") == "center"
        self.dim = int(model.num_features)
        self.fingerprint_info = {
            "kind": "timm", "arch": base, "kwargs": kwargs, "weights": state_dict_hash(model), "source": source,
            "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
            "features": "timm num_classes=0 pooled pre-logits",
        }
        self.random_weights = random_weights
        self._setup(model, device, precision)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        if self._short_side_resize:
            img = limit_aspect(img)
        return self.transform(img.convert("RGB")).numpy()

    def image_module(self):
        return self.model  # built with num_classes=0: forward() returns the pooled features

    def export_checkpoint(self, folder) -> str:
        from ..files import write_bytes

        path = Path(folder).expanduser().resolve() / "model.safetensors"
        write_bytes(path, tensors_bytes(self.model.state_dict()))
        return f"timm:{self.arch}@{path}"


def _load_backbone(model, state: dict, where: str, name: str) -> None:
    """Load ``state`` into a ``num_classes=0`` model; a full model's classifier keys may be left over."""
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    result = model.load_state_dict(state, strict=False)
    stray = [k for k in result.unexpected_keys if not any(k == h or k.startswith(f"{h}.") for h in heads)]
    if result.missing_keys or stray:
        raise ModelError(f"{where}: does not match timm architecture {name}: missing {result.missing_keys[:5]}, "
                         f"unexpected {stray[:5]}")
