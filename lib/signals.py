"""One decode, every signal: the ``index`` job.

Each image a dataset lacks any signal for is decoded once (:func:`lib.images.open_reduced`,
JPEGs reduced on decode to no less than the scoring side), and the same pixels yield:

- the embeddings of every requested model (each model's own preprocessing of the decoded,
  EXIF-oriented image), into :class:`lib.embeddings.EmbeddingStore`;
- the EB blood-like and skin-like fractions, into :class:`lib.colorscore.FractionCache`;
- the perceptual hashes of the 8 orientations, into :func:`lib.quality.hash_cache`;
- the image statistics (size, brightness, sharpness), into :func:`lib.imagestats.stats_cache`;
- with ``tta`` (``index NAME --models SPEC --tta``), each model's embeddings of the 7 flips /
  rotations of the image (:data:`lib.detector.TTA_TRANSFORMS`, the detector's test-time
  augmentation views), into :func:`lib.detector.tta_store` of the model's fingerprint: the
  stores :func:`lib.detector.embed_views` fills, each view the model's preprocessing of the
  transposed decoded image, as there.

So a later ``scores``, ``quality --hash``, ``embed`` or ``predict --tta`` finds everything
cached and decodes nothing. The colour fractions, hashes and statistics are bit for bit those of their own
passes (they decode the same way: :func:`lib.colorscore.load_for_scoring`). The models get
the pixels :func:`lib.embeddings.embed` decodes: the same decode for PNGs and small JPEGs;
a JPEG that the shared decode reduced (at least twice :data:`SIDE` on both sides) is decoded
a second time at full size for them, so the vectors are ``embed``'s (within the fp16 cache's
rounding). ``reduce_on_decode=True`` feeds the models the reduced pixels instead (when
every model's input is at most :data:`SIDE`): cheaper, but on ViT-B-32 with random weights
the worst corpus JPEG moves to cosine 0.99909 of the full decode (0.99986 reduced to 448
px), outside the 0.9999 this job promises by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .colorscore import DEFAULT_PARAMS, FractionCache, mask_table, scoring_fractions, scoring_image
from .embeddings import EmbeddingStore, EmbedReport, default_workers, prefetch_decoded
from .errors import UnsafePath, WorkbenchError
from .imagestats import STATS_SIDE, rows_frame, small_image_stats, stats_cache
from .quality import hash_cache, image_hashes

#: The side every signal decodes at: the colour scores' (and the hashes', which decode as they do).
SIDE = DEFAULT_PARAMS.max_side
SIGNALS = ("eb", "phash", "stats")
if STATS_SIDE != SIDE:  # pragma: no cover - a guard for whoever changes one of them
    raise ImportError(f"imagestats.STATS_SIDE {STATS_SIDE} != colour scoring side {SIDE}: one decode cannot serve both")


@dataclass
class IndexReport:
    dataset: str
    total: int
    decoded: int = 0
    computed: dict = field(default_factory=dict)  # signal or model spec -> images computed now
    cached: dict = field(default_factory=dict)    # signal or model spec -> images found in cache
    embed: list = field(default_factory=list)     # one EmbedReport per model
    errors: list = field(default_factory=list)    # [(path, reason)]
    seconds: float = 0.0

    def summary(self) -> str:
        rate = f", {self.decoded / self.seconds:.1f} img/s" if self.decoded and self.seconds else ""
        parts = ", ".join(f"{k} {self.computed.get(k, 0)} new/{self.cached.get(k, 0)} cached" for k in self.cached)
        return (f"index {self.dataset}: {self.total} unique images, {self.decoded} decoded once, "
                f"{len(self.errors)} errors ({self.seconds:.2f} s{rate}); {parts}")


def model_path(backend, fast_pixels: bool = True) -> tuple[Callable, Callable]:
    """(preprocess, encode) of a backend: its uint8 pixel path when it has one (the same
    vectors, a quarter of the bytes from the workers), else its float one."""
    pixels = backend.pixels_preprocess() if fast_pixels else None
    if pixels is not None:
        return pixels, backend.encode_pixels
    return backend.preprocess, backend.encode_preprocessed


def _combined_preprocess(preps: list[Callable], specs: list[str]) -> tuple[Callable, list[tuple[int, tuple, np.dtype]]]:
    """One preprocess for several models (or views): their arrays' bytes as one flat uint8
    vector, so every array survives the round trip exactly and uint8 pixels stay one byte
    each in the workers' shared memory (8 views of a 224 px model: 1.2 MB an image).

    Returns (preprocess, [(byte offset, shape, dtype)] per model) to cut a batch (n, total)
    back into each model's (n, *shape) arrays; with one model, its own preprocess and [].
    """
    from PIL import Image

    if len(preps) == 1:
        return preps[0], []
    probe = Image.new("RGB", (64, 48), (128, 96, 80))
    layout, off = [], 0
    for pre, spec in zip(preps, specs, strict=True):
        try:
            a = np.asarray(pre(probe))
        except Exception as e:
            raise WorkbenchError(f"model {spec!r}: its preprocessing fails on a blank image ({e}); "
                                 "index it on its own with `python -m lib embed`") from None
        layout.append((off, a.shape, a.dtype))
        off += a.nbytes

    def preprocess(img):
        return np.concatenate([np.ascontiguousarray(p(img), dtype=d).reshape(-1).view(np.uint8)
                               for p, (_, _, d) in zip(preps, layout, strict=True)])

    return preprocess, layout


def _split(arrays: np.ndarray, layout: list, k: int) -> np.ndarray:
    """Model ``k``'s (n, *shape) arrays out of a combined (n, total) batch."""
    if not layout:
        return arrays
    off, shape, dtype = layout[k]
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.ascontiguousarray(arrays[:, off:off + nbytes]).view(dtype).reshape(len(arrays), *shape)


def make_decode(full_for_models: bool, params=DEFAULT_PARAMS) -> Callable:
    """The worker's ``decode(path) -> (image for the models, (blood, skin, hashes (8, 8) uint8,
    stats tuple))``; ``full_for_models``: a JPEG reduced on decode is decoded again at full
    size for the models (:func:`lib.images.open_image`)."""
    from .images import open_image, open_reduced

    def decode(path: str):
        pixels, oriented, size = open_reduced(path, SIDE, oriented=True)
        model_img = oriented
        if full_for_models and oriented.size != size:  # reduced on decode: the models want it all
            model_img = open_image(path)
        small = scoring_image(pixels, params)  # one resize for the fractions and the statistics
        blood, skin = scoring_fractions(small, params)
        return model_img, (blood, skin, image_hashes(pixels), small_image_stats(small, size))

    return decode


def index(
    name: str,
    models: Sequence[str] = ("color",),
    *,
    random_weights: bool = False,
    backends: dict | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 4096,
    device: str | None = None,
    precision: str = "auto",
    reduce_on_decode: bool = False,
    tta: bool = False,
    fast_pixels: bool = True,
    verify: bool = True,
    flush_every: int = 4096,
    progress: bool = False,
    progress_callback: Callable[[int, int], None] | None = None,
) -> IndexReport:
    """Compute every per-image signal of dataset ``name`` that a cache lacks, decoding each
    image once.

    ``models``: model specs to embed with (``random_weights`` applies to those with weights,
    not to ``color``); ``backends`` ({spec: loaded backend}) reuses loaded models. A run with
    nothing missing loads no model and decodes nothing. ``progress_callback(done, total)``
    is called after each batch. ``reduce_on_decode`` and ``fast_pixels``: see the module
    docstring and :func:`lib.embeddings.embed`. ``tta``: also embed the 7 flips / rotations
    of every image with every model (the detector's test-time augmentation views, see the
    module docstring); the report counts them as views under ``"<spec> tta"``. Returns an
    :class:`IndexReport`.
    """
    from . import dataset as ds_mod
    from .detector import TTA_TRANSFORMS, View, tta_store
    from .models import load_model, parse_spec, resolve_fingerprint

    t0 = time.perf_counter()
    models = list(dict.fromkeys(m.strip() for m in models if m and m.strip()))
    backends = dict(backends or {})
    ds = ds_mod.load(name)
    unique = [str(u) for u in ds.unique_ids]
    report = IndexReport(name, len(unique))

    # -- what each cache lacks
    params = DEFAULT_PARAMS
    fr_cache, h_cache, s_cache = FractionCache(params), hash_cache(), stats_cache()
    have_eb = fr_cache.fractions(unique)
    need = {"eb": {u for u in unique if u not in have_eb},
            "phash": set(h_cache.missing(unique)), "stats": set(s_cache.missing(unique))}
    # The targets that hold vectors: each model's store (key: its spec) and, with tta, the
    # store of each of its 7 views (key: "<spec> [<transform>]").
    views = TTA_TRANSFORMS if tta else ()
    target_of: dict[str, tuple[str, str | None]] = {}
    stores: dict[str, EmbeddingStore] = {}
    corrupt: dict[str, list] = {}

    def targets(spec: str, fp: str) -> dict[str, EmbeddingStore]:
        out = {spec: EmbeddingStore(fp)}
        out.update({f"{spec} [{t}]": tta_store(fp, t) for t in views})
        return out

    for spec in models:
        rw = random_weights and parse_spec(spec).kind != "color"
        b = backends.get(spec)
        fp = b.fingerprint if b is not None else resolve_fingerprint(spec, random_weights=rw)
        if fp is None:
            b = backends[spec] = load_model(spec, random_weights=rw, device=device, precision=precision)
            fp = b.fingerprint
        mine = targets(spec, fp)
        corrupt[spec] = mine[spec].verify() if verify else []
        missing = {k: st.missing(unique) for k, st in mine.items()}
        if any(missing.values()) and b is None:  # needed: load it (its fingerprint may differ from the memo's)
            b = backends[spec] = load_model(spec, random_weights=rw, device=device, precision=precision)
            mine = targets(spec, b.fingerprint)
            missing = {k: st.missing(unique) for k, st in mine.items()}
        for k, st in mine.items():
            stores[k], need[k] = st, set(missing[k])
            target_of[k] = (spec, None if k == spec else k[len(spec) + 2:-1])
    for key in [*SIGNALS, *target_of]:
        report.cached[key] = len(unique) - len(need[key])
        report.computed[key] = 0

    todo = [u for u in unique if any(u in need[k] for k in need)]
    active = [k for k in target_of if need[k]]  # targets with vectors to compute
    for k in active:
        spec, t = target_of[k]
        b = backends[spec]
        info = {**b.fingerprint_info, "spec": b.spec, "dim": b.dim} if t is None else \
            {"base_fingerprint": b.fingerprint, "spec": f"{b.spec} [{t}]", "transform": t, "dim": b.dim}
        stores[k].write_info(info)
    path_of = dict(zip(ds.images["id"].astype(str), ds.images["path"], strict=False))
    items = []
    for cid in todo:
        try:
            items.append((cid, str(ds.abspath(path_of[cid]))))
        except UnsafePath as e:  # swapped for a symlink out of the root since ingest: never read
            report.errors.append((path_of[cid], str(e)))

    # -- one decode per image, every signal
    act_backends = [backends[target_of[k][0]] for k in active]
    sides = [b.input_side() for b in act_backends]
    full_for_models = (not reduce_on_decode) or any(s is None or s > SIDE for s in sides)
    paths = [model_path(b, fast_pixels) for b in act_backends]
    if act_backends:
        preps = [p if target_of[k][1] is None else View(p, target_of[k][1]).preprocess
                 for (p, _), k in zip(paths, active, strict=True)]
        preprocess, layout = _combined_preprocess(preps, active)
    else:  # only the cheap signals are missing: no model runs
        def preprocess(img):
            return np.zeros(1, np.float32)
        layout = []
    if workers is None:
        workers = default_workers(any(b.uses_torch for b in act_backends)) if act_backends else default_workers(False)
    if items:
        mask_table(params)  # built or mapped once here; forked workers inherit it
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=f"index {name}", unit="img", disable=not progress, dynamic_ncols=True)
    vec_ids: dict[str, list[str]] = {s: [] for s in active}
    vec_buf: dict[str, list[np.ndarray]] = {s: [] for s in active}
    pend: dict[str, list] = {k: [] for k in SIGNALS}

    def flush_signals() -> None:
        if pend["eb"]:
            ids, blood, skin = zip(*pend["eb"], strict=True)
            fr_cache.add(ids, blood, skin)
        if pend["phash"]:
            ids = [i for i, _ in pend["phash"]]
            vals = np.stack([c for _, c in pend["phash"]]).reshape(len(ids), len(h_cache.columns), -1).copy()
            vals = vals.view(np.int64)
            h_cache.write(pd.DataFrame({"id": ids, **{c: vals[:, t, 0] for t, c in enumerate(h_cache.columns)}}))
        if pend["stats"]:
            s_cache.write(rows_frame([i for i, _ in pend["stats"]], [v for _, v in pend["stats"]]))
        for k in SIGNALS:
            report.computed[k] += len(pend[k])
            pend[k].clear()

    def flush_vectors(key: str, final: bool) -> None:
        while vec_ids[key] and (final or len(vec_ids[key]) >= shard_size):
            vecs = np.concatenate(vec_buf[key])
            k = min(shard_size, len(vec_ids[key]))
            stores[key].write_shard(vec_ids[key][:k], vecs[:k])
            report.computed[key] += k
            vec_ids[key], vec_buf[key] = vec_ids[key][k:], [vecs[k:]]

    done = 0
    try:
        for ids, arrays, errors, extras in prefetch_decoded(items, preprocess, batch_size, workers,
                                                            make_decode(full_for_models, params)):
            report.errors.extend(errors)
            report.decoded += len(ids)
            for j, key in enumerate(active):
                rows = [r for r, cid in enumerate(ids) if cid in need[key]]
                if rows and arrays is not None:
                    x = _split(arrays, layout, j)
                    x = x if len(rows) == len(ids) else x[rows]
                    vec_buf[key].append(paths[j][1](x))
                    vec_ids[key].extend(ids[r] for r in rows)
                    flush_vectors(key, final=False)
            for cid, (blood, skin, codes, stats) in zip(ids, extras, strict=True):
                if cid in need["eb"]:
                    pend["eb"].append((cid, blood, skin))
                if cid in need["phash"]:
                    pend["phash"].append((cid, codes))
                if cid in need["stats"]:
                    pend["stats"].append((cid, stats))
            if max(len(v) for v in pend.values()) >= flush_every:
                flush_signals()
            bar.update(len(ids) + len(errors))
            done += len(ids) + len(errors)
            if progress_callback is not None:
                progress_callback(done, len(items))
        for key in active:
            flush_vectors(key, final=True)
    finally:
        flush_signals()  # keep what was computed even when interrupted
        bar.close()
    report.seconds = time.perf_counter() - t0
    for spec in models if views else ():  # the 7 view stores of a model reported as one: views, not images
        keys = [f"{spec} [{t}]" for t in views]
        report.cached[f"{spec} tta"] = sum(report.cached.pop(k) for k in keys)
        report.computed[f"{spec} tta"] = sum(report.computed.pop(k) for k in keys)
    for spec in models:
        b = backends.get(spec)
        report.embed.append(EmbedReport(name, b.spec if b is not None else spec, stores[spec].fingerprint,
                                        len(unique), report.cached[spec], report.computed[spec],
                                        list(report.errors), report.seconds, corrupt.get(spec, [])))
    return report
