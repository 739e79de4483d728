"""What every benchmark shares: result rows with goals, scratch homes, synthetic data."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work"
#: Big reusable inputs (a 600 MB random checkpoint, 2 GB of vectors) live outside the repo.
SCRATCH = Path(os.environ.get("WB_BENCH_SCRATCH", Path(tempfile.gettempdir()) / "wb-bench"))
CORPUS = REPO.parent / "shared" / "corpus"

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t, ">": lambda v, t: v > t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
}


@dataclass
class Row:
    """One measured figure; ``goal`` like ``">= 0.9"`` makes it pass or fail."""

    bench: str
    metric: str
    value: float
    unit: str = ""
    goal: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class Recorder:
    """Collects a benchmark's rows and its explanations (where the time goes)."""

    bench: str
    quick: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float, unit: str = "", goal: tuple[str, float] | None = None,
            note: str = "") -> Row:
        value = float(value)
        passed = None
        goal_text = ""
        if goal is not None:
            op, target = goal
            passed = bool(np.isfinite(value) and OPS[op](value, target))
            goal_text = f"{op} {target:g}"
        row = Row(self.bench, metric, value, unit, goal_text, passed, note)
        self.rows.append(row)
        mark = "" if passed is None else (" PASS" if passed else " FAIL")
        print(f"[{self.bench}] {metric}: {fmt(value)} {unit} {goal_text}{mark} {note}".rstrip(), flush=True)
        return row

    def explain(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.bench}] {text}", flush=True)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps({"bench": self.bench, "rows": [asdict(r) for r in self.rows],
                                    "notes": self.notes}, indent=1))


def fmt(v: float) -> str:
    if not np.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0 or 0.01 <= a < 1e5:
        return f"{v:.3g}" if a < 10 else f"{v:.1f}"
    return f"{v:.3g}"


# ------------------------------------------------------------------ timing


def pct(samples, q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_1min": round(load_average(), 2)}
    try:
        cpu = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else platform.processor()
        flags = Path("/proc/cpuinfo").read_text()
        info["isa"] = ",".join(f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags)
    except OSError:
        pass
    return info


# ------------------------------------------------------------------ scratch homes


def fresh_home(name: str) -> Path:
    """An empty data home ``bench/results/work/<name>``, made the process's WORKBENCH_HOME."""
    home = WORK / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return home


# ------------------------------------------------------------------ model checkpoint


def clip_checkpoint(arch: str = "ViT-B-32") -> Path:
    """A seeded random-weight open_clip ``arch`` saved as a local safetensors checkpoint (built once)."""
    path = SCRATCH / ("vitb32-seed0.safetensors" if arch == "ViT-B-32" else f"{arch.lower()}-seed0.safetensors")
    if path.exists():
        return path
    import logging

    import open_clip
    import torch
    from safetensors.torch import save

    from lib.files import write_bytes

    SCRATCH.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights loaded": that is the point
    model = open_clip.create_model(arch, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return write_bytes(path, save(state))


def vitb32_spec() -> str:
    return clip_spec("ViT-B-32")


def clip_spec(arch: str) -> str:
    return f"open_clip:{arch}@{clip_checkpoint(arch)}"


# ------------------------------------------------------------------ synthetic vectors


def clustered_vectors(n: int, dim: int = 512, *, seed: int = 0, n_clusters: int | None = None,
                      rank: int = 32) -> np.ndarray:
    """``n`` unit vectors (n, dim) float32 shaped like image embeddings (cached on disk).

    Cluster sizes follow a Zipf-like law over ``n_clusters`` (default ~ 2 sqrt(n)) random
    centres; a point is its centre plus a Gaussian in a random ``rank``-dimensional
    subspace of its cluster (norm ~0.6) plus isotropic noise (norm ~0.3), normalised. So
    neighbours are mostly in-cluster, the intrinsic dimension is a few tens, and ties
    are rare: an ANN index has to search, not just find the cluster.
    """
    n_clusters = n_clusters or int(2 * np.sqrt(n))
    path = SCRATCH / f"vectors-n{n}-d{dim}-k{n_clusters}-r{rank}-s{seed}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    for k in range(n_clusters):
        rows = order[bounds[k]:bounds[k + 1]]
        if not len(rows):
            continue
        basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim)
        z = rng.standard_normal((len(rows), rank), dtype=np.float32) * (0.6 / np.sqrt(rank))
        x = centres[k] + z @ basis  # rows of basis have norm ~1: ||z @ basis|| ~ 0.6
        x += rng.standard_normal((len(rows), dim), dtype=np.float32) * (0.3 / np.sqrt(dim))
        out[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    from lib.files import write_npy

    write_npy(path, out)
    return out


# ------------------------------------------------------------------ a synthetic 100k dataset


def tiny_image_folder(n: int, seed: int = 0) -> Path:
    """``n`` distinct 32x32 PNGs under sensitive/ and non_sensitive/ (built once)."""
    root = SCRATCH / f"tiny-png-{n}-s{seed}"
    if (root / ".done").exists():
        return root
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    labels = np.where(rng.random(n) < 0.8, "sensitive", "non_sensitive")
    for i in range(n):
        d = root / labels[i] / f"{i // 1000:04d}"
        if i % 1000 == 0 or not d.exists():
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blocks[i]).resize((32, 32), Image.Resampling.NEAREST).save(
            d / f"{i:07d}.png", compress_level=1)
    (root / ".done").write_text(str(n))
    return root


def synthetic_dataset(name: str, n: int, spec: str, dim: int, *, random_weights: bool = False,
                      shard_size: int = 4096) -> tuple[float, float]:
    """Ingest ``n`` tiny PNGs as dataset ``name`` in the current home and fill the cache of
    ``spec`` with clustered synthetic vectors through :meth:`EmbeddingStore.write_shard`.

    The model is loaded once so that its fingerprint is known (and remembered, as after a
    real run). Returns (ingest seconds, cache-fill seconds).
    """
    from lib import dataset
    from lib.embeddings import EmbeddingStore
    from lib.models import load_model

    t0 = time.perf_counter()
    dataset.ingest(tiny_image_folder(n), name, workers=os.cpu_count())
    t1 = time.perf_counter()
    backend = load_model(spec, random_weights=random_weights)
    if backend.dim != dim:
        raise ValueError(f"{spec} has dim {backend.dim}, not {dim}")
    store = EmbeddingStore(backend.fingerprint)
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim, "synthetic": True})
    ids = dataset.load(name).unique_ids
    vecs = clustered_vectors(len(ids), dim, seed=1)
    for s in range(0, len(ids), shard_size):
        store.write_shard(ids[s:s + shard_size], np.asarray(vecs[s:s + shard_size]))
    return t1 - t0, time.perf_counter() - t1


def shared_home(n: int) -> tuple[Path, str]:
    """Data home with dataset ``big``: ``n`` tiny-PNG rows whose ViT-B-32 cache holds
    synthetic vectors. Built once per ``python -m bench`` run (``WB_BENCH_RUN``) and shared
    by the benchmarks that need a big dataset; made the process's WORKBENCH_HOME.

    Returns (home, model spec).
    """
    spec = vitb32_spec()
    home = WORK / f"home-{n // 1000}k"
    marker = home / ".built"
    run_id = os.environ.get("WB_BENCH_RUN") or str(os.getpid())
    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if marker.exists() and marker.read_text() == run_id:
        return home, spec
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    synthetic_dataset("big", n, spec, 512)
    marker.write_text(run_id)
    return home, spec
