"""Finding and loading weights safely: local checkpoints, the Hugging Face cache, the hub."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelError, WeightsMissing


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within ``timeout``.

    huggingface_hub retries unreachable hosts for ~50 s; probing first lets an offline
    machine fail in milliseconds with a useful message instead.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hf_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def hf_cached_revision(repo_id: str) -> str | None:
    """The commit hash the local HF cache holds for ``repo_id``'s main branch, if any."""
    ref = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.exists() else None


def hf_is_cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, filename)
    return isinstance(hit, str) and os.path.exists(hit)


def missing_weights(what: str, repo: str | None, local_hint: str) -> WeightsMissing:
    where = f"the Hugging Face hub ({repo}) and the local cache {hf_cache_dir()}" if repo else "the local cache"
    return WeightsMissing(
        f"weights for {what} are not available: they are looked for in {where}, and the hub "
        "cannot be reached from this machine.\n"
        "  - on a connected machine, run the same command once to download them (or set HF_HOME "
        "to a cache copied from such a machine);\n"
        f"  - or supply a local file: {local_hint}\n"
        "  - for images only (embed, neighbours, probes, detectors, maps) the offline `color` backend needs no "
        "weights: --model color (zero-shot and text search need a model with a text tower)"
    )


def load_state_dict(path: str | Path) -> dict:
    """Tensors of a checkpoint: safetensors, or a torch file loaded with ``weights_only=True``.

    A pickle that needs arbitrary code (``weights_only`` refuses it) is rejected with a
    :class:`ModelError`, never executed.
    """
    import torch

    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsMissing(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"{path}: refused to load: torch.load(weights_only=True) failed ({str(e).splitlines()[0]}). "
            "Only plain tensor checkpoints are accepted; convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    # Checkpoints saved from DataParallel / training scripts prefix every key.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def file_identity(path: str | Path) -> str:
    """Cheap identity of a local file or folder (size and mtime), to memoise its hash."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(p.iterdir()) if f.is_file()]
        return f"{p}|" + ";".join(parts)
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"
