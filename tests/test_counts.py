"""Counts in words: "1 image", never "1 images" or "1 image(s)" (:func:`lib.gallery.plural`),
in the CLI's output on a one-image dataset and in every count the pages and lib/ui.py format."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lib.cli import main
from lib.gallery import plural

REPO = Path(__file__).resolve().parent.parent
#: A text right after a formatted number that names what was counted, in a fixed number.
NOUN = re.compile(r"^\**\s?([a-z]+\(s\)|(images|labels|pairs|rows|files|seeds|points|results|errors|examples|"
                  r"templates|reviews|features|conflicts|classes|groups)\b)")


def fixed_counts(path: Path) -> list[str]:
    """``file:line: {value}text`` for each f-string part where a formatted value (not a
    constant such as ``ui.HOVER_MAX``) is followed by a counted noun in a fixed number."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.JoinedStr):
            continue
        for a, b in zip(node.values, node.values[1:], strict=False):
            if isinstance(a, ast.FormattedValue) and isinstance(b, ast.Constant) and isinstance(b.value, str) \
                    and NOUN.match(b.value):
                src = ast.unparse(a.value)
                if not src.rsplit(".", 1)[-1].isupper():
                    out.append(f"{path.name}:{node.lineno}: {{{src}}}{b.value[:24]}")
    return out


def test_plural():
    assert plural(1, "image") == "1 image" and plural(0, "image") == "0 images" and plural(2, "pair") == "2 pairs"
    assert plural(1, "(image, caption) pair") == "1 (image, caption) pair"
    assert plural(3, "class", "classes") == "3 classes"


def test_every_count_in_the_pages_and_the_cli_goes_through_plural():
    files = [*sorted((REPO / "views").glob("*.py")), REPO / "app.py", REPO / "lib" / "cli.py", REPO / "lib" / "ui.py"]
    found = [hit for f in files for hit in fixed_counts(f)]
    assert not found, found
    # the scan itself finds what it looks for
    probe = REPO / "tests" / "_plural_probe.py"
    try:
        probe.write_text('n = 1\nx = f"{n} images and {n} image(s)"\ny = f"{n} pairs"\n')
        assert len(fixed_counts(probe)) == 3
    finally:
        probe.unlink()


@pytest.fixture()
def one_image(corpus_dir, tmp_path):
    """A dataset of one corpus image, labelled by its folder."""
    m = pd.read_csv(corpus_dir / "manifest.csv")
    src = m[m.label == "non_sensitive"].path.iloc[0]
    (tmp_path / "one" / "skin").mkdir(parents=True)
    shutil.copy(corpus_dir / src, tmp_path / "one" / "skin" / Path(src).name)
    assert main(["ingest", str(tmp_path / "one"), "--name", "one-image"]) == 0
    return "one-image"


def test_the_cli_counts_one_image_in_the_singular(one_image, capsys, monkeypatch):
    capsys.readouterr()
    assert main(["show", one_image]) == 0
    assert main(["show", one_image, "--where", "label=skin"]) == 0
    assert main(["safe-view", one_image]) == 0
    monkeypatch.setenv("WORKBENCH_ANNOTATOR", "una")
    assert main(["label", one_image, "--label", "Ok", "--where", "label=skin"]) == 0
    out = capsys.readouterr().out
    assert "(1 image, 0 errors; root" in out and "(1 of 1 image, 0 errors" in out
    assert f"{one_image}: 1 image, " in out and "1 image labelled 'Ok'" in out
    assert not re.search(r"\b1 (images|errors|pairs|labels)\b|\(s\)", out), out
