"""One registry turns a spec string into an embedding backend.

================================================  =========================================
spec                                              loads
================================================  =========================================
``color``                                         offline colour/texture features, no weights
``open_clip:ARCH@TAG``                            open_clip pretrained tag (``ViT-B-32@laion2b_s34b_b79k``)
``open_clip:hf-hub:ORG/NAME``                     open_clip model from the HF hub (BiomedCLIP)
``open_clip:ARCH@/path/weights.safetensors``      local checkpoint (safetensors or weights-only torch)
``hf:MODEL_ID_OR_PATH``                           transformers ``CLIPModel`` / ``SiglipModel``
alias from ``aliases.json``                       e.g. ``biomedclip``, ``clip-b32``
================================================  =========================================

Random weights are never used silently: ``random_weights=True`` (CLI ``--random-weights``)
is required, and the fingerprint records it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import ModelError
from .base import PRECISIONS, Backend, fingerprint_of, l2_normalize, select_device

__all__ = ["Backend", "ModelSpec", "PRECISIONS", "load_model", "parse_spec", "resolve_fingerprint",
           "fingerprint_of", "l2_normalize", "select_device", "aliases", "KINDS", "load_available"]

KINDS = ("color", "open_clip", "hf")
_ALIASES = Path(__file__).with_name("aliases.json")


def aliases() -> dict[str, str]:
    return {k: v for k, v in json.loads(_ALIASES.read_text()).items() if not k.startswith("_")}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` plus ``arch``/``pretrained`` (open_clip) or ``ref`` (hf)."""

    text: str
    kind: str
    arch: str | None = None
    pretrained: str | None = None
    ref: str | None = None


def parse_spec(spec: str) -> ModelSpec:
    """Parse a spec string (see module docstring); raises :class:`ModelError` if malformed."""
    spec = (spec or "").strip()
    spec = aliases().get(spec, spec)
    if spec == "color":
        return ModelSpec(spec, "color")
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:"):]
        if rest.startswith("hf-hub:"):
            if rest.count("/") < 1:
                raise ModelError(f"bad spec {spec!r}: expected open_clip:hf-hub:ORG/NAME")
            return ModelSpec(spec, "open_clip", arch=rest)
        arch, _, pretrained = rest.partition("@")
        if not arch:
            raise ModelError(f"bad spec {spec!r}: expected open_clip:ARCH@PRETRAINED")
        return ModelSpec(spec, "open_clip", arch=arch, pretrained=pretrained or None)
    if spec.startswith("hf:") and len(spec) > 3:
        return ModelSpec(spec, "hf", ref=spec[3:])
    known = ", ".join(sorted(aliases()))
    raise ModelError(
        f"unknown model spec {spec!r}. Use 'color', 'open_clip:ARCH@PRETRAINED', "
        f"'open_clip:hf-hub:ORG/NAME', 'open_clip:ARCH@/path/to/weights.safetensors', "
        f"'hf:MODEL_ID_OR_PATH', or an alias ({known})"
    )


def load_model(spec: str, *, random_weights: bool = False, seed: int = 0, device: str | None = None,
               precision: str = "auto") -> Backend:
    """Build the backend for ``spec``.

    Parameters
    ----------
    random_weights : build the architecture with seeded random weights (tests, benchmarks).
    device : ``cuda``, ``mps``, ``cpu``; default picks the best available.
    precision : ``auto`` (fp16 autocast on GPU, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``
        (autocast), ``bf16-cast`` (whole model in bf16: the fast CPU path).
    """
    s = parse_spec(spec)
    if s.kind == "color":
        if random_weights:
            raise ModelError("the color backend has no weights; drop --random-weights")
        from .color import ColorBackend

        backend: Backend = ColorBackend()
    elif s.kind == "open_clip":
        from .openclip import OpenClipBackend

        backend = OpenClipBackend(s.arch, s.pretrained, random_weights=random_weights, seed=seed,
                                  device=device, precision=precision)
    else:
        from .hf import HFBackend

        backend = HFBackend(s.ref, random_weights=random_weights, seed=seed, device=device,
                            precision=precision)
    _remember(s, random_weights, seed, backend.fingerprint)
    return backend


def load_available(specs, **kwargs) -> tuple[dict[str, Backend], list[str]]:
    """Load every spec whose weights are present: ``({spec: backend}, [specs whose weights are missing])``.

    Only :class:`~lib.errors.WeightsMissing` is caught (a notebook or page then says in one
    line which models it skips); a bad spec or a broken checkpoint still raises. ``kwargs``
    go to :func:`load_model`.
    """
    from ..errors import WeightsMissing

    loaded, missing = {}, []
    for spec in dict.fromkeys(specs):
        try:
            loaded[spec] = load_model(spec, **kwargs)
        except WeightsMissing:
            missing.append(spec)
    return loaded, missing


# ---------------------------------------------------------------- fingerprint memo
# Computing a CLIP fingerprint means loading and hashing the weights; a cache check that
# finds nothing to do should not pay that. The memo maps a spec (and the identity of any
# local weights file) to the fingerprint it had when last loaded.


def _memo_path() -> Path:
    return config.cache_dir() / "fingerprints.json"


def _memo_key(s: ModelSpec, random_weights: bool, seed: int) -> str | None:
    from .weights import file_identity

    if s.kind == "open_clip" and s.pretrained and os.path.exists(os.path.expanduser(s.pretrained)):
        ident = file_identity(s.pretrained)
    elif s.kind == "hf" and os.path.exists(os.path.expanduser(s.ref)):
        ident = file_identity(s.ref)
    elif s.kind == "hf" or (s.arch or "").startswith("hf-hub:"):
        from .weights import hf_cached_revision

        ident = hf_cached_revision(s.ref or s.arch[len("hf-hub:"):]) or ""
        if not ident:
            return None  # nothing cached yet: the fingerprint is unknown until loaded
    else:
        ident = ""
    return f"{s.text}|random={random_weights}|seed={seed}|{ident}"


def _remember(s: ModelSpec, random_weights: bool, seed: int, fp: str) -> None:
    if s.kind == "color":
        return
    key = _memo_key(s, random_weights, seed)
    if key is None:
        return
    path = _memo_path()
    memo = json.loads(path.read_text()) if path.exists() else {}
    if memo.get(key) == fp:
        return
    memo[key] = fp
    config.ensure(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
    os.replace(tmp, path)


def resolve_fingerprint(spec: str, *, random_weights: bool = False, seed: int = 0) -> str | None:
    """The cache fingerprint of ``spec`` without loading the model, or None if unknown yet."""
    s = parse_spec(spec)
    if s.kind == "color":
        from .color import color_fingerprint

        return color_fingerprint()
    key = _memo_key(s, random_weights, seed)
    path = _memo_path()
    if key is None or not path.exists():
        return None
    return json.loads(path.read_text()).get(key)
