"""Backends: equivalence with open_clip and transformers, weights handling, the color backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.errors import ModelError, WeightsMissing
from lib.images import open_image
from lib.models import load_available, load_model, parse_spec, resolve_fingerprint

REPO = Path(__file__).resolve().parent.parent
TINY_ARCH = "WB-Tiny-ViT"
TEXTS = ["an open wound with blood", "normal skin", "a chest x-ray", "blood smear microscopy"]


@pytest.fixture(scope="module")
def images(corpus_dir):
    import pandas as pd

    m = pd.read_csv(corpus_dir / "manifest.csv")
    picks = m.groupby("source").head(1)["path"].tolist()  # one of each source: 5 real images
    return [open_image(corpus_dir / p) for p in picks]


@pytest.fixture(scope="module")
def reference_open_clip():
    """open_clip's own model, transform and tokenizer, built the way the backend seeds it."""
    import open_clip

    from lib.models.openclip import register_configs

    register_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_ARCH)


def _reference_vectors(model, preprocess, tokenizer, images):
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
        txt = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    return img, txt


def test_open_clip_random_weights_equal_open_clip_outputs(images, reference_open_clip, tiny_model):
    model, preprocess, tokenizer = reference_open_clip
    ref_img, ref_txt = _reference_vectors(model, preprocess, tokenizer, images)
    assert tiny_model.precision == "fp32" and tiny_model.dim == 32
    assert np.abs(tiny_model.encode_images(images) - ref_img).max() < 1e-5
    assert np.abs(tiny_model.encode_texts(TEXTS) - ref_txt).max() < 1e-5
    assert abs(tiny_model.logit_scale - model.logit_scale.exp().item()) < 1e-4


def test_open_clip_local_safetensors_checkpoint(tmp_path, images, reference_open_clip):
    from safetensors.torch import save_file

    model, preprocess, tokenizer = reference_open_clip
    torch.manual_seed(123)  # different weights from the seeded backend
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    backend = load_model(f"open_clip:{TINY_ARCH}@{ckpt}")
    ref_img, ref_txt = _reference_vectors(model, preprocess, tokenizer, images)
    assert np.abs(backend.encode_images(images) - ref_img).max() < 1e-5
    assert np.abs(backend.encode_texts(TEXTS) - ref_txt).max() < 1e-5
    # the fingerprint is memoised per file identity, so a cache check need not reload it
    assert resolve_fingerprint(f"open_clip:{TINY_ARCH}@{ckpt}") == backend.fingerprint


def test_open_clip_torch_checkpoint_weights_only_and_pickle_refused(tmp_path, reference_open_clip):
    model = reference_open_clip[0]
    good = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, good)
    assert load_model(f"open_clip:{TINY_ARCH}@{good}").dim == 32

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": model.state_dict(), "x": Evil()}, evil)
    with pytest.raises(ModelError, match="weights_only"):
        load_model(f"open_clip:{TINY_ARCH}@{evil}")
    assert not marker.exists(), "the malicious pickle ran"


def test_random_weights_need_the_flag_and_are_recorded():
    with pytest.raises(ModelError, match="--random-weights"):
        load_model(f"open_clip:{TINY_ARCH}")
    a = load_model(f"open_clip:{TINY_ARCH}", random_weights=True, seed=0)
    b = load_model(f"open_clip:{TINY_ARCH}", random_weights=True, seed=1)
    assert "random(seed=0)" in a.fingerprint_info["source"]
    assert a.fingerprint != b.fingerprint


def _tiny_hf_clip(path: Path):
    """A tiny transformers CLIPModel with a byte-level tokenizer, saved like any hub model."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(7)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, processor, tokenizer


def test_hf_clip_local_folder_equals_transformers(tmp_path, images):
    model, processor, tokenizer = _tiny_hf_clip(tmp_path / "tiny-clip")
    backend = load_model(f"hf:{tmp_path / 'tiny-clip'}")
    with torch.no_grad():
        img = model.get_image_features(**processor(images=images, return_tensors="pt"))
        img = getattr(img, "pooler_output", img)
        tok = tokenizer(TEXTS, padding=True, return_tensors="pt")
        txt = model.get_text_features(**tok)
        txt = getattr(txt, "pooler_output", txt)
    ref_img = torch.nn.functional.normalize(img, dim=-1).numpy()
    ref_txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
    assert backend.dim == 16
    assert np.abs(backend.encode_images(images) - ref_img).max() < 1e-5
    assert np.abs(backend.encode_texts(TEXTS) - ref_txt).max() < 1e-5


def test_missing_weights_fail_fast_with_a_clear_message(monkeypatch):
    """Weights neither cached nor reachable: one probe of the hub per load, then the error;
    nothing else touches the network (huggingface_hub would retry for ~50 s; the time to
    the error is measured in bench/cache.py)."""
    import socket

    from lib.models import weights

    probes = []
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: probes.append(timeout) or False)

    lookups = []

    def no_network(*a, **k):
        lookups.append(a[:2])  # recorded: a loader may swallow the error below
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(WeightsMissing) as e:
        load_model("open_clip:ViT-B-32@laion2b_s34b_b79k")
    text = str(e.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in text and ".safetensors" in text
    with pytest.raises(WeightsMissing, match="hf:/path/to/folder"):
        load_model("hf:openai/clip-vit-base-patch32")
    with pytest.raises(WeightsMissing):
        load_model("biomedclip")
    assert 1 <= len(probes) <= 3 and not lookups  # at most one probe per load, no download tried


def test_cli_missing_weights_exit_code_and_no_traceback(corpus):
    r = subprocess.run([sys.executable, "-m", "lib", "embed", "corpus", "--model",
                        "open_clip:ViT-B-32@laion2b_s34b_b79k"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "weights for open_clip ViT-B-32" in r.stderr


def test_parse_spec_forms_and_errors():
    assert parse_spec("open_clip:ViT-B-32@laion2b_s34b_b79k").pretrained == "laion2b_s34b_b79k"
    assert parse_spec("biomedclip").arch == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert parse_spec("hf:/some/path").ref == "/some/path"
    assert parse_spec("resnet50").kind == "timm"  # an alias of MedGore's backbone since issue 14
    with pytest.raises(ModelError, match="unknown model spec"):
        parse_spec("no-such-model")


def test_color_backend_is_deterministic_normalised_and_textless(images):
    a = load_model("color")
    v1, v2 = a.encode_images(images), load_model("color").encode_images(images)
    assert np.array_equal(v1, v2) and np.allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5)
    assert a.fingerprint == resolve_fingerprint("color")
    with pytest.raises(ModelError, match="no text tower"):
        a.encode_texts(["wound"])
    red = Image.new("RGB", (64, 64), (180, 10, 20))
    red2 = Image.new("RGB", (80, 48), (170, 15, 25))
    sky = Image.new("RGB", (64, 64), (40, 90, 220))
    v = a.encode_images([red, red2, sky])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # colour features separate reds from blues


def test_device_and_precision_choices(tiny_model, images):
    from lib.models import select_device

    assert select_device() in ("cuda", "mps", "cpu")
    fast = load_model(f"open_clip:{TINY_ARCH}", random_weights=True, precision="bf16-cast")
    cos = np.sum(fast.encode_images(images) * tiny_model.encode_images(images), axis=1)
    assert cos.min() > 0.99
    with pytest.raises(ModelError, match="precision"):
        load_model(f"open_clip:{TINY_ARCH}", random_weights=True, precision="int3")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_cast_on_a_cpu_without_native_bf16_says_so(native, monkeypatch, caplog):
    import lib.models.base as base

    assert isinstance(base.native_cpu_bf16(), bool)  # the real probe answers on any host
    monkeypatch.setattr(base, "native_cpu_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="lib.models.base"):
        load_model(f"open_clip:{TINY_ARCH}", random_weights=True, precision="bf16-cast", device="cpu")
        load_model(f"open_clip:{TINY_ARCH}", random_weights=True, precision="fp32", device="cpu")
    warned = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warned) == (0 if native else 1), warned
    assert native or "--precision fp32" in warned[0]


def test_load_available_skips_only_missing_weights(tmp_path):
    absent = f"open_clip:ViT-B-32@{tmp_path / 'nowhere.safetensors'}"
    loaded, missing = load_available(["color", absent, "color"])
    assert list(loaded) == ["color"] and loaded["color"].dim > 0
    assert missing == [absent]
    # Anything other than absent weights is not swallowed.
    with pytest.raises(ModelError, match="unknown model spec"):
        load_available(["color", "no-such-model"])
    with pytest.raises(ModelError, match="unknown open_clip architecture"):
        load_available(["open_clip:No-Such-Arch@x.safetensors"])


def test_resolved_model_is_resolved_once(tiny_model, monkeypatch):
    """One value carries spec, random_weights, device/precision and fingerprint; the backend
    loads at first use, once; passing a ResolvedModel on resolves nothing again."""
    import lib.models as models
    from lib.models import ResolvedModel, has_weights, resolve_model

    color = resolve_model("color")
    assert isinstance(color, ResolvedModel) and color.kind == "color" and not has_weights("color")
    assert color.fingerprint == load_model("color").fingerprint and not color.loaded  # known without loading
    assert resolve_model(color) is color
    calls = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    tiny = resolve_model("open_clip:WB-Tiny-ViT", random_weights=True, precision="fp32")
    assert tiny.spec == "open_clip:WB-Tiny-ViT" and tiny.random_weights and tiny.precision == "fp32"
    assert tiny.backend is tiny.backend and len(calls) == 1 and calls[0][1]["random_weights"] is True
    assert tiny.fingerprint == tiny_model.fingerprint
    wrapped = resolve_model(tiny_model)  # a loaded backend: wrapped, not loaded again
    assert wrapped.loaded and wrapped.backend is tiny_model and len(calls) == 1
    with pytest.raises(ModelError, match="unknown model spec"):
        resolve_model("no-such-model")  # a bad spec fails when resolved, before any work
