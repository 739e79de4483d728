"""The Ray engine writes the cache the local engine writes: same shards, same names, same vectors.

One local Ray instance on loopback (2 CPUs, 2 single-CPU actors) serves the module. Each
engine gets its own data home; their caches are then compared file by file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import dataset
from lib.embeddings import EmbeddingStore, embed, load_embeddings

pytestmark = pytest.mark.slow  # a Ray instance takes 10-20 s to start on two cores

TINY = "open_clip:WB-Tiny-ViT"


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from lib.distributed import init_ray

    init_ray("local", num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def subset(corpus_dir, tmp_path_factory) -> Path:
    """100 corpus images (PNG and JPEG, every source) copied beside their manifest."""
    root = tmp_path_factory.mktemp("sub100")
    m = pd.read_csv(corpus_dir / "manifest.csv").iloc[::6].head(100)
    for rel in m["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / rel, root / rel)
    m.to_csv(root / "manifest.csv", index=False)
    return root


def _home(tmp_path: Path, monkeypatch, name: str, subset: Path) -> Path:
    home = tmp_path / name
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    dataset.ingest(subset / "manifest.csv", "sub")
    return home


def _shards(store: EmbeddingStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (np.load(store.shard_dir / f"{n}.ids.npy"), np.load(store.shard_dir / f"{n}.vec.npy"))
            for n in store.shard_names()}


def _compare_engines(spec, random_weights, subset, tmp_path, monkeypatch, damage=None):
    from lib.distributed import embed_ray

    kw = dict(random_weights=random_weights, batch_size=16, shard_size=40)  # batches straddle shards
    homes = [_home(tmp_path, monkeypatch, name, subset) for name in ("local", "ray")]
    if damage:
        damage()
    monkeypatch.setenv("WORKBENCH_HOME", str(homes[0]))
    local = embed("sub", spec, workers=0, **kw)
    local_shards = _shards(EmbeddingStore(local.fingerprint))

    monkeypatch.setenv("WORKBENCH_HOME", str(homes[1]))
    remote = embed_ray("sub", spec, workers=2, **kw)
    ray_shards = _shards(EmbeddingStore(remote.fingerprint))

    assert remote.fingerprint == local.fingerprint
    assert (remote.total, remote.cached, remote.computed) == (local.total, local.cached, local.computed)
    assert sorted(remote.errors) == sorted(local.errors)
    assert list(ray_shards) == list(local_shards) and len(local_shards) >= 3
    for name, (ids, vecs) in local_shards.items():
        assert np.array_equal(ray_shards[name][0], ids)
        # Bit-identical: the actors see exactly the local engine's batches.
        assert ray_shards[name][1].dtype == np.float16
        assert np.array_equal(ray_shards[name][1].view(np.uint16), vecs.view(np.uint16))
    return local, remote


def test_ray_engine_writes_the_local_engines_shards_color(ray_local, subset, tmp_path, monkeypatch):
    # A file damaged after ingest fails in both engines the same way and is left out of the shards.
    victim = subset / pd.read_csv(subset / "manifest.csv")["path"].iloc[37]
    original = victim.read_bytes()

    def damage():
        victim.write_bytes(original[:200])

    try:
        local, remote = _compare_engines("color", False, subset, tmp_path, monkeypatch, damage)
    finally:
        victim.write_bytes(original)
    assert len(local.errors) == 1 and local.errors[0][0] == str(victim)
    assert local.computed == 99


def test_ray_engine_writes_the_local_engines_shards_open_clip(ray_local, subset, tmp_path, monkeypatch):
    local, _ = _compare_engines(TINY, True, subset, tmp_path, monkeypatch)
    assert local.computed == 100 and not local.errors


def test_engines_resume_each_others_work(ray_local, subset, tmp_path, monkeypatch):
    from lib.distributed import embed_ray

    _home(tmp_path, monkeypatch, "ref", subset)
    embed("sub", "color", workers=0)
    reference = load_embeddings("sub", "color").matrix()

    _home(tmp_path, monkeypatch, "mixed", subset)
    first = pd.read_csv(subset / "manifest.csv").head(30)
    first.to_csv(subset / "first.csv", index=False)
    dataset.ingest(subset / "first.csv", "first")
    assert embed("first", "color", workers=0).computed == 30
    r = embed_ray("sub", "color", workers=2)
    assert (r.cached, r.computed) == (30, 70)
    again = embed("sub", "color")  # the local engine finds the Ray engine's work done
    assert again.computed == 0 and again.cached == 100
    assert embed_ray("sub", "color").computed == 0
    assert np.array_equal(load_embeddings("sub", "color").matrix(), reference)
