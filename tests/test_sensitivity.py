"""The safe view's one decision (lib/sensitivity.py): fail-closed, with its evidence and reason.

Unit tests of the decision table (precedence, a newer Ok review, unknown labels, NaN EB,
detector familiarity, known-safe, a broken policy), the label vocabulary, policies set and
changed after ingest on real folders of corpus images, the positive class of every binary
metric, and the CLI verbs (ingest flags, policy, safe-view).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lib import dataset
from lib import sensitivity as sv
from lib.cli import main

# ----------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("label,cls", [
    ("Leg-Ulcer_images", "sensitive"), ("leg ulcer images", "sensitive"), ("LegUlcerImages", "sensitive"),
    ("pressure-ulcer-images", "sensitive"), ("burns", "sensitive"), ("abdominal-wounds", "sensitive"),
    ("Blur", "sensitive"), ("sensitive", "sensitive"), ("NSFW", "sensitive"),
    ("non_sensitive", "safe"), ("Non-Sensitive", "safe"), ("Normal", "safe"), ("ok", "safe"),
    ("normal_skin", "safe"),
    ("normal wound", "sensitive"),  # a sensitive and a safe word: sensitive
    ("abnormal", "unknown"),  # whole words only
    ("not normal", "unknown"), ("Non-Normal", "unknown"), ("no_ok", "unknown"),  # a negated safe word clears nothing
    ("not_sensitive", "safe"),  # ... unless the whole phrase is an entry
    ("woundcare", "unknown"), ("background", "unknown"), ("chest_xray", "unknown"), ("venous", "unknown"),
    ("", "unknown"), (None, "unknown"), (float("nan"), "unknown"),
])
def test_vocabulary_whole_words_any_case_and_separator(label, cls):
    assert sv.vocabulary().classify(label) == cls


def test_broken_vocabulary_names_file_and_line(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text('{\n  "sensitive": ["wound"],\n  "safe": ["normal",]\n}\n')
    with pytest.raises(sv.PolicyError, match=r"vocab\.json, line 3"):
        sv.load_vocabulary(bad)
    bad.write_text('{"sensitive": "wound", "safe": []}')
    with pytest.raises(sv.PolicyError, match="lists"):
        sv.load_vocabulary(bad)


# ----------------------------------------------------------------------------- the decision table

T0, T1, T2 = "2026-01-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00", "2026-09-01T00:00:00+00:00"


def _images(labels):
    return pd.DataFrame({"id": [f"{i:02x}" * 32 for i in range(len(labels))], "label": labels})


def _decide(labels, **kw):
    imgs = _images(labels)
    return imgs, sv.decide(imgs, **kw)


def test_no_evidence_is_not_yet_screened_and_censored():
    _, d = _decide([None, "venous", "background"])
    assert d["censored"].all()
    assert d["status"].eq(sv.UNSCREENED).all() and d["evidence"].eq("not yet screened").all()
    assert d["reason"].tolist() == ["not yet screened", "not yet screened (label venous → unknown)",
                                    "not yet screened (label background → unknown)"]


def test_labels_flag_and_clear():
    _, d = _decide(["burns", "non_sensitive", "Normal"])
    assert d["censored"].tolist() == [True, False, False]
    assert d["reason"].tolist() == ["label burns → sensitive", "label non_sensitive → safe", "label Normal → safe"]
    assert d["evidence"].tolist() == ["flagged by label", "cleared by label", "cleared by label"]


def test_eb_flags_never_clears_and_nan_eb_is_censored():
    imgs = _images(["non_sensitive", "non_sensitive", None, "non_sensitive"])
    eb = pd.DataFrame({"id": imgs["id"], "eb": [0.2, 1.6, -3.0, np.nan],
                       "error": [None, None, None, "cannot decode"]})
    d = sv.decide(imgs, eb=eb, eb_threshold=1.0)
    assert d["censored"].tolist() == [False, True, True, True]  # a low EB does not clear the unlabelled one
    assert d.loc[1, "reason"] == "EB 1.60 > 1.0"  # a flag beats the safe label
    assert d.loc[2, "reason"] == "not yet screened"
    assert d.loc[3, "reason"] == "unreadable: cannot decode"
    # an EB table without the image at all (NaN) censors it too
    d2 = sv.decide(imgs, eb=eb.iloc[:1])
    assert d2["censored"].tolist() == [False, True, True, True] and d2.loc[1, "reason"] == "EB unknown"


def test_reviews_ok_clears_blur_and_maybe_flag():
    imgs = _images(["venous", "non_sensitive", "non_sensitive", "burns"])
    rev = pd.DataFrame({"id": imgs["id"], "review": ["Ok", "Blur", "Maybe", "Ok"], "reviewer": ["ana"] * 4,
                        "reviewed_at": [T1] * 4})
    d = sv.decide(imgs, reviews=rev)
    assert d["censored"].tolist() == [False, True, True, False]
    assert d.loc[0, "reason"] == "review: Ok (ana, 2026-06-01 00:00)"
    assert d.loc[1, "reason"] == "review: Blur (ana, 2026-06-01 00:00)"
    # a human Ok beats the label (which was there when the reviewer looked) and says so
    assert d.loc[3, "reason"].startswith("review: Ok") and "label burns → sensitive" in d.loc[3, "reason"]
    assert d.loc[3, "evidence"] == "cleared by review"


def test_latest_review_consensus_first_else_latest_label():
    cur = pd.DataFrame({"image_id": ["a", "a", "b", "b", "b"], "annotator": ["ann", "bob", "ann", "bob", "consensus"],
                        "label": ["Blur", "Ok", "Ok", "Ok", "Blur"],
                        "updated_at": [T0, T1, T0, T2, T1]})
    r = sv.latest_reviews(cur).set_index("id")
    assert r.loc["a", "review"] == "Ok" and r.loc["a", "reviewer"] == "bob"  # the latest label
    assert r.loc["b", "review"] == "Blur" and r.loc["b", "reviewer"] == "consensus"  # consensus wins though older


def test_latest_review_of_many_labels_follows_the_rule_row_by_row():
    """Singles and images with several labels, ties in time, unsorted input (label sets
    concatenated), against the rule written out: consensus first, else the latest time, a
    tie going to the later row; one row per image, sorted by id."""
    rng = np.random.default_rng(1)
    n = 4000
    times = [T0, T1, T2]
    cur = pd.DataFrame({"image_id": [f"i{k:04d}" for k in rng.integers(0, 2500, n)],
                        "annotator": rng.choice(["ann", "bob", "consensus", "zed"], n),
                        "label": rng.choice(["Ok", "Blur", "Maybe"], n), "updated_at": rng.choice(times, n),
                        "review_class": rng.choice(["safe", "sensitive"], n)}).astype({"image_id": "str"})
    want: dict = {}
    for row in cur.itertuples():
        key = (row.annotator == "consensus", row.updated_at)
        if row.image_id not in want or key >= want[row.image_id][0]:
            want[row.image_id] = (key, (row.label, row.annotator, row.updated_at, row.review_class))
    got = sv.latest_reviews(cur)
    assert got["id"].tolist() == sorted(want)
    assert list(zip(got["review"], got["reviewer"], got["reviewed_at"], got["review_class"], strict=True)) == \
        [want[i][1] for i in sorted(want)]
    ordered = cur.sort_values("image_id", kind="stable").set_index(pd.RangeIndex(n, 2 * n))  # as the store gives it
    assert sv.latest_reviews(ordered).equals(got)


def test_a_flag_beats_a_clearance_unless_a_newer_ok_review():
    imgs = _images(["venous", "venous"])
    screening = sv.Screening(pd.DataFrame({"id": imgs["id"], "p": [0.9, 0.9], "unfamiliar": [False, False]}),
                             threshold=0.3, name="det", at=T1)
    rev = pd.DataFrame({"id": imgs["id"], "review": ["Ok", "Ok"], "reviewer": ["ana", "ana"],
                        "reviewed_at": [T0, T2]})  # before and after the detector ran
    d = sv.decide(imgs, reviews=rev, screening=screening)
    assert d["censored"].tolist() == [True, False]
    assert d.loc[0, "reason"] == "det: p 0.90 ≥ 0.30" and d.loc[0, "evidence"] == "flagged by detector"
    assert d.loc[1, "reason"].startswith("review: Ok (ana, 2026-09-01") and "det: p 0.90" in d.loc[1, "reason"]
    # NudeNet flags carry their own time per image
    nud = pd.DataFrame({"id": imgs["id"], "nudity": [0.8, 0.8], "part": ["BUTTOCKS_EXPOSED"] * 2, "at": [T0, T2]})
    rev2 = rev.assign(reviewed_at=[T1, T1])
    d = sv.decide(imgs, reviews=rev2, nudity=nud)
    assert d["censored"].tolist() == [False, True]
    assert d.loc[1, "reason"] == "NudeNet: buttocks exposed 0.80"


def test_detector_clears_only_confident_familiar_certain_images():
    imgs = _images([None] * 6)
    t = pd.DataFrame({"id": imgs["id"], "p": [0.01, 0.01, 0.01, 0.5, np.nan, 0.01],
                      "unfamiliar": [False, True, False, False, False, None],
                      "uncertain": [False, False, True, False, False, False]})
    d = sv.decide(imgs, screening=sv.Screening(t, threshold=0.2, name="det"))
    assert d["censored"].tolist() == [False, True, True, True, True, True]
    assert d.loc[0, "reason"] == "det: p 0.01 < 0.20, familiar" and d.loc[0, "evidence"] == "cleared by detector"
    assert d.loc[1, "reason"] == "not yet screened (det: unfamiliar image)"
    assert "uncertain" in d.loc[2, "reason"]
    assert d.loc[3, "reason"] == "det: p 0.50 ≥ 0.20"
    assert d.loc[4, "reason"] == "not yet screened"  # no prediction for it
    assert d.loc[5, "reason"] == "not yet screened (det: unfamiliar image)"  # unknown familiarity
    # a table with no familiarity check (zero-shot, a probe) flags but never clears
    plain = sv.decide(imgs, screening=sv.Screening(t[["id", "p"]], threshold=0.2, name="zs"))
    assert plain["censored"].tolist() == [True] * 6
    assert "no familiarity check" in plain.loc[0, "reason"] and plain.loc[3, "evidence"] == "flagged by detector"


def test_known_safe_clears_what_nothing_flags_and_all_sensitive_flags_the_rest():
    imgs = _images([None, None, "wound"])
    eb = pd.DataFrame({"id": imgs["id"], "eb": [0.0, 2.0, 0.0]})
    ks = sv.LabelPolicy(known_safe={"by": "ana", "at": T1})
    d = sv.decide(imgs, policy=ks, eb=eb)
    assert d["censored"].tolist() == [False, True, True]
    assert d.loc[0, "reason"] == "known-safe dataset (ana, 2026-06-01 00:00)"
    alls = sv.LabelPolicy(all_sensitive=True, safe=("normal",))
    d = sv.decide(_images([None, "venous", "normal"]), policy=alls)
    assert d["censored"].tolist() == [True, True, False]
    assert d.loc[0, "reason"] == "dataset marked all-sensitive"
    assert d.loc[1, "reason"] == "dataset marked all-sensitive (label venous → unknown)"


def test_policy_error_censors_everything_with_the_reason():
    _, d = _decide(["non_sensitive", None], policy_error="policy.json, line 2: not valid JSON")
    assert d["censored"].all() and d["evidence"].eq("censored: policy error").all()
    assert d.loc[0, "reason"] == "censored: policy.json, line 2: not valid JSON"


def test_every_row_has_one_reason_and_copies_censor_together():
    imgs = pd.DataFrame({"id": ["a" * 64, "a" * 64, "b" * 64], "label": ["non_sensitive", "burns", "ok"]})
    d = sv.decide(imgs)
    assert d["reason"].str.len().gt(0).all()
    censored, source = sv.served(d)
    view = [(bool(c), d["reason"].iat[s_]) for c, s_ in zip(censored, source, strict=True)]
    assert view[0] == view[1] == (True, "label burns → sensitive")  # one copy flagged: both censored
    assert view[2] == (False, "label ok → safe")
    counts = sv.breakdown(d)
    assert counts["images"].sum() == 3 and counts.iloc[0]["shown"] == "censored"


# ----------------------------------------------------------------------------- policies on real folders


@pytest.fixture(scope="module")
def wound_folder(corpus_dir, tmp_path_factory):
    """A folder of real corpus images in category subfolders named as a new user's would be."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    root = tmp_path_factory.mktemp("wild")
    picks = {"venous": m[m.subclass == "venous_wound"].path[:3], "leg-ulcer-images": m[m.source == "medetec"].path[:3],
             "healthy-skin": m[m.subclass == "normal_skin"].path[:3]}
    for folder, paths in picks.items():
        (root / folder).mkdir()
        for p in paths:
            shutil.copy(corpus_dir / p, root / folder / p.replace("/", "_"))
    return root


def test_policy_set_at_ingest_and_changed_later_without_reingest(wound_folder):
    assert main(["ingest", str(wound_folder), "--name", "sv-wild"]) == 0
    d = sv.decide(dataset.load("sv-wild").images, policy=sv.load_policy("sv-wild"))
    by_label = d.groupby("label")["reason"].first()
    assert d["censored"].all()  # venous and healthy-skin are unknown words; leg-ulcer-images is sensitive
    assert by_label["leg-ulcer-images"] == "label leg-ulcer-images → sensitive"
    assert by_label["venous"] == "not yet screened (label venous → unknown)"
    stamp = (dataset.dataset_dir("sv-wild") / "images.parquet").stat().st_mtime_ns
    pol = sv.set_policy("sv-wild", safe=["Healthy_Skin"], sensitive=["venous"], by="ana")
    assert pol.safe == ("healthy-skin",) and pol.sensitive == ("venous",)
    assert [h["by"] for h in pol.history] == ["ana", "ana"]
    d = sv.decide(dataset.load("sv-wild").images, policy=sv.load_policy("sv-wild"))
    assert d.groupby("label")["censored"].all().to_dict() == {"healthy-skin": False, "leg-ulcer-images": True,
                                                              "venous": True}
    assert (dataset.dataset_dir("sv-wild") / "images.parquet").stat().st_mtime_ns == stamp  # no re-ingest
    # unknown values are refused with the dataset's labels named; nothing changes
    with pytest.raises(sv.PolicyError, match=r"'burns' is not a label of this dataset; its labels are "
                                             r"'healthy-skin', 'leg-ulcer-images', 'venous'"):
        sv.set_policy("sv-wild", safe=["burns"])
    assert sv.load_policy("sv-wild") == pol
    # back to the vocabulary
    assert sv.set_policy("sv-wild", unknown=["healthy-skin", "venous"]).safe == ()
    # known-safe records who and when
    ks = sv.set_policy("sv-wild", known_safe=True, by="bob").known_safe
    assert ks["by"] == "bob" and ks["at"].startswith("20")
    assert sv.set_policy("sv-wild", known_safe=False).known_safe is None


def test_broken_policy_file_is_an_error_and_the_cli_censors_all(wound_folder, capsys):
    assert main(["ingest", str(wound_folder), "--name", "sv-broken", "--safe-labels", "healthy-skin"]) == 0
    path = sv.policy_path("sv-broken")
    path.write_text('{\n  "safe": ["healthy-skin"\n}\n')
    with pytest.raises(sv.PolicyError, match=r"policy\.json, line 3"):
        sv.load_policy("sv-broken")
    capsys.readouterr()
    assert main(["safe-view", "sv-broken", "--no-eb"]) == 0
    out = capsys.readouterr().out
    assert "9 images, 9 censored, 0 shown raw" in out and "censored: policy error" in out


def test_cli_ingest_policy_flags_and_safe_view(wound_folder, capsys):
    assert main(["ingest", str(wound_folder), "--name", "sv-cli", "--safe-labels", "burns"]) == 2
    err = capsys.readouterr().err
    assert "'burns' is not a label of this dataset" in err and "'healthy-skin', 'leg-ulcer-images', 'venous'" in err
    assert main(["ingest", str(wound_folder), "--name", "sv-cli", "--safe-labels", "healthy-skin",
                 "--all-sensitive"]) == 0
    out = capsys.readouterr().out
    assert "healthy-skin" in out and "dataset policy" in out
    pol = sv.load_policy("sv-cli")
    assert pol.all_sensitive and pol.safe == ("healthy-skin",)
    assert main(["safe-view", "sv-cli", "--no-eb"]) == 0
    out = capsys.readouterr().out
    assert "9 images, 6 censored, 3 shown raw" in out
    assert main(["policy", "sv-cli", "--known-safe"]) == 2  # who marked it is required
    assert "--by" in capsys.readouterr().err
    assert main(["policy", "sv-cli", "--known-safe", "--by", "ana", "--no-all-sensitive"]) == 0
    out = capsys.readouterr().out
    assert "marked known-safe" in out and "known-safe: marked by ana" in out
    # known-safe: venous (unknown word) now shown; leg-ulcer-images still flagged by its label
    assert main(["safe-view", "sv-cli", "--no-eb", "--list"]) == 0
    out = capsys.readouterr().out
    assert "9 images, 3 censored, 6 shown raw" in out and "cleared by known-safe" in out


def test_single_image_and_unlabelled_folder_are_censored(corpus_dir, tmp_path):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(corpus_dir / m[m.subclass == "venous_wound"].path.iloc[0], one / "photo.png")
    dataset.ingest(one, "sv-one")
    from lib.evidence import decide_dataset

    d = decide_dataset(dataset.load("sv-one"))
    assert d["censored"].tolist() == [True], d  # EB is 0 over one image: no evidence at all
    assert d.loc[0, "reason"] == "not yet screened"


def test_notebook_contact_sheet_follows_the_decision(wound_folder):
    """The notebooks' contact sheets: each tile raw exactly where the decision clears its row."""
    from PIL import Image

    from lib.evidence import contact_sheet, decide_dataset
    from lib.safety import safe_thumbnail

    dataset.ingest(wound_folder, "sv-sheet")
    sv.set_policy("sv-sheet", safe=["healthy-skin"])
    ds = dataset.load("sv-sheet")
    d = decide_dataset(ds, eb_threshold=None)
    rows = list(range(len(ds.images)))
    assert d["censored"].any() and not d["censored"].all()  # both kinds occur
    sheet = contact_sheet(ds, rows, decision=d, side=64, cols=len(rows))
    for i in rows:
        tile = np.asarray(sheet.crop((4 + i * 68, 4, 4 + i * 68 + 64, 4 + 64)), np.int16)
        want = {}
        for flag in (True, False):
            t = safe_thumbnail(Image.open(ds.abspath(ds.images["path"].iat[i])), sensitive=flag, side=64)
            cell = Image.new("RGB", (64, 64), (255, 255, 255))
            cell.paste(t, ((64 - t.width) // 2, (64 - t.height) // 2))
            want[flag] = np.abs(tile - np.asarray(cell, np.int16)).mean()
        assert want[bool(d["censored"].iat[i])] == 0, (i, want)  # the tile is the decided rendering
    with_reasons = contact_sheet(ds, rows[:2], decision=d, reasons=True, side=64)
    assert with_reasons.height > 64 + 8  # a caption line under each tile


# ----------------------------------------------------------------------------- positive class


def test_positive_class_follows_the_policy():
    assert sv.positive_class(["Blur", "Normal"]) == "Blur"  # not Normal, which sorts last
    assert sv.positive_class(["Normal", "Blur"]) == "Blur"
    assert sv.positive_class(["non_sensitive", "sensitive"]) == "sensitive"
    assert sv.positive_class([0, 1]) == 1
    assert sv.positive_class(["cat", "dog"]) is None
    assert sv.positive_class(["cat", "dog"], sv.LabelPolicy(sensitive=("dog",))) == "dog"
    from lib.probe import default_positive

    assert default_positive(["Blur", "Normal"]) == "Blur"
    assert sv.review_class_map(["Blur", "Normal"]) == {"Blur": "Blur", "Ok": "Normal", "Maybe": None}


@pytest.fixture(scope="module")
def blur_normal(corpus_color, corpus_dir, tmp_path_factory):
    """A copy of the corpus labelled as MedGore labels: Blur / Normal."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m["label"] = m["label"].map({"sensitive": "Blur", "non_sensitive": "Normal"})
    path = tmp_path_factory.mktemp("bn") / "manifest.csv"
    m.to_csv(path, index=False)
    dataset.ingest(path, "corpus-bn", root=corpus_dir)
    from lib.embeddings import embed

    embed("corpus-bn", "color")  # nothing computed: the vectors are cached by content id
    return "corpus-bn"


def test_metrics_on_blur_normal_equal_the_original_with_blur_positive(blur_normal, capsys):
    from lib.probe import run_probe

    a, b = run_probe("corpus", "color"), run_probe(blur_normal, "color")
    assert a.positive == "sensitive" and b.positive == "Blur"
    for k in ("roc_auc", "average_precision", "f1_macro", "double_f1", "precision", "recall", "accuracy"):
        assert a.metrics[k] == pytest.approx(b.metrics[k], abs=1e-12), k
    assert np.allclose(a.predictions["score"], b.predictions["score"])
    aucs = {}
    for name in ("corpus", blur_normal):
        capsys.readouterr()
        assert main(["scores", name, "--out", str(dataset.dataset_dir(name) / "eb.parquet")]) == 0
        out = capsys.readouterr().out
        rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("eb ", "blood ", "skin "))]
        aucs[name] = {r[0]: (r[1], float(r[3])) for r in rows}
    assert {k: v[0] for k, v in aucs[blur_normal].items()} == {"eb": "Blur", "blood": "Blur", "skin": "Blur"}
    assert {k: v[1] for k, v in aucs["corpus"].items()} == {k: v[1] for k, v in aucs[blur_normal].items()}
    assert main(["probe", blur_normal, "--model", "color", "--positive", "Normal"]) == 0
    assert "positive class Normal" in capsys.readouterr().out
    assert main(["probe", blur_normal, "--model", "color", "--positive", "Wound"]) == 2
    assert "not a label" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dog_cat(corpus_color, corpus_dir, tmp_path_factory):
    """A copy of the corpus labelled with words the vocabulary does not know: dog / cat."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    m["label"] = m["label"].map({"sensitive": "dog", "non_sensitive": "cat"})
    path = tmp_path_factory.mktemp("dc") / "manifest.csv"
    m.to_csv(path, index=False)
    dataset.ingest(path, "corpus-dc", root=corpus_dir)
    from lib.embeddings import embed

    embed("corpus-dc", "color")
    return "corpus-dc"


def test_positive_on_train_predict_and_benchmark(dog_cat, capsys, tmp_path):
    """--positive names the sensitive class where the policy knows neither label: training,
    screening metrics and the benchmark matrix then equal those on the original labels."""
    from lib import detector as D

    assert main(["train", dog_cat, "--model", "color", "--detector", "dc-none"]) == 2  # no class by the policy
    assert "0 sensitive" in capsys.readouterr().err
    assert main(["train", dog_cat, "--model", "color", "--detector", "dc", "--positive", "Dog"]) == 0
    out = capsys.readouterr().out
    det = D.load("dc")
    assert sv.normal_form(det.meta["recipe"]["positive"]) == "dog"
    n = dataset.load(dog_cat).images.drop_duplicates("id")["label"].value_counts()
    assert det.meta["split"]["val_sensitive"] >= 0.2 * n["dog"] - 2  # the dogs are the sensitive class
    assert "labels:corpus-dc" in out
    labels = D.gather_labels([dog_cat], positive="dog").counts.set_index("source")
    assert labels.loc["all", "sensitive"] == n["dog"] and labels.loc["all", "safe"] == n["cat"]
    # a retrain keeps the positive class of its recipe
    assert D.retrain("dc", from_annotations=False)[0].meta["recipe"]["positive"] == "Dog"
    # predict: the metrics against the labels need the positive class too
    assert main(["predict", dog_cat, "--detector", "dc", "--no-tta"]) == 0
    assert "against the dataset's labels" not in capsys.readouterr().out
    assert main(["predict", dog_cat, "--detector", "dc", "--no-tta", "--positive", "dog"]) == 0
    out = capsys.readouterr().out
    assert "positive class 'dog', every other label safe" in out
    truth = D.dataset_truth(dog_cat, "dog")
    assert truth.value_counts().to_dict() == D.dataset_truth("corpus").value_counts().to_dict()
    assert main(["predict", dog_cat, "--detector", "dc", "--no-tta", "--positive", "wolf"]) == 2
    assert "'cat', 'dog'" in capsys.readouterr().err
    # fine-tuning's rows: the same classes and split as on the original labels
    from lib.finetune import training_rows

    ft_a, ft_b = training_rows("corpus"), training_rows(dog_cat, positive="dog")
    assert ft_a[["id", "y", "part"]].equals(ft_b[["id", "y", "part"]])
    # the benchmark: EB rows on dog/cat with --positive dog equal the original's
    from lib.benchmark import run_benchmark

    a = run_benchmark(["corpus"], ["color"], ["eb"], write=False).table
    b = run_benchmark([dog_cat], ["color"], ["eb"], positive="dog", write=False).table
    assert len(a) and a[["variant", "metric", "value"]].reset_index(drop=True).equals(
        b[["variant", "metric", "value"]].reset_index(drop=True))
    assert main(["benchmark", "--datasets", dog_cat, "--models", "color", "--tasks", "eb", "--positive", "wolf",
                 "--out", str(tmp_path)]) == 2
    assert "--positive 'wolf' is not a label of dataset 'corpus-dc'" in capsys.readouterr().err


def test_policy_json_round_trip_and_validation(tmp_path):
    pol = sv.LabelPolicy(("a",), ("b",), True, {"by": "x", "at": T0}, ({"at": T0, "by": "x", "change": "c"},))
    assert sv.LabelPolicy.from_json(json.loads(json.dumps(pol.to_json()))) == pol
    for bad in ([], {"safe": "normal"}, {"known_safe": {"by": "x"}}, {"all_sensitive": "yes"}):
        with pytest.raises(sv.PolicyError):
            sv.LabelPolicy.from_json(bad)


# ----------------------------------------------------------------------------- NudeNet evidence


def test_nudenet_is_computed_once_per_image_and_only_flags(wound_folder, monkeypatch):
    from lib import nudity
    from lib.evidence import decide_dataset

    dataset.ingest(wound_folder, "sv-nude")
    ds = dataset.load("sv-nude")
    first = nudity.check_dataset(ds)  # the real NudeNet ONNX model, offline
    assert len(first) == len(ds.unique_ids) and first["nudity"].between(0, 1).all()
    assert first["error"].isna().all() and first["at"].str.startswith("20").all()

    class Refuse:
        def detect(self, img):
            raise AssertionError("a cached image was checked again")

    again = nudity.check_dataset(ds, detector=Refuse())
    assert again[["id", "nudity", "part"]].equals(first[["id", "nudity", "part"]])
    # as evidence: a high score flags; a zero score never clears an unknown label
    d = decide_dataset(ds, eb_threshold=None)
    nud = first.set_index("id")["nudity"]
    for cid, cens, reason in zip(d["id"], d["censored"], d["reason"], strict=True):
        assert cens or "→ safe" in reason  # nothing cleared by NudeNet
        assert ("NudeNet" in reason) == (nud[cid] >= sv.NUDITY_THRESHOLD)


def test_served_keeps_each_ids_first_censored_row_else_its_first_row():
    rng = np.random.default_rng(0)
    n = 5000
    d = pd.DataFrame({"id": rng.integers(0, 1500, n).astype(str), "censored": rng.random(n) < 0.3,
                      "reason": [f"r{k}" for k in range(n)]})
    want: dict = {}
    for i, c, r in zip(d["id"], d["censored"], d["reason"], strict=True):  # the rule, row by row
        if i not in want or (c and not want[i][0]):
            want[i] = (bool(c), r)
    assert len(sv.served(d.iloc[:0])[0]) == 0
    censored, source = sv.served(d)  # per row: every copy served as its id is
    reasons = d["reason"].to_numpy()[source]
    assert [(bool(c), r) for c, r in zip(censored, reasons, strict=True)] == [want[i] for i in d["id"]]
    copies = d["id"].duplicated(keep=False).to_numpy()
    for c_, r_ in zip(sv.served(d, copies), (censored, source), strict=True):  # told which rows have copies
        assert list(c_) == list(r_)
    assert list(sv.served(d, np.zeros(n, bool))[0]) == list(d["censored"])
