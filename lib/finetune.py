"""Fine-tuning a registry backbone plus a linear head on a dataset's binary labels.

MedGore Table 3's protocol by default: 1,800 training / 200 validation images (``val_frac``
0.1), 10 epochs, learning rate 2e-5, batch size 16; the paper states no more than that, so
the rest is ours and written into the checkpoint: AdamW (no weight decay, constant learning
rate), cross-entropy over the two classes, the backbone in train mode (dropout, batch
norm), the eval-time preprocessing of the backbone itself (no augmentation).

Labels
    The dataset's binary classes under its label policy (:func:`lib.sensitivity.binary_truth`:
    ``sensitive`` is the positive class, whatever the labels are called; unknown labels are
    left out), each content id once. Rows whose ``split`` is ``test`` are never used (nor are
    ``exclude_ids``); rows whose split is ``val``/``validation`` form the validation set when
    there are any, else a stratified seeded ``val_frac`` of the rest does.

The head
    ``Linear(dim, 2)`` on the backbone's L2-normalised feature scaled by sqrt(dim) (unit mean
    square per component). It therefore reads exactly the vectors the embedding cache stores
    (also unit norm), so :func:`predict` scores a dataset from its cached embeddings.

Modes
    ``full`` trains the image tower and the head (for CLIP models the text tower is kept as
    it is); ``head`` (frozen backbone) trains the head alone on cached embeddings, with a
    default learning rate of 1e-3 (2e-5 would barely move a freshly initialised head).

Checkpoints (``OUT/``, every file through :mod:`lib.files`, never a pickle)
    * ``last.safetensors`` + ``last.json``: after every epoch, the backbone, head and optimizer
      tensors and the epoch, history and recipe. A killed run resumes from there with the
      same arguments; the run is deterministic given its seed (each epoch's shuffling and
      dropout are seeded by (seed, epoch)), so a resumed run ends with the weights an
      uninterrupted one would have (on the same device).
    * ``best/``: the epoch with the best validation score (``select``: validation loss by
      default; never the test split), as the backbone's own checkpoint format (loadable as the
      spec recorded in ``finetune.json``, or simply as ``finetuned:OUT``) and ``head.safetensors``.
    * ``finetune.json``: base model, recipe, classes, per-epoch validation metrics, the best
      epoch with its validation thresholds (max-F1, R90, R95, thesis) and the model spec.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import WorkbenchError

FORMAT = "workbench-finetune"
VERSION = 1
MODES = ("full", "head")
SELECT = ("val_loss", "val_f1_macro_zero", "val_auc")
CLASSES = ("safe", "sensitive")  # column order of the head; "sensitive" is the positive class
VAL_SPLITS = ("val", "validation", "valid")
#: Preprocessed inputs are held in memory (decoded once) up to this many bytes, else decoded per batch.
MEMORY_BUDGET = 1 << 30
#: The screening rule :func:`predict` applies by default (recall first, as the detectors do).
DEFAULT_RULE = "R95"


class FinetuneError(WorkbenchError):
    """Fine-tuning cannot run (labels, recipe, checkpoint folder)."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a fine-tuning run (compared on resume)."""

    dataset: str
    spec: str
    random_weights: bool = False
    mode: str = "full"
    epochs: int = 10
    lr: float = 2e-5
    batch_size: int = 16
    val_frac: float = 0.1
    seed: int = 0
    select: str = "val_loss"
    weight_decay: float = 0.0
    excluded: str = ""  # sha256 of the sorted excluded ids ("" when none)
    positive: str | None = None  # --positive: this label sensitive, the others safe (None: the policy)

    def same_run(self, other: dict) -> list[str]:
        """Fields (other than ``epochs``) that differ from a saved recipe."""
        mine = asdict(self)
        return [k for k in mine if k != "epochs" and other.get(k) != mine[k]]


# =========================================================================== data


def training_rows(name: str, *, val_frac: float = 0.1, seed: int = 0,
                  exclude_ids: Sequence[str] = (), positive: str | None = None) -> pd.DataFrame:
    """The labelled rows of dataset ``name`` a fine-tuning run uses, one per content id
    (classes by the label policy, or label ``positive`` sensitive and the others safe).

    Returns
    -------
    DataFrame with columns ``row`` (dataset row), ``id``, ``path``, ``y`` (1 sensitive, 0 safe)
    and ``part`` (``train`` / ``val``).

    Raises
    ------
    FinetuneError : fewer than 2 training images or 1 validation image of a class.
    """
    from sklearn.model_selection import train_test_split

    from . import dataset as ds_mod
    from .sensitivity import SENSITIVE, binary_truth, run_policy

    if not 0 < val_frac < 1:
        raise FinetuneError(f"--val-frac must lie strictly between 0 and 1, got {val_frac}")
    ds = ds_mod.load(name)
    df = ds.images.reset_index(drop=True).assign(row=lambda d: np.arange(len(d)))
    df = df[~df["id"].duplicated()]
    truth = binary_truth(df["label"], run_policy(name, positive, df["label"].dropna().unique()))
    split = df["split"].astype("string").str.lower() if "split" in df else pd.Series(pd.NA, index=df.index)
    keep = truth.notna().to_numpy() & ~split.eq("test").fillna(False).to_numpy(bool) \
        & ~df["id"].isin(set(exclude_ids)).to_numpy()
    rows = df.loc[keep, ["row", "id", "path"]].copy()
    rows["y"] = (truth[keep] == SENSITIVE).astype(int).to_numpy()
    sp = split[keep]
    if sp.isin(VAL_SPLITS).any():
        rows["part"] = np.where(sp.isin(VAL_SPLITS).fillna(False).to_numpy(bool), "val", "train")
    else:
        counts = np.bincount(rows["y"].to_numpy(), minlength=2)
        if counts.min() < 3:
            raise FinetuneError(f"fine-tuning needs at least 3 labelled images of each class in {name!r} "
                                f"(outside its test split); it has {counts[1]} sensitive and {counts[0]} safe")
        n_val = max(2, int(round(val_frac * len(rows))))
        _, val = train_test_split(np.arange(len(rows)), test_size=n_val, stratify=rows["y"], random_state=seed)
        part = np.full(len(rows), "train", dtype=object)
        part[val] = "val"
        rows["part"] = part
    for p, need in (("train", 2), ("val", 1)):
        c = np.bincount(rows.loc[rows["part"] == p, "y"].to_numpy(), minlength=2)
        if c.min() < need:
            raise FinetuneError(f"the {p} part of {name!r} has {c[1]} sensitive and {c[0]} safe images; "
                                f"fine-tuning needs at least {need} of each")
    return rows.reset_index(drop=True)


class _Inputs:
    """Preprocessed images of ``paths``: held in memory when they fit, else decoded on demand."""

    def __init__(self, backend, paths: list[str], *, budget: int = MEMORY_BUDGET):
        from .images import open_image

        self.backend, self.paths, self._open = backend, paths, open_image
        first = backend.preprocess(open_image(paths[0]))
        self.memory = None
        if first.nbytes * len(paths) <= budget:
            self.memory = np.stack([first] + [backend.preprocess(open_image(p)) for p in paths[1:]])

    def batch(self, idx: np.ndarray) -> np.ndarray:
        if self.memory is not None:
            return self.memory[idx]
        return np.stack([self.backend.preprocess(self._open(self.paths[i])) for i in idx])


# =========================================================================== the model


def _head_input(feats, dim: int):
    """Backbone features (B, dim) -> the head's input: L2-normalised, times sqrt(dim)."""
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(dim)


def head_probabilities(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """p(sensitive) (n,) of unit vectors (n, dim) (e.g. cached embeddings) under a head
    ``weight`` (2, dim), ``bias`` (2,)."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) * math.sqrt(v.shape[1])
    logits = v @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e[:, 1] / e.sum(axis=1)


def _seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _autocast(device: str):
    import contextlib

    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# =========================================================================== checkpoints


def _optimizer_tensors(opt) -> tuple[dict, list]:
    state = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in state["state"].items() for k, v in st.items()}
    return tensors, state["param_groups"]


def _restore_optimizer(opt, tensors: dict, groups: list) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def read_checkpoint(out: str | Path) -> dict:
    """``finetune.json`` of a checkpoint folder."""
    path = Path(out).expanduser() / "finetune.json"
    if not path.is_file():
        raise FinetuneError(f"{Path(out).expanduser()} holds no fine-tuned model (no finetune.json)")
    return json.loads(path.read_text())


# =========================================================================== training


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the folder, the history (one row per epoch), the best epoch."""

    out: Path
    history: pd.DataFrame
    best: dict
    resumed_from: int  # epochs already done when this call started (0: a fresh run)
    spec: str  # registry spec of the best epoch's model (also ``finetuned:<out>``)


def finetune(name: str, spec: str, out: str | Path, *, random_weights: bool = False, mode: str = "full",
             epochs: int = 10, lr: float | None = None, batch_size: int = 16, val_frac: float = 0.1, seed: int = 0,
             select: str = "val_loss", weight_decay: float = 0.0, exclude_ids: Sequence[str] = (),
             positive: str | None = None, device: str | None = None, restart: bool = False, progress: bool = False,
             on_epoch: Callable[[int, dict], None] | None = None, backend=None) -> FinetuneResult:
    """Fine-tune ``spec`` on dataset ``name`` into the checkpoint folder ``out`` (see the module docstring).

    A folder holding a run with the same recipe (epochs aside) is resumed; one with another
    recipe is refused unless ``restart``. ``on_epoch(epoch, record)`` is called after each
    epoch's checkpoint is written (a test stops a run there, as a kill would).

    Raises
    ------
    FinetuneError : bad arguments, too few labels, a different run in ``out``.
    """
    import torch
    from tqdm import tqdm

    from .files import sha256_file, write_bytes, write_json
    from .metrics import classification_metrics, operating_points
    from .models import load_model

    if mode not in MODES:
        raise FinetuneError(f"--mode {mode!r}: choose {' or '.join(MODES)}")
    if select not in SELECT:
        raise FinetuneError(f"--select {select!r}: choose one of {', '.join(SELECT)}")
    if epochs < 1 or batch_size < 1:
        raise FinetuneError(f"--epochs and --batch-size must be at least 1 (got {epochs}, {batch_size})")
    lr = float(lr if lr is not None else (2e-5 if mode == "full" else 1e-3))
    if not lr > 0:
        raise FinetuneError(f"--lr must be positive, got {lr}")
    excluded = hashlib.sha256("\n".join(sorted(map(str, exclude_ids))).encode()).hexdigest() if exclude_ids else ""
    recipe = Recipe(name, spec, bool(random_weights), mode, int(epochs), lr, int(batch_size), float(val_frac),
                    int(seed), select, float(weight_decay), excluded, positive)
    out = Path(out).expanduser().resolve()
    last_json = out / "last.json"
    saved = json.loads(last_json.read_text()) if last_json.is_file() else None
    if saved is not None and not restart:
        diff = recipe.same_run(saved.get("recipe", {}))
        if diff:
            raise FinetuneError(f"{out} holds another fine-tuning run (it differs in {', '.join(diff)}); "
                                "choose another --out, or --restart to overwrite it")
    if saved is not None and restart:
        saved = None

    rows = training_rows(name, val_frac=val_frac, seed=seed, exclude_ids=exclude_ids, positive=positive)
    tr, va = rows[rows["part"] == "train"], rows[rows["part"] == "val"]
    y_tr, y_va = tr["y"].to_numpy(), va["y"].to_numpy()

    _seed_all(seed)
    if backend is None:
        backend = load_model(spec, random_weights=random_weights, seed=seed, device=device, precision="fp32")
    if not getattr(backend, "uses_torch", False):
        raise FinetuneError(f"model {spec!r} has no trainable weights (the color backend is hand-made features); "
                            "fine-tune a timm:, hf: or open_clip: model")
    dev = backend.device
    dim = int(backend.dim)
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, len(CLASSES)).to(dev)
    if mode == "full":
        tower = backend.image_module()
        params = [p for p in tower.parameters()] + list(head.parameters())
        from .dataset import load as load_ds

        ds = load_ds(name)
        x_tr = _Inputs(backend, [str(ds.abspath(p)) for p in tr["path"]])
        x_va = _Inputs(backend, [str(ds.abspath(p)) for p in va["path"]])
    else:
        from .embeddings import embed, load_embeddings

        tower = None
        for p in backend.model.parameters():
            p.requires_grad_(False)
        params = list(head.parameters())
        embed(name, spec, random_weights=random_weights, backend=backend)
        emb = load_embeddings(name, spec, random_weights=random_weights, backend=backend)
        v_tr, v_va = emb.take(tr["row"].to_numpy()), emb.take(va["row"].to_numpy())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    history: list[dict] = []
    best: dict = {}
    start = 0
    if saved is not None:
        from safetensors.torch import load_file

        tensors_path = out / saved["tensors"]
        if not tensors_path.is_file() or sha256_file(tensors_path) != saved["sha256"]:
            raise FinetuneError(f"{tensors_path} is missing or does not match last.json; --restart to start over")
        tensors = load_file(str(tensors_path), device=str(dev))
        backend.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
        _restore_optimizer(opt, tensors, saved["param_groups"])
        history, best, start = saved["history"], saved.get("best") or {}, int(saved["epoch"])
    base = {"format": FORMAT, "version": VERSION, "base": {"spec": spec, "random_weights": bool(random_weights),
                                                           "fingerprint": backend.fingerprint},
            "recipe": asdict(recipe), "classes": list(CLASSES), "positive": "sensitive",
            "data": {"train": int(len(tr)), "val": int(len(va)), "train_sensitive": int(y_tr.sum()),
                     "val_sensitive": int(y_va.sum()), "excluded": len(exclude_ids)}}

    def features(idx_rows: np.ndarray, which: str, train: bool):
        if mode == "full":
            x = torch.from_numpy((x_tr if which == "train" else x_va).batch(idx_rows)).to(dev)
            return _head_input(tower(x).float(), dim)
        v = torch.from_numpy(np.asarray((v_tr if which == "train" else v_va)[idx_rows], np.float32)).to(dev)
        return _head_input(v, dim)

    def validate() -> tuple[float, np.ndarray]:
        if tower is not None:
            tower.eval()
        head.eval()
        ps, losses = [], []
        with torch.no_grad(), _autocast(dev):
            for s in range(0, len(va), batch_size):
                idx = np.arange(s, min(s + batch_size, len(va)))
                logits = head(features(idx, "val", False)).float()
                target = torch.from_numpy(y_va[idx]).long().to(dev)
                losses.append(float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")))
                ps.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        return sum(losses) / len(va), np.concatenate(ps)

    for epoch in range(start + 1, epochs + 1):
        _seed_all(seed * 1000 + epoch)
        order = torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).numpy()
        if tower is not None:
            tower.train()
        head.train()
        total, seen = 0.0, 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"finetune epoch {epoch}/{epochs}", unit="batch",
                   disable=not progress, dynamic_ncols=True)
        for s in bar:
            idx = order[s:s + batch_size]
            with _autocast(dev):
                logits = head(features(idx, "train", True)).float()
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_tr[idx]).long().to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        bar.close()
        val_loss, p_val = validate()
        m = classification_metrics(y_va, p_val, positive=1, labels=[0, 1])
        record = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss,
                  "val_auc": _finite(m["roc_auc"]), "val_f1_macro_zero": m["f1_macro_zero"],
                  "val_precision_macro_zero": m["precision_macro_zero"],
                  "val_recall_macro_zero": m["recall_macro_zero"], "val_double_f1": _finite(m["double_f1"]),
                  "val_accuracy": m["accuracy"]}
        history.append(record)
        score = -val_loss if select == "val_loss" else (record[select] if record[select] is not None else -np.inf)
        if not best or score > best["score"]:
            best_dir = out / "best"
            model_spec = backend.export_checkpoint(best_dir) if mode == "full" else spec
            write_bytes(best_dir / "head.safetensors",
                        _tensor_bytes({"weight": head.weight, "bias": head.bias}))
            pts = operating_points(y_va, p_val, positive=1) if 0 < y_va.sum() < len(y_va) else {}
            best = {"epoch": epoch, "score": float(score), "spec": model_spec,
                    "random_weights": bool(random_weights and mode == "head"), "seed": int(seed),
                    "validation": record, "thresholds": pts}
        tensors = {f"model.{k}": v for k, v in backend.model.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        opt_tensors, groups = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        name_t = "last.safetensors"
        write_bytes(out / name_t, _tensor_bytes(tensors))
        write_json(out / "finetune.json", {**base, "epochs_done": epoch, "history": history, "best": best})
        write_json(last_json, {"recipe": asdict(recipe), "epoch": epoch, "tensors": name_t,
                               "sha256": sha256_file(out / name_t), "param_groups": groups, "history": history, "best": best})
        if on_epoch is not None:
            on_epoch(epoch, record)
    if not best:
        raise FinetuneError(f"{out}: no epoch ran (--epochs {epochs} already done)")
    return FinetuneResult(out, pd.DataFrame(history), best, start, best["spec"])


def _finite(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _tensor_bytes(tensors: dict) -> bytes:
    from .models.base import tensors_bytes

    return tensors_bytes(tensors)


# =========================================================================== predicting


def load_head(out: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (2, dim), bias (2,), finetune.json) of a checkpoint folder's best epoch."""
    from safetensors.numpy import load_file

    meta = read_checkpoint(out)
    path = Path(out).expanduser() / "best" / "head.safetensors"
    if not meta.get("best") or not path.is_file():
        raise FinetuneError(f"{Path(out).expanduser()}: no finished epoch, so no head yet")
    t = load_file(str(path))
    return t["weight"].astype(np.float64), t["bias"].astype(np.float64), meta


def predict(name: str, out: str | Path, *, rule: str = DEFAULT_RULE, write: bool = True,
            table_path: str | Path | None = None) -> pd.DataFrame:
    """Score dataset ``name`` with the fine-tuned model in ``out``: embed it with the best
    epoch's backbone (the embedding cache; only what is missing), apply the head.

    Parameters
    ----------
    rule : the validation threshold that flags (``max-F1``, ``R90``, ``R95``, or the thesis's)

    Returns
    -------
    DataFrame, one row per dataset row: ``id, path, p`` (p(sensitive)), ``sensitive``
    (p >= threshold), ``threshold``, ``pred`` (sensitive / safe), ``model`` (the spec). Written
    (with ``write``) to ``table_path`` or ``<home>/results/NAME/finetune-<folder>.parquet``: a
    prediction table the safe view reads (it flags, it never clears: it has no familiarity).
    """
    from . import dataset as ds_mod
    from .embeddings import embed, load_embeddings
    from .files import result_path, slug, write_table

    weight, bias, meta = load_head(out)
    best = meta["best"]
    thresholds = best.get("thresholds") or {}
    match = [k for k in thresholds if k == rule or k.split(" ")[0] == rule]
    if not match:
        raise FinetuneError(f"rule {rule!r} is not one of the checkpoint's thresholds ({', '.join(thresholds)})")
    threshold = float(thresholds[match[0]])
    spec, rnd = best["spec"], bool(best.get("random_weights"))
    embed(name, spec, random_weights=rnd)
    emb = load_embeddings(name, spec, random_weights=rnd)
    if emb.dim != weight.shape[1]:
        raise FinetuneError(f"the head reads {weight.shape[1]}-d vectors but {spec} gives {emb.dim}-d")
    p = np.concatenate([head_probabilities(x, weight, bias) for _, x in emb.iter_chunks()]) if len(emb) \
        else np.zeros(0)
    ds = ds_mod.load(name)
    table = pd.DataFrame({"id": ds.images["id"].astype(str).to_numpy(), "path": ds.images["path"].astype(str).to_numpy(),
                          "p": p, "sensitive": p >= threshold, "threshold": threshold,
                          "pred": np.where(p >= threshold, "sensitive", "safe"), "model": spec})
    if write:
        write_table(result_path(name, f"finetune-{slug(Path(out).expanduser().resolve().name)}.parquet",
                                table_path), table)
    return table
