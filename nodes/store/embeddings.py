"""Append-only embedding store: ``embeddings/f32x<D>.bin``, fixed-size records per dimension D.

Record = 16-byte ASCII item id + D little-endian float32. Appended (and fsynced) *before* the
manifest line, so every manifest line's embedding is on disk. A crash can leave a partial last
record (``reconcile`` truncates it) or records with no manifest line (ignored on load); a re-written
id appends again and the last record wins.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fsio import append_durable, open_nofollow
from .layout import EMBEDDINGS

ID_BYTES = 16


def store_path(dataset_dir, dim: int) -> Path:
    return Path(dataset_dir) / EMBEDDINGS / f"f32x{dim}.bin"


def _dtype(dim: int) -> np.dtype:
    return np.dtype([("id", f"S{ID_BYTES}"), ("v", "<f4", (dim,))])


def append(dataset_dir, rows: list[tuple[str, np.ndarray]]) -> dict[int, int]:
    """Append (id, vector) rows grouped by dimension; returns {dim: previous size} for rollback."""
    by_dim: dict[int, list] = {}
    for item_id, vec in rows:
        vec = np.asarray(vec, dtype="<f4").reshape(-1)
        by_dim.setdefault(vec.shape[0], []).append((item_id.encode("ascii"), vec))
    sizes = {}
    for dim, recs in by_dim.items():
        arr = np.array(recs, dtype=_dtype(dim))
        path = store_path(dataset_dir, dim)
        path.parent.mkdir(exist_ok=True)
        sizes[dim] = append_durable(path, arr.tobytes())
    return sizes


def rollback(dataset_dir, sizes: dict[int, int]) -> None:
    for dim, size in sizes.items():
        with open_nofollow(store_path(dataset_dir, dim), "r+b") as f:
            f.truncate(size)


def load(dataset_dir, ids=None) -> dict[str, np.ndarray]:
    """{id: vector} over all dimensions (last record per id wins), restricted to ``ids`` if given."""
    folder = Path(dataset_dir) / EMBEDDINGS
    out: dict[str, np.ndarray] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("f32x*.bin")):
        dim = int(path.stem[4:])
        dt = _dtype(dim)
        count = path.stat().st_size // dt.itemsize  # ignore a partial last record
        with open_nofollow(path, "rb") as f:
            arr = np.frombuffer(f.read(count * dt.itemsize), dtype=dt)
        for rid, vec in zip(arr["id"], arr["v"]):
            key = rid.decode("ascii")
            if ids is None or key in ids:
                out[key] = vec
    return out


def truncate_partial(dataset_dir) -> list[str]:
    """Cut partial last records (crash mid-append); returns the files changed."""
    changed = []
    folder = Path(dataset_dir) / EMBEDDINGS
    if folder.is_dir():
        for path in folder.glob("f32x*.bin"):
            size, rec = path.stat().st_size, _dtype(int(path.stem[4:])).itemsize
            if size % rec:
                with open_nofollow(path, "r+b") as f:
                    f.truncate(size - size % rec)
                    os.fsync(f.fileno())
                changed.append(path.name)
    return changed
