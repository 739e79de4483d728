"""Zero-shot classification: class names and prompt templates in, per-image class probabilities out.

Standard CLIP practice: each class's texts are placed in every template, each prompt is
encoded and L2-normalised, the prompts of a class are averaged and the mean renormalised;
an image's class probabilities are the softmax of ``logit_scale * cosine`` with the
model's own learned logit scale.

Class sets and template sets are data (``lib/prompts/classes/*.json``,
``lib/prompts/templates/*.json``, format in ``lib/prompts/README.md``). A class set can map
dataset values (e.g. ``sensitive``) to its class names (``Blur``) so predictions can be
scored against the dataset's labels with :mod:`lib.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from .errors import ModelError, WorkbenchError

PROMPTS_DIR = Path(__file__).with_name("prompts")
CLASSES_DIR = PROMPTS_DIR / "classes"
TEMPLATES_DIR = PROMPTS_DIR / "templates"
DEFAULT_TEMPLATES = "generic"
PLACEHOLDER = "{c}"


class PromptError(WorkbenchError):
    """A class set or template set is unknown or malformed."""


# --------------------------------------------------------------------------- prompt data


@dataclass(frozen=True)
class TemplateSet:
    """Prompt templates, each containing ``{c}`` once or more."""

    name: str
    templates: tuple[str, ...]
    description: str = ""

    def fill(self, text: str) -> list[str]:
        # str.replace, not str.format: a template may contain other braces.
        return [t.replace(PLACEHOLDER, text) for t in self.templates]


@dataclass(frozen=True)
class ClassSet:
    """Class names, the texts that stand for each in prompts, and how dataset values map to them."""

    name: str
    classes: tuple[str, ...]
    texts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    positive: str | None = None
    templates: str | None = None
    label_column: str = "label"
    label_map: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def texts_of(self, cls: str) -> tuple[str, ...]:
        return self.texts.get(cls) or (cls,)

    def map_labels(self, values: Sequence, policy=None) -> np.ndarray:
        """Dataset values (n,) -> class names (n,) object array, None where a value maps to no class.

        ``label_map`` first; otherwise a value equal to a class name, ignoring case; otherwise,
        for a two-class set and a :class:`lib.sensitivity.LabelPolicy`, a value the policy maps
        to sensitive is the positive class and one it maps to safe the other (so a dataset
        labelled ``burns`` / ``normal`` is scored by MedGore's Blur / Normal).
        """
        from .sensitivity import SAFE, SENSITIVE

        by_lower = {c.lower(): c for c in self.classes}
        pos = self.binary_positive
        neg = next((c for c in self.classes if c != pos), None) if pos is not None else None
        out = np.empty(len(values), dtype=object)
        seen: dict[str, str | None] = {}
        for i, v in enumerate(values):
            if _missing(v):
                out[i] = None
                continue
            v = str(v)
            if v not in seen:
                cls = self.label_map.get(v) or by_lower.get(v.lower())
                if cls is None and policy is not None and pos is not None:
                    cls = {SENSITIVE: pos, SAFE: neg}.get(policy.classify(v))
                seen[v] = cls
            out[i] = seen[v]
        return out

    @property
    def binary_positive(self) -> str | None:
        """The positive class of a two-class set: declared, else the one class the label
        vocabulary calls sensitive, else the first; None for other sets."""
        if len(self.classes) != 2:
            return None
        if self.positive:
            return self.positive
        from .sensitivity import positive_class

        return positive_class(self.classes) or self.classes[0]


def _missing(v) -> bool:
    return v is None or (np.ndim(v) == 0 and bool(pd.isna(v)))


def class_sets() -> list[str]:
    """Names of the shipped class sets."""
    return sorted(p.stem for p in CLASSES_DIR.glob("*.json"))


def template_sets() -> list[str]:
    """Names of the shipped template sets."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.json"))


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PromptError(f"cannot read {what} file {path}: {e}") from None
    if not isinstance(data, dict):
        raise PromptError(f"{what} file {path} must hold a JSON object")
    return data


def _check_templates(templates: Sequence[str], where: str) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) for t in templates):
        raise PromptError(f"{where}: 'templates' must be a non-empty list of strings")
    missing = [t for t in templates if PLACEHOLDER not in t]
    if missing:
        raise PromptError(f"{where}: template(s) without the {PLACEHOLDER} placeholder: {missing}")
    return templates


def load_templates(ref: str | Sequence[str] | TemplateSet) -> TemplateSet:
    """A template set from a shipped name, a JSON file, a template string with ``{c}``, or a list."""
    if isinstance(ref, TemplateSet):
        return ref
    if not isinstance(ref, str):
        return TemplateSet("custom", _check_templates(ref, "templates"))
    if (TEMPLATES_DIR / f"{ref}.json").exists():
        path = TEMPLATES_DIR / f"{ref}.json"
    elif ref.endswith(".json") or Path(ref).is_file():
        path = Path(ref).expanduser()
        if not path.is_file():
            raise PromptError(f"template file {ref} does not exist")
    elif PLACEHOLDER in ref:
        return TemplateSet("custom", (ref,))
    else:
        raise PromptError(f"unknown template set {ref!r}: use one of {', '.join(template_sets())}, "
                          f"a JSON file, or a template containing {PLACEHOLDER}")
    data = _read_json(path, "template")
    return TemplateSet(path.stem, _check_templates(data.get("templates") or [], str(path)),
                       data.get("description", ""))


def _class_set_from_dict(name: str, data: dict, where: str) -> ClassSet:
    entries = data.get("classes")
    if not isinstance(entries, list) or not entries:
        raise PromptError(f"{where}: 'classes' must be a non-empty list")
    names, texts = [], {}
    for e in entries:
        if isinstance(e, str):
            names.append(e)
        elif isinstance(e, dict) and isinstance(e.get("name"), str):
            names.append(e["name"])
            t = e.get("texts", e.get("text"))
            if t:
                texts[e["name"]] = (t,) if isinstance(t, str) else tuple(t)
        else:
            raise PromptError(f"{where}: a class must be a name or {{'name': ..., 'texts': [...]}}, got {e!r}")
    if len(set(names)) != len(names) or len(names) < 2:
        raise PromptError(f"{where}: need at least two distinct class names, got {names}")
    label_map = {str(k): str(v) for k, v in (data.get("label_map") or {}).items()}
    unknown = sorted(set(label_map.values()) - set(names)) + \
        ([data["positive"]] if data.get("positive") and data["positive"] not in names else [])
    if unknown:
        raise PromptError(f"{where}: label_map/positive name unknown classes {unknown}")
    return ClassSet(name, tuple(names), texts, data.get("positive"), data.get("templates"),
                    data.get("label_column") or "label", label_map, data.get("description", ""))


def load_classes(ref: str | Sequence[str] | ClassSet) -> ClassSet:
    """A class set from a shipped name, a JSON file, a comma-separated list, or a list of names."""
    if isinstance(ref, ClassSet):
        return ref
    if not isinstance(ref, str):
        return _class_set_from_dict("custom", {"classes": list(ref)}, "classes")
    if (CLASSES_DIR / f"{ref}.json").exists():
        path = CLASSES_DIR / f"{ref}.json"
    elif ref.endswith(".json") or Path(ref).is_file():
        path = Path(ref).expanduser()
        if not path.is_file():
            raise PromptError(f"class file {ref} does not exist")
    elif "," in ref:
        names = [c.strip() for c in ref.split(",") if c.strip()]
        return _class_set_from_dict("custom", {"classes": names}, "classes")
    else:
        raise PromptError(f"unknown class set {ref!r}: use one of {', '.join(class_sets())}, "
                          "a JSON file, or a comma-separated list of class names")
    return _class_set_from_dict(path.stem, _read_json(path, "class"), str(path))


def prompts_for(classes: ClassSet, templates: TemplateSet) -> dict[str, list[str]]:
    """Every prompt of every class: each of its texts in each template."""
    return {c: [p for text in classes.texts_of(c) for p in templates.fill(text)] for c in classes.classes}


# --------------------------------------------------------------------------- the maths


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(backend, classes: ClassSet | Sequence[str] | str,
                     templates: TemplateSet | Sequence[str] | str) -> np.ndarray:
    """One text embedding per class: prompts encoded, normalised, averaged, renormalised.

    Parameters
    ----------
    backend : a model with a text tower (``backend.has_text``)
    classes : class set (or anything :func:`load_classes` accepts); C classes
    templates : template set (or anything :func:`load_templates` accepts)

    Returns
    -------
    ndarray of shape (C, D), float32, rows of unit norm, in ``classes`` order.
    """
    require_text(backend)
    cs, ts = load_classes(classes), load_templates(templates)
    prompts = prompts_for(cs, ts)
    flat = [p for c in cs.classes for p in prompts[c]]
    vecs = _unit(backend.encode_texts(flat))
    out, start = [], 0
    for c in cs.classes:
        n = len(prompts[c])
        out.append(vecs[start:start + n].mean(axis=0))
        start += n
    return _unit(np.stack(out))


def predict(image_vectors: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """Class probabilities: softmax over classes of ``logit_scale * cosine(image, class)``.

    Parameters
    ----------
    image_vectors : (N, D) image embeddings (normalised here if they are not unit)
    class_emb : (C, D) class embeddings from :func:`class_embeddings`
    logit_scale : the model's temperature (``backend.logit_scale``, CLIP's exp'ed learned scale)

    Returns
    -------
    ndarray of shape (N, C), float64, rows summing to 1.
    """
    cos = _unit(image_vectors).astype(np.float64) @ _unit(class_emb).astype(np.float64).T
    return softmax(float(logit_scale) * cos, axis=1)


def require_text(backend, task: str = "zero-shot classification") -> None:
    """Raise :class:`ModelError` naming ``task`` when ``backend`` has no text tower."""
    if not getattr(backend, "has_text", False):
        raise ModelError(
            f"{task} needs a text tower, and model {backend.spec!r} has none; "
            "use a CLIP-style model (open_clip:..., hf:..., e.g. biomedclip)"
        )


# --------------------------------------------------------------------------- a dataset run


@dataclass
class ZeroShotResult:
    """Per-image predictions of one dataset and, where its labels map to the classes, scores.

    ``predictions`` columns: id, path, label, [the label column if not ``label``], truth
    (the dataset value mapped to a class name, None when unmappable), pred, p_<class> per
    class, and score (= p_<positive>) for a two-class set.
    """

    dataset: str
    spec: str
    classes: ClassSet
    templates: TemplateSet
    predictions: pd.DataFrame
    metrics: dict | None
    confusion: pd.DataFrame | None
    per_class: pd.DataFrame | None
    n_scored: int
    n_unmapped: int
    path: Path | None

    @property
    def positive(self) -> str | None:
        return self.classes.binary_positive

    def metrics_table(self) -> pd.DataFrame:
        """The scalar metrics as a two-column (metric, value) table."""
        if not self.metrics:
            return pd.DataFrame(columns=["metric", "value"])
        rows = [(k, v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return pd.DataFrame(rows, columns=["metric", "value"])


def default_output(dataset_name: str, classes: ClassSet, templates: TemplateSet, fingerprint: str) -> Path:
    from .files import results_dir, slug

    return results_dir(dataset_name) / (f"zeroshot-{slug(classes.name, 48)}-{slug(templates.name, 48)}-"
                                        f"{fingerprint[:12]}.parquet")


def run_zeroshot(
    dataset_name: str,
    model,
    *,
    classes: ClassSet | Sequence[str] | str = "medgore",
    templates: TemplateSet | Sequence[str] | str | None = None,
    label_column: str | None = None,
    out: str | Path | None = None,
    write: bool = True,
    positive: str | None = None,
) -> ZeroShotResult:
    """Classify every image of a dataset zero-shot and score it against the dataset's labels.

    Image vectors come from the embedding cache (filled first for whatever is missing).

    Parameters
    ----------
    model : a :class:`lib.models.ResolvedModel` (or a spec string, for its defaults)
    classes : class set name, JSON file, comma-separated names or a list
    templates : template set; default the class set's own, else ``generic``
    label_column : dataset column holding the truth; default the class set's (``label``)
    out : predictions parquet path; default ``<home>/results/<dataset>/zeroshot-...parquet``
    write : False to skip writing the parquet
    positive : the positive class of a two-class set (default: the set's own, see
        :attr:`ClassSet.binary_positive`)

    Raises
    ------
    ModelError : the model has no text tower (e.g. ``color``).
    """
    from dataclasses import replace

    from . import dataset as ds_mod
    from .embeddings import embed, load_embeddings
    from .metrics import classification_metrics, confusion_table, per_class_report
    from .models import resolve_model
    from .sensitivity import load_policy

    model = resolve_model(model)
    spec = model.spec
    cs = load_classes(classes)
    if positive is not None:
        if positive not in cs.classes or len(cs.classes) != 2:
            raise PromptError(f"--positive {positive!r}: give one of the two classes {list(cs.classes)}")
        cs = replace(cs, positive=positive)
    ts = load_templates(templates or cs.templates or DEFAULT_TEMPLATES)
    backend = model.backend
    require_text(backend)
    ds = ds_mod.load(dataset_name)
    class_emb = class_embeddings(backend, cs, ts)
    embed(dataset_name, model)
    emb = load_embeddings(dataset_name, model)
    probs = np.concatenate([predict(chunk, class_emb, backend.logit_scale) for _, chunk in emb.iter_chunks()]) \
        if len(emb) else np.zeros((0, len(cs.classes)))

    images = ds.images
    col = label_column or cs.label_column
    values = images[col].tolist() if col in images else [None] * len(images)
    truth = cs.map_labels(values, load_policy(dataset_name) if col == "label" else None)
    names = np.asarray(cs.classes, dtype=object)
    pred = names[probs.argmax(axis=1)] if len(probs) else np.zeros(0, dtype=object)

    df = pd.DataFrame({"id": images["id"].to_numpy(), "path": images["path"].to_numpy(),
                       "label": images["label"].to_numpy()})
    if col != "label" and col in images:
        df[col] = images[col].to_numpy()
    df["truth"] = pd.Series(truth, dtype=object)
    df["pred"] = pd.Series(pred, dtype=object)
    for j, c in enumerate(cs.classes):
        df[f"p_{c}"] = probs[:, j]
    positive = cs.binary_positive
    if positive is not None:
        df["score"] = probs[:, cs.classes.index(positive)]

    has_value = np.asarray([not _missing(v) for v in values], bool)
    scored = np.asarray([t is not None for t in truth], bool)
    metrics = confusion = per_class = None
    if scored.any():
        t, p = truth[scored], pred[scored]
        metrics = classification_metrics(t, probs[scored], labels=list(cs.classes), positive=positive)
        confusion = confusion_table(t, p, labels=list(cs.classes))
        per_class = per_class_report(t, p, labels=list(cs.classes))

    path = None
    if write:
        from .files import write_table

        path = Path(out) if out else default_output(dataset_name, cs, ts, backend.fingerprint)
        write_table(path, df)  # the safe view reads prediction tables: never half of one
    return ZeroShotResult(dataset_name, spec, cs, ts, df, metrics, confusion, per_class,
                          int(scored.sum()), int((has_value & ~scored).sum()), path)
