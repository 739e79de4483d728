"""The `scores` and `censor-eval` verbs on the real corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lib", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


def test_scores_verb_writes_eb_table_and_prints_aucs(corpus, tmp_path):
    out = tmp_path / "eb.parquet"
    text = _run("scores", "corpus", "--out", str(out))
    df = pd.read_parquet(out)
    assert len(df) == 658 and df["error"].isna().all()
    assert np.allclose(df["eb"], np.maximum(df["z_blood"], df["z_skin"]))
    assert abs(df["z_blood"].mean()) < 1e-9 and abs(df["z_blood"].std(ddof=0) - 1) < 1e-9
    auc = roc_auc_score(df["label"] == "sensitive", df["eb"])
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("eb "))
    assert abs(float(line.split()[-1]) - auc) < 1e-3


def test_censor_eval_verb_reports_iou_per_source(corpus, tmp_path):
    out = tmp_path / "iou.csv"
    text = _run("censor-eval", "corpus", "--out", str(out))
    df = pd.read_csv(out)
    assert len(df) == corpus.images["mask"].notna().sum() == 452
    assert df["iou"].between(0, 1).all()
    assert "fuseg" in text and "medetec" in text and "overall mean IoU" in text


def test_metrics_sliced_by_metadata_show_per_group_counts(corpus, tmp_path):
    text = _run("scores", "corpus", "--out", str(tmp_path / "eb.parquet"), "--slice-col", "source")
    df = pd.read_parquet(tmp_path / "eb.parquet")
    section = text.split("per source")[1].splitlines()
    header = section[1].split()
    assert header[0] == "source" and "roc_auc" in header
    rows = {ln.split()[0]: ln.split() for ln in section[2:] if ln.strip()}
    for src, n in pd.read_csv(REPO.parent / "shared" / "corpus" / "manifest.csv")["source"].value_counts().items():
        assert int(rows[src][header.index("n")]) == n
    azh = df[(df["path"].str.contains("/azh/"))]
    auc = roc_auc_score(azh["label"] == "sensitive", azh["eb"])
    assert abs(float(rows["azh"][header.index("roc_auc")]) - auc) < 1e-3
    assert "worst" in rows
