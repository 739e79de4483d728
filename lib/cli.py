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


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, default=None if required else "color",
                   help="model spec: color | open_clip:ARCH@TAG | open_clip:hf-hub:ORG/NAME | "
                        "open_clip:ARCH@/path/weights.safetensors | hf:ID_OR_PATH | an alias")
    p.add_argument("--random-weights", action="store_true",
                   help="build the architecture with seeded random weights (tests and benchmarks only)")


# ---------------------------------------------------------------- datasets


@verb("ingest", "ingest a folder, a CSV/parquet manifest or a DICOM folder as a dataset")
@args_for(lambda p: (
    p.add_argument("source", help="folder (class subfolders become labels) or manifest with a 'path' column"),
    p.add_argument("--name", required=True, help="dataset name"),
    p.add_argument("--root", help="folder the manifest's paths are relative to (default: its own folder)"),
    p.add_argument("--workers", type=int, default=None, help="decoding processes"),
))
def cmd_ingest(a) -> int:
    from . import dataset

    report = dataset.ingest(a.source, a.name, root=a.root, workers=a.workers, progress=sys.stderr.isatty())
    print(report.summary())
    ds = dataset.load(a.name)
    if len(ds.errors):
        print(f"\n{len(ds.errors)} file(s) could not be used:")
        _print_table(ds.errors, 30)
    if len(ds.duplicates):
        print(f"\n{len(ds.duplicates)} byte-identical duplicate(s):")
        _print_table(ds.duplicates.assign(id=ds.duplicates["id"].str[:12]), 30)
    return 0


@verb("datasets", "list datasets with their image and error counts")
def cmd_datasets(a) -> int:
    from . import dataset

    _print_table(dataset.summary_table())
    return 0


@verb("show", "print the rows of a dataset")
@args_for(lambda p: (
    p.add_argument("name"),
    p.add_argument("--limit", type=int, default=20),
    p.add_argument("--errors", action="store_true", help="show the error table instead"),
))
def cmd_show(a) -> int:
    from . import dataset

    ds = dataset.load(a.name)
    if a.errors:
        _print_table(ds.errors.head(a.limit), a.limit)
        return 0
    df = ds.images[["id", "path", "label", "split"]].head(a.limit).copy()
    df["id"] = df["id"].str[:16]
    _print_table(df, a.limit)
    print(f"({len(ds.images)} images, {len(ds.errors)} errors)")
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
    kwargs = dict(batch_size=a.batch_size, workers=a.workers, shard_size=a.shard_size, device=a.device,
                  precision=a.precision, random_weights=a.random_weights)
    if a.engine == "ray":
        from . import distributed

        report = distributed.embed_ray(a.name, a.model, address=a.address, **kwargs)
    else:
        from . import embeddings

        report = embeddings.embed(a.name, a.model, progress=sys.stderr.isatty(), **kwargs)
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
    space = open_space(a.name, a.model, random_weights=a.random_weights, index_kind=a.index)
    if a.id:
        row = space.row_of(space.dataset.resolve_id(a.id))
        df = neighbours(space, row, a.k)
        q = space.dataset.images.iloc[row]
        print(f"query {q['id'][:16]}  label={q['label']}  {q['path']}")
    else:
        from .images import open_image
        from .models import load_model

        backend = load_model(a.model, random_weights=a.random_weights)
        df = neighbours_of_image(space, backend, open_image(a.image), a.k)
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
    p.add_argument("--out", default=None, help="predictions parquet (default: <home>/results/NAME/zeroshot-...)")


@verb("zeroshot", "classify a dataset zero-shot from class names and prompt templates (needs a text tower)")
@args_for(_zeroshot_args)
def cmd_zeroshot(a) -> int:
    import pandas as pd

    from .zeroshot import prompts_for, run_zeroshot

    res = run_zeroshot(a.name, a.model, classes=a.classes, templates=a.templates, label_column=a.label_col,
                       random_weights=a.random_weights, out=a.out)
    per_class = {c: len(p) for c, p in prompts_for(res.classes, res.templates).items()}
    print(f"{a.name} x {a.model}: {len(res.predictions)} images; classes {', '.join(res.classes.classes)} "
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
        res = retrieval.run_retrieval_eval(a.name, a.model, a.group_col, ks=ks, pooled=a.gallery == "pooled",
                                           beyond_gallery=a.beyond_gallery, random_weights=a.random_weights,
                                           out=a.out)
        print(f"{a.name} x {a.model}: {res.pairs} (image, caption) pairs, {res.skipped} rows without caption; "
              f"gallery {'pooled' if res.pooled else 'per group'}")
        recall_cols = [c for c in res.table.columns if "_R" in c]
        _print_table(res.table.round({c: 4 for c in recall_cols}))
        print(f"\ntable: {res.path}")
        return 0

    from .neighbors import open_space

    if a.id:
        space = open_space(a.name, a.model, random_weights=a.random_weights, index_kind=a.index)
        row = space.row_of(space.dataset.resolve_id(a.id))
        df = retrieval.image_to_image(space, None, row, a.k)
        q = space.dataset.images.iloc[row]
        print(f"query {q['id'][:16]}  label={q['label']}  {q['path']}")
    else:
        from .embeddings import embed
        from .models import load_model

        backend = load_model(a.model, random_weights=a.random_weights)
        if a.text is not None:
            from .zeroshot import require_text

            require_text(backend)  # before embedding a whole dataset for nothing
        embed(a.name, a.model, random_weights=a.random_weights, backend=backend)
        space = open_space(a.name, a.model, random_weights=a.random_weights, backend=backend, index_kind=a.index)
        if a.text is not None:
            df = retrieval.text_to_image(space, backend, a.text, a.k)
            print(f"query text: {a.text!r}")
        else:
            df = retrieval.image_to_image(space, backend, a.image, a.k)
            print(f"query {a.image}")
    if a.out:
        from pathlib import Path

        from .config import ensure

        ensure(Path(a.out).parent)
        df.to_csv(a.out, index=False)
    df = df.assign(id=df["id"].str[:16], score=df["score"].round(4))
    _print_table(df[["rank", "score", "id", "label", "path"]], a.k)
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
