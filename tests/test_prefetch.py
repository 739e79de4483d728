"""The decoding pipeline yields the same batches, in the same order, for any number of workers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.embeddings import prefetch_batches
from lib.models import load_model


def _items(corpus_dir, tmp_path, n=37):
    m = pd.read_csv(corpus_dir / "manifest.csv").iloc[::17].head(n)
    items = [(f"{i:064x}", str(corpus_dir / p)) for i, p in enumerate(m["path"])]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    missing = tmp_path / "missing.jpg"
    # A bad file in the middle and one at the very end of a batch.
    return items[:9] + [("b" * 64, str(broken))] + items[9:] + [("c" * 64, str(missing))]


def test_batches_do_not_depend_on_workers(corpus_dir, tmp_path):
    backend = load_model("color")
    items = _items(corpus_dir, tmp_path)
    runs = {w: list(prefetch_batches(items, backend.preprocess, 8, w)) for w in (0, 1, 2, 3)}
    ref = runs[0]
    assert [len(ids) + len(err) for ids, _, err in ref] == [8, 8, 8, 8, 7]
    assert sum(len(err) for _, _, err in ref) == 2
    # Reference values come from decoding each file on its own, outside the pipeline.
    from lib.images import open_image

    ok = [(cid, p) for cid, p in items if cid not in ("b" * 64, "c" * 64)]
    direct = np.stack([backend.preprocess(open_image(p)) for _, p in ok])
    got = np.concatenate([a for _, a, _ in ref if a is not None])
    assert np.array_equal(got, direct)
    assert [i for ids, _, _ in ref for i in ids] == [cid for cid, _ in ok]
    for w, batches in runs.items():
        assert len(batches) == len(ref), w
        for (ids, arr, err), (rids, rarr, rerr) in zip(batches, ref, strict=True):
            assert ids == rids and [e[0] for e in err] == [e[0] for e in rerr], w
            assert (arr is None) == (rarr is None) and (arr is None or np.array_equal(arr, rarr)), w


def test_workers_write_into_shared_slots_and_fall_back_when_shapes_differ(corpus_dir, tmp_path, monkeypatch):
    from PIL import Image

    from lib import embeddings as E

    items = _items(corpus_dir, tmp_path, n=20)

    def small(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32)

    def odd(img: Image.Image) -> np.ndarray:  # the probe's blank image gets another shape than real ones
        return np.zeros(5, np.float32) if img.size == (64, 48) else small(img)

    ref = list(prefetch_batches(items, small, 8, 0))
    for pre in (small, odd):
        got = list(prefetch_batches(items, pre, 8, 2))  # every batch kept: each must be its own copy
        assert [g[0] for g in got] == [r[0] for r in ref]
        assert all(np.array_equal(g[1], r[1]) for g, r in zip(got, ref, strict=True))
    # In a worker: rows go to the slot, nothing comes back through the pipe.
    monkeypatch.setattr(E, "_SLOTS", np.zeros((2, 8, 8, 8, 3), np.float32))
    monkeypatch.setattr(E, "_PREPROCESS", small)
    ids, arrays, errors = E._prepare_batch(items[8:12], 1, 4)
    assert arrays is None and len(ids) + len(errors) == 4
    assert np.array_equal(E._SLOTS[1, 4:4 + len(ids)], ref[1][1][:len(ids)])
    assert not E._SLOTS[0].any() and not E._SLOTS[1, :4].any()
