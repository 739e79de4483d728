"""One decode, every signal: the fused ``index`` job against ``embed`` alone and against the separate passes.

Side by side in one run, interleaved rounds (order reversed every other round), every
method into empty caches, on corpus files spread over the manifest (PNG and JPEG):

(E) :func:`lib.embeddings.embed` alone, ViT-B-32 (random weights, local checkpoint);
(F) :func:`lib.signals.index`: the same embeddings + EB fractions + perceptual hashes +
    image statistics, one decode per image;
(S) the separate passes a newcomer ran before: (E) + (P), where (P) is ``scores``
    (:func:`lib.colorscore.score_dataset`) + the hash pass (:func:`lib.quality.hash_ids`)
    + the statistics pass (:func:`lib.imagestats.stats_ids`), timed in the same round.

Goal: F / E <= 1.15 in fp32; the bf16-cast rows (where decoding is a larger share) are reported beside.
"""

from __future__ import annotations

import shutil
import time

import numpy as np

from .common import CORPUS, Recorder, fresh_home, vitb32_spec

BATCH = 64


def _clear(fingerprint: str) -> None:
    from lib.colorscore import FractionCache
    from lib.embeddings import EmbeddingStore
    from lib.imagestats import stats_cache
    from lib.quality import hash_cache

    for d in (EmbeddingStore(fingerprint).dir, FractionCache().dir, hash_cache().dir, stats_cache().dir):
        shutil.rmtree(d, ignore_errors=True)


def run(rec: Recorder) -> None:
    import logging

    import pandas as pd

    from lib import colorscore, dataset
    from lib.embeddings import embed
    from lib.imagestats import stats_ids
    from lib.models import load_model
    from lib.models.base import native_cpu_bf16
    from lib.quality import hash_ids
    from lib.signals import index

    logging.getLogger().setLevel(logging.ERROR)
    n = 96 if rec.quick else 192
    rounds = 1 if rec.quick else 2
    home = fresh_home("signals")
    spec = vitb32_spec()
    m = pd.read_csv(CORPUS / "manifest.csv")
    m = m.iloc[np.linspace(0, len(m) - 1, n).astype(int)]
    m.to_csv(home / "subset.csv", index=False)
    dataset.ingest(home / "subset.csv", "corpus", root=CORPUS)
    ds = dataset.load("corpus")
    n = len(ds.unique_ids)
    fmt_counts = ds.images.drop_duplicates("id")["format"].value_counts().to_dict()
    colorscore.mask_table()  # built once, before timing (every method reads it)
    native = native_cpu_bf16()  # emulated bf16 is several times slower than fp32: no fast path to measure
    backends = {"fp32": load_model(spec, precision="fp32", device="cpu")}
    if native:
        backends["bf16"] = load_model(spec, precision="bf16-cast", device="cpu")
    else:
        import torch

        rec.explain(f"This CPU has no native bf16 ({torch.backends.cpu.get_cpu_capability()} only), so the "
                    "bf16-cast rows (E'), (F') are left out: emulated bf16 is slower than fp32 here.")
    warm = np.zeros((BATCH, 3, 224, 224), np.float32)
    for b in backends.values():
        b.encode_preprocessed(warm)

    def embed_alone(b):
        def go():
            _clear(b.fingerprint)
            r = embed("corpus", spec, backend=b, batch_size=BATCH, verify=False)
            assert r.computed == n, r.summary()
        return go

    def fused(b):
        def go():
            _clear(b.fingerprint)
            r = index("corpus", [spec], backends={spec: b}, batch_size=BATCH, verify=False)
            assert r.computed[spec] == n and r.computed["eb"] == n and r.computed["stats"] == n, r.summary()
        return go

    def passes():  # the other signals' own passes, each decoding every file again (S = E + P)
        _clear("none")  # empties the EB, hash and statistics caches
        parts["scores"].append(_timed(lambda: colorscore.score_dataset(ds)))
        parts["hashes"].append(_timed(lambda: hash_ids(ds)))
        parts["stats"].append(_timed(lambda: stats_ids(ds)))

    parts: dict[str, list[float]] = {"scores": [], "hashes": [], "stats": []}
    methods = {"E": embed_alone(backends["fp32"]), "F": fused(backends["fp32"]), "P": passes}
    if native:
        methods |= {"E_bf16": embed_alone(backends["bf16"]), "F_bf16": fused(backends["bf16"])}
    labels = {"E": "(E) embed alone, fp32", "F": "(F) index: embed + EB + hashes + stats, fp32",
              "P": "(P) scores + hashes + stats passes alone (S = E + P)",
              "E_bf16": "(E') embed alone, bf16-cast", "F_bf16": "(F') index, bf16-cast"}
    wall: dict[str, list[float]] = {k: [] for k in [*methods, "S"]}
    base = len(rec.rows)

    def report() -> None:
        del rec.rows[base:]
        for k, label in {**labels, "S": "(S) separate passes: embed + scores + hashes + stats, fp32"}.items():
            if wall.get(k):
                rec.add(label, n / min(wall[k]), "img/s", note="rounds " + ", ".join(f"{t:.1f} s" for t in wall[k]))

        def ratio(x, y):
            k = min(len(wall[x]), len(wall[y]))
            r = np.asarray(wall[x][:k]) / np.asarray(wall[y][:k])
            return float(np.median(r)), f"median of {k} paired rounds ({', '.join(f'{v:.3f}' for v in r)})"

        for (x, y), label, goal in [(("F", "E"), "F/E fused job vs embed alone (wall time), fp32", ("<=", 1.15)),
                                    (("S", "E"), "S/E separate passes vs embed alone (wall time), fp32", None),
                                    (("F", "S"), "F/S fused job vs separate passes (wall time), fp32", None),
                                    (("F_bf16", "E_bf16"), "F'/E' fused job vs embed alone, bf16-cast", None)]:
            if wall.get(x) and wall.get(y):
                value, note = ratio(x, y)
                rec.add(label, value, "ratio", goal, note=note)
        if parts["scores"]:
            rec.explain("Separate passes after embed, best round: " + ", ".join(
                f"{k} {min(v):.1f} s" for k, v in parts.items() if v) + " (each decodes every file again).")

    for r in range(rounds):
        keys = ["E", "P", "F", "E_bf16", "F_bf16"] if native else ["E", "P", "F"]
        for k in (keys if r % 2 == 0 else keys[::-1]):
            wall[k].append(_timed(methods[k]))
        wall["S"].append(wall["E"][-1] + wall["P"][-1])  # the separate passes, one after another
        print(f"[signals] round {r + 1}/{rounds}: " + ", ".join(f"{k} {wall[k][-1]:.1f} s" for k in [*keys, "S"]),
              flush=True)
        report()
    rec.explain(f"Inputs: {n} corpus files ({fmt_counts}), batch {BATCH}, every method into empty caches "
                f"(embedding store, EB fractions, hashes, statistics); {rounds} round(s).")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
