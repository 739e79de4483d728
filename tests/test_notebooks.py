"""The notebooks: committed without outputs, and executed top to bottom on the real corpus.

Each notebook runs in a real ``python3`` kernel (ipykernel; jupyter_client starts it with
this interpreter) with the test session's ``WORKBENCH_HOME``. A probe cell appended by the
test prints a few of the notebook's results as JSON; they are checked against references
computed here independently of the notebook's glue (brute-force neighbours, sklearn AUCs,
counts, closed forms).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_eb_scores.ipynb", "03_knn_expansion.ipynb", "04_model_comparison.ipynb",
         "05_censoring.ipynb", "06_screening.ipynb"]
MARK = "@@probe@@"
ABSENT = "CLIP weights are absent"


def execute(name: str, probe: str) -> tuple[nbformat.NotebookNode, dict]:
    """Run notebook ``name`` plus a probe cell that prints ``MARK`` + JSON; return both."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint({MARK!r} + _json.dumps({probe}))"))
    NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on a cell error
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return nb, json.loads(text.split(MARK, 1)[1])


def outputs(nb, mime: str | None = None) -> list:
    """All outputs of code cells; with ``mime``, the payloads of that type (stream text for 'stream')."""
    out = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    if mime == "stream":
        return [o.text for o in out if o.output_type == "stream"]
    return out if mime is None else [o.data[mime] for o in out if mime in o.get("data", {})]


def check_common(nb, probe: dict) -> None:
    assert Path(probe["home"]) == Path(os.environ["WORKBENCH_HOME"]).resolve()
    lines = [ln for t in outputs(nb, "stream") for ln in t.splitlines() if ABSENT in ln]
    assert len(lines) == (1 if probe["missing"] else 0)  # one line, only when weights are absent


# --------------------------------------------------------------------------- committed form


def test_notebooks_are_committed_without_outputs():
    assert set(NAMES) <= {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        for c in code:
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: strip outputs before committing"
        assert "widgets" not in nb.metadata
        # The first cell makes `lib` importable from notebooks/ and keeps the default data home.
        first = code[0].source
        assert "sys.path.insert" in first and "from lib import" in first, path.name
        assert not re.search(r"WORKBENCH_HOME\s*\]?\s*=|environ\[", "".join(c.source for c in code)), path.name


# --------------------------------------------------------------------------- executed


def test_01_quickstart(corpus):
    from lib import config
    from lib.embeddings import load_embeddings

    nb, p = execute("01_quickstart.ipynb", '{"home": str(config.home()), "missing": missing, "query": query, '
                    '"rows": tables["color"]["row"].tolist(), "n": len(ds.images), "xy": xy[["x", "y"]].values.tolist()}')
    check_common(nb, p)
    files = [f for f in (config.home() / "quickstart_src").rglob("*") if f.is_file()]
    assert p["n"] == len(files) > 40
    # The neighbours are the brute-force cosine top 8 of the cached vectors, query excluded.
    X = load_embeddings("quickstart", "color").matrix().astype(np.float64)
    sim = X @ X[p["query"]]
    sim[p["query"]] = -np.inf
    assert p["rows"] == np.argsort(-sim, kind="stable")[:8].tolist()
    xy = np.asarray(p["xy"])
    assert xy.shape == (p["n"], 2) and np.isfinite(xy).all()
    assert outputs(nb, "image/png") and outputs(nb, "application/vnd.plotly.v1+json")


def test_02_eb_scores(corpus):
    from lib.colorscore import score_dataset
    from lib.sensitivity import EB_THRESHOLD

    nb, p = execute("02_eb_scores.ipynb", '{"home": str(config.home()), "missing": [], '
                    '"aucs": aucs["corpus"].to_dict(), "skin_vs_wound": aucs["azh wounds vs normal skin"].to_dict(), '
                    '"fp": at_cut["fp"], "fn": at_cut["fn"], "worst_fp": false_pos["path"].tolist(), '
                    '"worst_fn": false_neg["path"].tolist()}')
    check_common(nb, p)
    df = score_dataset(corpus).join(corpus.images[["source", "subclass"]])
    y = df["label"].eq("sensitive")
    for col in ("blood", "skin", "eb"):
        assert p["aucs"][col] == pytest.approx(roc_auc_score(y, df[col]), abs=1e-12)
    azh = df[df["source"].eq("azh") & df["subclass"].ne("background")]
    assert p["skin_vs_wound"]["skin"] == pytest.approx(roc_auc_score(azh["label"].eq("sensitive"), azh["skin"]))
    assert p["fp"] == int((~y & (df["eb"] >= EB_THRESHOLD)).sum())
    assert p["fn"] == int((y & (df["eb"] < EB_THRESHOLD)).sum())
    by_path = df.set_index("path")
    worst_fp, worst_fn = by_path.loc[p["worst_fp"]], by_path.loc[p["worst_fn"]]
    assert len(worst_fp) == len(worst_fn) == 12
    assert set(worst_fp["label"]) == {"non_sensitive"} and set(worst_fn["label"]) == {"sensitive"}
    assert worst_fp["eb"].min() == df.loc[~y, "eb"].nlargest(12).min()  # the 12 highest (ties aside)
    assert worst_fn["eb"].max() == df.loc[y, "eb"].nsmallest(12).max()
    assert len(outputs(nb, "image/png")) >= 2 and len(outputs(nb, "application/vnd.plotly.v1+json")) >= 5


def test_03_knn_expansion(corpus_color):
    from lib.embeddings import load_embeddings

    nb, p = execute("03_knn_expansion.ipynb", '{"home": str(config.home()), "missing": missing, "seeds": seeds, '
                    '"K": K, "h": tables["color"][["scope", "band", "pairs", "confirmed", "rejected"]]'
                    '.to_dict("records")}')
    check_common(nb, p)
    # Reference: brute-force cosine neighbours of each seed, one per distinct file, seed excluded.
    images = corpus_color.images
    ids, labels = images["id"].to_numpy(), images["label"].to_numpy()
    X = load_embeddings("corpus", "color").matrix().astype(np.float64)
    counts = {}
    for label, seed_ids in p["seeds"].items():
        assert len(seed_ids) == 10 and set(labels[np.isin(ids, seed_ids)]) == {label}
        for sid in seed_ids:
            sim = X @ X[np.flatnonzero(ids == sid)[0]]
            order = pd.Series(ids[np.argsort(-sim, kind="stable")]).drop_duplicates()
            nearest = order[order != sid].to_numpy()[:p["K"]]
            truth = pd.Series(labels, index=ids).groupby(level=0).first().reindex(nearest).to_numpy()
            for rank, t in enumerate(truth, start=1):
                key = (label, (rank - 1) // 20)
                counts[key] = counts.get(key, 0) + int(t == label)
    h = pd.DataFrame(p["h"])
    assert (h["pairs"] == h["confirmed"] + h["rejected"]).all()
    for (label, band), confirmed in counts.items():
        got = h[(h["scope"] == label) & (h["band"] == band)]["confirmed"].item()
        assert abs(got - confirmed) <= 1, (label, band, got, confirmed)  # a near-tie may swap across a band edge
    total = h[h["scope"] == "all"]["confirmed"].sum()
    assert total == sum(counts.values())
    assert outputs(nb, "image/png") and outputs(nb, "application/vnd.plotly.v1+json")


def test_04_model_comparison(corpus_color):
    from lib.colorscore import score_dataset

    nb, p = execute("04_model_comparison.ipynb", '{"home": str(config.home()), "missing": missing, '
                    '"split": split["split"].to_dict(), "metrics": metrics.reset_index().to_dict("records"), '
                    '"rules": thr[["method", "rule"]].values.tolist()}')
    check_common(nb, p)
    images = corpus_color.images
    split = images["id"].map(p["split"])
    assert split.notna().all()
    files = images.drop_duplicates("id").assign(split=lambda d: d["id"].map(p["split"]))
    shares = files.groupby("split")["split"].size() / len(files)
    assert shares.to_dict() == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.05)
    pos = files.groupby("split")["label"].apply(lambda s: s.eq("sensitive").mean())
    assert (pos - files["label"].eq("sensitive").mean()).abs().max() < 0.05  # stratified
    medetec = files[files["source"] == "medetec"]
    stem = medetec["path"].str.replace(r"_\d\.png$", ".png", regex=True)
    assert medetec.groupby(stem)["split"].nunique().max() == 1  # augmented copies stay together
    m = pd.DataFrame(p["metrics"]).set_index("method")
    assert "probe · color" in m.index and not any("zero-shot · color" in s for s in m.index)
    tiny = [s for s in m.index if "WB-Tiny-ViT" in s]
    assert tiny and all("random weights — plumbing check, not a real model" in s for s in tiny)
    # EB's test AUC, from scores z-scored on the training rows.
    eb = score_dataset(corpus_color, reference=split.eq("train").to_numpy()).assign(split=split.to_numpy())
    test = eb[eb["split"] == "test"].drop_duplicates("id")
    assert m.loc["EB (no training)", "roc_auc"] == pytest.approx(roc_auc_score(test["label"].eq("sensitive"),
                                                                               test["eb"]))
    assert m["n"].eq(len(test)).all()
    assert {r for _, r in p["rules"]} == {"max_f1", "recall>=0.90", "recall>=0.95", "thesis"}


def test_05_censoring(corpus_color):
    from lib.colorscore import score_dataset
    from lib.sensitivity import EB_THRESHOLD

    nb, p = execute("05_censoring.ipynb", '{"home": str(config.home()), "missing": [], '
                    '"iou": ious.groupby("source")["iou"].mean().to_dict(), "iou_all": ious["iou"].mean(), '
                    '"pipe": pipe.to_dict("records"), "n_table": len(table)}')
    check_common(nb, p)
    images = corpus_color.images
    assert set(p["iou"]) == {"fuseg", "medetec"} and all(0 < v < 1 for v in p["iou"].values())
    # Rows scored: every masked image and every non-sensitive one.
    assert p["n_table"] == int(images["mask"].notna().sum() + images["label"].eq("non_sensitive").sum())
    pipe = pd.DataFrame(p["pipe"]).set_index(["strategy", "classifier", "group"])
    wound, clean = "wound (has mask)", "needs no censoring"
    every = "(none: every image)"
    # Two code paths agree: censoring_table's colour IoU is mask_iou_dataset's.
    assert pipe.loc[("colour mask, every image", every, wound), "mean_iou"] == pytest.approx(p["iou_all"])
    # Closed forms: a perfect classifier leaves clean images untouched; whole frames never match them.
    assert pipe.loc[("colour mask, flagged only", "labels (ceiling)", clean), "mean_iou"] == 1.0
    assert pipe.loc[("whole image, every image", every, clean), "mean_iou"] == 0.0
    assert pipe.loc[("whole image, every image", every, wound), "images_censored"] == 1.0
    # The EB classifier flags exactly the masked images with EB > 1.
    eb = score_dataset(corpus_color)["eb"]
    masked = images["mask"].notna().to_numpy()
    share = float((eb[masked] > EB_THRESHOLD).mean())
    assert pipe.loc[("whole image, flagged only", f"EB > {EB_THRESHOLD:g}", wound), "images_censored"] == \
        pytest.approx(share)
    assert len(outputs(nb, "image/png")) >= 3


def test_06_screening(corpus_color):
    from lib import config

    nb, p = execute("06_screening.ipynb", '{"home": str(config.home()), "missing": [], '
                    '"loso": loso.to_dict("records"), "loop": loop.to_dict("records"), "n": len(X), '
                    '"views": list(V.shape)}')
    check_common(nb, p)
    files = corpus_color.images.drop_duplicates("id")
    assert p["n"] == len(files) and p["views"] == [7, len(files), 238]
    loso = pd.DataFrame(p["loso"]).set_index("source")
    counts = files.groupby("source")["label"].agg(n="size", sensitive=lambda s: int(s.eq("sensitive").sum()))
    counts = counts.reindex(loso.index)
    assert (loso["n"] == counts["n"]).all() and (loso["sensitive"] == counts["sensitive"]).all()
    both = (counts["sensitive"] > 0) & (counts["sensitive"] < counts["n"])
    assert (loso["auc"].notna() == both).all()  # AUC only where a source has both classes
    assert loso.loc["figure1_cxr", "unfamiliar"] == 1.0 and loso.loc["figure1_cxr", "safe_cleared"] == 0.0
    # the saved detector, read here with numpy alone: its R95 threshold reaches 95% validation recall
    d = config.home() / "detectors" / "corpus-color"
    meta = json.loads((d / "detector.json").read_text())
    with np.load(d / meta["arrays"]["file"], allow_pickle=False) as z:
        val_p, val_y = z["val_p"], z["val_y"]
    assert (val_p[val_y] >= meta["thresholds"]["R95"]["threshold"]).mean() >= 0.95
    scr = meta["screening"]  # R95, lowered where a group with enough positives needs it (the worst group's)
    assert scr["rule"] == "R95" and scr["overall_threshold"] == meta["thresholds"]["R95"]["threshold"]
    assert scr["threshold"] <= scr["overall_threshold"]
    assert (val_p[val_y] >= scr["threshold"]).mean() >= 0.95
    loop = pd.DataFrame(p["loop"])
    for (src, _), g in loop.groupby(["source", "strategy"]):
        pool = int(counts.loc[src, "n"])
        assert list(g["labels_added"]) == [min(10 * r, pool) for r in range(len(g))]
        assert (g["n"] == pool - g["labels_added"]).all()
        assert len(g) == (6 if pool > 50 else -(-pool // 10) + 1)
    sug = loop[loop["strategy"] == "suggest"].groupby("source")["unfamiliar_picked"].max()
    assert sug["figure1_cxr"] >= 1 and sug["azh"] >= 1  # sources unlike the others are asked about first
    assert len(outputs(nb, "application/vnd.plotly.v1+json")) >= 5
