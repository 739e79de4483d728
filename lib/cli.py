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
@args_for(lambda p: p.add_argument("--name", default="demo"))
def cmd_demo(a) -> int:
    from . import demo

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
