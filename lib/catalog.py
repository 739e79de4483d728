"""What is on disk for a dataset: which models embedded it (fully or partly), which
prediction tables exist, and a cheap token that changes when either does.

The app lists models and predictions from here; nothing is loaded or computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import config
from . import dataset as ds_mod
from .files import results_dir

#: Models a fresh machine can always run (no weights).
OFFLINE_SPECS = ("color",)

#: The tiny random-weight open_clip architecture for tests (``random_weights=True`` only).
TEST_SPEC = "open_clip:WB-Tiny-ViT"


@dataclass(frozen=True)
class ModelChoice:
    """A model as the app offers it: a spec and whether its weights are random (tests only)."""

    spec: str
    random_weights: bool = False

    @property
    def label(self) -> str:
        return f"{self.spec} [random weights]" if self.random_weights else self.spec

    @property
    def short(self) -> str:
        """A label that fits a chip or a narrow select: the kind prefix and hub organisation
        dropped (``WB-Tiny-ViT · random``, ``BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``)."""
        name = self.spec.split(":", 1)[-1] if self.spec.startswith(("open_clip:", "hf:", "timm:")) else self.spec
        name = name.removeprefix("hf-hub:").rsplit("/", 1)[-1]
        return f"{name} · random" if self.random_weights else name

    @property
    def has_text(self) -> bool:
        """Whether the spec's kind has a text tower (``color`` has none)."""
        from .models import parse_spec

        try:
            return parse_spec(self.spec).kind != "color"
        except Exception:  # a malformed spec cannot be used for text either
            return False

    @property
    def key(self) -> str:
        """Query-parameter form: the spec, with ``@@random`` appended for random weights."""
        return f"{self.spec}@@random" if self.random_weights else self.spec

    @classmethod
    def from_key(cls, key: str) -> ModelChoice:
        spec, _, rnd = str(key).partition("@@")
        return cls(spec, rnd == "random")


def _emb_root() -> Path:
    return config.cache_dir() / "emb"


def _model_infos() -> list[dict]:
    out = []
    root = _emb_root()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        p = d / "model.json"
        if not p.is_file():
            continue
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        info["_dir"] = d
        out.append(info)
    return out


def dataset_token(name: str) -> str:
    """Changes whenever dataset ``name`` is ingested again."""
    p = ds_mod.dataset_dir(name) / "dataset.json"
    return f"{p.stat().st_mtime_ns if p.exists() else 0}"


def cache_token(name: str | None = None, *, results: bool = False) -> str:
    """A short hash that changes whenever dataset ``name`` is ingested again or any embedding
    shard is written (and, with ``results``, any result table of the dataset): the app's
    cache key."""
    h = hashlib.sha256()
    if name:
        h.update(dataset_token(name).encode())
        res = results_dir(name)
        if results and res.is_dir():
            for e in sorted(os.scandir(res), key=lambda e: e.name):
                h.update(f"{e.name}:{e.stat().st_mtime_ns}".encode())
    root = _emb_root()
    if root.is_dir():
        for d in sorted(os.scandir(root), key=lambda e: e.name):
            shards = Path(d.path) / "shards"
            names = sorted(os.listdir(shards)) if shards.is_dir() else []
            h.update(f"{d.name}:{len(names)}:{names[-1] if names else ''}".encode())
    return h.hexdigest()[:16]


def model_status(name: str) -> pd.DataFrame:
    """Every embedding cache and how much of dataset ``name`` it covers.

    Returns
    -------
    DataFrame, one row per cached model, full first: spec, random_weights, text (has a
    text tower), dim, fingerprint, vectors (unique images of the dataset in the cache),
    total (unique images of the dataset), status (``full``, ``partial`` or ``none``) and
    current (the spec resolves to this fingerprint today; stale caches of older code or
    other weights are not current).
    """
    from .models import resolve_fingerprint

    infos = _model_infos()
    fps = list(dict.fromkeys(str(i.get("fingerprint") or "") for i in infos))
    cover = {r.fingerprint: (int(r.vectors), int(r.total)) for r in _coverage(name, fps).itertuples()}
    rows = []
    for info in infos:
        fp = str(info.get("fingerprint") or "")
        spec = str(info.get("spec") or "?")
        rnd = str(info.get("source", "")).startswith("random(")
        have, total = cover[fp]
        try:
            current = resolve_fingerprint(spec, random_weights=rnd) == fp
        except Exception:
            current = False
        rows.append({
            "spec": spec, "random_weights": rnd, "text": info.get("kind") != "color", "dim": info.get("dim"),
            "fingerprint": fp[:12], "vectors": have, "total": total,
            "status": "full" if have == total and total else "partial" if have else "none",
            "current": bool(current),
        })
    cols = ["spec", "random_weights", "text", "dim", "fingerprint", "vectors", "total", "status", "current"]
    df = pd.DataFrame(rows, columns=cols)
    order = df["status"].map({"full": 0, "partial": 1, "none": 2})
    return df.assign(_o=order).sort_values(["_o", "spec"]).drop(columns="_o").reset_index(drop=True)


def _coverage(name: str, fingerprints: list[str]) -> pd.DataFrame:
    """How many of dataset ``name``'s distinct images each cache holds: columns fingerprint,
    vectors, total. Stored (:func:`lib.files.stored_table`) under the dataset's ingest stamp
    and every cache's shard names, so a fresh app server reads it back: counting a million
    ids against the caches took seconds of its first page."""
    from . import embeddings
    from .files import code_stamp, stored_table

    def shards(fp: str) -> str:  # shards are only added (or quarantined): their names say what a cache holds
        d = embeddings.EmbeddingStore(fp).shard_dir if fp else None
        names = sorted(os.listdir(d)) if d is not None and d.is_dir() else []
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    def compute() -> pd.DataFrame:
        # Each distinct id once, in first-seen order, as bytes: a dataset embedded in its own
        # order then matches each store without a hash index (1M ids as a list of str and an
        # index: ~6 s).
        ds = ds_mod.load(name)
        unique = embeddings.id_bytes(ds.images["id"])[ds.first_rows]
        vectors = []
        for fp in fingerprints:
            try:
                vectors.append(int(embeddings.EmbeddingStore(fp).present(unique).sum()) if fp else 0)
            except Exception:  # an unreadable cache covers nothing
                vectors.append(0)
        return pd.DataFrame({"fingerprint": fingerprints, "vectors": vectors, "total": len(unique)},
                            columns=["fingerprint", "vectors", "total"]).astype({"vectors": "int64", "total": "int64"})

    key = [dataset_token(name), code_stamp(embeddings), *((fp, shards(fp)) for fp in fingerprints)]
    return stored_table("coverage", name, key, compute,
                        valid=lambda t: list(t["fingerprint"]) == fingerprints)


def usable_models(name: str, *, random_weights: bool = False, status: pd.DataFrame | None = None) -> list[ModelChoice]:
    """Models whose current cache holds every image of dataset ``name``; ``color`` first
    (always offered: embedding with it needs no weights). Random-weight caches only
    when ``random_weights``."""
    st = model_status(name) if status is None else status
    ok = st[(st["status"] == "full") & st["current"] & (random_weights | ~st["random_weights"])]
    out = [ModelChoice(s) for s in OFFLINE_SPECS]
    for spec, rnd in zip(ok["spec"], ok["random_weights"], strict=True):
        c = ModelChoice(spec, bool(rnd))
        if c not in out:
            out.append(c)
    return out


def ready_offline(choice: ModelChoice) -> bool:
    """Whether ``choice`` can run here without a download: random weights, or its weights
    already in a local file or the Hugging Face cache (checked on disk, no network)."""
    if choice.random_weights or choice.spec in OFFLINE_SPECS:
        return True
    from .models import resolve_fingerprint

    try:
        return resolve_fingerprint(choice.spec) is not None
    except Exception:  # a spec that cannot be resolved is not ready
        return False


def text_models(name: str, *, random_weights: bool = False, status: pd.DataFrame | None = None) -> list[ModelChoice]:
    """Models with a text tower to offer for zero-shot and text search: those cached for
    ``name`` (any coverage: missing images are embedded on use), the model aliases, and,
    with ``random_weights``, the tiny test model."""
    from .models import aliases

    st = model_status(name) if status is None else status
    out: list[ModelChoice] = []
    if random_weights:
        out.append(ModelChoice(TEST_SPEC, True))
    for spec, rnd, text, current in zip(st["spec"], st["random_weights"], st["text"], st["current"], strict=True):
        if text and current and (random_weights or not rnd):
            c = ModelChoice(spec, bool(rnd))
            if c not in out:
                out.append(c)
    for spec in aliases().values():
        c = ModelChoice(spec)
        if c not in out:
            out.append(c)
    return out


# ---------------------------------------------------------------- predictions


def prediction_files(name: str) -> list[Path]:
    """Prediction tables of dataset ``name`` with a positive-class probability: detector
    screenings (``detect-*``, which also say which images are unfamiliar) first, then
    zero-shot runs of two classes and probes; newest first within each."""
    d = results_dir(name)
    if not d.is_dir():
        return []
    out = []
    for p in list(d.glob("detect-*.parquet")) + list(d.glob("zeroshot-*.parquet")) + list(d.glob("probe-*.parquet")):
        if p.name.endswith(("-hits.parquet", "-conflicts.parquet")):
            continue
        try:
            import pyarrow.parquet as pq

            cols = set(pq.read_schema(p).names)
        except Exception:
            continue
        if "id" in cols and ({"score"} & cols or {"p"} & cols):
            out.append(p)
    return sorted(out, key=lambda p: (not p.name.startswith("detect-"), -p.stat().st_mtime))


def read_predictions(path: str | Path) -> pd.DataFrame:
    """One prediction table, one row per id: ``id, score`` (positive-class probability),
    ``pred``, and, from a detector's screening, ``unfamiliar``, ``uncertain`` and
    ``threshold`` (its screening threshold) where the file has them."""
    df = pd.read_parquet(path)
    col = "p" if "p" in df else "score"
    if "id" not in df or col not in df:
        raise ds_mod.DatasetError(f"{path}: a prediction table needs columns 'id' and 'score' (or 'p')")
    out = pd.DataFrame({"id": df["id"].astype(str), "score": pd.to_numeric(df[col], errors="coerce")})
    out["pred"] = df.get("pred", None)
    for c in ("unfamiliar", "uncertain", "threshold"):
        if c in df:
            out[c] = df[c]
    return out.dropna(subset=["score"]).drop_duplicates("id").reset_index(drop=True)
