"""The one writer of files (lib/files.py): a writer killed mid-write leaves the old file intact.

Each format is written by a child process that SIGKILLs itself half-way through the new
content (after the first bytes reached the temporary file); the target must still hold the
old content, byte for byte, and readers must read it back. Also: result paths and slugs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib import files

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "lib" / "files.py"  # the source of the old copies
OLD_PIXELS = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)

FORMATS = {
    "bytes": ("old.bin", lambda p: files.write_bytes(p, b"old" * 100), lambda p: p.read_bytes() == b"old" * 100),
    "text": ("old.txt", lambda p: files.write_text(p, "old ünïcode"), lambda p: p.read_text() == "old ünïcode"),
    "json": ("old.json", lambda p: files.write_json(p, {"v": 1}), lambda p: json.loads(p.read_text()) == {"v": 1}),
    "csv": ("old.csv", lambda p: files.write_table(p, pd.DataFrame({"a": [1, 2]})),
            lambda p: pd.read_csv(p)["a"].tolist() == [1, 2]),
    "parquet": ("old.parquet", lambda p: files.write_table(p, pd.DataFrame({"a": [1, 2]})),
                lambda p: pd.read_parquet(p)["a"].tolist() == [1, 2]),
    "npy": ("old.npy", lambda p: files.write_npy(p, np.arange(5)),
            lambda p: np.load(p, allow_pickle=False).tolist() == list(range(5))),
    "npz": ("old.npz", lambda p: files.write_npz(p, a=np.arange(3)),
            lambda p: np.load(p, allow_pickle=False)["a"].tolist() == [0, 1, 2]),
    "copy": ("old.dcm", lambda p: files.copy_file(SMALL, p), lambda p: p.read_bytes() == SMALL.read_bytes()),
    "png": ("old.png", lambda p: files.write_image(p, Image.fromarray(OLD_PIXELS)),
            lambda p: np.array_equal(np.asarray(Image.open(p)), OLD_PIXELS)),
    "jpeg": ("old.jpg", lambda p: files.write_image(p, Image.fromarray(OLD_PIXELS), quality=95),
             lambda p: Image.open(p).format == "JPEG" and Image.open(p).size == (8, 8)),
}

# The child writes a much larger new version through the same writer, but its file object
# kills the process once the first megabyte has gone to the temporary file (or, for writes
# that bypass write(), at the fsync just before the rename).
CHILD = textwrap.dedent("""
    import io, os, signal, sys, tempfile
    import numpy as np, pandas as pd
    from PIL import Image
    from lib import files

    kind, path = sys.argv[1], sys.argv[2]
    source = os.path.join(tempfile.mkdtemp(), "big.bin")  # what the copy copies: written before the trap
    with open(source, "wb") as f:
        f.write(os.urandom(4 << 20))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    real_open = open

    class Dying(io.FileIO):
        written = 0
        def write(self, b):
            n = super().write(b)
            Dying.written += n
            if Dying.written > 1 << 20:
                self.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return n

    def dying_open(file, mode="r", *a, **k):
        if "w" in mode and str(file).endswith(".tmp"):
            return io.BufferedWriter(Dying(file, "w"))
        return real_open(file, mode, *a, **k)

    import builtins
    builtins.open = dying_open
    # np.save writes large arrays through the file descriptor, past write(): die before the
    # rename instead, with the whole new content in the temporary file
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    big = np.random.default_rng(0).standard_normal(1 << 20)
    df = pd.DataFrame({"a": big})
    {"bytes": lambda: files.write_bytes(path, os.urandom(4 << 20)),
     "text": lambda: files.write_text(path, "x" * (4 << 20)),
     "json": lambda: files.write_json(path, {"v": ["x" * 100] * 50000}),
     "csv": lambda: files.write_table(path, df),
     "parquet": lambda: files.write_table(path, df),
     "npy": lambda: files.write_npy(path, big),
     "npz": lambda: files.write_npz(path, a=big),
     "copy": lambda: files.copy_file(source, path),
     "png": lambda: files.write_image(path, noise),
     "jpeg": lambda: files.write_image(path, noise, quality=100)}[kind]()
    print("not killed")
""")


@pytest.mark.parametrize("kind", list(FORMATS))
def test_a_writer_killed_mid_write_leaves_the_old_file(kind, tmp_path):
    name, write_old, check = FORMATS[kind]
    path = tmp_path / name
    write_old(path)
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert path.read_bytes() == before and check(path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != name]
    assert all(p.startswith(".") and p.endswith(".tmp") for p in leftovers), leftovers  # never under the final name
    # the next write replaces it whole
    write_old(path)
    assert check(path)


def test_object_arrays_are_refused_rather_than_pickled(tmp_path):
    with pytest.raises(ValueError, match="pickle"):
        files.write_npy(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        files.write_npz(tmp_path / "x.npz", a=np.array(["a", 1], dtype=object))
    assert not list(tmp_path.iterdir())


def test_result_paths_and_slugs(tmp_path, monkeypatch):
    from lib.errors import DatasetError

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    assert files.results_dir("corpus") == tmp_path / "results" / "corpus"
    p = files.result_path("corpus", "eb.parquet")
    assert p == tmp_path / "results" / "corpus" / "eb.parquet" and p.parent.is_dir()
    assert files.result_path("corpus", "eb.parquet", tmp_path / "elsewhere" / "x.csv") == tmp_path / "elsewhere" / "x.csv"
    with pytest.raises(DatasetError):
        files.results_dir("../etc")
    assert files.slug("open_clip:hf-hub:microsoft/BiomedCLIP") == "open_clip_hf-hub_microsoft_BiomedCLIP"
    assert files.slug("///") == "x" and len(files.slug("a" * 500)) == 80
    assert files.sha256_file(files.write_bytes(tmp_path / "h", b"abc")) == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_link_or_copy_links_and_falls_back_to_an_atomic_copy(tmp_path, monkeypatch):
    src = files.write_bytes(tmp_path / "src.bin", b"pixels" * 1000)
    linked = files.link_or_copy(src, tmp_path / "a" / "linked.bin")
    assert linked.read_bytes() == src.read_bytes() and linked.stat().st_ino == src.stat().st_ino
    files.write_bytes(tmp_path / "b" / "copied.bin", b"old")

    def no_links(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copied = files.link_or_copy(src, tmp_path / "b" / "copied.bin")  # replaces the old file
    assert copied.read_bytes() == src.read_bytes() and copied.stat().st_ino != src.stat().st_ino
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["copied.bin"]  # no temporary left


def test_write_image_follows_the_suffix_and_refuses_an_unknown_one(tmp_path):
    img = Image.fromarray(OLD_PIXELS)
    assert Image.open(files.write_image(tmp_path / "x.PNG", img)).format == "PNG"
    assert Image.open(files.write_image(tmp_path / "x.jpeg", img)).format == "JPEG"
    with pytest.raises(ValueError, match="suffix"):
        files.write_image(tmp_path / "x.notanimage", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.PNG", "x.jpeg"]
