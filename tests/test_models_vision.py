"""Image-only backbones in the one registry (issue 14, part 2): timm and transformers vision
models against their libraries' own forward on random weights, local checkpoints, the
GenMedCLIP configs, aliases, "weights missing" offline, and the registry as a table of kinds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.errors import ModelError, WeightsMissing
from lib.images import open_image
from lib.models import REGISTRY, Kind, ModelSpec, aliases, load_model, parse_spec, resolve_fingerprint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(corpus_dir):
    import pandas as pd

    m = pd.read_csv(corpus_dir / "manifest.csv")
    return [open_image(corpus_dir / p) for p in m.groupby("source").head(1)["path"].tolist()]


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float()
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


# ----------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("name", ["wb-tiny-vit", "wb-tiny-resnet", "wb-tiny-swin"])
def test_timm_backbone_equals_timms_own_forward(name, images):
    import timm
    from timm.data import create_transform, resolve_data_config

    from lib.models.timm_backend import tiny_config

    backend = load_model(f"timm:{name}", random_weights=True)
    cfg = tiny_config(name)
    # timm's own model *with* its classifier: the backend's features are its pre-logits.
    ref = timm.create_model(cfg["model"], pretrained=False, **cfg["kwargs"]).eval()
    missing, unexpected = ref.load_state_dict(backend.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(ref.pretrained_cfg["classifier"]) for k in missing)
    transform = create_transform(**resolve_data_config({"input_size": tuple(cfg["input_size"])}, model=ref))
    x = torch.stack([transform(im) for im in images])
    assert np.abs(np.stack([backend.preprocess(im) for im in images]) - x.numpy()).max() == 0
    with torch.no_grad():
        want = _unit(ref.forward_head(ref.forward_features(x), pre_logits=True))
    got = backend.encode_images(images)
    assert got.shape == (len(images), ref.num_features) and backend.dim == ref.num_features
    assert np.abs(got - want).max() < 1e-5
    assert backend.has_text is False
    with pytest.raises(ModelError, match="no text tower"):
        backend.encode_texts(["a wound"])
    assert resolve_fingerprint(f"timm:{name}", random_weights=True) == backend.fingerprint


def test_timm_local_checkpoint_full_model_and_mismatch(tmp_path, images):
    import timm
    from safetensors.torch import save_file

    backend = load_model("timm:wb-tiny-resnet", random_weights=True, seed=3)
    # A full timm state dict (with its fc classifier), as timm or a training script saves it.
    full = timm.create_model("resnet18", pretrained=False).eval()
    full.load_state_dict(backend.model.state_dict(), strict=False)
    path = tmp_path / "resnet18-full.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    loaded = load_model(f"timm:wb-tiny-resnet@{path}")
    assert np.abs(loaded.encode_images(images) - backend.encode_images(images)).max() < 1e-6
    assert loaded.fingerprint != backend.fingerprint  # the source differs: file vs random
    assert resolve_fingerprint(f"timm:wb-tiny-resnet@{path}") == loaded.fingerprint
    other = tmp_path / "vit.safetensors"
    vit = load_model("timm:wb-tiny-vit", random_weights=True)
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(other))
    with pytest.raises(ModelError, match="does not match timm architecture"):
        load_model(f"timm:wb-tiny-resnet@{other}")
    with pytest.raises(WeightsMissing, match="does not exist"):
        load_model(f"timm:wb-tiny-resnet@{tmp_path / 'none.safetensors'}")


def test_timm_spec_forms_and_bad_input():
    s = parse_spec("timm:resnet50@a1_in1k")
    assert (s.kind, s.arch, s.pretrained) == ("timm", "resnet50", "a1_in1k")
    assert parse_spec("timm:resnet50.a1_in1k").arch == "resnet50.a1_in1k"
    with pytest.raises(ModelError, match="unknown timm architecture 'resnet5000'"):
        load_model("timm:resnet5000", random_weights=True)
    with pytest.raises(ModelError, match="add --random-weights"):
        load_model("timm:wb-tiny-vit")
    with pytest.raises(ModelError, match="bad spec"):
        parse_spec("timm:")


# ---------------------------------------------------------------------------- transformers


def test_hf_dinov2_equals_transformers_forward(images, tmp_path):
    import transformers as T

    from lib.models.hf import CONFIG_DIR

    backend = load_model("hf:wb-tiny-dinov2", random_weights=True)
    folder = CONFIG_DIR / "wb-tiny-dinov2"
    ref = T.Dinov2Model(T.AutoConfig.from_pretrained(folder)).eval()
    ref.load_state_dict(backend.model.state_dict())
    proc = T.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        want = _unit(ref(**proc(images=images, return_tensors="pt")).pooler_output)
    got = backend.encode_images(images)
    assert backend.dim == 32 and backend.pooling == "cls" and not backend.has_text
    assert np.abs(got - want).max() < 1e-5
    # A save_pretrained folder loads as hf:/path with its weights, without --random-weights.
    ref.save_pretrained(tmp_path / "dino")
    proc.save_pretrained(tmp_path / "dino")
    local = load_model(f"hf:{tmp_path / 'dino'}")
    assert np.abs(local.encode_images(images) - got).max() < 1e-5
    assert resolve_fingerprint(f"hf:{tmp_path / 'dino'}") == local.fingerprint


def test_hf_vit_feature_is_what_its_classifier_reads(images):
    import transformers as T

    from lib.models.hf import CONFIG_DIR

    backend = load_model("hf:wb-tiny-vit", random_weights=True)
    folder = CONFIG_DIR / "wb-tiny-vit"
    clf = T.ViTForImageClassification(T.AutoConfig.from_pretrained(folder)).eval()
    missing, unexpected = clf.vit.load_state_dict(backend.model.state_dict(), strict=False)
    assert not missing and all(k.startswith("pooler.") for k in unexpected)
    clf.classifier = torch.nn.Identity()  # logits = the feature transformers' head reads
    proc = T.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        want = _unit(clf(**proc(images=images, return_tensors="pt")).logits)
    assert np.abs(backend.encode_images(images) - want).max() < 1e-5


def test_hf_text_only_model_is_refused(tmp_path):
    import transformers as T

    cfg = T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    T.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="'bert' model, not an image model"):
        load_model(f"hf:{tmp_path / 'bert'}")


# ------------------------------------------------------------------- GenMedCLIP and aliases


def test_genmedclip_configs_are_registered_data():
    import open_clip

    from lib.models.openclip import CONFIG_DIR, register_configs

    register_configs()
    assert (CONFIG_DIR / "genmedclip-32.json").is_file() and (CONFIG_DIR / "genmedclip-16.json").is_file()
    c32, c16 = open_clip.get_model_config("genmedclip-32"), open_clip.get_model_config("genmedclip-16")
    assert c32["vision_cfg"]["patch_size"] == 32 and c32["text_cfg"]["context_length"] == 77
    assert "hf_model_name" not in c32["text_cfg"]  # CLIP's own GPT-2-style text transformer
    assert c16["text_cfg"]["hf_model_name"].startswith("microsoft/BiomedNLP-BiomedBERT")
    assert c16["text_cfg"]["context_length"] == 256 and c16["vision_cfg"]["timm_model_name"] == "vit_base_patch16_224"
    b = load_model("open_clip:genmedclip-32", random_weights=True)
    assert b.dim == 512 and b.has_text and b.encode_texts(["a burn wound"]).shape == (1, 512)


def test_backbone_aliases_resolve_to_real_specs():
    import timm

    a = aliases()
    for name in ("swin-b", "vit-b16", "resnet50", "dinov2-l", "dinov2-b", "genmedclip"):
        assert name in a
    for name in ("swin-b", "vit-b16", "resnet50", "resnet50-tv", "densenet121", "efficientnet-b0"):
        s = parse_spec(name)
        assert s.kind == "timm" and timm.models.get_pretrained_cfg(s.arch).hf_hub_id
    assert parse_spec("dinov2-l").ref == "facebook/dinov2-large"


def test_missing_weights_offline_per_kind_and_cli(corpus):
    for spec in ("swin-b", "dinov2-l", "resnet50", "open_clip:genmedclip-16"):
        with pytest.raises(WeightsMissing, match="not available"):
            load_model(spec, random_weights=spec.startswith("open_clip"))
    r = subprocess.run([sys.executable, "-m", "lib", "embed", "corpus", "--model", "swin-b"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k" in r.stderr and ".safetensors" in r.stderr


# ---------------------------------------------------------------- the registry is a table


def test_a_new_backend_is_one_entry_in_the_registry(monkeypatch, images):
    from lib.models.color import ColorBackend

    class Grey(ColorBackend):
        kind = "grey"

        def __init__(self):
            super().__init__()
            self.spec = "grey:x"
            self.fingerprint_info = {"kind": "grey"}

    kind = Kind("grey", "grey:", lambda text, rest: ModelSpec(text, "grey", ref=rest),
                lambda s, rw, seed, device, precision: Grey(), lambda s: "")
    monkeypatch.setitem(REGISTRY, "grey", kind)
    b = load_model("grey:x")
    assert isinstance(b, Grey) and b.encode_images(images[:1]).shape == (1, b.dim)
    assert resolve_fingerprint("grey:x") == b.fingerprint  # remembered through the table's identity
    assert set(REGISTRY) >= {"color", "open_clip", "hf", "timm", "finetuned"}
