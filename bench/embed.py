"""Embedding throughput end to end from image files (ViT-B-32, random weights, local checkpoint).

Side by side, interleaved, best of ``reps`` runs each (the machine is shared):

(a) the model alone on pre-decoded tensors: the compute ceiling;
(b) our path, :func:`lib.embeddings.embed` into an empty cache (decode workers, shards);
(c) the peer: the loop a user would write, open_clip + a torch DataLoader with its
    defaults (``num_workers=0``: decoding in the loop), same batch size;
(c') the same loop tuned: one DataLoader worker per core (no goal; for reference);
(d) the fast CPU path: (b) with ``precision='bf16-cast'`` (and its own ceiling (a'));
(d0) (d) as it was before issue 17: float32 arrays from the workers (``fast_pixels=False``);
(d+) (d) with large JPEGs reduced on decode (``reduce_on_decode=True``; cosine to (d) reported);
(e), (f) the pipeline behind a fast forward: ViT-S-32 in fp32 (a quarter of ViT-B-32's FLOPs,
    the same 224 px preprocessing), model alone and ``embed``. Its forward runs at about
    the rate of bf16 ViT-B-32 on a CPU with native bf16, so (f)/(e) is what the bf16 goal
    measures where this CPU cannot run bf16 natively: how much of a fast model's ceiling the
    decoding leaves it. The same images, the same workers.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from .common import CORPUS, Recorder, clip_spec, fresh_home, vitb32_spec

BATCH = 64


def _flops_per_image(model) -> float:
    """FLOPs of one image through the visual tower, counted by torch (2 per multiply-add).

    Counted in train mode (no dropout in CLIP's ViT): in eval mode nn.MultiheadAttention
    takes a fused fast path the counter does not see (a third of the FLOPs).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 224, 224)
    model.train()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.encode_image(x)
    finally:
        model.eval()
    return float(counter.get_total_flops())


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (decode workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peer_model(ckpt: str):
    """What the user's loop loads: open_clip's own model and transform from the checkpoint."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt)
    return model.eval(), preprocess


def _peer(paths: list[str], model, preprocess, workers: int):
    """The plain loop: a Dataset of files, a DataLoader, normalised features."""
    import torch
    from PIL import Image

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB"))

    def run() -> np.ndarray:
        loader = torch.utils.data.DataLoader(Files(), batch_size=BATCH, num_workers=workers)  # 0: the default
        out = []
        with torch.inference_mode():
            for x in loader:
                out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy())
        return np.concatenate(out)

    return run


def run(rec: Recorder) -> None:
    import logging

    import pandas as pd
    import torch

    from lib import dataset
    from lib.embeddings import EmbeddingStore, default_workers, embed, load_embeddings
    from lib.images import open_image
    from lib.models import load_model
    from lib.models.base import native_cpu_bf16

    logging.getLogger().setLevel(logging.ERROR)
    native = native_cpu_bf16()
    n = 128 if rec.quick else 384
    rounds = 1 if rec.quick else 3
    home = fresh_home("embed")
    spec = vitb32_spec()
    ckpt = spec.split("@", 1)[1]

    # n corpus files evenly spread over the manifest (it is grouped by source: PNG and JPEG).
    m = pd.read_csv(CORPUS / "manifest.csv")
    m = m.iloc[np.linspace(0, len(m) - 1, n).astype(int)]
    m.to_csv(home / "subset.csv", index=False)
    dataset.ingest(home / "subset.csv", "corpus", root=CORPUS)
    ds = dataset.load("corpus")
    first = ds.images.drop_duplicates("id")
    paths = [str(ds.abspath(p)) for p in first["path"]]
    n = len(paths)
    fmt_counts = first["format"].value_counts().to_dict()

    t_setup = time.perf_counter()
    fp32 = load_model(spec, precision="fp32", device="cpu")  # the CPU goals, also on a GPU machine
    bf16 = load_model(spec, precision="bf16-cast", device="cpu")
    small = load_model(clip_spec("ViT-S-32"), precision="fp32", device="cpu")  # the fast-forward stand-in
    flops = _flops_per_image(fp32.model)
    rec.add("model FLOPs per image", flops / 1e9, "GFLOP", note="torch FlopCounterMode, ViT-B-32 visual tower")

    pre = np.stack([fp32.preprocess(open_image(p)) for p in paths])
    decode_s = []  # decode + preprocess of 64 files, one core, best of 3 (the load varies)
    for _ in range(3):
        t = time.perf_counter()
        [fp32.preprocess(open_image(p)) for p in paths[::3][:64]]
        decode_s.append((time.perf_counter() - t) / 64)

    def ceiling(backend):
        return lambda: np.concatenate([backend.encode_preprocessed(pre[i:i + BATCH]) for i in range(0, n, BATCH)])

    def ours(backend, **kw):
        def go():
            shutil.rmtree(EmbeddingStore(backend.fingerprint).dir, ignore_errors=True)
            r = embed("corpus", backend.spec, backend=backend, batch_size=BATCH, verify=False, **kw)
            assert r.computed == n, r.summary()
            if backend is bf16:  # what the run left in the cache: full decode, or JPEGs reduced on decode
                rows = [int(np.flatnonzero(ds.images["id"].to_numpy() == i)[0]) for i in first["id"]]
                key = "reduced" if kw.get("reduce_on_decode") else "full_bf16"
                outputs[key] = load_embeddings("corpus", spec, backend=backend).take(rows)
        return go

    workers = default_workers(True)
    peer_model, peer_pre = _peer_model(ckpt)
    methods = {"a": ceiling(fp32), "b": ours(fp32), "c": _peer(paths, peer_model, peer_pre, workers=0),
               "c_tuned": _peer(paths, peer_model, peer_pre, workers=workers), "a_bf16": ceiling(bf16),
               "b_bf16": ours(bf16), "b_bf16_float": ours(bf16, fast_pixels=False),
               "b_bf16_reduced": ours(bf16, reduce_on_decode=True), "e": ceiling(small), "f": ours(small)}
    labels = {"a": "(a) model alone, fp32", "b": "(b) lib.embeddings.embed, fp32",
              "c": "(c) open_clip + DataLoader (defaults), fp32",
              "c_tuned": f"(c') open_clip + DataLoader ({workers} workers), fp32",
              "a_bf16": "(a') model alone, bf16-cast", "b_bf16": "(d) lib.embeddings.embed, bf16-cast",
              "b_bf16_float": "(d0) embed bf16-cast, float32 from the workers (before issue 17)",
              "b_bf16_reduced": "(d+) embed bf16-cast, JPEGs reduced on decode",
              "e": "(e) model alone, ViT-S-32 fp32 (fast-forward stand-in)", "f": "(f) lib.embeddings.embed, ViT-S-32 fp32"}
    # Warm-up: first calls pay for allocator growth and oneDNN kernel selection.
    fp32.encode_preprocessed(pre[:BATCH])
    small.encode_preprocessed(pre[:BATCH])
    bf16_few = None
    if native:
        bf16.encode_preprocessed(pre[:BATCH])
    else:  # emulated bf16 (~9x slower than fp32 on an AVX2 host): its rows would not fit the time limit
        few = pre[:16]
        t0 = time.perf_counter()
        bf16_few = bf16.encode_preprocessed(few)
        bf16_rate = len(few) / (time.perf_counter() - t0)
        rec.explain(
            f"This CPU has no native bf16 ({torch.backends.cpu.get_cpu_capability()} only: no AVX512-BF16 or AMX), "
            f"so bf16-cast is emulated: {bf16_rate:.1f} img/s on {len(few)} images, slower than fp32. Its rows "
            "(a'), (d), (d0), (d+) are left out here; they apply on a CPU with native bf16. The >= 0.92 goal is "
            "measured by (f)/(e) instead: the same pipeline behind a forward as fast as native bf16 ViT-B-32 "
            "(ViT-S-32 in fp32). The library warns when bf16-cast is asked for on such a CPU.")
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    outputs: dict[str, np.ndarray] = {}

    def report() -> None:
        del rec.rows[base:]
        del rec.notes[base_notes:]
        rate = {k: n / np.asarray(v) for k, v in wall.items() if v}  # img/s per round
        for k, label in labels.items():
            if k not in rate:
                continue
            rec.add(label, rate[k].max(), "img/s",
                    note=f"best of {len(rate[k])}; rounds " + ", ".join(f"{x:.1f}" for x in rate[k])
                    + f"; {1e3 * min(cpu[k]) / n:.0f} CPU-ms/img")

        def ratio(x: str, y: str) -> tuple[float, str]:
            m = min(len(rate[x]), len(rate[y]))
            paired = rate[x][:m] / rate[y][:m]  # the same round: the same background load, near enough
            return float(np.median(paired)), f"median of {len(paired)} paired rounds ({', '.join(f'{v:.3f}' for v in paired)}); " \
                f"best-of ratio {rate[x].max() / rate[y].max():.3f}"

        for (x, y), label, goal in [(("b", "a"), "(b)/(a) embed vs compute ceiling, fp32", 0.90),
                                    (("b", "c"), "(b)/(c) embed vs DataLoader peer, fp32", 1.05),
                                    (("b", "c_tuned"), "(b)/(c') embed vs DataLoader with workers, fp32", None),
                                    (("b_bf16", "b"), "(d)/(b) bf16-cast vs fp32 end to end", 1.7),
                                    (("b_bf16", "a_bf16"), "(d)/(a') bf16-cast embed vs its model alone", 0.92),
                                    (("b_bf16_float", "a_bf16"), "(d0)/(a') before: float32 transport", None),
                                    (("b_bf16_reduced", "a_bf16"), "(d+)/(a') JPEGs reduced on decode", None),
                                    (("f", "e"), "(f)/(e) embed vs model alone behind a fast forward (ViT-S-32 "
                                     "fp32)", None if native else 0.92)]:
            if x not in rate or y not in rate:
                continue
            value, note = ratio(x, y)
            rec.add(label, value, "ratio", (">=", goal) if goal else None, note=note)
        if "reduced" in outputs and "full_bf16" in outputs:
            rec.add("min cosine (d+) reduced-on-decode vs (d) full decode",
                    np.sum(outputs["full_bf16"] * outputs["reduced"], 1).min(), "", (">=", 0.9999))
        if "a_bf16" in outputs:
            cos = np.sum(outputs["a"] * outputs["a_bf16"], axis=1)
            rec.add("min cosine bf16-cast vs fp32 (every image)", cos.min(), "", (">=", 0.999),
                    note=f"median {np.median(cos):.5f}")
        elif "a" in outputs and bf16_few is not None:
            cos = np.sum(outputs["a"][:len(bf16_few)] * bf16_few, axis=1)
            rec.add(f"min cosine bf16-cast vs fp32 ({len(bf16_few)} images, emulated bf16)", cos.min(), "",
                    (">=", 0.999), note=f"median {np.median(cos):.5f}")
        if "full_bf16" in outputs:  # what a full-decode bf16 run left in the cache
            rec.add("min cosine bf16-cast cache vs fp32 (fp16 storage)",
                    np.sum(outputs["a"] * outputs["full_bf16"], axis=1).min(), "", (">=", 0.999))
        for k, label in [("a", "fp32 model alone"), ("b", "fp32 embed"), ("a_bf16", "bf16-cast model alone"),
                         ("b_bf16", "bf16-cast embed")]:
            if k in rate:
                rec.add(f"achieved GFLOP/s, {label}", rate[k].max() * flops / 1e9, "GFLOP/s")

    def where_the_time_goes() -> None:  # with every round's report: a time limit keeps them too
        per_img_decode = min(decode_s)
        fwd_core = min(cpu["a"]) / n
        rec.explain(
            f"Inputs: {n} corpus files ({fmt_counts}), batch {BATCH}, {torch.get_num_threads()} torch threads, "
            f"{workers} decode worker(s) for (b) and (c'); {len(wall['a'])} of {rounds} rounds, order reversed every other round; "
            "ratios are medians of per-round ratios (both sides measured under the same background load).")
        rec.explain(
            f"Where the time goes: decode + preprocess {per_img_decode * 1e3:.1f} ms/image on one core of this "
            f"process (open_image + open_clip transform), fp32 forward {fwd_core * 1e3:.0f} CPU-ms/image: if every "
            f"decoding ms were taken from the model, (b)/(a) would be at most {1 / (1 + per_img_decode / fwd_core):.3f}. "
            f"Measured CPU per image, decoding included: (a) {1e3 * min(cpu['a']) / n:.0f} ms, "
            f"(b) {1e3 * min(cpu['b']) / n:.0f} ms (workers run one torch thread each). The first batch ({BATCH} images, decoded by {workers} workers while the model waits) "
            f"costs ~{BATCH * per_img_decode / workers / min(wall['a']):.1%} of a {n}-image run.")
        fast_core = min(cpu["e"]) / n
        rec.explain(
            f"Behind the fast forward (ViT-S-32 fp32, {fast_core * 1e3:.0f} CPU-ms/image for the model alone): decoding "
            f"is {per_img_decode / fast_core:.0%} of the forward's CPU, so taking it from the model's cores would cap "
            f"(f)/(e) at {1 / (1 + per_img_decode / fast_core):.3f}; measured (f) {1e3 * min(cpu['f']) / n:.0f} CPU-ms/image "
            "in all.")

    print(f"[embed] setup (ingest, models, pre-decoding, warm-up): {time.perf_counter() - t_setup:.0f} s", flush=True)
    base, base_notes = len(rec.rows), len(rec.notes)
    for r in range(rounds):
        # Pairs to compare sit side by side; odd rounds run backwards, so slow drifts of the
        # background load cancel. The tuned peer (no goal) only runs in the first round.
        keys = ["a", "b", "c", "e", "f"] + (["b_bf16_float", "b_bf16", "a_bf16", "b_bf16_reduced"] if native else []) \
            + (["c_tuned"] if r == 0 else [])
        for k in (keys if r % 2 == 0 else keys[::-1]):
            c0, t0 = _cpu_seconds(), time.perf_counter()
            out = methods[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(_cpu_seconds() - c0)
            if out is not None:
                outputs[k] = out
        print(f"[embed] round {r + 1}/{rounds}: " + ", ".join(f"{k} {n / wall[k][-1]:.1f}" for k in keys), flush=True)
        report()  # after every round: a time limit keeps the rounds done
        where_the_time_goes()
    _gpu(rec, spec, paths, flops)
    os.environ.pop("WORKBENCH_HOME", None)


def _gpu(rec: Recorder, spec: str, paths: list[str], flops: float) -> None:
    """On a CUDA machine: the same embed call, precision ``auto`` (fp16), against the model alone."""
    import torch

    from lib.embeddings import EmbeddingStore, embed
    from lib.images import open_image
    from lib.models import load_model

    if not torch.cuda.is_available():
        rec.explain("No CUDA GPU here, so no GPU rows: on a GPU machine this benchmark adds them unchanged "
                    "(the default device is cuda and precision `auto` means fp16 autocast there).")
        return
    gpu = load_model(spec)  # defaults: cuda, fp16
    n = len(paths)
    pre = np.stack([gpu.preprocess(open_image(p)) for p in paths])
    gpu.encode_preprocessed(pre[:BATCH])  # warm-up: cuDNN/cuBLAS selection
    rates = {"a": [], "b": []}
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            gpu.encode_preprocessed(pre[i:i + BATCH])  # returns numpy: synchronised
        rates["a"].append(n / (time.perf_counter() - t))
        shutil.rmtree(EmbeddingStore(gpu.fingerprint).dir, ignore_errors=True)
        t = time.perf_counter()
        r = embed("corpus", spec, backend=gpu, batch_size=BATCH, verify=False)
        rates["b"].append(n / (time.perf_counter() - t))
        assert r.computed == n, r.summary()
    name = torch.cuda.get_device_name()
    rec.add(f"(a) GPU model alone, {gpu.precision} ({name})", max(rates["a"]), "img/s",
            note=f"{max(rates['a']) * flops / 1e12:.1f} TFLOP/s")
    rec.add(f"(b) GPU lib.embeddings.embed, {gpu.precision}", max(rates["b"]), "img/s",
            note=f"decoding on {os.cpu_count()} CPUs feeds it")
    rec.add("(b)/(a) on the GPU", float(np.median(np.array(rates["b"]) / np.array(rates["a"]))), "ratio")
