"""One registry turns a spec string into an embedding backend.

================================================  =========================================
spec                                              loads
================================================  =========================================
``color``                                         offline colour/texture features, no weights
``open_clip:ARCH@TAG``                            open_clip pretrained tag (``ViT-B-32@laion2b_s34b_b79k``)
``open_clip:hf-hub:ORG/NAME``                     open_clip model from the HF hub (BiomedCLIP)
``open_clip:ARCH@/path/weights.safetensors``      local checkpoint (safetensors or weights-only torch)
``open_clip:local-dir:/folder``                   an open_clip_config.json with its weights
``hf:MODEL_ID_OR_PATH``                           transformers ``CLIPModel`` / ``SiglipModel``, or an
                                                  image-only ``AutoModel`` backbone (DINOv2, ViT)
``timm:NAME[@TAG | @/path/weights]``              a timm image backbone (ResNet-50, ViT-B/16, Swin-B)
``finetuned:/path/CKPT``                          a checkpoint written by ``python -m lib finetune``
alias from ``aliases.json``                       e.g. ``biomedclip``, ``clip-b32``, ``swin-b``, ``dinov2-l``
================================================  =========================================

The registry is a table of kinds (:data:`REGISTRY`, in the manner of CLIP_benchmark's
``TYPE2FUNC`` and open_clip's factory): each :class:`Kind` names its prefix, how the rest of
the spec parses, its loader and the identity of its weights for the fingerprint memo. A new
backend is one entry in that table.

Random weights are never used silently: ``random_weights=True`` (CLI ``--random-weights``)
is required, and the fingerprint records it.

A spec is resolved once (:func:`resolve_model`) into a :class:`ResolvedModel`: spec,
``random_weights``, seed, device and precision, the fingerprint (known without loading
where it can be), and the backend, loaded the first time something needs it. Every
``run_*`` of the analysis modules takes that value, so pages and the CLI resolve a model
once and pass it on, instead of each function resolving ``(spec, random_weights, backend)``
again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import ModelError
from .base import PRECISIONS, Backend, fingerprint_of, l2_normalize, select_device

__all__ = ["Backend", "Kind", "ModelSpec", "PRECISIONS", "REGISTRY", "load_model", "parse_spec",
           "resolve_fingerprint", "fingerprint_of", "l2_normalize", "select_device", "aliases", "KINDS",
           "load_available", "ResolvedModel", "resolve_model", "has_weights"]

_ALIASES = Path(__file__).with_name("aliases.json")


def aliases() -> dict[str, str]:
    return {k: v for k, v in json.loads(_ALIASES.read_text()).items() if not k.startswith("_")}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` plus ``arch``/``pretrained`` (open_clip, timm) or ``ref`` (hf, finetuned)."""

    text: str
    kind: str
    arch: str | None = None
    pretrained: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class Kind:
    """One backend kind of the registry.

    Attributes
    ----------
    name : the ``ModelSpec.kind``
    prefix : what a spec starts with (``"timm:"``); for ``color`` the whole spec
    parse : (spec text, rest after the prefix) -> ModelSpec; raises ModelError if malformed
    load : (ModelSpec, random_weights, seed, device, precision) -> Backend
    weights_identity : ModelSpec -> str (cheap identity of the weights: a file's size and
        mtime, the HF cache revision, "" when the spec alone fixes them) or None (unknown until
        loaded); the memo of fingerprints is keyed by it
    fingerprint : ModelSpec -> str, for kinds whose fingerprint is known without loading
    example : shown in the "unknown spec" message
    has_weights : False for kinds with nothing to randomise (``color``)
    """

    name: str
    prefix: str
    parse: Callable[[str, str], ModelSpec]
    load: Callable[..., Backend]
    weights_identity: Callable[[ModelSpec], str | None]
    fingerprint: Callable[[ModelSpec], str] | None = None
    example: str = ""
    has_weights: bool = True


# ---------------------------------------------------------------- the kinds


def _exists(path: str | None) -> bool:
    return bool(path) and os.path.exists(os.path.expanduser(path))


def _file_ident(path: str) -> str:
    from .weights import file_identity

    return file_identity(path)


def _hub_ident(repo: str) -> str | None:
    from .weights import hf_cached_revision

    return hf_cached_revision(repo) or None  # nothing cached yet: unknown until loaded


def _parse_color(text: str, rest: str) -> ModelSpec:
    return ModelSpec(text, "color")


def _load_color(s: ModelSpec, random_weights: bool, seed: int, device, precision) -> Backend:
    if random_weights:
        raise ModelError("the color backend has no weights; drop --random-weights")
    from .color import ColorBackend

    return ColorBackend()


def _color_fingerprint(s: ModelSpec) -> str:
    from .color import color_fingerprint

    return color_fingerprint()


def _parse_open_clip(text: str, rest: str) -> ModelSpec:
    if rest.startswith("hf-hub:"):
        if rest.count("/") < 1:
            raise ModelError(f"bad spec {text!r}: expected open_clip:hf-hub:ORG/NAME")
        return ModelSpec(text, "open_clip", arch=rest)
    if rest.startswith("local-dir:"):
        if len(rest) <= len("local-dir:"):
            raise ModelError(f"bad spec {text!r}: expected open_clip:local-dir:/path/to/folder")
        return ModelSpec(text, "open_clip", arch=rest)
    arch, _, pretrained = rest.partition("@")
    if not arch:
        raise ModelError(f"bad spec {text!r}: expected open_clip:ARCH@PRETRAINED")
    return ModelSpec(text, "open_clip", arch=arch, pretrained=pretrained or None)


def _load_open_clip(s: ModelSpec, random_weights: bool, seed: int, device, precision) -> Backend:
    from .openclip import OpenClipBackend

    return OpenClipBackend(s.arch, s.pretrained, random_weights=random_weights, seed=seed, device=device,
                           precision=precision)


def _open_clip_ident(s: ModelSpec) -> str | None:
    if _exists(s.pretrained):
        return _file_ident(s.pretrained)
    if s.arch.startswith("local-dir:"):
        folder = s.arch[len("local-dir:"):]
        return _file_ident(folder) if _exists(folder) else None
    if s.arch.startswith("hf-hub:"):
        return _hub_ident(s.arch[len("hf-hub:"):])
    return ""


def _parse_hf(text: str, rest: str) -> ModelSpec:
    if not rest:
        raise ModelError(f"bad spec {text!r}: expected hf:MODEL_ID_OR_PATH")
    return ModelSpec(text, "hf", ref=rest)


def _load_hf(s: ModelSpec, random_weights: bool, seed: int, device, precision) -> Backend:
    from .hf import load_hf

    return load_hf(s.ref, random_weights=random_weights, seed=seed, device=device, precision=precision)


def _hf_ident(s: ModelSpec) -> str | None:
    from .hf import shipped

    tiny = shipped(s.ref)
    if tiny is not None:
        return _file_ident(str(tiny))
    if _exists(s.ref):
        return _file_ident(s.ref)
    return _hub_ident(s.ref)


def _parse_timm(text: str, rest: str) -> ModelSpec:
    name, _, weights = rest.partition("@")
    if not name:
        raise ModelError(f"bad spec {text!r}: expected timm:NAME, timm:NAME@TAG or timm:NAME@/path/weights")
    return ModelSpec(text, "timm", arch=name, pretrained=weights or None)


def _load_timm(s: ModelSpec, random_weights: bool, seed: int, device, precision) -> Backend:
    from .timm_backend import TimmBackend

    return TimmBackend(s.arch, s.pretrained, random_weights=random_weights, seed=seed, device=device,
                       precision=precision)


def _timm_ident(s: ModelSpec) -> str | None:
    from .timm_backend import looks_like_path, tiny_config

    if s.pretrained and looks_like_path(s.pretrained):
        return _file_ident(s.pretrained) if _exists(s.pretrained) else None
    if tiny_config(s.arch) is not None:
        return ""
    import timm

    full = f"{s.arch}.{s.pretrained}" if s.pretrained else s.arch
    cfg = timm.models.get_pretrained_cfg(full)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return _hub_ident(hub.split("@")[0]) if hub else ""


def _parse_finetuned(text: str, rest: str) -> ModelSpec:
    if not rest:
        raise ModelError(f"bad spec {text!r}: expected finetuned:/path/to/checkpoint_folder")
    return ModelSpec(text, "finetuned", ref=rest)


def _finetuned_best(folder: str | os.PathLike) -> dict:
    from ..errors import WeightsMissing

    path = Path(folder).expanduser() / "finetune.json"
    if not path.is_file():
        raise WeightsMissing(f"no fine-tuned model in {Path(folder).expanduser()} (no finetune.json): "
                             "write one with python -m lib finetune NAME --model SPEC --out FOLDER")
    try:
        best = json.loads(path.read_text())["best"]
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: not a finetune.json written by python -m lib finetune") from None
    if not best or not best.get("spec"):
        raise WeightsMissing(f"{path}: no epoch has finished yet, so there is no model to load; resume with "
                             "python -m lib finetune ... --out FOLDER")
    return best


def finetuned_spec(folder: str | os.PathLike) -> str:
    """The registry spec of the fine-tuned model in ``folder`` (read from its ``finetune.json``)."""
    return str(_finetuned_best(folder)["spec"])


def _load_finetuned(s: ModelSpec, random_weights: bool, seed: int, device, precision) -> Backend:
    if random_weights:
        raise ModelError("a fine-tuned checkpoint holds its own weights; drop --random-weights")
    best = _finetuned_best(s.ref)
    # A head-only run on a random-weight backbone keeps that backbone: it is rebuilt from its seed.
    return load_model(str(best["spec"]), random_weights=bool(best.get("random_weights")),
                      seed=int(best.get("seed", 0)), device=device, precision=precision)


def _finetuned_ident(s: ModelSpec) -> str | None:
    return _file_ident(s.ref) if _exists(s.ref) else None


#: The kinds, in the order specs are matched against their prefixes.
REGISTRY: dict[str, Kind] = {k.name: k for k in (
    Kind("color", "color", _parse_color, _load_color, lambda s: "", _color_fingerprint, "color", has_weights=False),
    Kind("open_clip", "open_clip:", _parse_open_clip, _load_open_clip, _open_clip_ident,
         example="open_clip:ARCH@PRETRAINED, open_clip:hf-hub:ORG/NAME, open_clip:ARCH@/path/to/weights.safetensors"),
    Kind("hf", "hf:", _parse_hf, _load_hf, _hf_ident, example="hf:MODEL_ID_OR_PATH"),
    Kind("timm", "timm:", _parse_timm, _load_timm, _timm_ident, example="timm:NAME[@TAG|@/path/to/weights]"),
    Kind("finetuned", "finetuned:", _parse_finetuned, _load_finetuned, _finetuned_ident,
         example="finetuned:/path/to/checkpoint_folder"),
)}
KINDS = tuple(REGISTRY)


def parse_spec(spec: str) -> ModelSpec:
    """Parse a spec string (see module docstring); raises :class:`ModelError` if malformed."""
    spec = (spec or "").strip()
    spec = aliases().get(spec, spec)
    for kind in REGISTRY.values():
        if kind.prefix.endswith(":"):
            if spec.startswith(kind.prefix):
                return kind.parse(spec, spec[len(kind.prefix):])
        elif spec == kind.prefix:
            return kind.parse(spec, "")
    known = ", ".join(sorted(aliases()))
    forms = "; ".join(f"'{k.example}'" for k in REGISTRY.values())
    raise ModelError(f"unknown model spec {spec!r}. Use {forms}; or an alias ({known})")


def load_model(spec: str, *, random_weights: bool = False, seed: int = 0, device: str | None = None,
               precision: str = "auto") -> Backend:
    """Build the backend for ``spec``.

    Parameters
    ----------
    random_weights : build the architecture with seeded random weights (tests, benchmarks).
    device : ``cuda``, ``mps``, ``cpu``; default picks the best available.
    precision : ``auto`` (fp16 autocast on GPU, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``
        (autocast), ``bf16-cast`` (whole model in bf16: the fast CPU path on CPUs with native
        bf16, AVX512-BF16 or AMX; elsewhere emulated, slower than fp32, and a warning says so).
    """
    s = parse_spec(spec)
    backend = REGISTRY[s.kind].load(s, random_weights, seed, device, precision)
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
    ident = REGISTRY[s.kind].weights_identity(s)
    if ident is None:
        return None
    return f"{s.text}|random={random_weights}|seed={seed}|{ident}"


def _remember(s: ModelSpec, random_weights: bool, seed: int, fp: str) -> None:
    if REGISTRY[s.kind].fingerprint is not None:
        return
    key = _memo_key(s, random_weights, seed)
    if key is None:
        return
    path = _memo_path()
    memo = json.loads(path.read_text()) if path.exists() else {}
    if memo.get(key) == fp:
        return
    memo[key] = fp
    from ..files import write_text

    write_text(path, json.dumps(memo, indent=1, sort_keys=True))


def resolve_fingerprint(spec: str, *, random_weights: bool = False, seed: int = 0) -> str | None:
    """The cache fingerprint of ``spec`` without loading the model, or None if unknown yet."""
    s = parse_spec(spec)
    kind = REGISTRY[s.kind]
    if kind.fingerprint is not None:
        return kind.fingerprint(s)
    key = _memo_key(s, random_weights, seed)
    path = _memo_path()
    if key is None or not path.exists():
        return None
    return json.loads(path.read_text()).get(key)


def has_weights(spec: str) -> bool:
    """Whether ``spec``'s kind has weights (``random_weights`` means something for it)."""
    return REGISTRY[parse_spec(spec).kind].has_weights


# ---------------------------------------------------------------- the resolved model


@dataclass(eq=False)
class ResolvedModel:
    """A spec resolved once, what every ``run_*`` takes (from :func:`resolve_model`).

    Attributes
    ----------
    spec : the spec as given (an alias stays an alias: result tables and file names use it)
    parsed : its :class:`ModelSpec`
    random_weights, seed : seeded random weights instead of the pretrained ones
    device, precision : as for :func:`load_model` (None / ``auto``: the best available)

    ``backend`` loads the model the first time it is read and keeps it (thread-safe: the
    app shares one ResolvedModel between sessions); ``fingerprint`` avoids loading where it
    can (kinds that know it, the memo of earlier loads).
    """

    spec: str
    parsed: ModelSpec
    random_weights: bool = False
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    _backend: Backend | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def kind(self) -> str:
        return self.parsed.kind

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> Backend:
        """The loaded backend (loaded now if it is not yet)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = load_model(self.spec, random_weights=self.random_weights, seed=self.seed,
                                               device=self.device, precision=self.precision)
        return self._backend

    @property
    def fingerprint(self) -> str | None:
        """The embedding-cache fingerprint: the loaded backend's, else known without loading,
        else (random weights: nothing to read, so building them is cheap) the backend's; None
        when only loading pretrained weights would tell."""
        if self._backend is not None:
            return self._backend.fingerprint
        fp = resolve_fingerprint(self.spec, random_weights=self.random_weights, seed=self.seed)
        if fp is None and self.random_weights:
            return self.backend.fingerprint
        return fp

    @property
    def has_text(self) -> bool:
        return self.backend.has_text

    def describe(self) -> dict:
        """``spec, kind, random_weights`` and, once loaded, the backend's description."""
        out = {"spec": self.spec, "kind": self.kind, "random_weights": self.random_weights}
        return {**out, **self._backend.describe()} if self._backend is not None else out


def resolve_model(model: str | ResolvedModel | Backend, *, random_weights: bool = False, seed: int = 0,
                  device: str | None = None, precision: str = "auto", backend: Backend | None = None
                  ) -> ResolvedModel:
    """The one way to turn a spec into the value the ``run_*`` functions take.

    ``model`` may already be a ResolvedModel (returned as it is) or a loaded Backend
    (wrapped: its own spec). ``backend`` hands over an already loaded model for ``model``'s
    spec (notebooks reuse theirs). Parsing errors (:class:`ModelError`) surface here, at once.
    """
    if isinstance(model, ResolvedModel):
        return model
    if isinstance(model, Backend):
        model, backend = model.spec, model
    return ResolvedModel(model, parse_spec(model), bool(random_weights), seed, device, precision, _backend=backend)

