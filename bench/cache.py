"""The embedding cache: an unchanged dataset costs no forward pass; 10% new images cost ~10%.

- Corpus, ViT-B-32 (random weights, local checkpoint, fp32: the default on CPU; bf16-cast
  would add oneDNN's per-batch-shape kernel compilation, ~1 s, to every small run),
  :func:`lib.embeddings.embed` with the
  model loaded once: first run on 90% of the files, then the whole corpus (the 10% new
  ones are computed), then again (no-op); then the no-op as the CLI. A process that only
  imports the model code and loads the model gives the fixed cost of a CLI run that computes.
- Weights neither cached nor reachable: seconds until the CLI says so (one probe of the
  hub, no download retries).
- 100k rows: tiny PNGs ingested as a dataset whose cache is filled with synthetic
  vectors through ``EmbeddingStore.write_shard``; then the CLI no-op.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np

from .common import CORPUS, REPO, Recorder, fresh_home, shared_home, vitb32_spec


def _cli_embed(name: str, spec: str, *extra: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lib", "embed", name, "--model", spec, *extra], cwd=REPO,
                       capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"lib embed failed: {r.stderr[-2000:]}")
    return seconds, r.stdout.strip().splitlines()[0]


def _fixed_cost(spec: str) -> float:
    """Seconds for a process to start, import torch/open_clip and load the model: paid by any run."""
    code = ("import sys; from lib.models import load_model; "
            "load_model(sys.argv[1])")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, spec], cwd=REPO, check=True, capture_output=True,
                   env=os.environ.copy())
    return time.perf_counter() - t


def _missing_weights_s() -> tuple[float, str]:
    """Seconds until a process asked for weights that are neither cached (an empty HF cache)
    nor downloadable on this machine reports it (huggingface_hub alone retries ~50 s)."""
    import tempfile

    env = {**os.environ, "HF_HOME": tempfile.mkdtemp(prefix="bench-hf-")}
    env.pop("HF_HUB_OFFLINE", None)  # the probe of the hub is what is timed
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lib", "embed", "corpus", "--model", "open_clip:ViT-B-32@laion2b_s34b_b79k"],
                       cwd=REPO, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, (r.stderr.strip().splitlines() or ["(no message)"])[0][:120]


def _counts(summary: str) -> tuple[int, int]:
    m = re.search(r"(\d+) cached, (\d+) computed", summary)
    return int(m.group(1)), int(m.group(2))


def run(rec: Recorder) -> None:
    import pandas as pd

    from lib import dataset
    from lib.embeddings import embed
    from lib.models import load_model

    home = fresh_home("cache")
    spec = vitb32_spec()
    n = 120 if rec.quick else None
    m = pd.read_csv(CORPUS / "manifest.csv")
    if n:
        m = m.iloc[np.linspace(0, len(m) - 1, n).astype(int)]
    rng = np.random.default_rng(0)
    new = np.sort(rng.choice(len(m), size=max(1, round(0.1 * len(m))), replace=False))
    old = m.drop(m.index[new])
    m.to_csv(home / "all.csv", index=False)
    old.to_csv(home / "old.csv", index=False)
    dataset.ingest(home / "old.csv", "corpus", root=CORPUS)

    # The cache's own work, in process with the model loaded once (as the app and notebooks do).
    backend = load_model(spec, precision="fp32")

    def timed_embed() -> tuple[float, object]:
        t = time.perf_counter()
        r = embed("corpus", spec, backend=backend)
        return time.perf_counter() - t, r

    t_full, r_full = timed_embed()  # first run: 90% of the files, empty cache
    dataset.ingest(home / "all.csv", "corpus", root=CORPUS)  # the same dataset with 10% more files
    t_inc, r_inc = timed_embed()
    t_noop, r_noop = timed_embed()
    assert r_noop.computed == 0 and r_inc.computed == len(new), (r_inc.summary(), r_noop.summary())
    n_old, n_new = r_full.computed, r_inc.computed
    rec.add("corpus first run (embed(), model loaded)", t_full, "s", note=r_full.summary())
    rec.add("corpus +10% images", t_inc, "s", note=r_inc.summary())
    rec.add("corpus no-op re-run", t_noop, "s", note=r_noop.summary())
    rec.add("corpus no-op: images computed (forward passes)", r_noop.computed, "", ("<=", 0))
    rec.add("corpus no-op / first run", t_noop / t_full, "ratio")
    full_all = t_full * (n_old + n_new) / n_old  # a full run of the grown dataset, same per-image cost
    rec.add("corpus +10% / full run", t_inc / full_all, "ratio", ("<=", 0.15),
            note=f"{n_new / (n_old + n_new):.1%} of the images are new; full run of all {n_old + n_new} "
                 f"scaled from the first run ({full_all:.1f} s)")
    t_cli, s_cli = _cli_embed("corpus", spec)
    assert _counts(s_cli)[1] == 0, s_cli
    rec.add("corpus no-op, CLI `python -m lib embed` (own process)", t_cli, "s", note=s_cli)
    fix = _fixed_cost(spec)
    rec.add("fixed cost of any CLI run that computes: start, import torch/open_clip, load model", fix, "s",
            note="a +10% CLI run costs this plus the in-process +10% time")
    t_missing, message = _missing_weights_s()
    rec.add("weights not cached and no hub: seconds to the error (CLI, imports of torch and open_clip included)", t_missing, "s", ("<", 30.0),
            note=f"exit message: {message}" if "not available" in message else
            f"on a connected machine this downloads the weights instead: {message}")

    # ------------------------------------------------------------------ 100k rows
    big = 20_000 if rec.quick else 100_000
    t = time.perf_counter()
    shared_home(big)
    rec.add(f"{big // 1000}k-row dataset: ingest tiny PNGs + fill the cache (setup)", time.perf_counter() - t, "s",
            note="0 when another benchmark of this run built it")
    times = []
    for _ in range(3):
        t, s = _cli_embed("big", spec)
        assert _counts(s) == (big, 0), s
        times.append(t)
    rec.add(f"{big // 1000}k no-op `python -m lib embed` (CLI)", min(times), "s", ("<", 3.0),
            note="best of 3; runs " + ", ".join(f"{t:.2f}" for t in times) + f"; {s}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lib.cli, pandas, numpy"], cwd=REPO, check=True)
    rec.explain(f"{big // 1000}k no-op: of its {min(times):.2f} s, {time.perf_counter() - t:.2f} s are the "
                "interpreter start and imports (lib.cli, pandas, numpy); the rest reads the dataset table, "
                "checks every shard's sha256 (verify) and looks the ids up in the cache.")
    per_img = t_full / n_old
    rec.explain(f"A first run at {big // 1000}k rows would take about {big * per_img / 3600:.1f} h at this "
                f"run's rate ({1 / per_img:.1f} img/s, fp32); it was not run.")
    rec.explain(f"A CLI run that has images to embed also pays a fixed {fix:.1f} s (interpreter, torch and "
                "open_clip imports, model load and weight hashing); a CLI no-op pays none of it (the model is "
                "never loaded).")
    os.environ.pop("WORKBENCH_HOME", None)
