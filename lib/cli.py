"""``python -m lib VERB ...``: the workbench from the shell.

Each verb imports only what it needs, so a cache check starts in well under a second.
User errors (:class:`lib.errors.WorkbenchError`) print one clear message and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

VERBS: dict[str, tuple[Callable, Callable, str]] = {}


def verb(name: str, help: str):
    """Register ``fn(args)`` as a verb; the decorated function's ``configure`` adds arguments."""

    def wrap(fn):
        VERBS[name] = (fn, getattr(fn, "configure", lambda p: None), help)
        return fn

    return wrap


def args_for(configure):
    def deco(fn):
        fn.configure = configure
        return fn

    return deco


def _print_table(df, max_rows: int = 50) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.width", 200,
                           "display.max_colwidth", 60):
        print(df.to_string(index=False) if len(df) else "(no rows)")


def _n(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images`` (:func:`lib.gallery.plural`, imported when a verb prints)."""
    from .gallery import plural

    return plural(int(n), word, many)


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, default=None if required else "color",
                   help="model spec: color | open_clip:ARCH@TAG | open_clip:hf-hub:ORG/NAME | "
                        "open_clip:ARCH@/path/weights.safetensors | hf:ID_OR_PATH | an alias")
    p.add_argument("--random-weights", action="store_true",
                   help="build the architecture with seeded random weights (tests and benchmarks only)")


def _model(a, **kwargs):
    """``--model`` / ``--random-weights`` resolved once (:func:`lib.models.resolve_model`): the value
    a verb passes to every run_* it calls."""
    from .models import resolve_model

    return resolve_model(a.model, random_weights=a.random_weights, **kwargs)


# ---------------------------------------------------------------- datasets


def _labels_arg(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _policy_args(p) -> None:
    p.add_argument("--sensitive-labels", default=None, metavar="A,B",
                   help="label values that mean sensitive (comma-separated; they override the shipped vocabulary)")
    p.add_argument("--safe-labels", default=None, metavar="C,D", help="label values that mean safe")
    p.add_argument("--all-sensitive", action="store_true",
                   help="every image without a sensitive or safe label is sensitive (a folder of wounds, no labels)")


def _print_policy(name: str) -> None:
    from . import dataset, sensitivity

    pol = sensitivity.load_policy(name)
    print(f"label policy of {name!r} (censored unless safe; unknown labels are censored too):")
    _print_table(sensitivity.label_table(dataset.load(name).images, pol), 100)
    if pol.all_sensitive:
        print("all-sensitive: images without a sensitive or safe label are flagged")
    if pol.known_safe:
        print(f"known-safe: marked by {pol.known_safe['by']} at {pol.known_safe['at']} "
              "(every image without a flag is shown raw)")


@verb("ingest", "ingest a folder, a CSV/parquet manifest or a DICOM folder as a dataset")
@args_for(lambda p: (
    p.add_argument("source", help="folder (class subfolders become labels) or manifest with a 'path' column"),
    p.add_argument("--name", required=True, help="dataset name"),
    p.add_argument("--root", help="folder the manifest's paths are relative to (default: its own folder)"),
    p.add_argument("--workers", type=int, default=None, help="decoding processes"),
    _policy_args(p),
))
def cmd_ingest(a) -> int:
    from . import dataset, sensitivity

    report = dataset.ingest(a.source, a.name, root=a.root, workers=a.workers, progress=sys.stderr.isatty())
    print(report.summary())
    ds = dataset.load(a.name)
    if len(ds.errors):
        print(f"\n{_n(len(ds.errors), 'file')} could not be used:")
        _print_table(ds.errors, 30)
    if len(ds.duplicates):
        print(f"\n{len(ds.duplicates)} byte-identical duplicate(s):")
        _print_table(ds.duplicates.assign(id=ds.duplicates["id"].str[:12]), 30)
    try:
        sensitivity.set_policy(a.name, sensitive=_labels_arg(a.sensitive_labels), safe=_labels_arg(a.safe_labels),
                               all_sensitive=True if a.all_sensitive else None, by="ingest")
    except sensitivity.PolicyError as e:
        raise sensitivity.PolicyError(f"dataset {a.name!r} is ingested, but its label policy was not set: {e}\n"
                                      f"set it with: python -m lib policy {a.name} ...") from None
    print()
    _print_policy(a.name)
    return 0


@verb("policy", "show or change a dataset's label policy: which labels mean sensitive or safe, known-safe")
@args_for(lambda p: (
    p.add_argument("name"),
    _policy_args(p),
    p.add_argument("--unknown-labels", default=None, metavar="E,F",
                   help="take these label values off both lists (back to the shipped vocabulary)"),
    p.add_argument("--no-all-sensitive", action="store_true", help="switch all-sensitive off"),
    p.add_argument("--known-safe", action="store_true",
                   help="mark the whole dataset known-safe (e.g. an X-ray archive): images without a flag are shown raw"),
    p.add_argument("--not-known-safe", action="store_true", help="remove the known-safe mark"),
    p.add_argument("--by", default=None, help="who makes the change (recorded; required with --known-safe)"),
    p.add_argument("--show", action="store_true", help="only print the policy (the default with no change)"),
))
def cmd_policy(a) -> int:
    from . import sensitivity
    from .errors import WorkbenchError

    if a.known_safe and a.not_known_safe or a.all_sensitive and a.no_all_sensitive:
        raise WorkbenchError("--known-safe/--not-known-safe and --all-sensitive/--no-all-sensitive are opposites")
    import os

    a.by = a.by or os.environ.get("WORKBENCH_ANNOTATOR")
    if a.known_safe and not (a.by or "").strip():
        raise WorkbenchError("--known-safe records who marked the dataset: add --by YOUR_NAME "
                             "(or set WORKBENCH_ANNOTATOR)")
    if not a.show:
        before = sensitivity.load_policy(a.name)
        after = sensitivity.set_policy(
            a.name, sensitive=_labels_arg(a.sensitive_labels), safe=_labels_arg(a.safe_labels),
            unknown=_labels_arg(a.unknown_labels),
            all_sensitive=True if a.all_sensitive else False if a.no_all_sensitive else None,
            known_safe=True if a.known_safe else False if a.not_known_safe else None, by=(a.by or "cli").strip())
        for h in after.history[len(before.history):]:
            print(f"changed: {h['change']} ({h['by']}, {h['at']})")
    _print_policy(a.name)
    return 0


def _annotator(a, required: bool = True) -> str | None:
    """``--annotator``, else ``$WORKBENCH_ANNOTATOR``; a clear error when neither is set."""
    import os

    from .annotations import check_annotator
    from .errors import WorkbenchError

    name = getattr(a, "annotator", None) or os.environ.get("WORKBENCH_ANNOTATOR")
    if not name:
        if required:
            raise WorkbenchError("say who you are: --annotator NAME, or set WORKBENCH_ANNOTATOR")
        return None
    return check_annotator(name)


@verb("label", "label images of a dataset in bulk (one transaction), chosen by --where or an id file")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--label", required=True, help="the label (several tags joined by '|' for a multi-label set)"),
    p.add_argument("--labels", default=None, metavar="SET", help="the label set (default: Blur/Maybe/Ok)"),
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="COLUMN=VALUE, COLUMN!=VALUE or COLUMN~TEXT; repeatable (as show --where)"),
    p.add_argument("--ids", default=None, help="a CSV with an 'id' column (content ids or unique prefixes)"),
    p.add_argument("--annotator", default=None, help="who labels (default: $WORKBENCH_ANNOTATOR)"),
))
def cmd_label(a) -> int:
    import pandas as pd

    from . import dataset
    from .annotations import AnnotationStore, scope
    from .errors import WorkbenchError
    from .gallery import where_rows

    who = _annotator(a)
    ds = dataset.load(a.name)
    if not a.where and not a.ids:
        raise WorkbenchError("choose the images: --where COND (e.g. path~xray) and/or --ids FILE")
    rows = where_rows(ds.images, a.where)
    ids = ds.images["id"].astype(str).to_numpy()[rows].tolist()
    if a.ids:
        wanted = {ds.resolve_id(str(i)) for i in pd.read_csv(a.ids, dtype=str)["id"].dropna()}
        ids = [i for i in ids if i in wanted]
    if not ids:
        raise WorkbenchError("no image matches: nothing labelled")
    store = AnnotationStore()
    schema = store.schema(a.name, a.labels)
    prev = store.bulk_label(scope(a.name, schema.name), ids, who, a.label.split("|") if schema.multi else a.label,
                            context={"source": "cli label"})
    changed = sum(1 for v in prev.values() if v != a.label)
    print(f"{a.name}: {_n(len(prev), 'image')} labelled {a.label!r} in {schema.name} by {who} "
          f"({changed} changed, {len(prev) - changed} already so)")
    return 0


@verb("safe-view", "how the safe view shows a dataset: censored and raw images, by evidence and reason")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--eb-threshold", type=float, default=1.0, help="EB cut (flag by colour)"),
    p.add_argument("--no-eb", action="store_true", help="leave the EB colour evidence out"),
    p.add_argument("--predictions", default=None,
                   help="a prediction table (a detector's results/NAME/detect-DET.parquet) as evidence"),
    p.add_argument("--threshold", type=float, default=None, help="flag at p >= this (default: the table's own)"),
    p.add_argument("--list", action="store_true", help="also print every image with its reason"),
    p.add_argument("--out", default=None, help="write the per-image decision (CSV or parquet)"),
))
def cmd_safe_view(a) -> int:
    from . import dataset, sensitivity
    from .evidence import decide_dataset

    ds = dataset.load(a.name)
    d = decide_dataset(ds, eb_threshold=None if a.no_eb else a.eb_threshold, predictions=a.predictions,
                       pred_threshold=a.threshold)
    n_raw = int((~d["censored"]).sum())
    print(f"{a.name}: {_n(len(d), 'image')}, {len(d) - n_raw} censored, {n_raw} shown raw")
    _print_table(sensitivity.breakdown(d), 100)
    import re

    kinds = d["reason"].map(lambda r: re.sub(r"\d+\.\d+(?= [>≥<])", "…", r))  # "EB 1.62 > 1.0" and "EB 2.10 > 1.0" alike
    reasons = d.assign(shown=d["censored"].map({True: "censored", False: "raw"}), reason=kinds).groupby(
        ["shown", "reason"]).size().rename("images").reset_index().sort_values("images", ascending=False)
    print("\nmost common reasons:")
    _print_table(reasons.head(15), 15)
    if a.list:
        rows = d.assign(id=d["id"].str[:12], path=ds.images["path"].to_numpy(),
                        shown=d["censored"].map({True: "censored", False: "raw"}))
        _print_table(rows[["id", "path", "shown", "reason"]], len(rows))
    if a.out:
        from pathlib import Path

        from .files import write_table

        write_table(Path(a.out), d.assign(path=ds.images["path"].to_numpy()))
        print(f"\nwritten: {a.out}")
    return 0


@verb("nudity", "check every image of a dataset with NudeNet (offline; cached per image) for the safe view")
@args_for(lambda p: (p.add_argument("name"),))
def cmd_nudity(a) -> int:
    from . import dataset, nudity
    from .sensitivity import NUDITY_THRESHOLD

    ds = dataset.load(a.name)
    df = nudity.check_dataset(ds)
    hit = df[df["nudity"] >= NUDITY_THRESHOLD]
    print(f"{a.name}: {_n(df['nudity'].notna().sum(), 'image')} checked, {len(hit)} with an exposed intimate part "
          f"(score >= {NUDITY_THRESHOLD:g}), {int(df['error'].notna().sum())} unreadable")
    if len(hit):
        _print_table(hit.assign(id=hit["id"].str[:12])[["id", "nudity", "part"]].round(3), 30)
    return 0


@verb("datasets", "list datasets with their image and error counts")
def cmd_datasets(a) -> int:
    from . import dataset

    df = dataset.summary_table()

    def short(text: str, n: int = 44) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    _print_table(df.assign(labels=df["labels"].map(short)).drop(columns=["root"]))
    print("(all labels and the root folder: python -m lib show NAME, python -m lib policy NAME --show)")
    return 0


@verb("show", "print the rows of a dataset")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--limit", type=int, default=20),
    p.add_argument("--errors", action="store_true", help="show the error table instead"),
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="only rows matching COLUMN=VALUE, COLUMN!=VALUE or COLUMN~TEXT (contains; "
                        "case-insensitive), e.g. --where path~foot --where source=azh; repeatable"),
    p.add_argument("--safe-view", action="store_true", help="also the safe view's decision and reason per row"),
))
def cmd_show(a) -> int:
    from . import dataset
    from .gallery import where_rows

    ds = dataset.load(a.name)
    if a.errors:
        _print_table(ds.errors.head(a.limit), a.limit)
        return 0
    rows = where_rows(ds.images, a.where)
    df = ds.images.iloc[rows][["id", "path", "label", "split"]].copy()
    if a.safe_view:
        from .evidence import decide_dataset

        d = decide_dataset(ds).iloc[rows]
        df["shown"] = d["censored"].map({True: "censored", False: "raw"}).to_numpy()
        df["reason"] = d["reason"].to_numpy()
    df["id"] = df["id"].str[:16]
    _print_table(df.head(a.limit), a.limit)
    match = f"{len(rows)} of " if a.where else ""
    print(f"({match}{_n(len(ds.images), 'image')}, {_n(len(ds.errors), 'error')}; root {ds.root})")
    return 0


@verb("demo", "build the offline demo dataset from images shipped with installed packages")
@args_for(lambda p: (
    p.add_argument("--name", default="demo"),
    p.add_argument("--if-empty", action="store_true", help="only if the data home has no dataset yet"),
))
def cmd_demo(a) -> int:
    from . import dataset, demo

    if a.if_empty and dataset.list_names():
        return 0
    print(demo.build(a.name).summary())
    return 0


#: Imported by the pages' first run only inside functions (parquet tables, thumbnails, the map,
#: the vector index): loaded by :func:`preload_pages` too.
PRELOAD_LAZY = ("pyarrow.parquet", "PIL.Image", "plotly.graph_objects", "faiss")


def preload_pages(views) -> list[str]:
    """Import every module the page files in ``views`` import, and :data:`PRELOAD_LAZY`:
    ``python -m lib app`` calls it before the server listens, since Streamlit imports a page's
    modules on its first run, while the first visitor waits (pandas, plotly, lib: ~1-2 s here).

    Returns the names of the modules now loaded (``from lib.x import NAME`` also tries
    ``lib.x.NAME``, a module only when NAME is one).
    """
    import ast
    import importlib
    import logging
    from pathlib import Path

    import streamlit.runtime.caching.cache_data_api  # noqa: F401 (it sets its logger's level on import)

    # st.cache_data checks its parameters at import, and warns there is no runtime yet
    quiet = logging.getLogger("streamlit.runtime.caching.cache_data_api")
    names = set(PRELOAD_LAZY)
    for page in sorted(Path(views).glob("*.py")):
        for node in ast.walk(ast.parse(page.read_text(encoding="utf-8"), str(page))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    loaded, level = [], quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name in sorted(names):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:  # a name, not a module; or an optional library this host lacks
                continue
            loaded.append(name)
    finally:
        quiet.setLevel(level)
    return loaded


@verb("app", "open the app (what `make run` runs): `streamlit run app.py`, with every module its pages "
             "import loaded before the server listens, so the first visitor does not wait for them")
@args_for(lambda p: (
    p.add_argument("--port", type=int, default=8501),
    p.add_argument("--address", default=None, help="the address to listen on (default: every interface)"),
    p.add_argument("--headless", action="store_true", help="do not open a browser (other Streamlit settings: "
                   "STREAMLIT_* environment variables, e.g. STREAMLIT_BROWSER_GATHER_USAGE_STATS=false)"),
))
def cmd_app(a) -> int:
    import os
    from pathlib import Path

    app = Path(__file__).resolve().parents[1] / "app.py"
    if os.environ.get("WORKBENCH_HOME"):  # a relative data home means the caller's folder
        os.environ["WORKBENCH_HOME"] = str(Path(os.environ["WORKBENCH_HOME"]).expanduser().resolve())
    os.chdir(app.parent)  # Streamlit reads .streamlit/config.toml (loopback only, XSRF on) from here
    loaded = preload_pages(app.parent / "views")
    print(f"loaded {len(loaded)} modules the pages import", flush=True)
    import streamlit.delta_generator as dg
    from streamlit.web import cli as stcli

    # Streamlit's one-time "not run with `streamlit run`?" check walks the first page run's
    # whole stack with inspect.stack (0.5 s of the first visitor's wait at 1M rows); this is `streamlit run`
    if hasattr(dg, "_use_warning_has_been_displayed"):
        dg._use_warning_has_been_displayed = True
    sys.argv = ["streamlit", "run", str(app), "--server.port", str(a.port)]
    sys.argv += ["--server.address", a.address] if a.address else []
    sys.argv += ["--server.headless", "true"] if a.headless else []
    return stcli.main()  # serves until stopped; exits through SystemExit like `streamlit run`


# ---------------------------------------------------------------- embeddings


def _embed_args(p):
    p.add_argument("name")
    _model_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (0: decode inline)")
    p.add_argument("--shard-size", type=int, default=4096, help="vectors per cache shard")
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 | bf16-cast")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (with --engine ray)")


@verb("embed", "embed a dataset into the content-addressed cache (computes only what is missing)")
@args_for(_embed_args)
def cmd_embed(a) -> int:
    kwargs = dict(batch_size=a.batch_size, workers=a.workers, shard_size=a.shard_size)
    if a.engine == "ray":  # the Ray workers resolve the spec themselves, each on its own device
        from . import distributed

        report = distributed.embed_ray(a.name, a.model, address=a.address, device=a.device, precision=a.precision,
                                       random_weights=a.random_weights, **kwargs)
    else:
        from . import embeddings

        report = embeddings.embed(a.name, _model(a, device=a.device, precision=a.precision),
                                  progress=sys.stderr.isatty(), **kwargs)
    print(report.summary())
    for _path, reason in report.errors[:30]:
        print(f"  error: {reason}")
    return 0


def _index_args(p):
    p.add_argument("name")
    p.add_argument("--models", default="color", metavar="SPEC[,SPEC]",
                   help="comma-separated model specs to embed with (default: color)")
    p.add_argument("--random-weights", action="store_true",
                   help="build the architectures with seeded random weights (not color's; tests and benchmarks only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (0: decode inline)")
    p.add_argument("--shard-size", type=int, default=4096, help="vectors per cache shard")
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 | bf16-cast")
    p.add_argument("--reduce-on-decode", action="store_true",
                   help="give the models the JPEGs reduced on decode (DCT scaling to 256 px) instead of decoding "
                        "large JPEGs again at full size: faster, vectors not quite `embed`'s (cosine >= 0.999)")
    p.add_argument("--tta", action="store_true",
                   help="also embed the 7 flips / rotations of every image with every model (the detector's "
                        "test-time augmentation views, what `predict --tta` reads): 8 forward passes an image")


@verb("index", "one decode per image, every signal: embeddings of --models, EB fractions, perceptual hashes, "
               "image statistics (computes only what the caches lack)")
@args_for(_index_args)
def cmd_index(a) -> int:
    from .errors import WorkbenchError
    from .signals import index

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not models:
        raise WorkbenchError(f"--models {a.models!r} names no model; give e.g. --models color,clip-b32")
    if a.batch_size < 1:
        raise WorkbenchError(f"--batch-size {a.batch_size} must be at least 1")
    report = index(a.name, models, random_weights=a.random_weights, batch_size=a.batch_size, workers=a.workers,
                   shard_size=a.shard_size, device=a.device, precision=a.precision,
                   reduce_on_decode=a.reduce_on_decode, tta=a.tta, progress=sys.stderr.isatty())
    print(report.summary())
    for _path, reason in report.errors[:30]:
        print(f"  error: {reason}")
    return 0


@verb("neighbors", "print the nearest neighbours of an image (by id or by file)")
@args_for(lambda p: (
    p.add_argument("name"),
    _model_args(p),
    p.add_argument("--id", help="content id or a unique prefix of it"),
    p.add_argument("--image", help="an image file (embedded with the model)"),
    p.add_argument("--k", type=int, default=10),
    p.add_argument("--index", default="auto", help="auto | flat | hnsw | ivf"),
))
def cmd_neighbors(a) -> int:
    from .errors import WorkbenchError
    from .neighbors import neighbours, neighbours_of_image, open_space

    if bool(a.id) == bool(a.image):
        raise WorkbenchError("give exactly one of --id ID or --image FILE")
    model = _model(a)
    space = open_space(a.name, model, index_kind=a.index)
    if a.id:
        row = space.row_of(space.dataset.resolve_id(a.id))
        df = neighbours(space, row, a.k)
        q = space.dataset.images.iloc[row]
        print(f"query {q['id'][:16]}  label={q['label']}  {q['path']}")
    else:
        from .images import open_image

        df = neighbours_of_image(space, model.backend, open_image(a.image), a.k)
        print(f"query {a.image}")
    df = df.assign(id=df["id"].str[:16], score=df["score"].round(4))
    _print_table(df[["rank", "score", "id", "label", "path"]], a.k)
    return 0


@verb("models", "list model spec aliases and the caches present")
def cmd_models(a) -> int:
    import json

    from . import config
    from .models import aliases

    for k, v in aliases().items():
        print(f"{k:16s} {v}")
    emb = config.cache_dir() / "emb"
    if emb.exists():
        print("\ncaches:")
        for d in sorted(emb.iterdir()):
            info = json.loads((d / "model.json").read_text()) if (d / "model.json").exists() else {}
            n = sum(json.loads(p.read_text())["n"] for p in (d / "shards").glob("*.json")) \
                if (d / "shards").exists() else 0
            print(f"  {d.name}  {info.get('spec', '?'):50s} dim={info.get('dim', '?')}  vectors={n}")
    return 0


# ---------------------------------------------------------------- zero-shot and retrieval


def _zeroshot_args(p):
    p.add_argument("name")
    _model_args(p)
    p.add_argument("--classes", default="medgore",
                   help="a shipped class set (medgore, medgore-descriptive, modality, body_region), "
                        "a JSON file (format: lib/prompts/README.md) or a comma-separated list of names")
    p.add_argument("--templates", default=None,
                   help="a shipped template set (generic, histopathology, plain, modality, body_region), "
                        "a JSON file or one template containing {c}; default: the class set's own, else generic")
    p.add_argument("--label-col", default=None,
                   help="dataset column holding the truth (default: the class set's, usually 'label')")
    p.add_argument("--positive", default=None,
                   help="the positive class of a two-class set (default: the set's own, e.g. Blur for medgore)")
    p.add_argument("--out", default=None, help="predictions parquet (default: <home>/results/NAME/zeroshot-...)")
    _add_slice_arg(p)


@verb("zeroshot", "classify a dataset zero-shot from class names and prompt templates (needs a text tower)")
@args_for(_zeroshot_args)
def cmd_zeroshot(a) -> int:
    import pandas as pd

    from .zeroshot import prompts_for, run_zeroshot

    res = run_zeroshot(a.name, _model(a), classes=a.classes, templates=a.templates, label_column=a.label_col,
                       out=a.out, positive=a.positive)
    per_class = {c: len(p) for c, p in prompts_for(res.classes, res.templates).items()}
    print(f"{a.name} x {a.model}: {_n(len(res.predictions), 'image')}; classes {', '.join(res.classes.classes)} "
          f"({res.classes.name}); templates {res.templates.name} "
          f"({min(per_class.values())}-{max(per_class.values())} prompts per class)")
    counts = res.predictions["pred"].value_counts().reindex(list(res.classes.classes), fill_value=0)
    _print_table(pd.DataFrame({"class": counts.index, "predicted": counts.to_numpy()}))
    if res.metrics is None:
        print(f"\nno value of column {a.label_col or res.classes.label_column!r} maps to these classes: no metrics")
    else:
        extra = f", {res.n_unmapped} with values outside the classes left out" if res.n_unmapped else ""
        pos = f"; positive class {res.positive}" if res.positive else ""
        print(f"\nmetrics on {res.n_scored} labelled images{extra}{pos}:")
        _print_table(res.metrics_table().assign(value=lambda d: d["value"].astype(float).round(4)))
        print("\nconfusion (rows: truth, columns: predicted):")
        print(res.confusion.to_string())
        if "score" in res.predictions.columns:
            _print_slices(a.name, res.predictions, a.slice_col, "truth", "score", res.positive)
    print(f"\npredictions: {res.path}")
    return 0


def _retrieve_args(p):
    p.add_argument("name")
    _model_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text query (needs a text tower)")
    what.add_argument("--image", help="an image file (embedded with the model)")
    what.add_argument("--id", help="content id (or unique prefix) of a dataset image")
    what.add_argument("--eval", action="store_true", help="Recall@K on the dataset's (image, caption) pairs")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--index", default="auto", help="auto | flat | hnsw | ivf")
    p.add_argument("--group-col", default=None, help="with --eval: also report per value of this column")
    p.add_argument("--gallery", choices=["pooled", "group"], default="pooled",
                   help="with --eval --group-col: search the whole gallery or only the group's")
    p.add_argument("--ks", default="1,5,10,50,200", help="with --eval: K values")
    p.add_argument("--beyond-gallery", choices=["one", "nan"], default="one",
                   help="with --eval: Recall@K where K >= gallery size is 1.0 (one) or reported as NaN")
    p.add_argument("--out", default=None, help="CSV to write (default for --eval: <home>/results/NAME/)")


@verb("retrieve", "search a dataset by text, image or id, or evaluate caption retrieval (Recall@K)")
@args_for(_retrieve_args)
def cmd_retrieve(a) -> int:
    from . import retrieval
    from .errors import WorkbenchError

    if a.eval:
        try:
            ks = [int(k) for k in a.ks.split(",") if k.strip()]
        except ValueError:
            raise WorkbenchError(f"--ks must be comma-separated integers, got {a.ks!r}") from None
        res = retrieval.run_retrieval_eval(a.name, _model(a), a.group_col, ks=ks, pooled=a.gallery == "pooled",
                                           beyond_gallery=a.beyond_gallery, out=a.out)
        print(f"{a.name} x {a.model}: {_n(res.pairs, '(image, caption) pair')}, {_n(res.skipped, 'row')} without "
              f"caption; "
              f"gallery {'pooled' if res.pooled else 'per group'}")
        recall_cols = [c for c in res.table.columns if "_R" in c]
        _print_table(res.table.round({c: 4 for c in recall_cols}))
        print(f"\ntable: {res.path}")
        return 0

    from .neighbors import open_space

    model = _model(a)
    if a.id:
        space = open_space(a.name, model, index_kind=a.index)
        row = space.row_of(space.dataset.resolve_id(a.id))
        df = retrieval.image_to_image(space, None, row, a.k)
        q = space.dataset.images.iloc[row]
        print(f"query {q['id'][:16]}  label={q['label']}  {q['path']}")
    else:
        from .embeddings import embed

        backend = model.backend
        if a.text is not None:
            from .zeroshot import require_text

            require_text(backend, "text search")  # before embedding a whole dataset for nothing
        embed(a.name, model)
        space = open_space(a.name, model, index_kind=a.index)
        if a.text is not None:
            df = retrieval.text_to_image(space, backend, a.text, a.k)
            print(f"query text: {a.text!r}")
        else:
            df = retrieval.image_to_image(space, backend, a.image, a.k)
            print(f"query {a.image}")
    if a.out:
        from .files import write_table

        write_table(a.out, df)
    df = df.assign(id=df["id"].str[:16], score=df["score"].round(4))
    _print_table(df[["rank", "score", "id", "label", "path"]], a.k)
    return 0


# ---------------------------------------------------------------- analyses: expansion, probes, comparison, maps


def _result_path(a, filename: str):
    """``--out`` if given, else ``<home>/results/<dataset>/<filename>``."""
    from .files import result_path

    return result_path(a.name, filename, getattr(a, "out", None))


def _seed_args(p, default_per_class=None):
    p.add_argument("--seeds", default=None,
                   help="seed file: CSV/parquet with columns id (or a unique prefix) and label, or JSON {label: [ids]}")
    p.add_argument("--seeds-from-labels", "--seeds-per-class", dest="seeds_per_class", type=int,
                   default=default_per_class, metavar="N",
                   help="draw N seeds per dataset label at random (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the seed draw")
    p.add_argument("--k", type=int, default=99, help="neighbours per seed")
    p.add_argument("--rule", default="best_rank", choices=["best_rank", "majority", "drop"],
                   help="label of an image reached by seeds of several classes (seeds keep theirs)")
    p.add_argument("--index", default="auto", help="auto | flat | hnsw | ivf")


def _expansion(a):
    from .errors import WorkbenchError
    from .expansion import expand, read_seeds, seeds_from_labels
    from .neighbors import open_space

    space = open_space(a.name, _model(a), index_kind=a.index)
    if a.seeds:
        seeds = read_seeds(a.seeds, space.dataset)
    elif a.seeds_per_class:
        seeds = seeds_from_labels(space.dataset, a.seeds_per_class, seed=a.seed)
    else:
        raise WorkbenchError("give --seeds FILE or --seeds-from-labels N")
    return space, seeds, expand(space, seeds, k=a.k, rule=a.rule)


@verb("expand", "MedGore seed expansion: label the k nearest neighbours of seed images with the seed's class")
@args_for(lambda p: (
    p.add_argument("name"), _model_args(p), _seed_args(p),
    p.add_argument("--out", default=None,
                   help="expansion folder (default: <home>/results/NAME/expansion-<model>-k<k>-<rule>-<seeds>/, "
                        "which the app's Expand page lists)"),
))
def cmd_expand(a) -> int:
    from .expansion import expansion_name, save_expansion

    space, seeds, res = _expansion(a)
    name = expansion_name(a.model, a.k, a.rule, seeds, a.random_weights)
    origin = f"file:{a.seeds}" if a.seeds else f"labels:{a.seeds_per_class}/seed{a.seed}"
    saved = save_expansion(res, a.name, name, {"spec": a.model, "random_weights": bool(a.random_weights),
                                               "fingerprint": space.emb.fingerprint, "origin": origin},
                           path=a.out)
    print(f"{a.name} x {a.model}: {_n(len(res.seeds), 'seed')}, k={a.k}, rule={a.rule}: "
          f"{_n(res.labelled['label'].notna().sum(), 'labelled image')}, {_n(len(res.conflicts), 'conflict')}")
    _print_table(res.counts.round({"share_unique": 4}))
    if len(res.conflicts):
        print(f"\nconflicts (images reached by several classes; first 20 of {len(res.conflicts)}):")
        _print_table(res.conflicts.head(20).assign(id=lambda d: d["id"].str[:16]), 20)
    print(f"\nwritten: {saved.path} (expansion {saved.name}; the app's Expand page opens it)")
    return 0


@verb("homogeneity", "share of seed neighbours that keep the seed's class, per band of ranks (Beta estimate)")
@args_for(lambda p: (
    p.add_argument("name"), _model_args(p), _seed_args(p, default_per_class=10),
    p.add_argument("--band", type=int, default=20, help="ranks per band"),
    p.add_argument("--truth", default=None,
                   help="CSV/parquet with id (or image_id) and label of the judged neighbours "
                        "(default: the dataset's labels)"),
    p.add_argument("--figure", default=None, help="also write the plotly figure to this .html file"),
    p.add_argument("--out", default=None, help="table CSV (default: <home>/results/NAME/homogeneity-...)"),
))
def cmd_homogeneity(a) -> int:
    import pandas as pd

    from .expansion import dataset_truth, homogeneity, homogeneity_figure, read_seeds

    space, _, res = _expansion(a)
    if a.truth:
        pairs = read_seeds(a.truth, space.dataset)  # same format: id + label
        truth = pd.Series({i: lab for lab, ids in pairs.items() for i in ids}, name="truth")
    else:
        truth = dataset_truth(space.dataset)
    from .files import slug, write_table

    table = homogeneity(res, truth, band_width=a.band)
    path = _result_path(a, f"homogeneity-{slug(a.model)}-k{a.k}-b{a.band}.csv")
    write_table(path, table)
    print(f"{a.name} x {a.model}: {_n(len(res.seeds), 'seed')}, k={a.k}, bands of {_n(a.band, 'rank')}; "
          f"truth: {a.truth or 'dataset labels'}")
    _print_table(table.drop(columns=["band", "rank_lo", "rank_hi"]).round({"mean": 4, "sd": 4}), 100)
    if a.figure:
        from .files import write_text

        write_text(a.figure, homogeneity_figure(table).to_html())
        print(f"figure: {a.figure}")
    print(f"table: {path}")
    return 0


@verb("probe", "linear probe (standardised logistic regression) on image, caption or both embeddings")
@args_for(lambda p: (
    p.add_argument("name"), _model_args(p),
    p.add_argument("--input", default="image", choices=["image", "text", "both"],
                   help="image embeddings, caption embeddings (text tower) or both concatenated"),
    p.add_argument("--folds", type=int, default=5, help="stratified k-fold cross-validation"),
    p.add_argument("--split", action="store_true",
                   help="train on split=train, test on split=test instead of cross-validating; training images "
                        "that are near-duplicates of a test image (perceptual hash) are left out"),
    p.add_argument("--keep-near-duplicates", action="store_true",
                   help="with --split: keep near-duplicates of test images in training"),
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength"),
    p.add_argument("--class-weight", default=None, choices=["balanced"], help="reweight classes"),
    p.add_argument("--seed", type=int, default=0),
    _positive_arg(p),
    p.add_argument("--out", default=None, help="predictions parquet (default: <home>/results/NAME/probe-...)"),
    _add_slice_arg(p),
))
def cmd_probe(a) -> int:
    import pandas as pd

    from .probe import default_path, run_probe

    exclude = None
    if a.split and not a.keep_near_duplicates:
        from .quality import split_exclusions

        exclude = split_exclusions(a.name)
    res = run_probe(a.name, _model(a), a.input, folds=a.folds, use_split=a.split, C=a.C, class_weight=a.class_weight,
                    seed=a.seed, positive=a.positive, exclude_ids=exclude)
    paths = res.save(a.out or default_path(a.name, a.model, a.input))
    left = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in res.dropped.items() if v) or "none"
    pos = f"; positive class {res.positive}" if res.positive is not None else ""
    print(f"{a.name} x {a.model} ({a.input}, {res.mode}): {_n(len(res.predictions), 'image')}, "
          f"{_n(res.n_features, 'feature')}; left out: {left}{pos}")
    keys = ["n", "accuracy", "roc_auc", "average_precision", "f1_macro", "double_f1", "precision", "recall"]
    m = res.metrics
    _print_table(pd.DataFrame({"metric": [k for k in keys if k in m],
                               "value": [round(float(m[k]), 4) for k in keys if k in m]}))
    if "score" in res.predictions.columns:
        _print_slices(a.name, res.predictions, a.slice_col, "label", "score", res.positive)
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


@verb("compare", "compare models on a dataset: probe metrics, agreement, score correlation, Jaccard@k")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--models", required=True, help="comma-separated model specs (at least two)"),
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights for every model that has weights (tests and benchmarks only)"),
    p.add_argument("--k", type=int, default=10, help="neighbours for the Jaccard@k overlap"),
    p.add_argument("--task", default="probe", choices=["probe", "none"],
                   help="probe: also cross-validated probe metrics per model; none: neighbourhoods only"),
    p.add_argument("--input", default="image", choices=["image", "text", "both"]),
    p.add_argument("--folds", type=int, default=5),
    _positive_arg(p),
    p.add_argument("--out", default=None, help="output folder (default: <home>/results/NAME/)"),
))
def cmd_compare(a) -> int:
    from pathlib import Path

    from .compare import compare_models, resolve_all

    models = resolve_all([s.strip() for s in a.models.split(",") if s.strip()], a.random_weights)
    specs = [m.spec for m in models]
    res = compare_models(a.name, models, a.k, task=a.task, input=a.input, folds=a.folds, positive=a.positive)
    from .files import results_dir, slug

    folder = Path(a.out) if a.out else results_dir(a.name)
    paths = res.save(folder, prefix="compare-" + "-vs-".join(slug(s) for s in specs)[:150])
    if len(res.metrics):
        cols = [c for c in ("model", "n", "accuracy", "roc_auc", "average_precision", "f1_macro", "double_f1")
                if c in res.metrics]
        print("probe metrics:")
        _print_table(res.metrics[cols].round(4))
        print(f"\n{len(res.disagreements)} of {_n(len(res.agreement), 'image')} with differing predictions")
    if len(res.correlation):
        print("\nscore rank correlation:")
        _print_table(res.correlation.round(4))
    print(f"\nneighbourhood overlap (Jaccard@{a.k}):")
    _print_table(res.overlap.round(4))
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


@verb("project", "2-D map of a model's embeddings (UMAP, cached; or PCA, instant)")
@args_for(lambda p: (
    p.add_argument("name"), _model_args(p),
    p.add_argument("--method", default="umap", choices=["umap", "pca"]),
    p.add_argument("--n-neighbors", type=int, default=15),
    p.add_argument("--min-dist", type=float, default=0.1),
    p.add_argument("--seed", type=int, default=0),
    p.add_argument("--out", default=None, help="coordinates parquet (default: <home>/results/NAME/project-...)"),
))
def cmd_project(a) -> int:
    from .files import slug, write_table
    from .projection import project_dataset

    kwargs = {"seed": a.seed} if a.method == "pca" else \
        {"n_neighbors": a.n_neighbors, "min_dist": a.min_dist, "seed": a.seed}
    df = project_dataset(a.name, _model(a), a.method, **kwargs)
    path = _result_path(a, f"project-{slug(a.model)}-{a.method}.parquet")
    write_table(path, df)
    print(f"{a.name} x {a.model}: {_n(len(df), 'point')} ({a.method})")
    summary = df.groupby(df["label"].fillna("(none)"))[["x", "y"]].agg(["count", "mean", "std"]).round(3)
    summary.columns = [f"{c}_{s}" for c, s in summary.columns]
    _print_table(summary.reset_index())
    print(f"coordinates: {path}")
    return 0


def _positive_arg(p) -> None:
    p.add_argument("--positive", default=None,
                   help="the label counted as positive in binary metrics (default: the one the dataset's label "
                        "policy calls sensitive, e.g. sensitive or Blur)")


def _add_slice_arg(p) -> None:
    p.add_argument("--slice-col", default=None,
                   help="also report every metric per value of this metadata column (source, modality, "
                        "skin tone...), with per-slice counts and the worst group")


def _print_slices(name: str, df, slice_col: str | None, truth_col: str, score_col: str, positive) -> None:
    """Metrics of ``df`` (rows of dataset ``name``, matched by row or path) per value of ``slice_col``."""
    if not slice_col:
        return
    from . import dataset
    from .errors import WorkbenchError
    from .metrics import sliced_metrics

    images = dataset.load(name).images
    if slice_col not in images.columns:
        raise WorkbenchError(f"dataset {name!r} has no column {slice_col!r} (columns: {', '.join(images.columns)})")
    if "row" in df.columns:
        groups = images[slice_col].to_numpy()[df["row"].to_numpy()]
    else:
        groups = df["path"].map(dict(zip(images["path"], images[slice_col], strict=True))).to_numpy()
    sub = df.assign(**{"_slice": groups}).dropna(subset=[truth_col, score_col])
    table = sliced_metrics(sub, "_slice", truth_col, score_col, positive=positive)
    table = table.rename(columns={"slice": slice_col})
    print(f"\nper {slice_col} (positive class {positive}):")
    _print_table(table.round(4), 60)


# ---------------------------------------------------------------- colour evidence


def _auc_rows(df, label_col: str, columns, positive: str | None, policy=None):
    """ROC AUC of each score column against a binary label column (rows with NaN skipped);
    the positive class is ``positive``, else the one the label policy calls sensitive."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from .errors import WorkbenchError
    from .probe import default_positive

    labels = df[label_col].dropna().unique().tolist()
    if positive is not None and positive not in labels:
        raise WorkbenchError(f"--positive {positive!r} is not a label of this dataset ({', '.join(map(str, labels))})")
    if len(labels) != 2:
        return pd.DataFrame()
    pos = positive if positive is not None else default_positive(sorted(labels), policy)
    rows = []
    for col in columns:
        ok = df[label_col].notna() & np.isfinite(df[col].astype(float))
        y = (df.loc[ok, label_col] == pos).to_numpy()
        rows.append({"score": col, "positive": pos, "n": int(ok.sum()),
                     "auc": float(roc_auc_score(y, df.loc[ok, col])) if 0 < y.sum() < len(y) else float("nan")})
    return pd.DataFrame(rows)


@verb("scores", "MedGore EB colour scores (blood-like, skin-like fractions, z-scores, EB)")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--reference-split", help="z-score against the rows of this split only"),
    _positive_arg(p),
    p.add_argument("--workers", type=int, default=None),
    p.add_argument("--out", help="output parquet/CSV (default: data/results/NAME/eb_scores.parquet)"),
    _add_slice_arg(p),
))
def cmd_scores(a) -> int:
    from . import colorscore, dataset

    ds = dataset.load(a.name)
    ref = (ds.images["split"] == a.reference_split).to_numpy() if a.reference_split else None
    df = colorscore.score_dataset(ds, reference=ref, workers=a.workers)
    from .files import result_path, write_table

    out = result_path(a.name, "eb_scores.parquet", a.out)
    write_table(out, df)
    print(f"EB scores of {_n(len(df), 'image')} ({int(df['error'].notna().sum())} unreadable) -> {out}")
    if ds.has_labels:
        summary = df.groupby("label")[["blood", "skin", "eb"]].agg(["mean", "median"]).round(3)
        summary.columns = [f"{a_}_{b}" for a_, b in summary.columns]
        _print_table(summary.reset_index())
        from .sensitivity import load_policy

        aucs = _auc_rows(df, "label", ["eb", "blood", "skin"], a.positive, load_policy(a.name))
        if len(aucs):
            print()
            _print_table(aucs.round(4))
            _print_slices(a.name, df.assign(row=range(len(df))), a.slice_col, "label", "eb",
                          aucs["positive"].iloc[0])
    return 0


@verb("censor-eval", "IoU of the colour (blood-like) mask against ground-truth masks")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--mask-col", default="mask"),
    p.add_argument("--group-col", default="source", help="report the mean IoU per value of this column"),
    p.add_argument("--no-clean", action="store_true", help="skip median filter + closing/opening"),
    p.add_argument("--out"),
))
def cmd_censor_eval(a) -> int:
    from . import dataset, safety

    ds = dataset.load(a.name)
    df = safety.mask_iou_dataset(ds, mask_col=a.mask_col, clean=not a.no_clean)
    from .files import result_path, write_table

    out = result_path(a.name, "mask_iou.parquet", a.out)
    write_table(out, df)
    print(f"colour-mask IoU on {_n(len(df), 'image')} with masks -> {out}")
    group = a.group_col if a.group_col in df.columns else None
    table = (df.groupby(group)["iou"] if group else df[["iou"]].assign(all="all").groupby("all")["iou"])
    _print_table(table.agg(["count", "mean", "median"]).round(4).reset_index())
    print(f"overall mean IoU {df['iou'].mean():.4f} (median {df['iou'].median():.4f})")
    return 0


# ---------------------------------------------------------------- annotation workflow: export


def _export_args(p):
    p.add_argument("name", help="dataset the expansion was run on")
    p.add_argument("--format", default=None, choices=["csv", "jsonl", "imagefolder", "fiftyone", "manifest"],
                   help="export the dataset's images and annotations in a format other tools read (a folder "
                        "with a README.md): csv/jsonl of labels and consensus, a Hugging Face imagefolder, a "
                        "FiftyOne image classification dataset, or a manifest ingest reads back")
    p.add_argument("--labels", default=None, metavar="SET",
                   help="with --format: the label set to export (default: Blur/Maybe/Ok)")
    p.add_argument("--only-reviewed", action="store_true", help="with --format: only images someone labelled")
    p.add_argument("--relative", action="store_true",
                   help="with --format: paths relative to the dataset root (default: absolute)")
    p.add_argument("--expansion", default=None,
                   help="export an expanded, reviewed label set instead: a saved expansion's name "
                        "(results/NAME/expansion-<name>/), its folder, or a parquet written by the expand verb")
    p.add_argument("--out", default=None,
                   help="with --format: the export folder (default <home>/results/NAME/export-FORMAT-SET/); with "
                        "--expansion: a manifest .csv or .parquet (default: inside the expansion's folder)")
    band = p.add_mutually_exclusive_group()
    band.add_argument("--first-n", type=int, default=None, help="only images reached at ranks 1..N")
    band.add_argument("--last-n", type=int, default=None, help="only images reached at ranks k-N+1..k")
    p.add_argument("--no-seeds", action="store_true", help="leave the seeds out")
    p.add_argument("--reviews", default="consensus",
                   help="whose review labels override inherited ones: consensus (resolved, else agreeing), "
                        "an annotator name, or none")
    p.add_argument("--keep-unresolved", action="store_true",
                   help="keep images whose review is undecided (Maybe, disagreement) with their inherited label")
    p.add_argument("--val-frac", type=float, default=0.1, help="validation share per label (seeded)")
    p.add_argument("--test-frac", type=float, default=0.0, help="test share per label (seeded)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split")
    p.add_argument("--keep-columns", default="", help="comma-separated dataset columns to copy, e.g. source,mask")
    p.add_argument("--absolute", action="store_true", help="absolute paths instead of paths relative to the root")
    p.add_argument("--as", dest="as_name", default=None, help="dataset name shown in the ingest command")


@verb("export", "export an expanded, reviewed label set as a manifest (path,label,split + provenance) to ingest")
@args_for(_export_args)
def cmd_export(a) -> int:
    from . import dataset, expansion, workflow
    from .annotations import AnnotationStore
    from .errors import WorkbenchError

    ds = dataset.load(a.name)
    if bool(a.format) == bool(a.expansion):
        raise WorkbenchError("give --format FORMAT (images and annotations) or --expansion NAME (a reviewed "
                             "expansion as a manifest)")
    if a.format:
        from . import exports
        from .files import result_path

        out = a.out or result_path(a.name, f"export-{a.format}-{a.labels or 'safety'}")
        folder = exports.export(ds, AnnotationStore(), out, a.format, label_set=a.labels,
                                only_reviewed=a.only_reviewed, relative=a.relative)
        print((folder / "README.md").read_text())
        print(f"written: {folder}")
        return 0
    saved = expansion.load_expansion(a.name, a.expansion)
    reviews = None if a.reviews.lower() == "none" else expansion.review_labels(AnnotationStore(), a.name, a.reviews)
    keep = [c.strip() for c in a.keep_columns.split(",") if c.strip()]
    manifest = workflow.export_table(
        ds, saved, reviews=reviews, first_n=a.first_n, last_n=a.last_n, include_seeds=not a.no_seeds,
        unresolved="keep" if a.keep_unresolved else "drop", val_frac=a.val_frac, test_frac=a.test_frac,
        seed=a.seed, keep_columns=keep, absolute=a.absolute)
    if manifest.empty:
        raise workflow.WorkflowError("the export is empty: nothing is labelled with these options")
    path = workflow.write_manifest(manifest, a.out or workflow.default_export_path(saved, a.first_n, a.last_n))
    print(f"{a.name} / {saved.name}: {_n(len(manifest), 'image')} exported "
          f"(reviews: {a.reviews}; undecided reviews {'kept' if a.keep_unresolved else 'dropped'})")
    _print_table(workflow.export_summary(manifest))
    print(f"\nwritten: {path}\ningest it with:\n  "
          f"{workflow.ingest_command(path, a.as_name or f'{a.name}-expanded', ds.root)}")
    return 0


# ---------------------------------------------------------------- detectors: train, predict, suggest (lib/detector.py)


def _detector_train_args(p) -> None:
    from .detector import RULES, VAL_FRAC

    p.add_argument("names", nargs="+", metavar="NAME", help="dataset(s) whose labels train the detector")
    _model_args(p)
    p.add_argument("--detector", required=True, metavar="DET", help="name to save the detector under")
    p.add_argument("--labels", default=None, metavar="FILE.csv",
                   help="label file: 'label' and 'id' (or a unique id prefix) or 'path'; it wins over dataset labels")
    p.add_argument("--from-annotations", action="store_true",
                   help="also the annotation store's reviews (Ok safe, Blur sensitive; Maybe left out)")
    p.add_argument("--no-dataset-labels", action="store_true", help="leave the datasets' own labels out")
    p.add_argument("--val-frac", type=float, default=VAL_FRAC, help="validation share, stratified (default 0.2)")
    p.add_argument("--keep-near-duplicates", action="store_true",
                   help="keep training images that are near-duplicates of a validation image (left out by default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and the calibration folds")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength")
    p.add_argument("--calibration", default="sigmoid", choices=["sigmoid", "isotonic"])
    p.add_argument("--screening", default="R95", choices=list(RULES),
                   help="the operating point that clears images (default R95: 95%% validation recall)")
    p.add_argument("--positive", default=None, metavar="LABEL",
                   help="this label value is the sensitive class and every other one safe (default: each "
                        "dataset's label policy decides)")


def _print_thresholds(det) -> None:
    from .detector import RECALL_RULES

    t = det.thresholds()
    t = t.assign(rule=[("* " if s else "  ") + r for r, s in zip(t["rule"], t["screening"], strict=True)])
    print("\nthresholds on the whole validation split (* the screening rule):")
    _print_table(t[["rule", "threshold", "precision", "recall", "specificity", "f1", "double_f1", "flagged"]].round(4))
    scr = det.meta["screening"]
    rule = scr["rule"]
    k = scr.get("min_group_positives")
    if rule in RECALL_RULES:
        by = f"group {scr['set_by']}" if scr.get("set_by") else "the whole validation split (no group needs lower)"
        print(f"\nscreening threshold: min over groups of {rule} = {det.threshold:.4f}, set by {by}; "
              f"overall {rule} {scr.get('overall_threshold', det.threshold):.4f}, a group counts with >= {k} "
              "sensitive validation images")
    else:
        print(f"\nscreening threshold: {rule} over the whole validation split = {det.threshold:.4f} "
              "(not a recall target of its own: no group lowers it)")
    g = det.group_metrics().rename(columns={"rule_threshold": f"own {rule}", "recall_overall": f"recall at overall {rule}"})
    print("worst-group table, validation at the screening threshold (group: dataset, refined by its source column; "
          f"counts: holds its own {rule}):")
    _print_table(g.round(4))


@verb("train", "train a detector (calibrated logistic regression) on labelled embeddings of one or more datasets")
@args_for(_detector_train_args)
def cmd_train(a) -> int:
    import pandas as pd

    from . import detector

    det, labels = detector.train(
        a.names, a.model, a.detector, random_weights=a.random_weights, labels_file=a.labels,
        from_annotations=a.from_annotations, dataset_labels=not a.no_dataset_labels, val_frac=a.val_frac,
        seed=a.seed, C=a.C, calibration=a.calibration, screening=a.screening,
        near_duplicates=not a.keep_near_duplicates, positive=a.positive)
    print(f"detector {a.detector!r}: {a.model} on {', '.join(a.names)}")
    print("\nlabels per source (each distinct image once; file > reviews > dataset labels):")
    _print_table(labels.counts)
    for line in labels.notes():
        print(f"note: {line}")
    s, v = det.meta["split"], det.meta["validation"]
    print(f"\nsplit: {s['n_train']} training, {s['n_val']} validation images (seed {s['seed']}); "
          f"calibration {det.meta['classifier']['calibration']}")
    if s.get("near_duplicates_dropped") is not None:
        print(f"{s['near_duplicates_dropped']} near-duplicate(s) of validation images (perceptual hash) left out of "
              "training (--keep-near-duplicates keeps them)")
    rows = [("AUC", v["auc"]), ("AP", v["ap"]), ("Double F1 at screening", v["double_f1"]),
            ("recall at screening", v["recall"]), ("specificity at screening", v["specificity"]),
            ("unfamiliar share", v["unfamiliar_rate"])]
    print("validation metrics:")
    _print_table(pd.DataFrame({"metric": [r[0] for r in rows], "value": [round(float(r[1]), 4) for r in rows]}))
    _print_thresholds(det)
    print(f"\nunfamiliar beyond cosine distance {det.cut:.4f} to the nearest training image "
          f"({det.meta['familiarity']['percentile']:g}th percentile of leave-one-out distances, "
          f"{det.meta['familiarity']['index']} index)")
    note = detector.familiarity_text(det.meta)
    if note:
        print(f"note: {note}")
    print(f"saved: {detector.detector_dir(a.detector)}")
    return 0


def _print_detector_slices(name: str, table, truth, slice_col: str | None, threshold: float) -> None:
    if not slice_col:
        return
    from . import dataset
    from .errors import WorkbenchError
    from .metrics import sliced_metrics

    images = dataset.load(name).images
    if slice_col not in images.columns:
        raise WorkbenchError(f"dataset {name!r} has no column {slice_col!r} (columns: {', '.join(images.columns)})")
    sub = table.assign(_slice=images[slice_col].to_numpy(), truth=truth.to_numpy()).dropna(subset=["truth"])
    out = sliced_metrics(sub, "_slice", "truth", "p", positive="sensitive", threshold=threshold)
    print(f"\nper {slice_col} (positive class sensitive, at the screening threshold {threshold:.4f}):")
    _print_table(out.rename(columns={"slice": slice_col}).round(4), 60)


@verb("predict", "screen a dataset with a detector: p, sensitive, uncertain, unfamiliar per image")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--detector", required=True, metavar="DET"),
    p.add_argument("--out", default=None, metavar="FILE.csv", help="also write the table here (CSV or parquet)"),
    p.add_argument("--tta", dest="tta", action="store_true", default=None,
                   help="compute the 7 flips / rotations (uncertain) even for a costly model (on by default for color)"),
    p.add_argument("--no-tta", dest="tta", action="store_false", help="leave the flips / rotations out"),
    _add_slice_arg(p),
    _positive_arg(p),
))
def cmd_predict(a) -> int:
    from pathlib import Path

    import pandas as pd

    from . import detector
    from .files import write_table

    det = detector.load(a.detector)
    progress = None
    if sys.stderr.isatty():
        def progress(done, total):
            print(f"\rflips and rotations: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
    table = detector.predict(a.name, det, tta=a.tta, progress=progress)
    path = detector.prediction_path(a.name, det.name)
    print(f"{a.name} screened by {det.name!r} ({det.spec}; screening threshold p >= {det.threshold:.4f}, "
          f"rule {det.meta['screening']['rule']}): {_n(len(table), 'image')}")
    _print_table(detector.screen_counts(table).round({"share": 4}))
    truth = detector.dataset_truth(a.name, a.positive)
    known = truth.notna().to_numpy()
    if known.any():
        t = table[known].assign(truth=truth[known].to_numpy()).drop_duplicates("id")
        unc = t["uncertain"].fillna(False).astype(bool).to_numpy() if t["uncertain"].notna().any() else None
        m = detector.evaluate(t["truth"].eq("sensitive").to_numpy(), t["p"].to_numpy(), det.threshold,
                              t["unfamiliar"].to_numpy(bool), unc)
        keys = ["n", "sensitive", "safe", "auc", "ap", "recall", "specificity", "safe_cleared", "sensitive_cleared"]
        pos = f"positive class {a.positive!r}, every other label safe" if a.positive else "classes by its label policy"
        print(f"\nagainst the dataset's labels ({m['n']} labelled distinct images; {pos}):")
        _print_table(pd.DataFrame({"metric": keys, "value": [
            str(m[k]) if isinstance(m[k], int) else f"{m[k]:.4f}" for k in keys]}))
        _print_detector_slices(a.name, table, truth, a.slice_col, det.threshold)
    elif a.slice_col:
        print(f"\n(--slice-col {a.slice_col}: dataset {a.name!r} has no labels its policy calls sensitive or safe)")
    print(f"\nwritten: {path}")
    if a.out:
        write_table(Path(a.out), table)
        print(f"written: {a.out}")
    return 0


@verb("suggest", "the images to label next for a detector: unfamiliar regions first, then uncertain, then diverse")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--detector", required=True, metavar="DET"),
    p.add_argument("--n", type=int, default=20, help="how many images"),
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write id, path, why (and rank, p, distance)"),
    p.add_argument("--tta", dest="tta", action="store_true", default=None,
                   help="compute the flips / rotations even for a costly model"),
    p.add_argument("--no-tta", dest="tta", action="store_false"),
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means that picks diverse images"),
))
def cmd_suggest(a) -> int:
    from pathlib import Path

    from . import detector
    from .files import write_table

    det = detector.load(a.detector)
    out = detector.suggest(a.name, det, a.n, tta=a.tta, seed=a.seed)
    print(f"{a.name}: the next {_n(len(out), 'image')} to review for {det.name!r} (reviewed and training images left out)")
    if len(out):
        shown = out.assign(id=out["id"].str[:12], p=out["p"].round(3), distance=out["distance"].round(4))
        _print_table(shown[["rank", "id", "why", "p", "distance", "path"]], len(out))
    if a.out:
        write_table(Path(a.out), out[["id", "path", "why", "rank", "p", "distance"]])
        print(f"written: {a.out}")
    return 0


@verb("detectors", "list the saved detectors with model, training sets, label counts and validation AUC")
def cmd_detectors(a) -> int:
    from . import detector

    df = detector.list_detectors()
    if df["error"].isna().all():
        df = df.drop(columns="error")
    _print_table(df.round({"val_auc": 4, "threshold": 4}), 200)
    return 0


# ---------------------------------------------------------------- data quality


#: lib.quality's defaults, spelled out so that building the parser imports nothing heavy
#: (tests/test_quality.py checks they match).
_QUALITY_DEFAULTS = {"threshold": 0.95, "hash_distance": 10, "k": 10}


def _quality_args(p):
    DEFAULT_THRESHOLD, HASH_MAX_DISTANCE, KNN_K = _QUALITY_DEFAULTS.values()  # noqa: N806
    p.add_argument("name")
    _model_args(p)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"cosine similarity in (0, 1] at or above which two images are near-duplicates under the "
                        f"model (default {DEFAULT_THRESHOLD}; hand-crafted features such as color need more, or --hash)")
    p.add_argument("--hash", action="store_true",
                   help="also compare a model-free perceptual hash (pHash of the 8 flips/rotations, computed once per "
                        "image and cached): finds flipped, rotated, resized and recompressed copies under any model")
    p.add_argument("--hash-only", action="store_true",
                   help="near-duplicates from the perceptual hash alone (the model still gives similarities, "
                        "label issues and outliers)")
    p.add_argument("--hash-distance", type=int, default=HASH_MAX_DISTANCE,
                   help=f"hash bits (of 64) two near-duplicates may differ in (default {HASH_MAX_DISTANCE})")
    p.add_argument("--against", default=None, metavar="OTHER",
                   help="also report leaks between NAME and dataset OTHER (embedded with the same model)")
    p.add_argument("--k", type=int, default=KNN_K, help="neighbours for kNN label disagreement and uniqueness")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the out-of-fold probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes for the hashes")
    p.add_argument("--out", default=None, help="output folder (default: <home>/results/NAME/quality-MODEL/)")


@verb("quality", "data quality: near-duplicate groups, leaks between splits or datasets, label issues, outliers")
@args_for(_quality_args)
def cmd_quality(a) -> int:
    from .quality import check_hash_distance, check_threshold, report_folder, run_quality

    check_threshold(a.threshold)  # bad input first, before anything is loaded
    check_hash_distance(a.hash_distance)
    rep = run_quality(a.name, _model(a), threshold=a.threshold, use_hash=a.hash, hash_only=a.hash_only,
                      hash_max_distance=a.hash_distance, against=a.against, k=a.k, folds=a.folds, seed=a.seed,
                      workers=a.workers)
    paths = rep.save(report_folder(a.name, a.model, a.out))
    print(rep.summary())
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


# ---------------------------------------------------------------- papers: fine-tuning and the benchmark matrix (lib/finetune.py, lib/benchmark.py)


def _finetune_args(p) -> None:
    p.add_argument("name", help="dataset whose binary labels (by its label policy) train the model")
    p.add_argument("--model", default=None, help="model spec to fine-tune: timm:NAME | hf:ID_OR_PATH | open_clip:... | "
                                                 "an alias (swin-b, dinov2-l, vit-b16, resnet50)")
    p.add_argument("--random-weights", action="store_true",
                   help="start from seeded random weights (tests and benchmarks only)")
    p.add_argument("--out", default=None, help="checkpoint folder (created; a killed run there resumes)")
    p.add_argument("--epochs", type=int, default=10, help="default 10 (MedGore Table 3)")
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (MedGore), 1e-3 with --mode head")
    p.add_argument("--batch-size", type=int, default=16, help="default 16 (MedGore)")
    p.add_argument("--val-frac", type=float, default=0.1,
                   help="validation share when the dataset has no val split (default 0.1: MedGore's 1,800 / 200)")
    p.add_argument("--mode", choices=["full", "head"], default="full",
                   help="full: backbone and linear head; head: frozen backbone, head only (on cached embeddings)")
    p.add_argument("--select", choices=["val_loss", "val_f1_macro_zero", "val_auc"], default="val_loss",
                   help="how the best epoch is chosen, on validation (never on test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--restart", action="store_true", help="overwrite a different run in --out instead of refusing")
    p.add_argument("--apply", metavar="CKPT", default=None,
                   help="instead of training: score dataset NAME with the fine-tuned head in CKPT (a prediction "
                        "table for safe-view --predictions)")
    p.add_argument("--rule", default="R95", help="with --apply: the validation threshold that flags "
                                                 "(max-F1, R90, R95, thesis; default R95)")
    p.add_argument("--table", default=None, help="with --apply: where to write the prediction table")
    p.add_argument("--positive", default=None, metavar="LABEL",
                   help="this label value is the sensitive class and every other one safe (default: the label policy)")


@verb("finetune", "fine-tune a backbone and a linear head on a dataset's binary labels (MedGore Table 3 protocol)")
@args_for(_finetune_args)
def cmd_finetune(a) -> int:
    from . import finetune as ft
    from .errors import WorkbenchError

    if a.apply:
        table = ft.predict(a.name, a.apply, rule=a.rule, table_path=a.table)
        print(f"{int(table['sensitive'].sum())} of {_n(len(table), 'image')} of {a.name} flagged by {a.apply} "
              f"(rule {a.rule}, threshold {table['threshold'].iat[0]:.4f})" if len(table) else "no images")
        return 0
    if not a.model or not a.out:
        raise WorkbenchError("finetune needs --model SPEC and --out CKPT (or --apply CKPT)")
    res = ft.finetune(a.name, a.model, a.out, random_weights=a.random_weights, mode=a.mode, epochs=a.epochs,
                      lr=a.lr, batch_size=a.batch_size, val_frac=a.val_frac, seed=a.seed, select=a.select,
                      positive=a.positive, device=a.device, restart=a.restart, progress=True)
    if res.resumed_from:
        print(f"resumed after epoch {res.resumed_from}")
    _print_table(res.history.round(4))
    b = res.best
    print(f"best epoch {b['epoch']} by {a.select} on validation -> {res.out}")
    print(f"load it as: finetuned:{res.out}   (the same model: {res.spec})")
    print("validation thresholds: " + ", ".join(f"{k} {v:.4f}" for k, v in b.get("thresholds", {}).items()))
    return 0


def _benchmark_args(p) -> None:
    from .benchmark import DEFAULT_TASKS, TASKS

    p.add_argument("--datasets", required=True, help="comma-separated dataset names")
    p.add_argument("--models", required=True, help="comma-separated model specs or aliases")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    p.add_argument("--random-weights", action="store_true",
                   help="build every model that has weights with seeded random weights (tests; marked in the report)")
    p.add_argument("--out", default=None, help="output folder (default: data/results/benchmark/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-frac", type=float, default=0.2,
                   help="held-out share for datasets without a test split (stratified, seeded)")
    p.add_argument("--classes", default="medgore", help="zero-shot class set (default medgore: Blur / Normal)")
    p.add_argument("--paper-dataset", action="append", default=[], metavar="DATASET=PAPER_DATASET",
                   help="declare that a local dataset IS a paper's dataset (e.g. mg=MedGore test), so its rows count as "
                        "comparable; without it every run is on different data")
    p.add_argument("--grid-seeds", type=int, default=10, help="grid task: seeds per class for the expansion")
    p.add_argument("--grid-k", type=int, default=99, help="grid task: neighbours per seed (MedGore: 99)")
    p.add_argument("--grid-cap", type=int, default=2000, help="grid task: cap of each training set (MedGore: 2,000)")
    p.add_argument("--finetune-epochs", type=int, default=10, help="finetune task: epochs (MedGore: 10)")
    p.add_argument("--positive", default=None, metavar="LABEL",
                   help="this label value is the sensitive (positive) class in every dataset and every other one "
                        "safe (default: each dataset's label policy)")


@verb("benchmark", "the papers' matrix: datasets x models x tasks in one long table, with the papers' numbers beside")
@args_for(_benchmark_args)
def cmd_benchmark(a) -> int:
    from .benchmark import run_benchmark
    from .errors import WorkbenchError

    def names(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    paper_ds = {}
    for item in a.paper_dataset:
        local, sep, paper = item.partition("=")
        if not sep or not local.strip() or not paper.strip():
            raise WorkbenchError(f"--paper-dataset {item!r}: expected DATASET=PAPER_DATASET")
        paper_ds[local.strip()] = paper.strip()
    res = run_benchmark(names(a.datasets), names(a.models), names(a.tasks), out=a.out,
                        random_weights=a.random_weights, seed=a.seed, test_frac=a.test_frac, classes=a.classes,
                        paper_datasets=paper_ds, grid_seeds=a.grid_seeds, grid_k=a.grid_k, grid_cap=a.grid_cap,
                        finetune_epochs=a.finetune_epochs, positive=a.positive, progress=True)
    from .benchmark import paper_side_by_side, summary_tables

    skipped = res.table[res.table["metric"] == "skipped"]
    print(f"{_n(len(res.table) - len(skipped), 'result')}, {len(skipped)} skipped")
    if len(skipped):
        _print_table(skipped[["dataset", "model", "task", "note"]], 100)
    for task, df in summary_tables(res.table).items():
        print(f"\n{task}")
        _print_table(df.round(4), 100)
    print("\nthe papers' numbers beside ours (comparable only for the paper's model on its own data)")
    _print_table(paper_side_by_side(res.comparison).drop(columns=["variant"]).round(4), 100)
    for path in res.files:
        print(f"-> {path}")
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib", description="Sensitive medical image workbench")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (fn, configure, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import WorkbenchError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
