"""Fine-tuning (issue 14, part 3) end to end on CPU with a tiny random-weight timm ViT on a
separable subset of the real corpus (blood smears vs foot ulcers): the loss decreases, a run
stopped after an epoch resumes to the very weights of an uninterrupted one, the checkpoint
loads through the registry, and its head scores a dataset from the embedding cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from lib import finetune as ft

REPO = Path(__file__).resolve().parent.parent
SPEC = "timm:wb-tiny-vit"


@pytest.fixture(scope="module")
def separable(corpus_dir, tmp_path_factory):
    """Dataset 'ft-sep': 24 blood-smear images (non_sensitive) and 24 foot ulcers (sensitive),
    copied from the corpus, plus 8 of each in a test split that training must never see."""
    from lib import dataset

    m = pd.read_csv(corpus_dir / "manifest.csv")
    sub = pd.concat([m[m.source == "bccd"].head(32), m[m.source == "fuseg"].head(32)]).reset_index(drop=True)
    sub["split"] = np.where(sub.groupby("source").cumcount() < 24, "train", "test")
    root = tmp_path_factory.mktemp("ft-sep")
    for p in sub["path"]:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / p, root / p)
    sub[["path", "label", "source", "split"]].to_csv(root / "manifest.csv", index=False)
    dataset.ingest(root / "manifest.csv", "ft-sep")
    return "ft-sep"


def _weights(folder: Path) -> dict:
    return {k: v for k, v in load_file(str(folder / "last.safetensors")).items() if not k.startswith("opt.")}


def test_training_rows_leave_out_test_and_split_validation(separable):
    rows = ft.training_rows(separable, val_frac=0.25, seed=0)
    from lib import dataset

    images = dataset.load(separable).images
    assert not set(rows["id"]) & set(images.loc[images["split"] == "test", "id"])
    assert len(rows) == 48 and (rows["part"] == "val").sum() == 12
    assert rows.groupby("part")["y"].sum().to_dict() == {"train": 18, "val": 6}  # stratified
    with pytest.raises(ft.FinetuneError, match="val-frac"):
        ft.training_rows(separable, val_frac=1.5)


def test_loss_decreases_resume_is_identical_and_the_checkpoint_loads(separable, tmp_path):
    from lib.models import load_model, resolve_fingerprint

    kw = dict(random_weights=True, epochs=3, batch_size=8, val_frac=0.25, seed=1)
    full = ft.finetune(separable, SPEC, tmp_path / "a", **kw)
    h = full.history
    assert list(h["epoch"]) == [1, 2, 3]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]
    # The best epoch is the one of lowest validation loss.
    assert full.best["epoch"] == int(h.loc[h["val_loss"].idxmin(), "epoch"])

    class Killed(Exception):
        pass

    def kill_after_first(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        ft.finetune(separable, SPEC, tmp_path / "b", on_epoch=kill_after_first, **kw)
    assert json.loads((tmp_path / "b" / "last.json").read_text())["epoch"] == 1
    resumed = ft.finetune(separable, SPEC, tmp_path / "b", **kw)
    assert resumed.resumed_from == 1
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert resumed.history.equals(full.history)

    # A different recipe in the same folder is refused, not mixed in.
    with pytest.raises(ft.FinetuneError, match="differs in lr"):
        ft.finetune(separable, SPEC, tmp_path / "b", **{**kw, "lr": 1e-3})

    # The best epoch loads as a registry spec; its vectors are the trained tower's features.
    meta = json.loads((tmp_path / "a" / "finetune.json").read_text())
    assert meta["base"]["random_weights"] is True and meta["recipe"]["lr"] == 2e-5  # MedGore's default
    assert set(meta["best"]["thresholds"]) == {"max-F1", "R90", "R95", "thesis (lower of max-F1 and R90)"}
    backend = load_model(f"finetuned:{tmp_path / 'a'}")
    assert backend.spec == full.spec and full.spec.endswith("best/model.safetensors")
    assert resolve_fingerprint(f"finetuned:{tmp_path / 'a'}") == backend.fingerprint
    assert backend.fingerprint != load_model(SPEC, random_weights=True, seed=1).fingerprint

    # Its head scores the dataset from the embedding cache: p equals the head on those vectors.
    table = ft.predict(separable, tmp_path / "a")
    from lib.embeddings import load_embeddings

    w, b, _ = ft.load_head(tmp_path / "a")
    v = load_embeddings(separable, full.spec).matrix()
    assert np.allclose(table["p"], ft.head_probabilities(v, w, b))
    assert (table["sensitive"] == (table["p"] >= table["threshold"])).all()
    assert table["threshold"].iat[0] == pytest.approx(meta["best"]["thresholds"]["R95"])


def test_head_only_mode_trains_on_cached_embeddings(separable, tmp_path):
    res = ft.finetune(separable, SPEC, tmp_path / "h", random_weights=True, mode="head", epochs=3, batch_size=8,
                      val_frac=0.25)
    meta = json.loads((tmp_path / "h" / "finetune.json").read_text())
    assert meta["recipe"]["mode"] == "head" and meta["recipe"]["lr"] == 1e-3
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    assert res.spec == SPEC and res.best["random_weights"] is True  # the backbone is unchanged
    assert not (tmp_path / "h" / "best" / "model.safetensors").exists()
    # The frozen backbone's weights in the checkpoint are exactly the seeded random ones.
    from lib.models import load_model

    base = load_model(SPEC, random_weights=True)
    w = _weights(tmp_path / "h")
    assert all(np.array_equal(w[f"model.{k}"], t.numpy()) for k, t in base.model.state_dict().items())


def test_bad_input_is_a_clear_error(separable, corpus_color, tmp_path):
    with pytest.raises(ft.FinetuneError, match="no trainable weights"):
        ft.finetune("corpus", "color", tmp_path / "c", epochs=1)
    with pytest.raises(ft.FinetuneError, match="--mode"):
        ft.finetune(separable, SPEC, tmp_path / "c", mode="lora", random_weights=True)
    with pytest.raises(ft.FinetuneError, match="no fine-tuned model"):
        ft.predict(separable, tmp_path / "nothing-here")


def test_cli_finetune_and_apply(separable, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "lib", "finetune", separable, "--model", SPEC, "--random-weights",
                        "--out", str(out), "--epochs", "1", "--batch-size", "8", "--val-frac", "0.25"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"finetuned:{out}" in r.stdout and "best epoch 1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lib", "finetune", separable, "--apply", str(out), "--table",
                        str(tmp_path / "p.parquet")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 64
    r = subprocess.run([sys.executable, "-m", "lib", "finetune", separable, "--model", "color", "--out",
                        str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no trainable weights" in r.stderr
