"""Which fast CPU path for ViT-B-32: bf16 cast, torch.compile, ONNX Runtime (opt-in: ``--only fastpath``).

The model alone on the same pre-decoded batches (what decoding cannot hide), each path's
images/s and its worst cosine to the fp32 eager embeddings. Compilation and export times
are reported separately; they are why this is not part of the default run.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .common import CORPUS, Recorder, fresh_home, vitb32_spec

BATCH = 64


def _rate(fn, x: np.ndarray, reps: int) -> tuple[float, np.ndarray]:
    out = fn(x[:BATCH])  # warm-up (kernel selection, lazy init)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        out = np.concatenate([fn(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
        best = max(best, len(x) / (time.perf_counter() - t))
    return best, out / np.linalg.norm(out, axis=1, keepdims=True)


def run(rec: Recorder) -> None:
    import torch

    from lib.images import open_image
    from lib.models import load_model

    logging.getLogger().setLevel(logging.ERROR)
    fresh_home("fastpath")
    spec = vitb32_spec()
    fp32 = load_model(spec, precision="fp32")
    paths = sorted(str(p) for p in (CORPUS / "images" / "fuseg").glob("*.png"))[: 64 if rec.quick else 128]
    x = np.stack([fp32.preprocess(open_image(p)) for p in paths])
    reps = 1 if rec.quick else 2
    model = fp32.model.visual

    def eager(m, dtype):
        def f(b):
            with torch.inference_mode():
                return m(torch.from_numpy(b).to(dtype)).float().numpy()
        return f

    base, ref = _rate(eager(model, torch.float32), x, reps)
    rec.add("fp32 eager", base, "img/s")
    results = {}
    bf16_model = load_model(spec, precision="bf16-cast").model.visual
    results["bf16-cast eager (precision='bf16-cast')"] = _rate(eager(bf16_model, torch.bfloat16), x, reps)

    for name, m, dtype in [("torch.compile fp32", model, torch.float32),
                           ("torch.compile bf16-cast", bf16_model, torch.bfloat16)]:
        try:
            t = time.perf_counter()
            compiled = torch.compile(m)
            eager(compiled, dtype)(x[:BATCH])
            rec.add(f"{name}: compile time", time.perf_counter() - t, "s")
            results[name] = _rate(eager(compiled, dtype), x, reps)
        except Exception as e:  # an inductor toolchain problem is a result too
            rec.explain(f"{name} failed: {type(e).__name__}: {str(e)[:200]}")

    try:
        import onnxruntime as ort

        from .common import WORK

        path = WORK / "fastpath" / "vitb32-visual.onnx"
        t = time.perf_counter()
        torch.onnx.export(model, torch.from_numpy(x[:BATCH]), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rec.add("ONNX Runtime fp32: export + session", time.perf_counter() - t, "s")
        results["ONNX Runtime fp32"] = _rate(lambda b: sess.run(None, {"x": b})[0], x, reps)
    except Exception as e:
        rec.explain(f"ONNX Runtime failed: {type(e).__name__}: {str(e)[:200]}")

    for name, (rate, out) in results.items():
        cos = np.sum(out * ref, axis=1)
        rec.add(f"{name}", rate, "img/s", note=f"x{rate / base:.2f} vs fp32 eager; min cosine to fp32 {cos.min():.5f}")
    rec.explain(f"{len(x)} corpus PNGs pre-decoded, batch {BATCH}, {torch.get_num_threads()} threads, best of "
                f"{reps}: model time only (the end-to-end figure with decoding is bench embed's (d)/(b)).")
