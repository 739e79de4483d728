"""Data quality on the real corpus: near-duplicate groups (Medetec's augmented variants,
byte-identical copies), pair precision, leaks between splits and datasets, label issues
on deliberately flipped labels, outliers, bad input, and the Quality page.

Truth comes from the files, never from the code under test: Medetec ships
``foot-ulcer-NNNN.png`` with ``_1``, ``_2``, ``_3`` variants (rotated / flipped copies),
so a file-name stem within one source names one original image; byte-identical files are
found by hashing their bytes here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import dataset, quality
from lib.cli import main

FLIPS = 20


def stem_of(path: str) -> str:
    """File name without extension and without a trailing ``_<digits>`` variant suffix
    (kept when nothing with a digit is left: ``BG_76`` is a category, not an image)."""
    name = Path(path).stem
    base = re.sub(r"_\d+$", "", name)
    return base if re.search(r"\d", base) else name


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> pd.DataFrame:
    return pd.read_csv(corpus_dir / "manifest.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def truth(corpus_color):
    """Per distinct image of the corpus (quality's id order): path, source, stem, medetec."""
    ids, first, _ = quality._first_rows(corpus_color.images)
    im = corpus_color.images.iloc[first]
    return pd.DataFrame({"id": ids, "path": im["path"].to_numpy(), "source": im["source"].to_numpy(),
                         "stem": [stem_of(p) for p in im["path"]]})


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["quality", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def hash_report(corpus_color, tmp_path_factory):
    """The CLI with --hash-only on the corpus: (folder, stdout)."""
    out = tmp_path_factory.mktemp("q-hash")
    assert main(["quality", "corpus", "--model", "color", "--hash-only", "--out", str(out)]) == 0
    return out


def medetec_recall(dups: pd.DataFrame, truth: pd.DataFrame) -> tuple[float, float]:
    """(share of Medetec stems whose 4 variants are all in one group, share of those groups
    that hold nothing else)."""
    group_of = dict(zip(dups["id"], dups["group"], strict=False))
    med = truth[truth["source"] == "medetec"]
    whole = pure = 0
    for _, g in med.groupby("stem"):
        assert len(g) == 4
        groups = {group_of.get(i, -1) for i in g["id"]}
        if len(groups) == 1 and -1 not in groups:
            whole += 1
            pure += int((dups["group"] == groups.pop()).sum() == 4)
    n = med["stem"].nunique()
    return whole / n, pure / n


def pair_precision(nd: quality.NearDuplicates, truth: pd.DataFrame) -> tuple[float, list]:
    """Share of pairs whose two images are one original by stem and source; the others."""
    a, b = nd.pairs["a"].to_numpy(), nd.pairs["b"].to_numpy()
    same = (truth["stem"].to_numpy()[a] == truth["stem"].to_numpy()[b]) & \
        (truth["source"].to_numpy()[a] == truth["source"].to_numpy()[b])
    wrong = [(truth["path"].iloc[i], truth["path"].iloc[j]) for i, j in zip(a[~same], b[~same], strict=True)]
    return float(same.mean()) if len(a) else float("nan"), wrong


# ----------------------------------------------------------------------------- the hash


def test_hashes_match_imagehash_and_turn_with_the_image(corpus_color):
    from PIL import Image

    from lib.colorscore import DEFAULT_PARAMS, load_for_scoring

    ds = corpus_color
    paths = [str(ds.abspath(p)) for p in ds.images["path"].iloc[::9]]
    for p in paths:
        img = load_for_scoring(p, DEFAULT_PARAMS)
        fast = quality.image_hashes(img)
        # the 8 orientations from one DCT are imagehash.phash of each transposed image, bit for bit
        np.testing.assert_array_equal(fast, quality.image_hashes_reference(img))
        # hashing a transposed copy finds the original in its 8 orientations
        for t in ("ROTATE_90", "FLIP_TOP_BOTTOM", "TRANSVERSE"):
            turned = quality.image_hashes(img.transpose(getattr(Image.Transpose, t)))
            assert quality.hash_distance(fast[None], turned[None])[0] <= 2, (p, t)


def test_hashes_are_cached_per_content_id(corpus_color, monkeypatch):
    ids = corpus_color.unique_ids[:30]
    codes, errors = quality.hash_ids(corpus_color, ids)
    assert not errors and codes.any(axis=(1, 2)).all()
    monkeypatch.setattr(quality, "_hash_file", lambda p: (_ for _ in ()).throw(AssertionError("recomputed")))
    again, _ = quality.hash_ids(corpus_color, ids, workers=1)
    np.testing.assert_array_equal(codes, again)
    assert f"v{quality.HASH_VERSION}" in str(quality.hash_cache().dir)


# ----------------------------------------------------------------------------- groups


def test_medetec_variants_grouped_by_hash(hash_report, truth):
    dups = pd.read_csv(hash_report / "duplicates.csv")
    assert list(dups.columns[:6]) == ["id", "path", "group", "representative", "similarity", "split"]
    recall, pure = medetec_recall(dups, truth)
    print(f"\nMedetec group recall with --hash(-only): {recall:.3f}; groups holding only their variants: {pure:.3f}")
    assert recall >= 0.95 and pure >= 0.95
    # each group's representative is one of its members, and the original file wins the tie
    for _, rows in dups.groupby("group"):
        assert rows["representative"].iloc[0] in set(rows["id"])
    orig = truth[(truth["source"] == "medetec") & ~truth["path"].str.contains(r"_\d\.png$")]
    reps = set(dups["representative"])
    assert orig["id"].isin(reps).mean() >= 0.95


def test_medetec_variants_under_color_alone(corpus_color, truth):
    """Under the `color` features at the default threshold the variants are grouped, but with
    many unrelated images: the hash is what makes the groups trustworthy."""
    from lib.neighbors import open_space

    space = open_space("corpus", "color")
    nd_color = quality.find_near_duplicates(corpus_color, space, threshold=quality.DEFAULT_THRESHOLD)
    dups = quality.duplicates_table(corpus_color, nd_color, space)
    recall, pure = medetec_recall(dups, truth)
    prec_color, _ = pair_precision(nd_color, truth)
    nd_hash = quality.find_near_duplicates(corpus_color, space, threshold=None, use_hash=True)
    prec_hash, wrong = pair_precision(nd_hash, truth)
    print(f"\nMedetec group recall with color at cosine >= {quality.DEFAULT_THRESHOLD}: {recall:.3f} "
          f"(pure groups {pure:.3f}); pair precision color {prec_color:.3f} ({len(nd_color.pairs)} pairs), "
          f"hash {prec_hash:.3f} ({len(nd_hash.pairs)} pairs); hash pairs judged wrong: {wrong}")
    assert recall >= 0.9
    assert prec_color < 0.5 < 0.95 <= prec_hash
    # cosines are the model's: every model pair is at or above the threshold
    assert (nd_color.pairs["similarity"] >= quality.DEFAULT_THRESHOLD - 1e-6).all()


def test_model_pairs_match_brute_force(corpus_color):
    from lib.neighbors import open_space

    space = open_space("corpus", "color")
    ids, first, _ = quality._first_rows(corpus_color.images)
    X = space.emb.take(first)
    for t in (0.99, 0.995):
        a, b, sim = quality.model_pairs(space, t)
        S = X @ X.T
        i, j = np.nonzero(np.triu(t <= S, 1))
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(zip(i.tolist(), j.tolist(), strict=True))
        np.testing.assert_allclose(sim, S[a, b], atol=1e-5)


def test_ivf_range_search_recall(tmp_path):
    """Above the exact-search size the index is IVF: planted near copies are still found."""
    from lib.embeddings import DatasetEmbeddings
    from lib.index import get_index

    rng = np.random.default_rng(0)
    n, d = 6000, 64
    centres = rng.standard_normal((40, d))
    x = centres[rng.integers(0, 40, n)] + 0.8 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst = rng.permutation(n)[:400].reshape(2, 200)
    noise = rng.standard_normal((200, d)) * 0.02
    x[dst] = x[src] + noise
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    emb = DatasetEmbeddings([f"{i:064x}" for i in range(n)], np.stack([np.zeros(n, np.int32),
                            np.arange(n, dtype=np.int32)], 1), [x], "synthetic-ivf-test", tmp_path)
    vi = get_index(emb, "ivf-test", "ivf", persist=False)
    a, b, _ = quality.vector_pairs(emb, vi.index, 0.95)
    S = x @ x.T
    i, j = np.nonzero(np.triu(S >= 0.95, 1))
    exact = set(zip(i.tolist(), j.tolist(), strict=True))
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    assert got <= exact and len(got & exact) / len(exact) >= 0.95
    assert len(exact) >= 200


def test_exact_copies_always_found(corpus_color, corpus_dir, manifest):
    """Byte-identical files are grouped whatever the threshold, with or without the hash."""
    digest = manifest["path"].map(lambda p: hashlib.sha256((corpus_dir / p).read_bytes()).hexdigest())
    copies = manifest.groupby(digest)["path"].apply(list)
    copies = [sorted(p) for p in copies if len(p) > 1]
    assert len(copies) >= 2  # the corpus holds two byte-identical FUSeg pairs
    from lib.neighbors import open_space

    space = open_space("corpus", "color")
    for kw in ({"threshold": 1.0}, {"threshold": None, "use_hash": True}, {"threshold": 0.999}):
        nd = quality.find_near_duplicates(corpus_color, space, **kw)
        dups = quality.duplicates_table(corpus_color, nd, space)
        group_of = dict(zip(dups["path"], dups["group"], strict=True))
        for paths in copies:
            assert all(p in group_of for p in paths), (kw, paths)
            assert len({group_of[p] for p in paths}) == 1


# ----------------------------------------------------------------------------- leaks


@pytest.fixture(scope="module")
def medetec_split(corpus_color, corpus_dir, manifest, tmp_path_factory):
    """Dataset 'med-split': the _1 variants of half of Medetec's originals in test, every other
    Medetec image in train, plus 20 BCCD smears per split (a second class): a split that leaks."""
    med = manifest[manifest["source"] == "medetec"].copy()
    stems = sorted(set(med["path"].map(stem_of)))
    leaking = set(stems[::2])
    med["split"] = np.where(med["path"].str.endswith("_1.png") & med["path"].map(stem_of).isin(leaking),
                            "test", "train")
    bccd = manifest[manifest["source"] == "bccd"].head(40).copy()
    bccd["split"] = ["train", "test"] * 20
    m = pd.concat([med, bccd], ignore_index=True)
    path = tmp_path_factory.mktemp("med") / "manifest.csv"
    m.to_csv(path, index=False)
    dataset.ingest(path, "med-split", root=corpus_dir)
    from lib.embeddings import embed

    embed("med-split", "color")
    return m


def test_split_leaks_from_medetec_variants(medetec_split, capsys, tmp_path):
    rc, out, _ = run_cli(capsys, "med-split", "--model", "color", "--hash-only", "--out", tmp_path)
    assert rc == 0
    leaks = pd.read_csv(tmp_path / "leaks.csv")
    assert list(leaks.columns[:5]) == ["id_a", "id_b", "split_a", "split_b", "similarity"]
    ds = dataset.load("med-split")
    path_of = dict(zip(ds.images["id"], ds.images["path"], strict=True))
    med = medetec_split[medetec_split["source"] == "medetec"]
    stems = set(med.loc[med["split"] == "test", "path"].map(stem_of))
    leaked = {stem_of(path_of[i]) for i in pd.concat([leaks["id_a"], leaks["id_b"]])}
    print(f"\n{len(leaks)} leaked pairs; {len(stems & leaked)} of the {len(stems)} Medetec originals with a "
          "variant in test leak")
    assert len(stems) == 19 and stems <= leaked  # each leaks into the test split through its _1
    assert not (leaked & set(med.loc[med["split"] == "train", "path"].map(stem_of)) - stems)
    assert set(zip(leaks["split_a"], leaks["split_b"], strict=True)) <= {("train", "test"), ("test", "train")}
    same = [stem_of(path_of[a]) == stem_of(path_of[b]) for a, b in zip(leaks["id_a"], leaks["id_b"], strict=True)]
    assert np.mean(same) >= 0.95
    assert "train <-> med-split:test" in out or "test <-> med-split:train" in out

    # probe --split leaves those training images out, and says so
    from lib.probe import run_probe
    from lib.quality import split_exclusions

    res = run_probe("med-split", "color", use_split=True, exclude_ids=split_exclusions("med-split"))
    n = res.dropped["near_duplicate_of_test"]
    assert 3 * len(stems) * 0.95 <= n <= 3 * len(stems) + 5  # X, X_2, X_3 of each X_1 in test
    kept = run_probe("med-split", "color", use_split=True)
    assert "near_duplicate_of_test" not in kept.dropped
    assert main(["probe", "med-split", "--model", "color", "--split", "--out", str(tmp_path / "p.parquet")]) == 0
    assert f"{n} near duplicate of test" in capsys.readouterr().out


def test_leaks_between_two_datasets(medetec_split, corpus_dir, capsys, tmp_path):
    med = medetec_split[medetec_split["source"] == "medetec"]
    for name, part in (("med-train", med[~med["path"].str.endswith("_1.png")]),
                       ("med-new", med[med["path"].str.endswith("_1.png")])):
        p = tmp_path / f"{name}.csv"
        part.drop(columns=["split"]).to_csv(p, index=False)
        dataset.ingest(p, name, root=corpus_dir)
        assert main(["embed", name, "--model", "color"]) == 0
    capsys.readouterr()
    rc, out, _ = run_cli(capsys, "med-train", "--model", "color", "--hash-only", "--against", "med-new",
                         "--out", tmp_path / "q")
    assert rc == 0
    leaks = pd.read_csv(tmp_path / "q" / "leaks.csv")
    cross = leaks[leaks["dataset_b"] == "med-new"]
    assert set(cross["dataset_a"]) == {"med-train"}
    assert cross["id_b"].nunique() >= 0.95 * len(med) / 4  # every new image is a copy of a training one
    assert (cross["path_a"].map(stem_of) == cross["path_b"].map(stem_of)).mean() >= 0.95
    assert "med-train:(none) <-> med-new:(none)" in out


def test_no_leak_and_dedup_manifests_read_back(medetec_split, corpus_dir, tmp_path):
    ds = dataset.load("med-split")
    nd = quality.find_near_duplicates(ds, None, threshold=None, use_hash=True)
    assert len(quality.split_leaks(ds, nd)) > 0
    fixed = quality.no_leak_manifest(ds, nd)
    path = quality.write_manifest(fixed, tmp_path / "noleak.csv")
    dataset.ingest(path, "med-noleak", root=ds.root)
    ds2 = dataset.load("med-noleak")
    assert len(ds2.images) == len(ds.images)
    nd2 = quality.find_near_duplicates(ds2, None, threshold=None, use_hash=True)
    assert quality.split_leaks(ds2, nd2).empty
    assert (ds2.images["split"] == "test").sum() > 0  # groups moved whole; the BCCD test images stay

    dedup = quality.dedup_manifest(ds, nd)
    path = quality.write_manifest(dedup, tmp_path / "dedup.csv")
    dataset.ingest(path, "med-dedup", root=ds.root)
    ds3 = dataset.load("med-dedup")
    assert len(ds3.images) == len(ds.images) - 3 * 38  # one of each Medetec original's 4 variants
    nd3 = quality.find_near_duplicates(ds3, None, threshold=None, use_hash=True)
    assert nd3.n_groups <= 1  # nothing (or at most a chance pair) left to de-duplicate


# ----------------------------------------------------------------------------- label issues


def test_flipped_labels_rank_first(corpus_color, corpus_dir, manifest, capsys, tmp_path):
    rng = np.random.default_rng(13)
    flipped = manifest.copy()
    idx = rng.choice(len(flipped), FLIPS, replace=False)
    flipped.loc[idx, "label"] = np.where(flipped.loc[idx, "label"] == "sensitive", "non_sensitive", "sensitive")
    path = tmp_path / "flipped.csv"
    flipped.to_csv(path, index=False)
    dataset.ingest(path, "flipped", root=corpus_dir)
    assert main(["embed", "flipped", "--model", "color"]) == 0  # vectors are cached by content id: nothing to do
    capsys.readouterr()
    rc, out, _ = run_cli(capsys, "flipped", "--model", "color", "--hash-only", "--out", tmp_path / "q")
    assert rc == 0
    issues = pd.read_csv(tmp_path / "q" / "label_issues.csv")
    assert list(issues.columns[:5]) == ["id", "path", "label", "score", "suggested"]
    assert issues["score"].is_monotonic_decreasing
    bad = set(flipped["path"].iloc[idx])
    p20 = issues["path"].head(20).isin(bad).mean()
    rate = FLIPS / len(issues)
    print(f"\nprecision@20 of the label-issue ranking with {FLIPS} flipped labels: {p20:.2f} (flip rate {rate:.3f}); "
          f"cleanlab flags {int(issues['flagged'].sum())}")
    assert p20 >= 0.5 and p20 >= 10 * rate
    # the suggestion for a flipped image is its true label
    true = dict(zip(manifest["path"], manifest["label"], strict=True))
    hits = issues.head(20)[issues.head(20)["path"].isin(bad)]
    assert (hits["suggested"] == hits["path"].map(true)).mean() >= 0.8
    assert "label issues:" in out and "top 10" in out


def test_knn_disagreement_and_outliers_match_brute_force(corpus_color):
    from lib.neighbors import open_space

    space = open_space("corpus", "color")
    k = 7
    nb, sims = quality.knn(space, k)
    ids, first, _ = quality._first_rows(corpus_color.images)
    X = space.emb.take(first)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    top = np.sort(S, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(sims, top, atol=1e-4)
    out = quality.outliers_table(corpus_color, nb, sims)
    want = (1 - top).mean(1)
    got = out.set_index("id").loc[ids, "uniqueness"].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert out["uniqueness"].is_monotonic_decreasing
    cut = np.median(want) + quality.OUTLIER_MADS * 1.4826 * np.median(np.abs(want - np.median(want)))
    assert out["outlier"].sum() == (want > cut).sum() > 0
    labels = corpus_color.images["label"].to_numpy()[first]
    share, _ = quality.knn_disagreement(labels, nb)
    direct = np.array([(labels[nb[i]] != labels[i]).mean() for i in range(len(ids))])
    np.testing.assert_allclose(share, direct)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("t", ["0", "1.5", "-0.2", "nan"])
def test_threshold_outside_range(corpus_color, capsys, t):
    rc, _, err = run_cli(capsys, "corpus", "--model", "color", "--threshold", t)
    assert rc == 2 and f"--threshold {float(t)}" in err and "(0, 1]" in err


def test_bad_inputs_name_value_and_reason(corpus_color, corpus_dir, manifest, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "corpus", "--model", "color", "--hash-distance", "40")
    assert rc == 2 and "--hash-distance 40" in err
    rc, _, err = run_cli(capsys, "corpus", "--model", "color", "--against", "corpus")
    assert rc == 2 and "--against 'corpus'" in err
    # not embedded with the model: the message names the embed command
    from PIL import Image

    folder = tmp_path / "new"  # re-encoded copies: new content ids that no cache holds
    folder.mkdir()
    for p in manifest["path"].head(4):
        Image.open(corpus_dir / p).convert("RGB").save(folder / f"{Path(p).stem}.jpg", quality=90)
    dataset.ingest(folder, "q-unembedded")
    rc, _, err = run_cli(capsys, "q-unembedded", "--model", "color")
    assert rc == 2 and "python -m lib embed q-unembedded --model color" in err
    rc, _, err = run_cli(capsys, "corpus", "--model", "color", "--against", "q-unembedded")
    assert rc == 2 and "python -m lib embed q-unembedded --model color" in err


def test_unlabelled_dataset_still_gets_duplicates_and_outliers(corpus_color, corpus_dir, manifest, capsys, tmp_path):
    part = manifest[manifest["source"].isin(["medetec", "bccd"])].head(60).drop(columns=["label"])
    part.to_csv(tmp_path / "nolabels.csv", index=False)
    dataset.ingest(tmp_path / "nolabels.csv", "q-nolabels", root=corpus_dir)
    assert main(["embed", "q-nolabels", "--model", "color"]) == 0
    capsys.readouterr()
    rc, out, _ = run_cli(capsys, "q-nolabels", "--model", "color", "--hash", "--out", tmp_path / "q")
    assert rc == 0 and "has no labels" in out
    assert len(pd.read_csv(tmp_path / "q" / "duplicates.csv")) > 0
    assert len(pd.read_csv(tmp_path / "q" / "outliers.csv")) == 60
    assert pd.read_csv(tmp_path / "q" / "label_issues.csv").empty


def test_cli_defaults_are_the_library_defaults():
    from lib.cli import _QUALITY_DEFAULTS

    assert _QUALITY_DEFAULTS == {"threshold": quality.DEFAULT_THRESHOLD, "hash_distance": quality.HASH_MAX_DISTANCE,
                                 "k": quality.KNN_K}


# ----------------------------------------------------------------------------- the page


def test_quality_page_runs_clean(corpus_color):
    from app_pages import assert_clean, open_page

    at = open_page("views/11_Quality.py", dataset="corpus", model="color")
    assert_clean(at)
    assert at.title[0].value == "Data quality"
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Near-duplicate groups"]) >= 38  # hash only by default under color
    assert at.sidebar.toggle(key="w:safe").value is True
    # send the top label issue to the review queue: the Annotate page lists it
    at.button(key=next(b.key for b in at.button if b.label == "Send to review")).click().run()
    assert_clean(at)
    assert len(quality.review_list("corpus")) == 1
    queue = quality.review_queue(dataset.load("corpus"))
    assert len(queue) == 1 and queue["task"].iloc[0] == "quality"
    # the page's manifests go to the folder the CLI writes its report to (quality.report_folder)
    folder = quality.report_folder("corpus", "color")
    at.button(key="qu-dedup").click().run()
    assert_clean(at)
    assert (folder / "dedup-manifest.csv").is_file()
    assert main(["quality", "corpus", "--model", "color", "--hash-only"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["dedup-manifest.csv", "duplicates.csv", "label_issues.csv",
                                                       "leaks.csv", "outliers.csv"]
    assert quality.report_folder("corpus", "open_clip:hf-hub:x/y", "/tmp/elsewhere") == Path("/tmp/elsewhere")
    assert quality.report_folder("corpus", "open_clip:hf-hub:x/y").name == "quality-open_clip_hf-hub_x_y"
