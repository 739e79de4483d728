"""A small real dataset for a fresh offline machine, built from images installed packages ship.

scikit-image ships a retina fundus photograph, an IHC histology slide, a microscopy
cell image, a Shepp-Logan CT phantom and everyday photographs; pydicom ships CT and MR
test files. Each medical image also yields a few crops so neighbourhoods have members.
Class folders become labels: fundus, histology, microscopy, ct, mr, photo; the demo's
label policy marks them all safe (they are package test images).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from . import config
from . import dataset as ds_mod
from .files import copy_file, write_image

MEDICAL = {
    "fundus": ["retina.jpg", "microaneurysms.png"],
    "histology": ["ihc.png"],
    "microscopy": ["cell.png"],
    "ct": ["phantom.png"],
}
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png",
          "brick.png", "grass.png", "gravel.png", "horse.png", "coins.png", "moon.png", "motorcycle_left.png"]
DICOMS = {"ct": ["CT_small.dcm", "liver_1frame.dcm"], "mr": ["MR_small.dcm", "MR_small_bigendian.dcm",
                                                            "MR_small_expb.dcm"]}


def _crops(img: Image.Image, n: int = 4) -> list[Image.Image]:
    """Four overlapping corner crops (60% of each side): near neighbours of the original."""
    w, h = img.size
    cw, ch = int(w * 0.6), int(h * 0.6)
    return [img.crop((x, y, x + cw, y + ch)) for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch))][:n]


def source_folder() -> Path:
    return config.home() / "demo_src"


def write_sources(out: Path | None = None) -> Path:
    """Write the demo images as files under ``out`` (default ``<home>/demo_src``)."""
    import pydicom.data
    import skimage

    out = out or source_folder()
    if out.exists():
        shutil.rmtree(out)
    sk = Path(skimage.__file__).parent / "data"
    for label, names in MEDICAL.items():
        d = out / label
        for name in names:
            img = Image.open(sk / name).convert("RGB")
            stem = Path(name).stem
            write_image(d / f"{stem}.png", img)
            for i, crop in enumerate(_crops(img)):
                write_image(d / f"{stem}_crop{i}.png", crop)
    for name in PHOTOS:
        write_image(out / "photo" / f"{Path(name).stem}.png", Image.open(sk / name).convert("RGB"))
    for label, names in DICOMS.items():
        for name in names:
            copy_file(pydicom.data.get_testdata_file(name), out / label / name)
    # A flipped copy per DICOM keeps each modality's neighbourhood non-trivial.
    from .images import open_image

    for label in DICOMS:
        for f in sorted((out / label).glob("*.dcm")):
            arr = np.asarray(open_image(f))
            write_image(f.with_name(f.stem + "_flip.png"), Image.fromarray(arr[:, ::-1].copy()))
    return out


def build(name: str = "demo", *, embed: bool = True) -> ds_mod.IngestReport:
    """Write the sources, ingest them as dataset ``name`` and index it with ``color``
    (:func:`lib.signals.index`: embeddings, EB fractions, hashes and statistics, one decode)."""
    from .sensitivity import set_policy

    report = ds_mod.ingest(write_sources(), name)
    # Package test images, none of them disturbing: every class is a safe label, so the
    # demo shows what clears an image (and EB still flags the reddest ones).
    set_policy(name, safe=list(report.labels), by="demo")
    if embed:
        from .signals import index

        index(name, ["color"])
    return report


def ensure_demo(name: str = "demo") -> None:
    """Build the demo dataset once, if the data home has no dataset at all."""
    if not ds_mod.list_names():
        build(name)
