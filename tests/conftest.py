"""Shared fixtures: one data home per test session, the real corpus ingested and embedded once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
TINY = "open_clip:WB-Tiny-ViT"  # real open_clip architecture, seeded random weights


def pytest_configure(config):
    # Every test process gets a private data home (each xdist worker too: a worker inherits
    # the controller's variable and replaces it here); nothing touches the repo's data/.
    if "WORKBENCH_HOME" not in os.environ or not os.environ.get("WORKBENCH_TEST_KEEP_HOME"):
        import tempfile

        os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp(prefix="wb-test-home-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config):
    home = os.environ.get("WORKBENCH_HOME", "")
    if "wb-test-home-" in home and not os.environ.get("WORKBENCH_TEST_KEEP_HOME"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS / "manifest.csv").exists():
        pytest.fail(f"the real corpus is missing at {CORPUS} (it must sit at ../shared/corpus)")
    return CORPUS


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    """Dataset 'corpus' ingested from ../shared/corpus/manifest.csv (658 real images)."""
    from lib import dataset

    if not dataset.exists("corpus"):
        dataset.ingest(corpus_dir / "manifest.csv", "corpus")
    return dataset.load("corpus")


@pytest.fixture(scope="session")
def corpus_color(corpus):
    """The corpus embedded with the offline `color` backend."""
    from lib.embeddings import embed

    embed("corpus", "color")
    return corpus


@pytest.fixture(scope="session")
def tiny_model():
    from lib.models import load_model

    return load_model(TINY, random_weights=True)


@pytest.fixture(scope="session")
def tiny(tiny_model):
    """The tiny random-weight model resolved once (what every run_* takes)."""
    from lib.models import resolve_model

    return resolve_model(TINY, random_weights=True, backend=tiny_model)


@pytest.fixture(scope="session")
def corpus_tiny(corpus, tiny_model):
    """The corpus embedded with the tiny random-weight open_clip model."""
    from lib.embeddings import embed

    embed("corpus", TINY, random_weights=True, backend=tiny_model)
    return corpus
