"""The embedding cache: no recomputation, kill/resume, content addressing, corruption."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import dataset, embeddings
from lib.embeddings import EmbeddingStore, MissingVectors, embed, load_embeddings
from lib.models import resolve_fingerprint

REPO = Path(__file__).resolve().parent.parent


def _subset_manifest(corpus_dir: Path, out: Path, n: int, offset: int = 0) -> Path:
    m = pd.read_csv(corpus_dir / "manifest.csv").iloc[offset:offset + n]
    m.to_csv(out, index=False)
    return out


def test_second_embed_does_no_work_and_loads_no_model(corpus_color, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded although everything is cached")

    monkeypatch.setattr("lib.models.load_model", boom)
    report = embed("corpus", "color")
    assert report.computed == 0 and report.cached == len(corpus_color.unique_ids) == 656


def test_cli_second_embed_reports_zero_computed(corpus_color):
    r = subprocess.run([sys.executable, "-m", "lib", "embed", "corpus", "--model", "color"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    assert "656 cached, 0 computed" in r.stdout


def test_an_image_in_two_datasets_is_embedded_once(corpus_color, corpus_dir, tmp_path):
    manifest = _subset_manifest(corpus_dir, tmp_path / "m.csv", 40, offset=300)
    dataset.ingest(manifest, "subset", root=corpus_dir)
    report = embed("subset", "color")
    assert report.computed == 0 and report.cached == 40
    a, b = load_embeddings("subset", "color"), load_embeddings("corpus", "color")
    rows = [corpus_color.ids.index(i) for i in a.ids]
    assert np.array_equal(a.matrix(), b.take(rows))


def test_vectors_match_direct_encoding_and_are_memory_mapped(corpus_color, corpus_dir):
    from lib.images import open_image
    from lib.models import load_model

    emb = load_embeddings("corpus", "color")
    assert all(isinstance(s, np.memmap) for s in emb.shards)
    rows = [0, 317, 657]
    direct = load_model("color").encode_images([open_image(corpus_dir / corpus_color.images["path"][r])
                                                for r in rows])
    assert np.abs(emb.take(rows) - direct).max() < 2e-3  # float16 storage
    assert emb.matrix().shape == (658, load_model("color").dim)


def test_fingerprints_keep_models_apart(corpus_color, corpus_tiny):
    color = load_embeddings("corpus", "color")
    tiny = load_embeddings("corpus", "open_clip:WB-Tiny-ViT", random_weights=True)
    assert color.store_dir != tiny.store_dir and color.dim != tiny.dim
    with pytest.raises(Exception, match="not fully embedded|no embeddings"):
        load_embeddings("corpus", "open_clip:WB-Tiny-ViT", random_weights=False)


def _run_embed(home: Path, name: str, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "lib", "embed", name, *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _shards(home: Path, fp: str) -> dict[str, bytes]:
    d = home / "cache" / "emb" / fp[:24] / "shards"
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.npy"))}


@pytest.mark.parametrize("model", [["--model", "color"],
                                   ["--model", "open_clip:WB-Tiny-ViT", "--random-weights"]])
def test_sigkill_mid_run_resumes_to_identical_vectors(corpus_dir, tmp_path, monkeypatch, model):
    manifest = _subset_manifest(corpus_dir, tmp_path / "m.csv", 96)
    args = [*model, "--shard-size", "8", "--batch-size", "4", "--workers", "1"]
    homes = {}
    for tag in ("killed", "clean"):
        home = homes[tag] = tmp_path / tag
        monkeypatch.setenv("WORKBENCH_HOME", str(home))
        dataset.ingest(manifest, "small", root=corpus_dir)
    # uninterrupted reference
    ref = _run_embed(homes["clean"], "small", args)
    assert ref.wait(120) == 0
    fp_dir = next((homes["clean"] / "cache" / "emb").iterdir())
    fp = fp_dir.name
    # killed run: SIGKILL as soon as the second shard is committed
    proc = _run_embed(homes["killed"], "small", args)
    shard_dir = homes["killed"] / "cache" / "emb" / fp / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_dir.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shard_dir.glob("*.json")))
    assert 2 <= done < 12, f"{done} of 12 shards were committed at the kill"
    resumed = _run_embed(homes["killed"], "small", args)
    out = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0
    assert f"{done * 8} cached, {96 - done * 8} computed" in out
    assert _shards(homes["killed"], fp) == _shards(homes["clean"], fp)
    assert all(not p.name.startswith(".") for p in shard_dir.glob("*.json"))


def test_corrupt_shard_is_detected_and_recomputed(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(_subset_manifest(corpus_dir, tmp_path / "m.csv", 30), "small", root=corpus_dir)
    embed("small", "color", shard_size=10, workers=0)
    before = load_embeddings("small", "color").matrix()
    store = EmbeddingStore(resolve_fingerprint("color"))
    victim = store.shard_dir / f"{store.shard_names()[1]}.vec.npy"
    raw = bytearray(victim.read_bytes())
    raw[-7] ^= 0xFF
    victim.write_bytes(bytes(raw))
    report = embed("small", "color", shard_size=10, workers=0)
    assert report.corrupt_shards == [victim.name[:-len(".vec.npy")]] and report.computed == 10
    assert np.array_equal(load_embeddings("small", "color").matrix(), before)
    assert (store.dir / "corrupt" / victim.name).exists()


def test_half_written_shard_is_never_read(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(_subset_manifest(corpus_dir, tmp_path / "m.csv", 12), "small", root=corpus_dir)
    store = EmbeddingStore(resolve_fingerprint("color"))
    store.shard_dir.mkdir(parents=True)
    # a shard whose commit record never got written (killed between the files and the record)
    np.save(store.shard_dir / "deadbeef.vec.npy", np.zeros((3, 8), np.float16))
    np.save(store.shard_dir / "deadbeef.ids.npy", np.array(["x" * 64] * 3, "S64"))
    assert len(store) == 0
    assert embed("small", "color", workers=0).computed == 12


def test_embed_records_decode_failures_without_stopping(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    for i in range(5):
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(tmp_path / f"{i}.png")
    dataset.ingest(tmp_path, "vanishing")
    (tmp_path / "3.png").write_bytes(b"garbage now")  # changed after ingest
    report = embeddings.embed("vanishing", "color", workers=0)
    assert report.computed == 4 and len(report.errors) == 1 and "3.png" in report.errors[0][0]
    shutil.rmtree(tmp_path / "home")


def test_embedding_another_dataset_keeps_this_ones_key(corpus_dir, tmp_path, monkeypatch):
    """The key (index and map caches) depends on the shards a dataset reads: embedding another
    dataset with the same model adds shards and must not make this one's index and map stale."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    dataset.ingest(_subset_manifest(corpus_dir, tmp_path / "a.csv", 20), "a", root=corpus_dir)
    dataset.ingest(_subset_manifest(corpus_dir, tmp_path / "b.csv", 20, offset=100), "b", root=corpus_dir)
    embed("a", "color", shard_size=8, workers=0)
    key = load_embeddings("a", "color").key
    # the same key whether the opener passed the ids as a list alone or with their bytes
    assert EmbeddingStore(load_embeddings("a", "color").fingerprint).open(dataset.load("a").ids).key == key
    embed("b", "color", shard_size=8, workers=0)
    assert load_embeddings("a", "color").key == key
    assert load_embeddings("b", "color").key != key
    with pytest.raises(embeddings.WorkbenchError, match="not fully embedded"):
        dataset.ingest(_subset_manifest(corpus_dir, tmp_path / "c.csv", 5, offset=300), "c", root=corpus_dir)
        load_embeddings("c", "color")


def test_store_reads_back_in_write_order_and_finds_any_order(tmp_path):
    """Shards are read in the order they were written, so a dataset embedded in one run opens
    without hashing its ids; any other order, repeats across shards and missing ids go
    through the lookup and give the same vectors."""
    rng = np.random.default_rng(0)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
    vecs = rng.normal(size=(300, 8)).astype(np.float32)
    blocks = sorted((0, 100, 200), key=lambda i: hashlib.sha256("\n".join(ids[i:i + 100]).encode()).hexdigest(),
                    reverse=True)  # shard names are these hashes: written against their sort order
    store = EmbeddingStore("f" * 64, root=tmp_path)
    names = [store.write_shard(ids[i:i + 100], vecs[i:i + 100]) for i in blocks]
    assert names == sorted(names, reverse=True)
    ids = [ids[j] for i in blocks for j in range(i, i + 100)]  # the dataset, in the order it was embedded
    vecs = np.concatenate([vecs[i:i + 100] for i in blocks])
    want = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    fresh = EmbeddingStore("f" * 64, root=tmp_path)
    emb = fresh.open(ids)
    assert fresh._index is None  # same ids, same order: no lookup index was built
    np.testing.assert_allclose(emb.take(np.arange(300)), want, atol=2e-3)
    assert fresh.missing(ids) == [] and fresh._index is None

    strided = np.repeat(np.asarray(ids, dtype="S64"), 2)[::2]  # the same ids, as a strided array
    np.testing.assert_allclose(EmbeddingStore("f" * 64, root=tmp_path).open(strided).take(np.arange(300)), want,
                               atol=2e-3)
    perm = rng.permutation(300)
    emb = EmbeddingStore("f" * 64, root=tmp_path).open([ids[i] for i in perm])
    np.testing.assert_allclose(emb.take(np.arange(300)), want[perm], atol=2e-3)

    # a fourth shard repeating ids (two runs side by side): the first written is kept
    store.write_shard(ids[50:150], -vecs[50:150])
    again = EmbeddingStore("f" * 64, root=tmp_path)
    np.testing.assert_allclose(again.open(ids).take(np.arange(300)), want, atol=2e-3)
    assert len(again) == 300 and again.missing(ids + ["0" * 64]) == ["0" * 64]
    with pytest.raises(MissingVectors):
        again.open(ids[:5] + ["0" * 64])


def test_id_bytes_reads_arrow_columns_as_the_element_wise_conversion_does():
    """Dataset id columns are read from Arrow's buffers (chunked, sliced, either string
    type); anything else (other lengths, missing ids, a list) converts element by element."""
    import pyarrow as pa

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    for dtype in ("string[pyarrow]", pd.ArrowDtype(pa.large_string())):
        col = pd.Series(ids, dtype=dtype)
        chunked = pd.concat([col.iloc[:300], col.iloc[300:]])
        assert chunked.array._pa_array.num_chunks == 2
        for s in (col, chunked, chunked.iloc[123:877], col.iloc[:0]):
            got = embeddings.id_bytes(s)
            assert got.dtype == np.dtype("S64") and got.shape == (len(s),)
            assert got.tobytes() == np.asarray(s.tolist(), dtype="S64").tobytes()
    mixed = pd.Series([ids[0], "abc", ids[1]], dtype="string[pyarrow]")
    assert embeddings.id_bytes(mixed).tolist() == [ids[0].encode(), b"abc", ids[1].encode()]
    assert embeddings.id_bytes(ids).tobytes() == np.asarray(ids, dtype="S64").tobytes()
