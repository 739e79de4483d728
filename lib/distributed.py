"""The ``ray`` embedding engine: the same job as :func:`lib.embeddings.embed`, spread over a Ray cluster.

The driver (this process) works out what the cache lacks, cuts it into exactly the
batches the local engine would use, and streams them through Ray Data to a pool of
:class:`EncoderActor` s (each holds one copy of the model: one per GPU when the cluster
has GPUs, else one per ``cpus_per_actor`` CPUs). Vectors come back to the driver, which
commits the shards itself through :class:`lib.embeddings.EmbeddingStore`: same ids, same
order, same shard boundaries, hence the same shard names as the local engine. The two
engines' caches are interchangeable; a run of either resumes the other's.

Workers read the image files themselves: every node must see the dataset's files at the
paths the driver sees (a shared or mounted file system) and have this project's Python
packages installed; :func:`init_ray` ships ``lib/`` to the workers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .embeddings import EmbeddingStore, EmbedReport
from .errors import ImageError, WorkbenchError


def init_ray(address: str | None = None, **kwargs):
    """Connect to (or start) Ray with ``lib/`` importable on every worker.

    Parameters
    ----------
    address : ``None`` (``$RAY_ADDRESS``, else a running local cluster, else a new local
        one), ``"local"`` (always a new local one), ``"auto"``, or ``ray://HEAD:10001``.
    **kwargs : passed to ``ray.init`` (``num_cpus``, ``include_dashboard``...).
    """
    import ray

    if ray.is_initialized():
        return ray
    env = dict(kwargs.pop("runtime_env", None) or {})
    env.setdefault("py_modules", [str(Path(__file__).resolve().parent)])
    if "HF_HUB_OFFLINE" in os.environ:  # an offline driver means offline workers
        env.setdefault("env_vars", {}).setdefault("HF_HUB_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("include_dashboard", False)
    for attempt in range(3):
        try:
            ray.init(address=address, runtime_env=env, **kwargs)
            break
        except Exception as e:  # Ray waits a fixed 30 s for a new local node: a busy machine can miss it
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            ray.shutdown()
    return ray


def _decode_one(preprocess, path: str) -> tuple[np.ndarray | None, str | None]:
    from .images import open_image

    try:
        return preprocess(open_image(path)), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # same policy as the local engine: one bad file never stops a run
        return None, f"{type(e).__name__}: {e}"


class EncoderActor:
    """Ray Data callable class: one model per actor, one local-engine batch per input row.

    Input rows: ``chunk`` (int), ``ids`` (list of content ids), ``paths`` (their files).
    Output rows, one per image: ``chunk``, ``pos`` (index in the chunk), ``id``, ``vec``
    ((dim,) float32, zeros on failure), ``error`` ("" on success).
    """

    def __init__(self, spec: str, fingerprint: str, random_weights: bool = False, device: str | None = None,
                 precision: str = "auto", threads: int = 1):
        from .models import load_model

        self.backend = load_model(spec, random_weights=random_weights, device=device, precision=precision)
        if self.backend.uses_torch:  # as many torch threads as CPUs reserved for the actor
            import torch

            torch.set_num_threads(max(1, int(threads)))
        if self.backend.fingerprint != fingerprint:
            raise WorkbenchError(
                f"model {spec!r} on worker {os.uname().nodename} has fingerprint {self.backend.fingerprint[:12]}, "
                f"the driver's has {fingerprint[:12]}: the nodes hold different weights or code")
        # Decoding releases the GIL (PIL, torch): threads keep the actor's CPUs busy.
        self.pool = ThreadPoolExecutor(max(1, int(threads)))

    def __call__(self, batch: dict) -> dict:
        chunks, poss, ids_out, vecs, errors = [], [], [], [], []
        for chunk, ids, paths in zip(batch["chunk"], batch["ids"], batch["paths"], strict=True):
            ids, paths = [str(i) for i in ids], [str(p) for p in paths]
            decoded = list(self.pool.map(lambda p: _decode_one(self.backend.preprocess, p), paths))
            ok = [k for k, (arr, _) in enumerate(decoded) if arr is not None]
            out = np.zeros((len(ids), self.backend.dim), np.float32)
            if ok:
                out[ok] = self.backend.encode_preprocessed(np.stack([decoded[k][0] for k in ok]))
            errors += ["" if err is None else err for _, err in decoded]
            chunks += [int(chunk)] * len(ids)
            poss += range(len(ids))
            ids_out += ids
            vecs.append(out)
        return {"chunk": np.asarray(chunks, np.int64), "pos": np.asarray(poss, np.int64),
                "id": np.asarray(ids_out, dtype=object), "error": np.asarray(errors, dtype=object),
                "vec": np.concatenate(vecs) if vecs else np.zeros((0, self.backend.dim), np.float32)}


def _pool_size(resources: dict, use_gpu: bool, cpus_per_actor: float, n_chunks: int, workers: int | None) -> int:
    if workers:
        return max(1, min(int(workers), n_chunks))
    slots = resources.get("GPU", 0) if use_gpu else resources.get("CPU", 1) // cpus_per_actor
    return max(1, min(int(slots), n_chunks))


def embed_ray(
    name: str,
    spec: str,
    *,
    address: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 4096,
    device: str | None = None,
    precision: str = "auto",
    random_weights: bool = False,
    cpus_per_actor: float | None = None,
    progress: bool = False,
    verify: bool = True,
    progress_callback: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed every image of dataset ``name`` that the cache for ``spec`` lacks, on Ray.

    Same arguments and result as :func:`lib.embeddings.embed`, plus:

    address : Ray address (see :func:`init_ray`); ignored when Ray is already initialised.
    workers : actors in the pool (default: one per GPU, else CPUs // ``cpus_per_actor``).
    cpus_per_actor : CPUs each actor reserves, and its torch and decoding threads
        (default 1 on CPU-only clusters; beside each GPU up to 4, as the cluster's CPU/GPU
        ratio allows).
    device : ``None`` puts the actors on ``cuda`` when the cluster has GPUs, else ``cpu``.
    progress_callback : ``progress_callback(done, total)`` as results arrive, ``total``
        being the images missing at the start.

    Returns
    -------
    EmbedReport, as the local engine's; ``errors`` holds (path, reason) per failed image.
    """
    from . import dataset as ds_mod
    from .models import load_model, resolve_fingerprint

    t0 = time.perf_counter()
    ds = ds_mod.load(name)
    unique = ds.unique_ids
    fp = resolve_fingerprint(spec, random_weights=random_weights)
    corrupt: list[str] = []
    if fp is not None:
        store = EmbeddingStore(fp)
        corrupt = store.verify() if verify else []
        if not store.missing(unique):  # nothing to do: no Ray, no model
            return EmbedReport(name, spec, fp, len(unique), len(unique), 0, [], time.perf_counter() - t0, corrupt)
    # The driver loads the model once (on CPU) for its fingerprint and description.
    backend = load_model(spec, random_weights=random_weights, device="cpu", precision="fp32")
    store = EmbeddingStore(backend.fingerprint)
    if fp != backend.fingerprint and verify:
        corrupt += store.verify()
    store.write_info({**backend.fingerprint_info, "spec": backend.spec, "dim": backend.dim})
    missing = store.missing(unique)
    report = EmbedReport(name, backend.spec, backend.fingerprint, len(unique), len(unique) - len(missing), 0,
                         [], 0.0, corrupt)
    if missing:
        path_of = dict(zip(ds.images["id"], ds.images["path"], strict=True))
        items = [(cid, str(ds.abspath(path_of[cid]))) for cid in missing]
        _run(items, spec, backend, store, report, address=address, batch_size=batch_size, workers=workers,
             shard_size=shard_size, device=device, precision=precision, random_weights=random_weights,
             cpus_per_actor=cpus_per_actor, progress=progress, progress_callback=progress_callback)
    report.seconds = time.perf_counter() - t0
    return report


def _run(items: Sequence[tuple[str, str]], spec: str, backend, store: EmbeddingStore, report: EmbedReport, *,
         address, batch_size, workers, shard_size, device, precision, random_weights, cpus_per_actor,
         progress, progress_callback) -> None:
    init_ray(address)
    import ray
    import ray.data
    from tqdm import tqdm

    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 if device is None else device.startswith("cuda")
    per_gpu = resources.get("CPU", 1) / max(resources.get("GPU", 1), 1)  # CPUs a GPU actor may take to decode
    cpus = float(cpus_per_actor or (max(1, min(4, math.floor(per_gpu))) if use_gpu else 1))
    # The local engine's batches, one per row: each actor call sees exactly the arrays the
    # local engine would stack, so the floating-point results match too.
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    rows = [{"chunk": c, "ids": [i for i, _ in ch], "paths": [p for _, p in ch]} for c, ch in enumerate(chunks)]
    size = _pool_size(resources, use_gpu, cpus, len(chunks), workers)
    out = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        EncoderActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"spec": spec,
                               "fingerprint": backend.fingerprint, "random_weights": random_weights,
                               "device": "cuda" if use_gpu else (device or "cpu"), "precision": precision,
                               "threads": max(1, math.floor(cpus))},
        num_gpus=1 if use_gpu else 0, num_cpus=cpus,
    )
    # Results arrive in any order; a chunk is released to the shard buffer only once it and
    # every chunk before it are complete, so shards fill in the local engine's order.
    got: dict[int, list] = {}
    count: dict[int, int] = {}
    nxt = done = 0
    buf_ids: list[str] = []
    buf_vecs: list[np.ndarray] = []
    bar = tqdm(total=len(items), desc=f"embed {backend.spec} (ray x{size})", unit="img", disable=not progress,
               dynamic_ncols=True)

    def release(chunk: int) -> None:
        parts = got.pop(chunk)
        pos = np.concatenate([p[0] for p in parts])
        order = np.argsort(pos, kind="stable")
        ids = np.concatenate([p[1] for p in parts])[order]
        errs = np.concatenate([p[2] for p in parts])[order]
        vecs = np.concatenate([p[3] for p in parts])[order]
        ok = np.array([not e for e in errs], dtype=bool)
        report.errors.extend((chunks[chunk][k][1], str(errs[k])) for k in np.flatnonzero(~ok))
        buf_ids.extend(str(i) for i in ids[ok])
        buf_vecs.append(vecs[ok])
        count.pop(chunk)

    try:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            ch = np.asarray(batch["chunk"])
            for c in np.unique(ch):
                sel = ch == c
                got.setdefault(int(c), []).append((np.asarray(batch["pos"])[sel], np.asarray(batch["id"])[sel],
                                                   np.asarray(batch["error"])[sel], np.asarray(batch["vec"])[sel]))
                count[int(c)] = count.get(int(c), 0) + int(sel.sum())
                bar.update(int(sel.sum()))
                done += int(sel.sum())
            if progress_callback is not None:
                progress_callback(done, len(items))
            while nxt < len(chunks) and count.get(nxt, 0) == len(chunks[nxt]):
                release(nxt)
                nxt += 1
                while len(buf_ids) >= shard_size:
                    vecs = np.concatenate(buf_vecs)
                    store.write_shard(buf_ids[:shard_size], vecs[:shard_size])
                    report.computed += shard_size
                    buf_ids, buf_vecs = buf_ids[shard_size:], [vecs[shard_size:]]
        if nxt != len(chunks):
            raise WorkbenchError(f"ray returned {nxt} of {len(chunks)} batches complete")
        if buf_ids:
            store.write_shard(buf_ids, np.concatenate(buf_vecs))
            report.computed += len(buf_ids)
    finally:
        bar.close()
