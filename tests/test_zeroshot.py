"""Zero-shot classification against open_clip used by hand, on the tiny random-weight model and real images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from PIL import Image
from sklearn.metrics import roc_auc_score

from lib import zeroshot
from lib.errors import ModelError
from lib.zeroshot import PromptError, class_embeddings, load_classes, load_templates, predict, run_zeroshot

ARCH = TINY.split(":", 1)[1]


@pytest.fixture(scope="session")
def reference_clip(tiny_model):
    """The tiny architecture built straight from open_clip (same seed), with its own transforms."""
    import open_clip
    import torch

    from lib.models.openclip import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    model.eval()
    ours = tiny_model.model.state_dict()
    theirs = model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), \
        "reference model must carry the very weights of the backend under test"
    return model, preprocess, open_clip.get_tokenizer(ARCH)


def _by_hand(reference_clip, image_paths, prompts_per_class):
    """CLIP zero-shot as in the open_clip README: normalise, average templates, renormalise, softmax."""
    import torch

    model, preprocess, tokenizer = reference_clip
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in image_paths])
        img = model.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        cls = []
        for prompts in prompts_per_class:
            t = model.encode_text(tokenizer(prompts))
            t = t / t.norm(dim=-1, keepdim=True)
            m = t.mean(dim=0)
            cls.append(m / m.norm())
        cls = torch.stack(cls)
        probs = (model.logit_scale.exp() * img @ cls.T).softmax(dim=-1)
    return probs.numpy(), cls.numpy()


def _some_images(corpus_dir, n_per_label=2):
    m = pd.read_csv(corpus_dir / "manifest.csv")
    rows = pd.concat([m[m.label == lab].iloc[::97].head(n_per_label) for lab in ("sensitive", "non_sensitive")])
    return rows, [corpus_dir / p for p in rows.path]


def test_medgore_generic_equals_open_clip_by_hand(tiny_model, reference_clip, corpus_dir):
    rows, paths = _some_images(corpus_dir)
    prompts = [["Blur presented in image", "evidence of Blur in image", "an image showing Blur"],
               ["Normal presented in image", "evidence of Normal in image", "an image showing Normal"]]
    want_probs, want_cls = _by_hand(reference_clip, paths, prompts)

    cls = class_embeddings(tiny_model, "medgore", "generic")
    assert cls.shape == (2, tiny_model.dim)
    np.testing.assert_allclose(cls, want_cls, atol=1e-5)
    probs = predict(tiny_model.encode_images([Image.open(p).convert("RGB") for p in paths]), cls,
                    tiny_model.logit_scale)
    assert probs.shape == (len(paths), 2)
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)

    # Averaging must matter: one template alone gives other class embeddings.
    single = class_embeddings(tiny_model, "medgore", ["{c} presented in image"])
    assert not np.allclose(single, cls, atol=1e-3)


def test_class_texts_times_templates_from_json_files(tiny_model, reference_clip, corpus_dir, tmp_path):
    classes = tmp_path / "mine.json"
    classes.write_text(json.dumps({"classes": [{"name": "wound", "texts": ["an ulcer", "a cut"]}, "skin"]}))
    templates = tmp_path / "tpl.json"
    templates.write_text(json.dumps({"templates": ["{c} on a foot", "a photo of {c}."]}))
    _, paths = _some_images(corpus_dir, 1)
    want, _ = _by_hand(reference_clip, paths, [
        ["an ulcer on a foot", "a photo of an ulcer.", "a cut on a foot", "a photo of a cut."],
        ["skin on a foot", "a photo of skin."]])
    cls = class_embeddings(tiny_model, str(classes), str(templates))
    probs = predict(tiny_model.encode_images([Image.open(p).convert("RGB") for p in paths]), cls,
                    tiny_model.logit_scale)
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_predict_is_softmax_of_scaled_cosine():
    img = np.array([[3.0, 0.0], [1.0, 1.0]])  # not unit: cosine must normalise
    cls = np.array([[1.0, 0.0], [0.0, 2.0]])
    p = predict(img, cls, 10.0)
    e = np.exp(10 * np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]]))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_run_zeroshot_on_corpus(corpus_tiny, tiny_model, reference_clip, corpus_dir, tmp_path, tiny):
    out = tmp_path / "preds.parquet"
    res = run_zeroshot("corpus", tiny, classes="medgore", out=out)
    df = res.predictions
    assert len(df) == len(corpus_tiny.images) == 658
    assert list(df.columns[:6]) == ["id", "path", "label", "truth", "pred", "p_Blur"]
    assert res.templates.name == "generic"  # the class set's default
    np.testing.assert_allclose(df[["p_Blur", "p_Normal"]].sum(axis=1), 1.0, atol=1e-9)
    pd.testing.assert_frame_equal(pd.read_parquet(out), df, check_dtype=False)

    # A few rows against open_clip by hand (cached vectors are fp16: ~1e-3 in cosine).
    sample = df.iloc[[0, 150, 400, 500, 640]]
    want, _ = _by_hand(reference_clip, [corpus_tiny.abspath(p) for p in sample.path], [
        ["Blur presented in image", "evidence of Blur in image", "an image showing Blur"],
        ["Normal presented in image", "evidence of Normal in image", "an image showing Normal"]])
    np.testing.assert_allclose(sample[["p_Blur", "p_Normal"]].to_numpy(), want, atol=1e-2)

    # Metrics against the dataset labels mapped sensitive -> Blur.
    truth = corpus_tiny.images["label"].map({"sensitive": "Blur", "non_sensitive": "Normal"})
    assert (df["truth"] == truth).all() and res.n_scored == 658 and res.n_unmapped == 0
    assert res.positive == "Blur"
    assert res.metrics["accuracy"] == pytest.approx(np.mean(df["pred"] == truth))
    assert res.metrics["roc_auc"] == pytest.approx(roc_auc_score(truth == "Blur", df["score"]))
    assert (df["score"] == df["p_Blur"]).all()
    assert res.confusion.loc["Blur"].sum() == (truth == "Blur").sum() == 544
    assert res.confusion.to_numpy().sum() == 658


def test_run_zeroshot_other_label_column_and_unmapped(corpus_tiny, tiny_model, tmp_path, tiny):
    # 'subclass' values: chest_xray etc.; only foot_ulcer maps (case-insensitive class name match).
    res = run_zeroshot("corpus", tiny, classes=["Foot_Ulcer", "chest x-ray"], templates="an image of {c}",
                       label_column="subclass", write=False)
    n_foot = int((corpus_tiny.images["subclass"] == "foot_ulcer").sum())
    assert res.n_scored == n_foot and res.n_unmapped == 658 - n_foot
    assert res.path is None and "subclass" in res.predictions
    assert res.metrics["n"] == n_foot


def test_color_model_has_no_text_tower(corpus):
    from lib.models import load_model

    with pytest.raises(ModelError, match="text tower"):
        class_embeddings(load_model("color"), "medgore", "generic")
    with pytest.raises(ModelError, match="zero-shot classification needs a text tower"):
        run_zeroshot("corpus", "color", classes="medgore")


def test_shipped_prompt_sets():
    assert {"medgore", "medgore-descriptive", "modality", "body_region"} <= set(zeroshot.class_sets())
    assert {"generic", "histopathology", "plain"} <= set(zeroshot.template_sets())
    assert load_templates("generic").templates == (
        "{c} presented in image", "evidence of {c} in image", "an image showing {c}")
    assert load_templates("histopathology").fill("tumor") == [
        "a histopathology slide showing tumor.", "histopathology image of tumor.",
        "pathology tissue showing tumor.", "presence of tumor tissue on image"]
    mg = load_classes("medgore")
    assert mg.classes == ("Blur", "Normal") and mg.positive == "Blur"
    assert list(mg.map_labels(["sensitive", "non_sensitive", "NORMAL", "other", None, float("nan")])) == [
        "Blur", "Normal", "Normal", None, None, None]
    desc = load_classes("medgore-descriptive")
    assert any("open wound" in t for t in desc.texts_of("sensitive"))
    assert {"CT", "MRI", "X-ray", "ultrasound", "photograph", "microscopy", "histopathology", "endoscopy",
            "fundus"} <= set(load_classes("modality").classes)
    assert {"chest", "abdomen", "head", "foot", "skin"} <= set(load_classes("body_region").classes)
    for name in zeroshot.class_sets():  # every default template set exists
        cs = load_classes(name)
        assert load_templates(cs.templates or zeroshot.DEFAULT_TEMPLATES).templates


def test_class_and_template_parsing_errors(tmp_path):
    assert load_classes("a, b ,c").classes == ("a", "b", "c")
    with pytest.raises(PromptError, match="unknown class set"):
        load_classes("no-such-set")
    with pytest.raises(PromptError, match="at least two"):
        load_classes("a,a")
    with pytest.raises(PromptError, match="placeholder"):
        load_templates(["a photo"])
    with pytest.raises(PromptError, match="unknown template set"):
        load_templates("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": ["x", "y"], "label_map": {"v": "z"}}))
    with pytest.raises(PromptError, match="unknown classes"):
        load_classes(str(bad))


def test_cli_zeroshot_prints_metrics(corpus_tiny, tmp_path, capsys):
    from lib.cli import main

    out = tmp_path / "cli.parquet"
    rc = main(["zeroshot", "corpus", "--model", TINY, "--random-weights", "--classes", "medgore-descriptive",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "metrics on 658 labelled images" in text and "double_f1" in text and "roc_auc" in text
    assert "positive class sensitive" in text and "confusion" in text
    preds = pd.read_parquet(out)
    assert set(preds["pred"]) <= {"sensitive", "non_sensitive"} and len(preds) == 658

    rc = main(["zeroshot", "corpus", "--model", "color", "--classes", "a,b"])
    assert rc == 2 and "text tower" in capsys.readouterr().err
