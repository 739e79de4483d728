"""The papers' benchmark matrix (issue 14, part 4): two corpus-derived datasets x ``color`` and
a tiny random-weight CLIP x probe/retrieval/detector (plus the model-free EB task) in one
run through the CLI, producing the long table, the comparison with the papers' numbers and
the report; cells that cannot run are reason rows, not crashes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib import benchmark as bm

TINY = "open_clip:WB-Tiny-ViT"


@pytest.fixture(scope="module")
def derived(corpus):
    """'bm-azh': the AZH wound-clinic images (sensitive wounds and safe normal skin; no captions).
    'bm-cxr': 28 captioned chest X-rays (safe) and 40 foot ulcers (sensitive)."""
    images = corpus.images.reset_index(drop=True)
    azh = np.flatnonzero(images["source"].eq("azh").to_numpy())
    cxr = np.flatnonzero(images["source"].eq("figure1_cxr").to_numpy())
    ulcers = np.flatnonzero(images["source"].eq("fuseg").to_numpy())[:40]
    bm.derive_dataset("corpus", "bm-azh", rows=azh)
    bm.derive_dataset("corpus", "bm-cxr", rows=np.concatenate([cxr, ulcers]))
    return "bm-azh", "bm-cxr"


def test_derive_dataset_keeps_content_ids_and_metadata(derived, corpus):
    from lib import dataset

    cxr = dataset.load("bm-cxr").images
    assert len(cxr) == 68 and cxr["caption"].notna().sum() == 28
    src = corpus.images.set_index("id")
    assert cxr["id"].isin(src.index).all()  # same bytes, same content ids: the embedding cache is shared
    assert (cxr.set_index("id")["label"] == src.loc[cxr["id"], "label"]).all()
    assert (dataset.load("bm-cxr").abspath(cxr["path"].iat[0])).is_file()
    # placed through lib.files (hard links, or atomic copies across file systems): no temporary left
    assert not list(dataset.load("bm-cxr").root.rglob("*.tmp"))


def test_matrix_runs_through_the_cli_and_writes_the_report(derived, tmp_path, capsys):
    from lib.cli import main

    out = tmp_path / "bench"
    rc = main(["benchmark", "--datasets", ",".join(derived), "--models", f"color,{TINY},clip-b32",
               "--tasks", "probe,retrieval,detector,eb", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "the papers' numbers beside ours" in printed and "Gore thesis" in printed

    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == bm.COLUMNS
    ran = table[table["metric"] != "skipped"]
    skipped = table[table["metric"] == "skipped"]

    # Without --random-weights the tiny CLIP (no weights named) and clip-b32 (weights not here)
    # are reported per dataset and task, and color's and EB's cells still run.
    for model in (TINY, "clip-b32"):
        rows = skipped[skipped["model"] == model]
        assert len(rows) == 2 * 3 and rows["note"].str.startswith("model not loaded").all()
    got = set(zip(ran["dataset"], ran["model"], ran["task"], strict=True))
    for ds in derived:
        assert {(ds, "color", "probe"), (ds, "color", "detector"), (ds, "EB colour score", "eb")} <= got
    # color has no text tower: retrieval is a reason row on both datasets.
    why = skipped[(skipped["model"] == "color") & (skipped["task"] == "retrieval")]["note"]
    assert len(why) == 2 and why.str.contains("no text tower").all()

    # Detector rows: every rule of the thesis, metrics in [0, 1], n = the held-out part.
    det = ran[(ran["task"] == "detector") & (ran["dataset"] == "bm-azh")]
    assert {"", "max_f1", "R90", "R95", "thesis"} == set(det["variant"].fillna(""))
    assert det["value"].between(0, 1).all()  # thresholds too: the detector's p is a calibrated probability
    assert {"double_f1", "double_f1_weighted", "precision_negative", "specificity"} <= set(det["metric"])
    n_test = int(det["n"].iat[0])
    assert 0 < n_test < 118

    # The comparison names what differs for every paper number a run here corresponds to.
    comp = pd.read_csv(out / "comparison.csv")
    thesis = comp[(comp["paper"] == "Gore thesis") & (comp["metric"] == "double_f1")
                  & (comp["comparable"] != "not run here")]
    assert len(thesis) and (thesis["comparable"] == "no").all()
    assert thesis["why"].str.contains("different data").all()
    report = (out / "report.md").read_text()
    assert "## The papers beside ours" in report and "### detector" in report
    assert "<h1>Benchmark matrix</h1>" in (out / "report.html").read_text()
    assert json.loads((out / "run.json").read_text())["tasks"] == ["probe", "retrieval", "detector", "eb"]


def test_random_weights_run_the_tiny_clip_and_are_marked(derived, tmp_path):
    res = bm.run_benchmark(list(derived), ["color", TINY], ["probe", "retrieval", "detector"], random_weights=True,
                           out=tmp_path / "rnd")
    t = res.table
    tiny = t[t["model"] == TINY]
    assert tiny["random_weights"].all() and not t[t["model"] == "color"]["random_weights"].any()
    # the tiny CLIP x probe cell runs (a 5-fold probe on its random-weight vectors), no skip row
    probe = tiny[(tiny["task"] == "probe")]
    assert "skipped" not in set(probe["metric"]) and set(probe["dataset"]) == set(derived)
    auc = probe[probe["metric"] == "roc_auc"]["value"]
    assert len(auc) == 2 and auc.between(0, 1).all()
    retr = tiny[(tiny["task"] == "retrieval") & (tiny["dataset"] == "bm-cxr")]
    assert set(retr["metric"]) >= {"mean_R", "mean_R_ks", "t2i_R@5", "i2t_R@5"}
    # mean_R is MedicalNarratives' K = 5, 50, 200; on a 28-image gallery K >= 28 is trivially 1.
    assert retr["note"].str.contains("trivially").all()
    no_caps = tiny[(tiny["task"] == "retrieval") & (tiny["dataset"] == "bm-azh")]
    assert no_caps["metric"].tolist() == ["skipped"]
    comp = res.comparison
    mn = comp[(comp["paper"] == "MedicalNarratives") & (comp["metric"] == "mean_R") & (comp["here_model"] == TINY)]
    assert len(mn) and mn["why"].str.contains("random weights").all()
    assert "Random weights" in (tmp_path / "rnd" / "report.md").read_text()


def test_comparable_only_for_the_papers_model_on_its_data():
    papers = bm.paper_results()
    swin = papers[(papers["paper"] == "MedGore") & (papers["model"].str.startswith("Swin-B"))]
    assert len(swin) == 1 and swin["value_fraction"].iat[0] == pytest.approx(0.9819)
    row = {"dataset": "mg", "model": "swin-b", "task": "finetune", "variant": "thesis", "metric": "f1_macro_zero",
           "value": 0.97, "n": 2000, "seed": 0, "random_weights": False, "note": ""}
    table = pd.DataFrame([row, {**row, "model": "resnet50"}, {**row, "dataset": "other"},
                          {**row, "random_weights": True}], columns=bm.COLUMNS)
    comp = bm.compare_with_papers(table, swin, {"mg": swin["dataset"].iat[0], "other": "somewhere else"})
    assert comp["comparable"].tolist() == ["yes", "no", "no", "no"]
    assert "different model" in comp["why"].iat[1] and "different data" in comp["why"].iat[2]
    assert comp["why"].iat[3] == "random weights"
    side = bm.paper_side_by_side(comp)
    assert side["comparable"].tolist() == ["yes"] and "swin-b 0.970" in side["here"].iat[0]


def test_bad_input_is_a_clear_error(derived, tmp_path):
    from lib.errors import DatasetError

    with pytest.raises(bm.BenchmarkError, match="unknown task.*zeroshoot"):
        bm.run_benchmark(list(derived), ["color"], ["zeroshoot"], out=tmp_path)
    with pytest.raises(DatasetError):
        bm.run_benchmark(["no-such-dataset"], ["color"], ["probe"], out=tmp_path)
    bad = tmp_path / "papers"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({"paper": "X", "results": [{"dataset": "d", "model": "m"}]}))
    with pytest.raises(bm.BenchmarkError, match="x.json: a result lacks task, metric, value"):
        bm.paper_results(bad)


def test_grid_trains_on_manual_auto_first_and_last_labels_and_tests_on_gold(derived, tmp_path):
    """MedGore's grid: a probe trained on the manual labels, on the seed expansion's labels, and
    on its First-3 / Last-3 ranks (capped), each tested on the same held-out gold part."""
    res = bm.run_benchmark(["bm-azh"], ["color"], ["grid"], grid_seeds=3, grid_k=10, grid_cap=40, write=False)
    t = res.table
    assert "skipped" not in set(t["metric"]), t[t["metric"] == "skipped"]["note"].tolist()
    variants = set(t["variant"])
    assert {"manual", "auto (ranks 1-10)", "first3", "last3", "expansion"} <= variants, variants
    n_train = t[t["metric"] == "n_train"].set_index("variant")["value"]
    assert (n_train <= 40).all()  # the cap
    parts = bm.test_split("bm-azh")
    n_test = int((parts["part"] == "test").sum())
    f1 = t[t["metric"] == "f1_macro_zero"]
    assert (f1["n"] == n_test).all() and f1["value"].between(0, 1).all()  # one gold test part for all
    agree = t[t["metric"] == "label_agreement"].set_index("variant")["value"]
    assert agree["manual"] == 1.0  # the manual labels are the gold ones
    assert agree["auto (ranks 1-10)"] < 1.0  # the expansion's own labels, not the gold ones
    assert agree["first3"] >= agree["last3"]  # the nearest ranks inherit the seed's class at least as well
