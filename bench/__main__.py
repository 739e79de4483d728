"""``python -m bench [--only NAME[,NAME]] [--quick]``: run the benchmarks, write the report.

Each benchmark runs in its own process (``python -m bench --child NAME``): memory goes
back between them, a crash or a timeout costs one section, not the report. Results:
``bench/results/report.md``, ``bench/results/results.csv``, logs in ``bench/results/logs/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import RESULTS, Recorder, fmt, machine

#: name -> (module, title, time limit in seconds for the full run)
BENCHES = {
    "embed": ("bench.embed", "1. Embedding throughput (ViT-B-32, end to end from files)", 600),
    "cache": ("bench.cache", "2. Embedding cache: no-op and incremental runs", 200),
    "search": ("bench.search", "3. Vector search at 100k and 1M x 512", 360),
    "eb": ("bench.eb", "4. EB colour scores", 120),
    "app": ("bench.app_page", "5. App: Neighbours page at 100k items", 180),
    "umap": ("bench.umap_bench", "6. UMAP projection of 100k points", 300),
    "load": ("bench.load", "7. App under load: 8 sessions browse Neighbours at 100k items", 420),
    "quality": ("bench.quality", "8. Data quality: near-duplicate groups of 1M x 512 vectors, perceptual hashes", 900),
    "screening": ("bench.screening", "9. Detectors: leave-one-source-out, review loop, train 100k / screen 1M", 600),
    "signals": ("bench.signals", "10. One decode, every signal: index vs embed alone vs the separate passes", 360),
    "scale": ("bench.scale", "11. A million-image collection: ingest, loading, annotation queries by status, the app's "
              "Gallery, Neighbours and Map (1M vs 100k)", 3000),
    "fastpath": ("bench.fastpath", "Opt-in: fast CPU paths for ViT-B-32 (bf16 cast, torch.compile, ONNX Runtime)",
                 600),
}
#: Run only when named in ``--only`` (minutes of compilation, a choice already made; minutes
#: of range search over 1M vectors, and for scale minutes of labelling a 1M-row annotation store
#: then building a 1M-vector IVF index and PCA map and painting the app's pages on fresh
#: servers: ~25-40 min on the shared 2-core machine, which the whole run's 15-minute budget
#: has no room for).
OPT_IN = {"fastpath", "quality", "scale"}
#: The whole run's wall-clock budget (``make bench`` must finish in under 15 minutes), and
#: the least time each benchmark is kept for: when earlier ones ran long (a busy machine),
#: later ones get what is left beyond the reserves of those still to come.
BUDGET_S = {False: 14 * 60, True: 8 * 60}
MIN_S = {"embed": 120, "cache": 60, "search": 90, "eb": 15, "app": 60, "umap": 120, "load": 90, "screening": 240,
         "signals": 120}


def _child(name: str, quick: bool, out: Path) -> int:
    import signal

    me = os.getpid()

    def stop(signum, _frame):  # the runner's time limit: leave with what was measured so far
        if os.getpid() != me:  # a forked worker inherits this handler: it must just die, as by default
            os._exit(128 + signum)
        raise SystemExit(f"{name}: stopped by the time limit")

    signal.signal(signal.SIGTERM, stop)
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the runner asks for stacks before stopping
    rec = Recorder(name, quick)
    try:
        importlib.import_module(BENCHES[name][0]).run(rec)
    finally:
        rec.dump(out)
    return 0


def _run_one(name: str, quick: bool, cap: float | None = None) -> dict:
    out = RESULTS / "json" / f"{name}.json"
    log = RESULTS / "logs" / f"{name}.log"
    for p in (out, log):
        p.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    limit = BENCHES[name][2] * (0.6 if quick else 1.0)
    limit = limit if cap is None else min(limit, cap)
    cmd = [sys.executable, "-m", "bench", "--child", name, "--json", str(out)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    status = "ok"
    with open(log, "w") as f, open(log) as tail:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        while True:
            done = proc.poll() is not None
            for line in tail.readlines():  # echo the result lines as they come
                if line.startswith(f"[{name}]"):
                    print(line, end="", flush=True)
            if done:
                break
            if time.perf_counter() - t0 > limit:
                _dump_stacks(proc.pid)  # where it was stuck goes to the log
                proc.terminate()  # the child writes what it has measured, then exits
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                status = f"timed out after {limit:.0f} s (results so far kept)"
                break
            time.sleep(0.5)
    if status == "ok" and proc.returncode != 0:
        status = f"exit code {proc.returncode}"
    result = json.loads(out.read_text()) if out.exists() else {"bench": name, "rows": [], "notes": []}
    result["seconds"] = time.perf_counter() - t0
    result["status"] = status
    if status != "ok":
        tail = log.read_text().strip().splitlines()[-12:]
        result["notes"].append(f"**{status}**; last log lines:\n\n```\n" + "\n".join(tail) + "\n```")
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(result, indent=1))  # kept: a later --only run reports it beside its own
    return result


def _earlier(names: list[str]) -> list[dict]:
    """Results of the benchmarks not run now, from their last run (json/NAME.json)."""
    out = []
    for name in BENCHES:
        path = RESULTS / "json" / f"{name}.json"
        if name not in names and path.exists():
            try:
                res = json.loads(path.read_text())
            except ValueError:
                continue
            if "finished" in res:
                out.append(res)
    return out


def _dump_stacks(pid: int) -> None:
    import signal

    try:
        import psutil

        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for p in procs:
            p.send_signal(signal.SIGUSR1)
        time.sleep(2)
    except Exception:  # best effort: the stacks are a diagnosis, not a result
        pass


def _mark(passed) -> str:
    return "" if passed is None else ("PASS" if passed else "**FAIL**")


def write_report(results: list[dict], info: dict, quick: bool, seconds: float) -> Path:
    import pandas as pd

    rows = [r for res in results for r in res["rows"]]
    df = pd.DataFrame(rows, columns=["bench", "metric", "value", "unit", "goal", "passed", "note"])
    df.to_csv(RESULTS / "results.csv", index=False)
    goals = df[df["goal"] != ""]
    lines = [
        "# Benchmark report", "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; this run ({'quick' if quick else 'full'}): "
        f"{', '.join(r['bench'] for r in results if not r.get('earlier'))}, {seconds:.0f} s in all"
        + ("; sections marked *an earlier run* are the last results of the others. " if any(
            r.get("earlier") for r in results) else ". ") +
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs ({info.get('isa', '')}), Python {info['python']}, "
        f"torch {info['torch']}; 1-min load average at start {info['load_avg_1min']} (other processes share "
        "the cores: compare ratios measured side by side, not absolute figures across runs).", "",
        "## Goals", "",
        f"{int(goals['passed'].eq(True).sum())} of {len(goals)} goals met.", "",
        "| benchmark | goal | measured | target | |", "|---|---|---|---|---|",
    ]
    for r in goals.itertuples():
        lines.append(f"| {r.bench} | {r.metric} | {fmt(r.value)} {r.unit} | {r.goal} | {_mark(r.passed)} |")
    for res in results:
        title = BENCHES[res["bench"]][1]
        when = f"; measured {res['finished']}" + (" (an earlier run)" if res.get("earlier") else "") \
            if "finished" in res else ""
        lines += ["", f"## {title}", "", f"`--only {res['bench']}`: {res['seconds']:.0f} s, {res['status']}{when}.", ""]
        if res["rows"]:
            lines += ["| metric | value | goal | | note |", "|---|---|---|---|---|"]
            for r in res["rows"]:
                lines.append(f"| {r['metric']} | {fmt(r['value'])} {r['unit']} | {r['goal']} | {_mark(r['passed'])} "
                             f"| {r['note']} |")
        if res["notes"]:
            lines.append("")
            lines += [f"- {n}" if not n.startswith("**") else n for n in res["notes"]]
    path = RESULTS / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)} "
                                               f"({', '.join(OPT_IN)} only when named)")
    p.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run of a few minutes)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(a.child, a.quick, Path(a.json))
    names = [n.strip() for n in a.only.split(",") if n.strip()] or [n for n in BENCHES if n not in OPT_IN]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ["WB_BENCH_RUN"] = f"{os.getpid()}-{time.time():.0f}"  # shared inputs are rebuilt per run
    info = machine()
    t0 = time.perf_counter()
    results = []
    deadline = t0 + BUDGET_S[a.quick]
    for i, name in enumerate(names):
        print(f"== {name}: {BENCHES[name][1]}", flush=True)
        reserve = sum(MIN_S.get(n, 60) * (0.6 if a.quick else 1.0) for n in names[i + 1:])
        cap = max(MIN_S.get(name, 60), deadline - time.perf_counter() - reserve) if len(names) > 1 else None
        results.append(_run_one(name, a.quick, cap))
        print(f"== {name}: {results[-1]['status']} in {results[-1]['seconds']:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    earlier = [{**r, "earlier": True} for r in _earlier(names)]
    order = list(BENCHES)
    results = sorted(results + earlier, key=lambda r: order.index(r["bench"]) if r["bench"] in order else 99)
    path = write_report(results, info, a.quick, seconds)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
