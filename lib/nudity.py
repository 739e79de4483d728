"""NudeNet exposure scores as safe-view evidence, computed on demand and cached per content id.

Each image gets the highest score among NudeNet's detections of exposed intimate parts
(:data:`lib.safety.EXPOSED_CLASSES`) and the part it names; 0.0 when nothing is found.
The detector (an ONNX model shipped inside the ``nudenet`` wheel) works offline. The
score only ever flags an image (:mod:`lib.sensitivity`); finding nothing never clears it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from .idcache import IdCache

#: Bump when the scoring code changes the values.
VERSION = 1
COLUMNS = ("nudity", "part", "at")


def cache() -> IdCache:
    from .safety import EXPOSED_CLASSES

    return IdCache("nudenet", f"v{VERSION}", COLUMNS,
                   info={"what": "NudeNet 3 highest exposed-part score per content id", "version": VERSION,
                         "classes": list(EXPOSED_CLASSES)})


def cached(ids) -> pd.DataFrame:
    """``id, nudity, part, at`` of the ids already checked."""
    return cache().lookup(ids)


def check_dataset(ds, *, progress: Callable[[int, int], None] | None = None, detector=None) -> pd.DataFrame:
    """Run NudeNet on every image of a dataset not checked yet; returns ``id, nudity, part,
    at, error`` for every distinct id (error: why an image could not be checked).

    Raises :class:`lib.errors.ModelError` when NudeNet cannot be loaded.
    """
    from .errors import ImageError, UnsafePath
    from .images import open_image
    from .safety import EXPOSED_CLASSES, nudenet_detector

    c = cache()
    ids = list(dict.fromkeys(ds.images["id"].astype(str)))
    todo = set(c.missing(ids))
    first = ds.images.drop_duplicates("id").set_index("id")["path"]
    rows, errors = [], {}
    det = detector or (nudenet_detector() if todo else None)
    for k, cid in enumerate([i for i in ids if i in todo]):
        try:
            hits = [d for d in det.detect(open_image(ds.abspath(first[cid]))) if d["label"] in EXPOSED_CLASSES]
        except (ImageError, UnsafePath, OSError, ValueError) as e:
            errors[cid] = str(e)
        else:
            best = max(hits, key=lambda d: d["score"], default=None)
            rows.append({"id": cid, "nudity": float(best["score"]) if best else 0.0,
                         "part": best["label"] if best else "", "at": datetime.now(UTC).isoformat(timespec="seconds")})
        if progress is not None:
            progress(k + 1, len(todo))
        if len(rows) >= 256:
            c.write(pd.DataFrame(rows))
            rows = []
    c.write(pd.DataFrame(rows, columns=["id", *COLUMNS]))
    out = c.lookup(ids)
    out = out.set_index("id").reindex(ids).reset_index()
    out["error"] = [errors.get(i) for i in ids]
    out["nudity"] = pd.to_numeric(out["nudity"], errors="coerce").astype(np.float64)
    return out
