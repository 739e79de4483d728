"""Streamlit glue shared by every page: cached loaders, the sidebar, safe images, messages.

The only module of ``lib`` that imports Streamlit. Pages call :func:`setup` (page config +
sidebar -> a :class:`Ctx`), read data through the cached loaders here and draw; every
computation lives in the rest of ``lib``.

Caching: ``st.cache_resource`` for things shared and not copied (datasets, models, spaces
with their faiss index, the annotation store), ``st.cache_data`` for tables. Tables whose
first computation draws a progress bar (EB scores, mask IoUs) live in a small process-wide
store instead, since ``st.cache_data`` would replay the bar. Every key holds the data home
and a token from :mod:`lib.catalog` that changes when the dataset is re-ingested or
embeddings / predictions are written, so a widget change never recomputes anything heavy,
and new data is never hidden behind a stale cache.

State: dataset and model live in the URL (``?dataset=...&model=...``) so a view can be
shared; the safe-view settings live only in ``st.session_state`` (a URL can never turn
safe view off), and so do revealed images.

Safe view: whether an image may be shown raw is :func:`lib.sensitivity.decide`'s call,
made once per dataset and evidence (:meth:`Ctx.decision`); every image the pages draw goes
through :func:`show_image`, which serves the censored bytes unless the decision clears the
image or the user revealed it behind a warning that names the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from . import catalog, charts, config, gallery, safety, sensitivity, thumbs
from . import dataset as ds_mod
from .catalog import ModelChoice
from .errors import ImageError, UnsafePath, WeightsMissing, WorkbenchError

PAGES = {
    "home": "views/0_Home.py",
    "gallery": "views/1_Gallery.py",
    "neighbours": "views/2_Neighbours.py",
    "zeroshot": "views/3_Zero-shot.py",
    "retrieval": "views/4_Retrieval.py",
    "blur": "views/5_Blur_scores.py",
    "compare": "views/6_Compare_models.py",
}

CENSOR_MODES = ("blur", "pixelate")
THUMB_SIDE = 256
CLI = "python -m lib"


# =========================================================================== state


def _ss():
    return st.session_state


def _persistent(name: str, default, render: Callable, *, on_change: Callable | None = None, **kwargs):
    """Render a widget whose value survives page switches.

    Streamlit drops a widget's state when a page without it runs; the value is kept under a
    permanent key ``wb:<name>`` and copied into the widget key ``w:<name>`` before each render.
    """
    perm, wkey = f"wb:{name}", f"w:{name}"
    ss = _ss()
    if perm not in ss:
        ss[perm] = default
    ss[wkey] = ss[perm]

    def store() -> None:
        ss[perm] = ss[wkey]
        if on_change is not None:
            on_change()

    render(key=wkey, on_change=store, **kwargs)
    return ss[perm]


def revealed() -> dict[str, str]:
    """Images revealed in this browser session: {content id: ``regions`` or ``full``}
    (per image, behind its Reveal warning; never from a URL)."""
    return _ss().setdefault("wb:revealed", {})


def _reveal(cid: str, level: str = "full") -> None:
    if level not in thumbs.REVEAL_LEVELS:
        raise ValueError(f"reveal level {level!r}")
    revealed()[cid] = level


def _hide(cid: str) -> None:
    revealed().pop(cid, None)


def reblur_all() -> None:
    """Undo every reveal of this session."""
    revealed().clear()


def page_param(name: str, default: str | None = None) -> str | None:
    """A page's state value (e.g. the selected image id): the URL's, else this session's."""
    qp = st.query_params.get(name)
    if qp not in (None, ""):
        _ss()[f"wb:param:{name}"] = qp
        return qp
    value = _ss().get(f"wb:param:{name}", default)
    if value not in (None, ""):
        st.query_params[name] = value
    return value


def set_page_param(name: str, value: str | None) -> None:
    """Set (or with None clear) a page state value in the URL and the session; usable in callbacks."""
    if value in (None, ""):
        _ss().pop(f"wb:param:{name}", None)
        if name in st.query_params:
            del st.query_params[name]
    else:
        _ss()[f"wb:param:{name}"] = str(value)
        st.query_params[name] = str(value)


def set_selection(name: str, ids: Sequence[str], source: str) -> None:
    """Remember a set of images chosen on one page (a plot selection) for the gallery; its
    ``key`` names the set (what cached views of it are keyed on)."""
    import hashlib

    ids = list(dict.fromkeys(map(str, ids)))
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]
    _ss()["wb:selection"] = {"dataset": name, "ids": ids, "source": source, "key": key}


def selection(name: str) -> dict | None:
    sel = _ss().get("wb:selection")
    return sel if sel and sel.get("dataset") == name and sel.get("ids") else None


def clear_selection() -> None:
    _ss().pop("wb:selection", None)


# =========================================================================== loaders


def _home() -> str:
    return str(config.home())


def _token(name: str) -> str:
    return catalog.cache_token(name)


@st.cache_resource(show_spinner="Building the demo dataset…", max_entries=8)
def _ensure_demo(home: str) -> list[str]:
    from . import demo

    demo.ensure_demo()
    return ds_mod.list_names()


def ensure_demo() -> None:
    """Build the offline demo dataset once when the data home has no dataset at all."""
    if not ds_mod.list_names():
        _ensure_demo.clear()
        _ensure_demo(_home())


@st.cache_resource(show_spinner=False, max_entries=16)
def _dataset(home: str, name: str, token: str) -> ds_mod.Dataset:
    return ds_mod.load(name)


def load_dataset(name: str) -> ds_mod.Dataset:
    """The dataset (shared, never modify it)."""
    return _dataset(_home(), name, catalog.dataset_token(name))


@st.cache_data(show_spinner=False, max_entries=32)
def _summary(home: str, names: tuple) -> pd.DataFrame:
    return ds_mod.summary_table()


def datasets_summary() -> pd.DataFrame:
    return _summary(_home(), tuple(_dataset_stamps()))


def _dataset_stamps() -> list[str]:
    out = []
    for n in ds_mod.list_names():
        p = ds_mod.dataset_dir(n) / "dataset.json"
        out.append(f"{n}:{p.stat().st_mtime_ns}")
    return out


@st.cache_data(show_spinner=False, max_entries=32)
def _model_status(home: str, name: str, token: str) -> pd.DataFrame:
    return catalog.model_status(name)


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def _ready(home: str, key: str) -> bool:
    return catalog.ready_offline(ModelChoice.from_key(key))


def ready_offline(choice: ModelChoice) -> bool:
    """:func:`lib.catalog.ready_offline`, cached for a minute (weights appear when downloaded)."""
    return _ready(_home(), choice.key)


def embedded_models(name: str) -> list[ModelChoice]:
    """Every model whose current cache holds the whole dataset, random-weight ones included."""
    st_ = model_status(name)
    ok = st_[(st_["status"] == "full") & st_["current"]]
    return [ModelChoice(s, bool(r)) for s, r in zip(ok["spec"], ok["random_weights"], strict=True)]


def model_status(name: str) -> pd.DataFrame:
    return _model_status(_home(), name, _token(name))


@st.cache_resource(show_spinner=False, max_entries=8)
def _resolved(spec: str, random_weights: bool):
    from .models import resolve_model

    return resolve_model(spec, random_weights=random_weights)


def resolved(choice: ModelChoice):
    """``choice`` resolved once per process (:class:`lib.models.ResolvedModel`), the value every
    run_* takes; its backend loads at first use and is shared by every session."""
    return _resolved(choice.spec, choice.random_weights)


def load_backend(choice: ModelChoice):
    """The loaded model (one per spec and process)."""
    model = resolved(choice)
    if model.loaded:
        return model.backend
    with st.spinner("Loading the model…"):
        return model.backend


@st.cache_resource(show_spinner="Opening the embedding space…", max_entries=16)
def _space(home: str, name: str, spec: str, random_weights: bool, token: str):
    from .neighbors import open_space

    return open_space(name, _resolved(spec, random_weights), dataset=load_dataset(name))


def load_space(name: str, choice: ModelChoice):
    """The dataset's embedding space under ``choice`` (vectors + faiss index)."""
    return _space(_home(), name, choice.spec, choice.random_weights, _token(name))


@st.cache_resource(show_spinner=False)
def _annotations(home: str):
    from .annotations import AnnotationStore

    return AnnotationStore()


def annotation_store():
    """The SQLite annotation store of this data home."""
    return _annotations(_home())


@st.cache_resource(show_spinner=False)
def _tables() -> tuple:
    """Tables computed with a progress bar, by key (shared by all sessions, least recent
    dropped), and the lock guarding them. ``st.cache_data`` cannot hold them: it would
    replay the progress bar."""
    import threading
    from collections import OrderedDict

    return OrderedDict(), threading.Lock()


def _with_progress(key: tuple, compute: Callable, text: str, max_entries: int = 16):
    store, lock = _tables()
    with lock:
        if key in store:
            store.move_to_end(key)
            return store[key]
    slot = st.empty()
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:  # drawn only when there is work to show
            bars.append(slot.progress(0.0))
        bars[0].progress(min(1.0, done / max(total, 1)), text=f"{text} {done}/{total}")

    try:
        value = compute(progress)
    finally:
        slot.empty()
    with lock:
        store[key] = value
        while len(store) > max_entries:
            store.popitem(last=False)
    return value


@st.cache_resource(show_spinner=False, max_entries=16)
def _filter_options(home: str, name: str, token: str) -> dict[str, list]:
    return gallery.filter_options(load_dataset(name).images)


def filter_options(name: str) -> dict[str, list]:
    """:func:`lib.gallery.filter_options` of dataset ``name``, once per ingest (1M rows: ~0.3 s)
    (shared: never modify it)."""
    return _filter_options(_home(), name, catalog.dataset_token(name))


def eb_scores(name: str) -> pd.DataFrame:
    """EB table of the dataset (:func:`lib.gallery.eb_scores`), one row per dataset row.

    The first computation draws a progress bar; fractions are also cached on disk.
    """
    ds = load_dataset(name)
    return _with_progress(("eb", _home(), name, catalog.dataset_token(name)),
                          lambda cb: gallery.eb_scores(ds, progress=cb), "Scoring colours (once; cached on disk)")


@st.cache_data(show_spinner=False, max_entries=16)
def _predictions(path: str, mtime: float) -> pd.DataFrame:
    return catalog.read_predictions(path)


def predictions(path: str | None) -> pd.DataFrame | None:
    """A prediction table (id, score, pred) or None."""
    if not path:
        return None
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        return None
    return _predictions(str(p), p.stat().st_mtime)


# Shared by every session (st.cache_resource: no copy per call). As st.cache_data, each of a
# page's calls unpickled a fresh table (tens of MB at 100k rows) in the session's thread, and
# under many sessions glibc kept those per-thread arenas: ~16 MB of server memory per page view.
# The inputs come as callables, called on a miss only: gathering them on every call (the
# reviews table, 1M rows once every image is labelled) cost seconds per thumbnail.
# A fresh server reads the decision an earlier one stored for the same inputs; after a few
# labels only their images' rows are decided again (lib.evidence.stored_decision).
@st.cache_resource(show_spinner=False, max_entries=16)
def _decision(home: str, name: str, key: tuple, _inputs: Callable[[], dict]) -> pd.DataFrame:
    from .evidence import stored_decision

    return stored_decision(name, load_dataset(name).images, key[:-1], _inputs, event=key[-1],
                           store=annotation_store())


@st.cache_resource(show_spinner=False, max_entries=16)
def _served(home: str, name: str, key: tuple, _decision_table: Callable[[], pd.DataFrame]) -> tuple:
    return sensitivity.served(_decision_table(), load_dataset(name).copy_rows)


def _file_stamp(path) -> str:
    from pathlib import Path

    p = Path(path)
    try:
        return f"{p}:{p.stat().st_mtime_ns}"
    except OSError:
        return f"{p}:missing"


def policy_of(name: str) -> tuple[sensitivity.LabelPolicy, str | None]:
    """(the dataset's label policy, None), or (the default policy, the error) when its file
    cannot be read: the pages then censor everything and say why."""
    try:
        return _policy(_home(), name, _file_stamp(sensitivity.policy_path(name)),
                       _file_stamp(sensitivity.VOCABULARY_PATH)), None
    except sensitivity.PolicyError as e:
        return sensitivity.LabelPolicy(), str(e)


@st.cache_resource(show_spinner=False, max_entries=32)
def _policy(home: str, name: str, stamp: str, vocab_stamp: str) -> sensitivity.LabelPolicy:
    sensitivity.vocabulary()  # a broken vocabulary file is an error here, not later on a page
    return sensitivity.load_policy(name)


def nudity_key(name: str) -> tuple:
    """Changes when NudeNet scores are written (or the dataset is ingested again)."""
    from . import nudity

    return catalog.dataset_token(name), tuple(_file_stamp(p) for p in nudity.cache().parts())


def nudity_table(name: str) -> pd.DataFrame | None:
    """NudeNet scores of the dataset's images checked so far (None when none is)."""
    return _nudity(_home(), name, nudity_key(name))


@st.cache_resource(show_spinner=False, max_entries=16)
def _nudity(home: str, name: str, key: tuple) -> pd.DataFrame | None:
    from . import nudity

    df = nudity.cached(load_dataset(name).images["id"])
    return df if len(df) else None


# Shared (st.cache_resource): as st.cache_data every call unpickled a copy, seconds at 1M rows.
@st.cache_resource(show_spinner="Projecting…", max_entries=16)
def _projection(home: str, name: str, spec: str, random_weights: bool, method: str, token: str) -> pd.DataFrame:
    from .projection import project

    ds = load_dataset(name)
    xy = project(_space(home, name, spec, random_weights, token).emb, method)  # the vectors the space opened
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "id": ds.images["id"].array,
                         "label": ds.images["label"].array, "row": np.arange(len(ds))})


def projection(name: str, choice: ModelChoice, method: str) -> pd.DataFrame:
    """2-D map of the dataset under ``choice`` (x, y, id, label, row; shared: never modify it)."""
    return _projection(_home(), name, choice.spec, choice.random_weights, method, _token(name))


def _map_key(ctx: Ctx, method: str) -> tuple:
    """What the Map page's points depend on: data home, dataset, model, projection, ingest and
    the safe view's evidence (its decision key)."""
    return (_home(), ctx.name, ctx.model.spec, ctx.model.random_weights, method, _token(ctx.name), ctx._decision_key())


@st.cache_resource(show_spinner=False, max_entries=4)
def _map_points(key: tuple, _ctx: Ctx) -> pd.DataFrame:
    home, name, spec, random_weights, method, token, _ = key
    pts = gallery.map_frame(_projection(home, name, spec, random_weights, method, token), _ctx.eb())
    return pts.assign(**{"safe view": _ctx.decision()["evidence"].to_numpy(), "path": _ctx.ds.images["path"].array})


def map_points(ctx: Ctx, method: str) -> pd.DataFrame:
    """The Map page's points, one per dataset row: the projection's x, y, id, label, row with
    ``EB``, ``safe view`` (the decision's evidence) and ``path`` (shared: never modify it)."""
    return _map_points(_map_key(ctx, method), ctx)


@st.cache_resource(show_spinner=False, max_entries=8)
def _map_figure(points_key: tuple, colour: str, selection_key: str, highlight: str | None, always: tuple, title: str,
                _pts: pd.DataFrame, _selected):
    return charts.linked_map(_pts, colour, selected=_selected, highlight=highlight, title=title,
                             hover=("label", "EB", "file"), always=list(always),
                             derive={"file": lambda d: [gallery.file_name(p, 32) for p in d["path"]]})


def map_figure(ctx: Ctx, method: str, colour: str, *, selection: dict | None, highlight: str | None,
               always: Sequence[str] = ()):
    """The Map page's figure (:func:`lib.charts.linked_map` over :func:`map_points`), built
    once per its inputs: at 1M rows gathering and drawing the sample took ~1.5 s of every
    run (shared: never modify it; ``st.plotly_chart`` copies it)."""
    key = _map_key(ctx, method)
    pts = _map_points(key, ctx)
    title = f"{ctx.model.label} · {method.upper()} · {gallery.plural(len(pts), 'image')}"
    return _map_figure(key, colour, selection["key"] if selection else "", highlight, tuple(always), title, pts,
                       selection["ids"] if selection else None)


def projection_cached(name: str, choice: ModelChoice, method: str) -> bool:
    """Whether the map is already on disk (UMAP takes seconds; PCA is instant)."""
    from .projection import cache_path, projection_params

    if method == "pca":
        return True
    return cache_path(load_space(name, choice).emb.key, projection_params(method)).exists()


@st.cache_data(show_spinner="Classifying zero-shot…", max_entries=32)
def _zeroshot(home: str, name: str, spec: str, random_weights: bool, classes_key: str, templates: tuple,
              label_column: str | None, token: str, _classes=None):
    from .zeroshot import run_zeroshot

    return run_zeroshot(name, _resolved(spec, random_weights), classes=_classes, templates=list(templates),
                        label_column=label_column)


def zeroshot_run(name: str, choice: ModelChoice, classes, templates: Sequence[str], label_column: str | None = None):
    """:func:`lib.zeroshot.run_zeroshot` (predictions written under results/), cached per inputs."""
    import json as _json

    key = _json.dumps([classes.name, classes.classes, classes.texts, classes.positive, classes.label_map,
                       classes.label_column], sort_keys=True, default=list)
    return _zeroshot(_home(), name, choice.spec, choice.random_weights, key, tuple(templates), label_column,
                     catalog.cache_token(name), _classes=classes)


@st.cache_data(show_spinner="Fitting the linear probe (5-fold)…", max_entries=32)
def _probe(home: str, name: str, spec: str, random_weights: bool, token: str):
    from .probe import run_probe

    return run_probe(name, _resolved(spec, random_weights), "image")


def probe_run(name: str, choice: ModelChoice):
    """A 5-fold image linear probe of the dataset under ``choice`` (:func:`lib.probe.run_probe`)."""
    return _probe(_home(), name, choice.spec, choice.random_weights, catalog.cache_token(name))


@st.cache_data(show_spinner="Comparing neighbourhoods…", max_entries=32)
def _overlap(home: str, name: str, keys: tuple, k: int, token: str):
    from .compare import neighbourhood_overlap

    return neighbourhood_overlap(name, [resolved(ModelChoice.from_key(x)) for x in keys], k)


def overlap(name: str, choices: Sequence[ModelChoice], k: int):
    """Jaccard@k between the models' neighbourhoods (:func:`lib.compare.neighbourhood_overlap`)."""
    return _overlap(_home(), name, tuple(c.key for c in choices), int(k), catalog.cache_token(name))


@st.cache_data(show_spinner="Evaluating caption retrieval…", max_entries=32)
def _retrieval_eval(home: str, name: str, spec: str, random_weights: bool, group_col: str | None, token: str):
    from .retrieval import run_retrieval_eval

    return run_retrieval_eval(name, _resolved(spec, random_weights), group_col, write=False)


def retrieval_eval(name: str, choice: ModelChoice, group_col: str | None = None):
    """Recall@K on the dataset's (image, caption) pairs (:func:`lib.retrieval.run_retrieval_eval`)."""
    return _retrieval_eval(_home(), name, choice.spec, choice.random_weights, group_col, catalog.cache_token(name))


def mask_ious(name: str) -> pd.DataFrame:
    """IoU of the colour mask with the ground truth for every row with a ``mask``."""
    ds = load_dataset(name)
    rows = np.flatnonzero(ds.images["mask"].notna().to_numpy()) if "mask" in ds.images else []
    return _with_progress(("iou", _home(), name, catalog.dataset_token(name)),
                          lambda cb: gallery.mask_ious(ds, rows, progress=cb), "Comparing masks", max_entries=4)


# =========================================================================== context


@dataclass
class Ctx:
    """What the sidebar chose; pages read data through it."""

    name: str | None
    model: ModelChoice | None
    safe_view: bool = True
    censor: str = "blur"
    eb_threshold: float = sensitivity.EB_THRESHOLD
    random_ok: bool = False
    preds_path: str | None = None
    _status: pd.DataFrame | None = field(default=None, repr=False)
    pred_threshold: float | None = None
    blur_strength: float = safety.BLUR_FRACTION
    grey_revealed: bool = False
    _served: tuple | None = field(default=None, repr=False)

    # ---- data

    @property
    def ds(self) -> ds_mod.Dataset:
        return load_dataset(self.name)

    def status(self) -> pd.DataFrame:
        if self._status is None:
            self._status = model_status(self.name)
        return self._status

    def policy(self) -> tuple[sensitivity.LabelPolicy, str | None]:
        """The dataset's label policy and, when its file is broken, the error."""
        return policy_of(self.name)

    def screening(self) -> sensitivity.Screening | None:
        """The chosen prediction table as evidence (its own threshold unless one was chosen)."""
        from .evidence import screening_from_file

        preds = self.predictions()
        return None if preds is None else screening_from_file(self.preds_path, self.pred_threshold, preds)

    def _decision_key(self) -> tuple:
        """Everything the decision depends on; last, the latest annotation event (the reviews)."""
        return (catalog.dataset_token(self.name), float(self.eb_threshold),
                _file_stamp(self.preds_path) if self.preds_path else "", self.pred_threshold,
                _file_stamp(sensitivity.policy_path(self.name)), _file_stamp(sensitivity.VOCABULARY_PATH),
                nudity_key(self.name), annotation_store().last_event(self.name))

    def decision(self) -> pd.DataFrame:
        """The safe view's decision per dataset row (:func:`lib.sensitivity.decide`: censored,
        status, evidence, reason; shared: never modify it)."""
        key = self._decision_key()
        self.eb()  # its first computation draws a progress bar: here, not inside the cached call
        return _decision(_home(), self.name, key, _inputs=self._decision_inputs)

    def _decision_inputs(self) -> dict:
        """The decision's evidence but the reviews (:func:`lib.evidence.stored_decision` reads those)."""
        policy, error = self.policy()
        return dict(policy=policy, policy_error=error, eb=self.eb(), eb_threshold=float(self.eb_threshold),
                    nudity=nudity_table(self.name), screening=self.screening())

    def served(self) -> tuple[np.ndarray, np.ndarray, pd.Series]:
        """(censored (n,), source row (n,), reason per row (n,)) per dataset row as the safe
        view serves it (:func:`lib.sensitivity.served`; shared: never modify it): a row
        shows ``reason[source[row]]``."""
        key = self._decision_key()  # every call: a review made during this run counts at once
        if self._served is None or self._served[0] != key:
            censored, source = _served(_home(), self.name, key, _decision_table=self.decision)
            self._served = (key, (censored, source, self.decision()["reason"]))
        return self._served[1]

    def censored_at(self, row: int) -> tuple[bool, str]:
        """(censored, reason) of dataset row ``row``."""
        censored, source, reasons = self.served()
        return bool(censored[int(row)]), str(reasons.iat[int(source[int(row)])])

    def eb(self) -> pd.DataFrame:
        return eb_scores(self.name)

    def predictions(self) -> pd.DataFrame | None:
        return predictions(self.preds_path)

    def models(self) -> list[ModelChoice]:
        return catalog.usable_models(self.name, random_weights=self.random_ok, status=self.status())

    def text_models(self) -> list[ModelChoice]:
        return catalog.text_models(self.name, random_weights=self.random_ok, status=self.status())

    # ---- requirements: an actionable message and a stop when unmet

    def require_dataset(self) -> ds_mod.Dataset:
        if self.name is None:
            st.info(
                "**No datasets yet.** Open **Home** to build the offline demo dataset, "
                f"or create one from the command line:\n\n```bash\n{CLI} demo\n"
                f"{CLI} ingest /path/to/images_or_manifest.csv --name mine\n{CLI} embed mine --model color\n```"
            )
            st.stop()
        ds = self.ds
        if len(ds) == 0:
            st.warning(
                f"**Dataset `{self.name}` has no usable images** ({gallery.plural(len(ds.errors), 'file')} failed at ingest; "
                f"their reasons are on the Home page, or run `{CLI} show {self.name} --errors`). "
                f"Fix or replace the files and ingest again:\n\n```bash\n{CLI} ingest SOURCE --name {self.name}\n```"
            )
            st.stop()
        return ds

    def embed_command(self, choice: ModelChoice) -> str:
        rnd = " --random-weights" if choice.random_weights else ""
        return f"{CLI} embed {self.name} --model {choice.spec}{rnd}"

    def is_embedded(self, choice: ModelChoice) -> bool:
        st_ = self.status()
        hit = st_[(st_["spec"] == choice.spec) & (st_["random_weights"] == choice.random_weights)
                  & (st_["status"] == "full") & st_["current"]]
        return len(hit) > 0

    def require_space(self, choice: ModelChoice | None = None):
        """The space of the chosen (or given) model; stops with the embed command when the
        dataset is not fully embedded with it."""
        choice = choice or self.model
        if choice is None or not self.is_embedded(choice):
            spec = choice.label if choice else "any model"
            st.warning(
                f"**Dataset `{self.name}` is not embedded with `{spec}`.** Embed it on the Home page or run:"
                f"\n\n```bash\n{self.embed_command(choice or ModelChoice('color'))}\n```"
            )
            st.stop()
        return load_space(self.name, choice)

    def require_text(self, choice: ModelChoice | None, task: str, *, stop: bool = True) -> bool:
        """True when ``choice`` has a text tower; otherwise explains what to do and stops
        (or, with ``stop=False``, returns False)."""
        if choice is None or not choice.has_text:
            spec = choice.spec if choice else "none"
            st.info(
                f"**{task} needs a model with a text tower**, and `{spec}` has none (the `color` backend "
                "only sees pixels). Choose a CLIP-style model, for example:\n\n```bash\n"
                f"{CLI} embed {self.name} --model clip-b32\n{CLI} embed {self.name} --model biomedclip\n```\n"
                + (f"To try the pipeline offline, pick the tiny test model `{catalog.TEST_SPEC}` [random weights] "
                   "in the sidebar's Model picker (meaningless outputs)." if self.random_ok else
                   "Offline, tick *Use random weights (testing only)* in the sidebar to try the tiny test model "
                   f"`{catalog.TEST_SPEC}` (meaningless outputs, for testing the pipeline).")
            )
            if stop:
                st.stop()
            return False
        return True

    def require_labels(self, task: str) -> None:
        if not self.ds.has_labels:
            st.info(
                f"**Dataset `{self.name}` has no labels**, and {task} needs them. Put class folders under the "
                "image folder, or a `label` column in a manifest, and ingest again:\n\n"
                f"```bash\n{CLI} ingest /path/to/manifest.csv --name {self.name}\n```"
            )
            st.stop()


# =========================================================================== page setup


def _on_dataset_change() -> None:
    st.query_params["dataset"] = _ss()["wb:dataset"]
    _ss().pop("wb:param:id", None)
    if "id" in st.query_params:
        del st.query_params["id"]


def setup(title: str, icon: str | None = None) -> Ctx:
    """Page config and the shared sidebar; returns the choices as a :class:`Ctx`."""
    st.set_page_config(page_title=f"{title} · Sensitive image workbench", page_icon=icon, layout="wide")
    ss = _ss()
    names = ds_mod.list_names()
    with st.sidebar:
        st.markdown("### Sensitive image workbench")
        if not names:
            st.caption("No dataset yet.")
            return Ctx(None, None)
        want = st.query_params.get("dataset")
        if want in names:
            ss["wb:dataset"] = want
        elif ss.get("wb:dataset") not in names:
            ss["wb:dataset"] = "demo" if "demo" in names and "corpus" not in names else names[0]
        name = _persistent("dataset", names[0], lambda **kw: st.selectbox("Dataset", names, **kw),
                           on_change=_on_dataset_change)
        st.query_params["dataset"] = name

        random_ok = _persistent(
            "random", st.query_params.get("random") == "1",
            lambda **kw: st.checkbox("Use random weights (testing only)", help=(
                "Offer models with seeded random weights, such as the tiny test model "
                f"{catalog.TEST_SPEC}. Their outputs are meaningless: for testing the pipeline only."), **kw))
        if random_ok:
            st.query_params["random"] = "1"
        elif "random" in st.query_params:
            del st.query_params["random"]

        status = model_status(name)
        options = catalog.usable_models(name, random_weights=random_ok, status=status)
        keys = [c.key for c in options]
        want_m = st.query_params.get("model")
        if want_m in keys:
            ss["wb:model"] = want_m
        elif ss.get("wb:model") not in keys:
            ss["wb:model"] = keys[0]
        model_key = _persistent(
            "model", keys[0], lambda **kw: st.selectbox(
                "Model", keys, format_func=lambda k: ModelChoice.from_key(k).short,
                help="Models whose embedding cache holds every image of this dataset (and `color`, "
                     "which needs no weights).", **kw),
            on_change=lambda: st.query_params.update(model=_ss()["wb:model"]))
        st.query_params["model"] = model_key

        st.divider()
        st.markdown("**Safe view**")
        safe = _persistent("safe", True, lambda **kw: st.toggle(
            "Censor images not known to be safe", help="On by default. An image reaches the browser unblurred "
            "only with positive evidence that it is safe (a safe label, an Ok review, a confident detector "
            "clearance, a known-safe dataset); every other image is sent censored, with its reason. Reveal one "
            "behind its warning, or switch this off for this session only.", **kw))
        censor = _persistent("censor", "blur", lambda **kw: st.radio(
            "Rendering", CENSOR_MODES, horizontal=True, **kw))
        strength = _persistent("strength", int(round(safety.BLUR_FRACTION * 100)), lambda **kw: st.slider(
            "Blur strength (% of the image)", 4, 20, step=1, disabled=censor != "blur", help=(
                "Gaussian blur sigma as a share of the longest side: at 8% only broad colour areas remain."), **kw))
        grey = _persistent("grey", False, lambda **kw: st.checkbox(
            "Revealed images in greyscale", help="A revealed image is shown without colour, which many "
            "moderators find easier to look at.", **kw))
        eb_threshold = _persistent("eb_threshold", float(sensitivity.EB_THRESHOLD), lambda **kw: st.slider(
            "EB cut (flag by colour)", -2.0, 5.0, step=0.1, help=(
                "An image whose EB colour score (max of the z-scored blood-like and skin-like fractions, "
                "within this dataset) is above this is flagged. EB never clears an image."), **kw))
        files = catalog.prediction_files(name)
        pred_opts = ["(none)"] + [str(p) for p in files]
        if _ss().get("wb:preds") not in pred_opts:
            _ss()["wb:preds"] = next((p for p in pred_opts if p.rsplit("/", 1)[-1].startswith("detect-")), "(none)")
        preds = _persistent("preds", "(none)", lambda **kw: st.selectbox(
            "Detector or predictions", pred_opts,
            format_func=lambda p: p if p == "(none)" else p.rsplit("/", 1)[-1], help=(
                "A detector's screening (python -m lib predict) flags images at or above its threshold and "
                "clears confident, familiar ones below it. Other prediction tables (zero-shot, probes) only "
                "flag: nothing says their model has seen images like these."), **kw))
        pred_threshold = None
        if preds != "(none)":
            table = predictions(preds)
            own = float(table["threshold"].iloc[0]) if table is not None and "threshold" in table and len(table) \
                else sensitivity.PRED_THRESHOLD
            pred_threshold = _persistent(f"pred_thr:{preds}", own, lambda **kw: st.slider(
                "Flag at p ≥", 0.0, 1.0, step=0.01, help="Default: the table's own screening threshold "
                "(0.5 for tables without one).", **kw))
        if not safe:
            st.warning("Safe view is off for this session: images are shown unblurred.")
        n_rev = len(revealed())
        if n_rev and safe:
            st.caption(f"{gallery.plural(n_rev, 'image')} revealed in this session.")
            st.button("Re-blur all", on_click=reblur_all, icon=":material/blur_on:",
                      help="Censor again every image revealed in this session.")
    ctx = Ctx(name, ModelChoice.from_key(model_key), bool(safe), censor if censor in CENSOR_MODES else "blur",
              float(eb_threshold), bool(random_ok), None if preds == "(none)" else preds, status,
              None if pred_threshold is None else float(pred_threshold), float(strength) / 100.0, bool(grey))
    _banners(ctx)
    return ctx


def _banners(ctx: Ctx) -> None:
    """The dataset's safe-view state at the top of every page: a broken policy file (all
    censored), or the known-safe mark (who and when)."""
    policy, error = ctx.policy()
    if error:
        st.error(f"**The label policy cannot be read, so every image is censored.** {error}\n\n"
                 f"Fix the file, or set the policy again: `{CLI} policy {ctx.name} --show`.")
    elif policy.known_safe:
        ks = policy.known_safe
        st.info(f"**Dataset `{ctx.name}` is marked known-safe** by {ks.get('by')} on {str(ks.get('at'))[:10]}: "
                "its images are shown unblurred unless something flags them. Change it on the Home page.",
                icon=":material/verified_user:")


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn the workbench's own errors into messages (never a traceback)."""
    try:
        yield
    except WeightsMissing as e:
        st.warning(f"**Model weights are not available here.**\n\n{e}")
    except UnsafePath as e:
        st.error(f"**Refused a path outside the dataset root.** {e}")
    except WorkbenchError as e:
        st.error(str(e))


# =========================================================================== images


def image_bytes(ctx: Ctx, row: int, *, side: int = THUMB_SIDE) -> tuple[bytes, str]:
    """(JPEG bytes, rendering mode) of dataset row ``row`` as the safe view serves it.

    The mode is ``raw`` only when the decision clears the image, the user revealed it in
    this session, or safe view is off; ``regions`` when revealed with its colour regions
    blacked out; else the censoring mode.
    """
    rec = ctx.ds.images.iloc[int(row)]
    cid = str(rec["id"])
    censored, _ = ctx.censored_at(row)
    level = revealed().get(cid)
    mode = thumbs.mode_for(censored, safe_view=ctx.safe_view, revealed=level, censor=ctx.censor)
    grey = bool(ctx.grey_revealed and level and censored and mode in ("raw", "regions"))
    strength = ctx.blur_strength if mode == "blur" else None
    return thumbs.thumbnail_bytes(ctx.ds, rec, side, mode, strength=strength, grey=grey), mode


#: Hover thumbnails on the map for at most this many points (each is a small JPEG in the page).
HOVER_MAX = 600
HOVER_SIDE = 128


def hover_preview_ids(ids: Sequence[str], *, first: Sequence[str] = (), limit: int = HOVER_MAX,
                      seed: int = 0) -> list[str]:
    """The ids (at most ``limit``) whose map points get a hover thumbnail: all when they fit,
    else ``first`` (the open image, a selection), then a seeded sample of the rest."""
    ids = list(dict.fromkeys(map(str, ids)))
    if len(ids) <= limit:
        return ids
    known = set(ids)
    head = [i for i in dict.fromkeys(map(str, first)) if i in known][:limit]
    rest = np.array([i for i in ids if i not in set(head)], dtype=object)
    pick = np.random.default_rng(seed).choice(len(rest), size=limit - len(head), replace=False)
    return head + rest[np.sort(pick)].tolist()


def hover_previews(ctx: Ctx, ids: Sequence[str], *, side: int = HOVER_SIDE) -> dict[str, tuple[str, str]]:
    """{id: (data URI of the image as the safe view serves it, its reason)} for map hover."""
    images = ctx.ds.images
    out = {}
    for cid, row in zip(ids, gallery.rows_of_ids(images, ids), strict=True):
        try:
            data, _ = image_bytes(ctx, row, side=side)
        except (ImageError, UnsafePath, OSError):
            continue  # an unreadable file: its point shows the hover text only
        censored, reason = ctx.censored_at(row)
        out[cid] = (thumbs.data_uri(data), ("censored: " if censored else "shown: ") + reason)
    return out


def plotly_js_url() -> str:
    """The URL of plotly.js as this app serves it (Streamlit's static serving of ``static/``
    beside app.py), copied there from the plotly package on first use: offline, no CDN."""
    import plotly

    from .files import copy_file

    target = config.REPO / "static" / "plotly.min.js"
    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        copy_file(source, target, durable=False)
    return "/app/static/plotly.min.js"


def hover_map(ctx: Ctx, fig, ids: Sequence[str], *, height: int = 540) -> None:
    """Draw a map figure with safe-view thumbnails of ``ids`` on hover (an HTML component:
    hover only; clicks and lassos need the plain map)."""
    # st.iframe runs the page's script (plotly.js, served by the app itself); it replaced
    # components.v1.html, deprecated since Streamlit 1.5x
    st.iframe(charts.hover_map_html(fig, hover_previews(ctx, ids), plotly_js_url(), height=height),
              height=height + 10)


def reason_line(censored: bool, reason: str) -> str:
    """The one-line reason under an image: why it is censored, or why it may be shown."""
    icon = ":material/visibility_off:" if censored else ":material/visibility:"
    return f"{icon} {reason}"


def reveal_controls(ctx: Ctx, cid: str, reason: str, *, key: str) -> None:
    """Reveal behind a warning that names the reason (one click), with the colour-regions
    preview as a middle step; Re-blur once revealed. Session-only, per image."""
    level = revealed().get(cid)
    k = f"{key}-{cid[:16]}"
    if level == "full":
        st.button("Re-blur", key=f"hide-{k}", on_click=_hide, args=(cid,), icon=":material/visibility_off:")
        return
    with st.popover("Reveal", icon=":material/visibility:", help="Show this one image, after a warning"):
        st.warning(f"**This image is censored:** {reason}. Revealing it shows it unblurred in this browser "
                   "session only.", icon=":material/warning:")
        if level != "regions":
            st.button("Show with wound colours blacked out", key=f"regions-{k}", on_click=_reveal,
                      args=(cid, "regions"), help="Blood-like regions stay black; the rest is shown.")
        st.button("Show the full image", key=f"reveal-{k}", on_click=_reveal, args=(cid, "full"), type="primary")
    if level == "regions":
        st.button("Re-blur", key=f"hide-{k}", on_click=_hide, args=(cid,), icon=":material/visibility_off:")


def details_link(ctx: Ctx, cid: str) -> None:
    """A link to the image's detail view. It carries only the dataset, model and image id: the
    detail view draws the image through :func:`show_image` again, so it can reveal nothing."""
    nav_link("image", "Details", ctx, icon=":material/info:", id=str(cid))


def show_image(ctx: Ctx, row: int, *, key: str, caption: str | None = None, side: int = THUMB_SIDE,
               reveal: bool = True, width="stretch", details: bool = True) -> None:
    """Dataset row ``row`` through the safe view, its one-line reason, its Reveal control and
    (unless ``details`` is False, as on the detail view itself) a link to its detail view."""
    rec = ctx.ds.images.iloc[int(row)]
    cid = str(rec["id"])
    censored, reason = ctx.censored_at(row)
    try:
        data, mode = image_bytes(ctx, row, side=side)
    except (ImageError, UnsafePath, OSError) as e:
        st.warning(f"cannot show {rec['path']}: {e}")
        if details:  # the detail view says what is wrong with the file
            details_link(ctx, cid)
        return
    st.image(data, caption=caption, width=width, alt=f"image {cid[:16]}")
    st.caption(reason_line(censored, reason))
    with st.container(horizontal=True, gap="small"):  # wraps in narrow columns rather than cutting labels
        if details:
            details_link(ctx, cid)
        if reveal and ctx.safe_view and censored:
            reveal_controls(ctx, cid, reason, key=key)


def show_upload(ctx: Ctx, img, *, key: str, caption: str | None = None, side: int = THUMB_SIDE) -> None:
    """An outside image: nothing is known about it, so it is censored under safe view until revealed."""
    from PIL import Image as _Image

    thumb = img.copy()
    thumb.thumbnail((side, side), _Image.Resampling.BILINEAR)
    cid = f"upload:{key}"
    level = revealed().get(cid)
    mode = thumbs.mode_for(None, safe_view=ctx.safe_view, revealed=level, censor=ctx.censor)
    grey = bool(ctx.grey_revealed and level)
    data = safety.jpeg(safety.rendered(thumb, mode, strength=ctx.blur_strength if mode == "blur" else None,
                                       grey=grey))
    st.image(data, caption=caption, width="stretch", alt="uploaded image")
    reason = "uploaded image: not yet screened"
    st.caption(reason_line(True, reason))
    if ctx.safe_view:
        reveal_controls(ctx, cid, reason, key=f"up-{key}")


def image_grid(ctx: Ctx, rows: pd.DataFrame, *, key: str, columns: int = 6, caption: Callable | None = None,
               actions: Callable | None = None, details: bool = True) -> None:
    """A grid of dataset images through the safe view (:func:`show_image`).

    Parameters
    ----------
    rows : DataFrame with a ``row`` column (dataset row numbers) and whatever ``caption`` reads
    caption : ``caption(record) -> str`` under each image
    actions : ``actions(record, key)`` draws extra widgets under each image (buttons, links)
    details : a *Details* link under each image to its detail view
    """
    if rows.empty:
        st.caption("Nothing to show.")
        return
    recs = rows.to_dict("records")
    for start in range(0, len(recs), columns):
        cols = st.columns(columns)
        for col, rec in zip(cols, recs[start:start + columns], strict=False):
            with col:
                r = int(rec["row"])
                k = f"{key}-{start}-{r}"
                show_image(ctx, r, key=k, caption=caption(rec) if caption else None, details=details)
                if actions is not None:
                    actions(rec, k)


def selection_bar(ctx: Ctx, picked: Sequence[str], source: str, text: str) -> None:
    """Remember a plot selection for the gallery: ``text`` beside a link that opens it there."""
    set_selection(ctx.name, picked, source)
    left, right = st.columns([3, 1])
    left.markdown(text)
    with right:
        nav_link("gallery", "Open selection in Gallery", ctx, icon=":material/grid_view:")


def nav_link(page: str, label: str, ctx: Ctx, icon: str | None = None, **params) -> None:
    """A link to another page keeping dataset and model (and ``params``) in its URL."""
    qp = {"dataset": ctx.name or "", "model": ctx.model.key if ctx.model else ""}
    if ctx.random_ok:
        qp["random"] = "1"
    qp.update({k: str(v) for k, v in params.items() if v is not None})
    st.page_link(PAGES[page], label=label, icon=icon, query_params=qp)


def progress_callback(bar, text: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback driving ``st.progress`` bar ``bar``."""

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text} {done}/{total}")

    return update


def short(cid: str, n: int = 10) -> str:
    return str(cid)[:n]


# =========================================================================== annotation workflow
# Helpers of pages 7-9 (Annotate, Expand, Agreement); the logic lives in lib/workflow.py and lib/expansion.py.

PAGES.update({"annotate": "views/7_Annotate.py", "expand": "views/8_Expand.py", "agreement": "views/9_Agreement.py"})

#: Session key of the review sample sent from Expand to Annotate.
REVIEW_QUEUE_KEY = "wb:review-queue"


PAGES.update({"image": "views/12_Image.py", "export": "views/13_Export.py", "map": "views/14_Map.py"})

#: The Annotate queue's table carries thumbnails for at most this many rows (from the current one).
QUEUE_THUMBS = 100
QUEUE_THUMB_SIDE = 96


def queue_table(ctx: Ctx, queue: pd.DataFrame, my_labels: dict, pos: int, *,
                limit: int = QUEUE_THUMBS) -> pd.DataFrame:
    """The Annotate queue as its reader needs it: position, a thumbnail through the safe view
    (for ``limit`` rows from the current one: a long queue would weigh the page down), file
    name, task and the annotator's own label. Seeds and ranks stay out: reviews are blind."""
    rows = queue["row"].to_numpy(int)
    paths = ctx.ds.images["path"].to_numpy()[rows]
    pics: list[str | None] = [None] * len(queue)
    start = min(max(int(pos), 0), max(len(queue) - limit, 0))
    for i in range(start, min(len(queue), start + limit)):
        try:
            pics[i] = thumbs.data_uri(image_bytes(ctx, int(rows[i]), side=QUEUE_THUMB_SIDE)[0])
        except (ImageError, UnsafePath, OSError):
            continue  # an unreadable file: its row has a name and no picture
    mine = [str(my_labels.get(str(i)) or "").replace("|", ", ") for i in queue["id"]]
    return pd.DataFrame({"#": np.arange(1, len(queue) + 1), "image": pics,
                         "file": [gallery.file_name(p, 60) for p in paths],
                         "task": queue["task"].astype(str).to_numpy(), "your label": mine})


@st.cache_data(show_spinner=False, max_entries=32)
def _states(home: str, where: str, who: str | None, last_event: int) -> dict:
    from .workflow import annotation_status

    return annotation_status(annotation_store().current(where), who)


def annotation_states(name: str, set_name: str | None, who: str | None) -> dict:
    """:func:`lib.workflow.annotation_status` of a dataset's label set, cached until a label changes."""
    from .annotations import scope

    return _states(_home(), scope(name, set_name), who, annotation_store().last_event(name))


@st.cache_data(show_spinner="Comparing perceptual hashes…", max_entries=32)
def _near(home: str, name: str, cid: str, token: str) -> pd.DataFrame:
    from .quality import near_duplicates_of

    ds = load_dataset(name)
    ids = near_duplicates_of(ds, [cid], ds.unique_ids) - {cid}
    rows = gallery.rows_of_ids(ds.images, sorted(ids))
    return pd.DataFrame({"row": rows, "id": ds.images["id"].to_numpy()[rows], "path": ds.images["path"].to_numpy()[rows]})


def near_duplicates_of_image(name: str, cid: str) -> pd.DataFrame:
    """The dataset's near-duplicates of one image by the perceptual hash (``row, id, path``)."""
    return _near(_home(), name, cid, catalog.dataset_token(name))


def picked(name: str) -> set[str]:
    """The images ticked in the Gallery for bulk actions (this session, this dataset)."""
    return _ss().setdefault(f"wb:picked:{name}", set())


def toggle_pick(name: str, cid: str) -> None:
    picked(name).symmetric_difference_update({str(cid)})


def bulk_bar(ctx: Ctx, store, who: str | None, schemas: dict, filtered_ids, page_ids,
             n_filtered: int | None = None) -> None:
    """The Gallery's selection row: select the page or every filtered image, then label them all
    at once (one transaction, undoable), send them to the Annotate page or export them.
    ``filtered_ids``: the filtered images' ids, or a callable returning them (called only when
    needed). ``n_filtered``: how many distinct ids they hold, when the caller knows."""
    from .annotations import AnnotationError, scope

    sel = picked(ctx.name)

    def all_ids():  # listed only when the button is pressed (1M rows: half a second a run)
        return pd.Series(filtered_ids() if callable(filtered_ids) else filtered_ids, dtype="string")

    if n_filtered is None:
        n_filtered = len(pd.unique(all_ids()))
    c = st.columns([2, 1, 1, 1])
    c[0].markdown(f"**{len(sel)}** selected for bulk actions" if sel else "Tick images (or select them all) "
                  "to label, review or export them together.")
    c[1].button("Select this page", key="bulk-page", on_click=lambda: sel.update(map(str, page_ids)))
    c[2].button(f"Select all {n_filtered} filtered", key="bulk-all",
                on_click=lambda: sel.update(dict.fromkeys(map(str, all_ids().tolist()))))
    c[3].button("Clear", key="bulk-clear", on_click=sel.clear, disabled=not sel)
    undo = _ss().get(f"wb:undo:{ctx.name}")
    if undo:
        u1, u2 = st.columns([3, 1])
        u1.success(f"Labelled {gallery.plural(len(undo['previous']), 'image')} **{undo['label']}** ({undo['set']}, {undo['who']}).")
        if u2.button("Undo", key="bulk-undo", icon=":material/undo:"):
            store.restore(undo["where"], undo["who"], undo["previous"])
            _ss().pop(f"wb:undo:{ctx.name}", None)
            st.rerun()
    if not sel:
        return
    with st.container(border=True):
        b = st.columns([2, 2, 2, 1, 1])
        set_name = b[0].selectbox("Label set", list(schemas), key="bulk-set", format_func=label_set_name)
        schema = schemas[set_name]
        value = (b[1].multiselect("Tags", list(schema.values), key="bulk-tags") if schema.multi else
                 b[1].selectbox("Label", list(schema.values), key="bulk-label"))
        if b[2].button(f"Label {gallery.plural(len(sel), 'image')}", key="bulk-apply", type="primary", disabled=who is None or not value,
                       help="One transaction: all labelled or none; Undo puts the previous labels back." if who else
                       "Type your annotator name in the sidebar first."):
            where = scope(ctx.name, set_name)
            try:
                prev = store.bulk_label(where, sorted(sel), who, value, context={"source": "gallery bulk"})
            except AnnotationError as e:
                st.error(str(e))
            else:
                _ss()[f"wb:undo:{ctx.name}"] = {"where": where, "who": who, "previous": prev, "set": set_name,
                                                 "label": ", ".join(value) if isinstance(value, list) else value}
                st.rerun()
        with b[3]:
            if st.button("Review", key="bulk-review", help="Open them as the Annotate page's queue"):
                set_selection(ctx.name, sorted(sel), "Gallery")
                st.switch_page(PAGES["annotate"])
        with b[4]:
            if st.button("Export", key="bulk-export", help="Export these images (Export page)"):
                set_selection(ctx.name, sorted(sel), "Gallery")
                st.switch_page(PAGES["export"])


def label_set_name(name: str) -> str:
    from .annotations import DEFAULT_SET

    return f"{name} (Blur / Maybe / Ok)" if name == DEFAULT_SET else name


def label_set_form(name: str, store) -> None:
    """Add a label set to dataset ``name``: one of the shipped examples, or one's own."""
    from .annotations import AnnotationError, parse_label_set, shipped_label_sets

    shipped = shipped_label_sets()
    have = {s.name for s in store.schemas(name)}
    c1, c2 = st.columns([3, 1])
    pick = c1.selectbox("An example", [n for n in shipped if n not in have] or ["(all added)"], key="ls-pick",
                        help="wound-type: one wound type per image; tags: several modality / body-region tags.")
    if c2.button("Add", key="ls-add", disabled=pick not in shipped):
        store.add_schema(name, shipped[pick])
        st.rerun()
    with st.form("ls-own", border=False):
        st.markdown("**…or your own**: one value per line as `value, key, meaning` (meaning: sensitive, safe or "
                    "unknown; what a review with this value says to the safe view).")
        own = st.text_input("Name", placeholder="e.g. modality", max_chars=40)
        text = st.text_area("Values", placeholder="photo, f, unknown\nx-ray, x, unknown", height=120)
        multi = st.checkbox("Several values per image (tags)")
        if st.form_submit_button("Create"):
            try:
                store.add_schema(name, parse_label_set(own, text, multi=multi))
            except AnnotationError as e:
                st.error(str(e))
            else:
                st.rerun()


#: Browser cookie that remembers the annotator's name between sessions (nothing else: it
#: can never reveal an image or switch safe view off).
ANNOTATOR_COOKIE = "wb_annotator"


def _cookie(name: str) -> str | None:
    """A cookie of this browser session, or None (also outside a real browser session)."""
    try:
        value = st.context.cookies.get(name)
    except Exception:  # no browser session (bare mode, some test runners)
        return None
    return value if isinstance(value, str) else None


def _remember_annotator(name: str) -> None:
    """Store the name in this browser (a cookie on the app's own origin, one year)."""
    import json as _json

    st.iframe(
        "<script>parent.document.cookie = " + _json.dumps(f"{ANNOTATOR_COOKIE}=") + " + encodeURIComponent("
        + _json.dumps(name) + ") + '; path=/; max-age=31536000; SameSite=Strict';</script>", height=1)


def annotator_name() -> str | None:
    """The annotator's name: typed once in the sidebar, remembered by this browser; None
    until it is usable."""
    from urllib.parse import unquote

    from .annotations import AnnotationError, check_annotator

    with st.sidebar:
        st.divider()
        if "wb:annotator" not in _ss():
            remembered = unquote(_cookie(ANNOTATOR_COOKIE) or "")
            _ss()["wb:annotator"] = remembered[:64] if remembered.isprintable() else ""
        raw = _persistent("annotator", "", lambda **kw: st.text_input(
            "Annotator name", placeholder="your name", max_chars=64,
            help="Every label you give is stored under this name; this browser remembers it.", **kw))
        if not str(raw).strip():
            return None
        try:
            name = check_annotator(raw)
        except AnnotationError as e:
            st.error(str(e))
            return None
        if unquote(_cookie(ANNOTATOR_COOKIE) or "") != name and _ss().get("wb:annotator-stored") != name:
            _remember_annotator(name)  # once per name and session: the cookie is read at the next session's start
            _ss()["wb:annotator-stored"] = name
        return name


@st.cache_resource(show_spinner="Loading the expansion…", max_entries=8)
def _expansion(home: str, name: str, expansion: str, stamp: int):
    from .expansion import load_expansion

    return load_expansion(name, expansion)


def load_expansion(name: str, expansion: str):
    """A saved expansion (:func:`lib.expansion.load_expansion`; shared, never modify it)."""
    from .expansion import expansion_path

    meta = expansion_path(name, expansion) / "meta.json"
    return _expansion(_home(), name, expansion, meta.stat().st_mtime_ns if meta.exists() else 0)


def send_review(name: str, expansion: str, file_name: str) -> None:
    """Hand a saved review sample to the Annotate page."""
    _ss()[REVIEW_QUEUE_KEY] = {"dataset": name, "expansion": expansion, "file": file_name}


def sent_review(name: str) -> dict | None:
    sent = _ss().get(REVIEW_QUEUE_KEY)
    return sent if sent and sent.get("dataset") == name else None


# =========================================================================== detectors
# Helpers of the Screen page (10) and of the detector parts of Annotate and Gallery; the
# logic lives in lib/detector.py.

PAGES.update({"screen": "views/10_Screen.py"})


def _detectors_stamp() -> str:
    from .detector import detectors_dir, known_names

    return ";".join(_file_stamp(detectors_dir() / n / "detector.json") for n in known_names())


@st.cache_data(show_spinner=False, max_entries=8)
def _detector_list(home: str, stamp: str) -> pd.DataFrame:
    from .detector import list_detectors

    return list_detectors()


def detector_list() -> pd.DataFrame:
    """:func:`lib.detector.list_detectors`, cached until a detector is saved."""
    return _detector_list(_home(), _detectors_stamp())


def detector_names() -> list[str]:
    """The saved detectors that load (damaged ones are listed by :func:`detector_list` with their error)."""
    df = detector_list()
    return df.loc[df["error"].isna(), "name"].tolist()


@st.cache_resource(show_spinner="Loading the detector…", max_entries=8)
def _detector(home: str, name: str, stamp: str):
    from .detector import load

    return load(name)


def load_detector(name: str):
    """A saved detector (:func:`lib.detector.load`; shared by every session: never modify it)."""
    from .detector import detector_dir

    return _detector(_home(), name, _file_stamp(detector_dir(name) / "detector.json"))


@st.cache_data(show_spinner=False, max_entries=16)
def _screening_table(path: str, stamp: str) -> pd.DataFrame:
    from .detector import read_screening

    return read_screening(path)


def screening_table(name: str, det_name: str) -> pd.DataFrame | None:
    """The table ``python -m lib predict`` (or the Screen page) wrote for this dataset and detector, or None."""
    from .detector import prediction_path

    path = prediction_path(name, det_name)
    return _screening_table(str(path), _file_stamp(path)) if path.exists() else None


def use_predictions(path) -> None:
    """Make ``path`` the sidebar's prediction table (the safe view's detector) from the next run on."""
    _ss()["wb:preds"] = str(path)


def retrain_panel(ctx: Ctx, det_name: str, store) -> None:
    """The Annotate page's "Retrain" button for detector ``det_name`` (enabled once images of
    this dataset were reviewed that it has not learnt from) and its learning curve."""
    from . import detector as det_mod

    det = load_detector(det_name)
    new = det_mod.reviewed_ids(ctx.name, store) - det.labelled_ids()
    with st.expander(f"Detector `{det_name}`: {gallery.plural(len(new), 'review')} it has not learnt from yet", expanded=bool(new)):
        c1, c2 = st.columns([1, 3])
        if c1.button("Retrain", key="an-retrain", disabled=not new, icon=":material/model_training:",
                     help="Refit the detector on all labels so far: its datasets and label file, this dataset, "
                          "and every review in the annotation store."):
            bar = c2.progress(0.0, text="Retraining")
            try:
                det_mod.retrain(det_name, add_datasets=[ctx.name], store=store,
                                progress=progress_callback(bar, "Retraining"))
            except WorkbenchError as e:
                st.error(str(e))
            else:
                st.rerun()
        curve = det_mod.learning_curve(det)
        if len(curve) >= 1:
            st.plotly_chart(charts.learning_curve_figure(curve), key="an-curve")
            st.caption("Validation AUC, and recall and specificity at the 95%-recall screening threshold, after each "
                       "training (recall is at least 0.95 on validation by construction; specificity is the share "
                       "of safe validation images the threshold clears).")


# =========================================================================== quality
# Helpers of page 11 (Quality); the logic lives in lib/quality.py.

PAGES.update({"quality": "views/11_Quality.py"})


def quality_report(ctx: Ctx, threshold: float, use_hash: bool, hash_only: bool, k: int):
    """:func:`lib.quality.run_quality` of the dataset under the chosen model, shared by every
    session; the first computation of the hashes draws a progress bar (they are cached on disk)."""
    from . import quality

    choice = ctx.model
    key = ("quality", _home(), ctx.name, choice.key, float(threshold), bool(use_hash), bool(hash_only), int(k),
           _token(ctx.name))
    model = resolved(choice)
    return _with_progress(key, lambda cb: quality.run_quality(
        ctx.name, model, threshold=threshold, use_hash=use_hash, hash_only=hash_only, k=k, progress=cb),
        "Hashing images (once; cached on disk)", max_entries=8)
