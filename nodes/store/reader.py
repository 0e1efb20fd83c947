"""Read-only views of a dataset for the filter: past scores, past embeddings, a cache fingerprint.

Safe to call while a writer is appending (a partial last manifest line is skipped). ``which``
selects records by decision: ``"all"``, ``"accepted"`` or ``"rejected"``. Keys are the original
class labels (``ScoredItem.label``).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..common.identity import in_stream
from ..common.records import GENERATED
from . import embeddings, handover, manifest
from .fsio import open_nofollow
from .layout import EMBEDDINGS, MANIFEST

_WHICH = {"all": ("accepted", "rejected"), "accepted": ("accepted",), "rejected": ("rejected",)}


def is_real(rec: dict) -> bool:
    """A user's real image imported into the dataset (``source: real``), not a generated one."""
    return rec.get("source") == "real"


def in_quota(source: str | None, metadata: dict | None) -> bool:
    """Whether an image fills its class's quota: generated ones always, real ones only when
    imported with ``counts_toward_quota``."""
    return source != "real" or bool((metadata or {}).get("counts_toward_quota"))


def count_record(counts: dict, rec: dict, n: int = 1) -> None:
    """Add a live record to ``{label: {"accepted": a, "rejected": r[, "real": m]}}``: the one counting
    rule. Real images count in ``real``; in ``accepted`` (the count quotas fill) only when they were
    imported with ``counts_toward_quota``."""
    c = counts.setdefault(rec["label"], {"accepted": 0, "rejected": 0})
    if is_real(rec):
        c["real"] = c.get("real", 0) + n
    if not in_quota(rec.get("source"), rec.get("metadata")):
        return
    c[rec["decision"]] += n


def source_of(rec: dict) -> str:
    """Where a stored image came from: ``generated`` (the graph's generator; records before 0.4.0),
    ``copy_paste``, ``real``, ..."""
    return rec.get("source") or GENERATED


def class_counts(records, source: str | None = None) -> dict[str, dict[str, int]]:
    """{label: {"accepted": n, "rejected": m[, "real": r]}} of live records; with ``source``, only
    that source's images (and real ones counted toward quotas): each producer of a hybrid dataset
    fills its own per-class quota."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        if source is None or source_of(rec) == source or (is_real(rec) and in_quota("real", rec.get("metadata"))):
            count_record(out, rec)
    return out


def live_records(dataset_dir, which: str = "all", with_handed_over: bool = False) -> list[dict]:
    """Live records in manifest order; ``with_handed_over``: also the records this process handed
    over to its background writer and has not stored yet (``handover.py``; after the stored ones)."""
    if which not in _WHICH:
        raise ValueError(f"which={which!r}: choose one of {sorted(_WHICH)}")
    keep = _WHICH[which]
    ahead = handover.records(dataset_dir) if with_handed_over else []   # before the read: one stored meanwhile shows there
    view = _live_view(dataset_dir)
    out = [r for r in view.values() if r["decision"] in keep]
    return out + [r for r in ahead if r["id"] not in view and r["decision"] in keep]


# Per-process cache of each manifest's live view: a queue run reads only the lines appended since
# the last read, so per-item cost stays flat as the dataset grows. The cache is trusted only if the
# file is the same one (inode), not shorter, and still ends its read part with the same bytes; a
# rewritten manifest (finalize, compaction) fails that check and is read again in full.
_VIEWS: dict[str, tuple[int, int, bytes, dict]] = {}
_VIEWS_LOCK = threading.Lock()
_TAIL = 64


def _tail(path: Path, end: int) -> bytes:
    with open_nofollow(path, "rb") as f:
        f.seek(max(0, end - _TAIL))
        return f.read(min(_TAIL, end))


def _live_view(dataset_dir) -> dict[str, dict]:
    return live_state(dataset_dir)[2]


def live_state(dataset_dir) -> tuple[int | None, int, dict[str, dict]]:
    """(manifest inode, offset read up to, live view), read incrementally and cached per process.
    Callers must not modify the returned view."""
    path = Path(dataset_dir) / MANIFEST
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, 0, {}
    key = str(path.resolve())
    with _VIEWS_LOCK:
        inode, end, tail, view = _VIEWS.get(key, (None, 0, b"", None))
        same_file = view is not None and inode == st.st_ino and st.st_size >= end and _tail(path, end) == tail
        if not same_file:
            read = manifest.read(dataset_dir)
            view = manifest.live(read.records)
        elif st.st_size > end:
            read = manifest.read(dataset_dir, end)
            view = {**view, **manifest.live(read.records)}
        else:
            return inode, end, view
        _VIEWS[key] = (st.st_ino, read.end, _tail(path, read.end), view)
        return st.st_ino, read.end, view


def load_history(dataset_dir, which: str = "all", key: str = "score") -> dict[str, np.ndarray]:
    """{label: float32 array of scores} of stored items (unscored items are left out); ``key``
    ``real_score``: the real-anchored scores (stored under the record's ``extra``) instead."""
    out: dict[str, list] = {}
    for rec in live_records(dataset_dir, which):
        value = rec.get("score") if key == "score" else (rec.get("extra") or {}).get(key)
        if value is not None:
            out.setdefault(rec["label"], []).append(value)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def load_history_embeddings(dataset_dir, which: str = "accepted") -> dict[str, np.ndarray]:
    """{label: float32 [n, D]} embeddings of stored items, in manifest order.

    Default ``accepted``: what a near-duplicate check compares new images against. Items stored
    with different embedding sizes (model changed) are grouped by the most common size per label.
    Real photos are left out (``load_real_embeddings``).
    """
    recs = [r for r in live_records(dataset_dir, which) if r.get("embedding_dim") and not is_real(r)]
    vectors = embeddings.load(dataset_dir, {r["id"] for r in recs})
    grouped: dict[str, list] = {}
    for rec in recs:
        if rec["id"] in vectors:
            grouped.setdefault(rec["label"], []).append(vectors[rec["id"]])
    out = {}
    for label, vecs in grouped.items():
        dims = [v.shape[0] for v in vecs]
        dim = max(set(dims), key=dims.count)
        out[label] = np.stack([v for v in vecs if v.shape[0] == dim]).astype(np.float32)
    return out


def load_real_embeddings(dataset_dir) -> list[tuple[str, str, np.ndarray, str | None]]:
    """``(label, file sha256, embedding, CLIP that made it)`` of the live ``source: real`` records
    stored with an embedding (the filter's real-anchored score reads them; nothing is re-encoded)."""
    recs = [r for r in live_records(dataset_dir, "all") if is_real(r) and r.get("embedding_dim")]
    if not recs:
        return []
    key, ids = str(Path(dataset_dir).resolve()), tuple(r["id"] for r in recs)
    cached = _REAL_EMB.get(key)
    if cached is not None and cached[0] == ids:   # a real photo's id is its file hash: same ids, same rows
        return cached[1]
    vectors = embeddings.load(dataset_dir, set(ids))
    rows = [(r["label"], (r.get("metadata") or {}).get("sha256") or r["id"], vectors[r["id"]],
             (r.get("extra") or {}).get("clip_model")) for r in recs if r["id"] in vectors]
    with _VIEWS_LOCK:
        _REAL_EMB[key] = (ids, rows)
    return rows


# per dataset: (real record ids, rows) of the last read, so a queue run does not scan the
# embedding store again while the real photos are unchanged (generated images never enter it)
_REAL_EMB: dict[str, tuple[tuple, list]] = {}


def stored_indices(records, pack_hash: str | None = None, stream_key=None) -> set[int]:
    """Sampler indices of stored (accepted or rejected) records, optionally of one prompt pack and
    one sampler stream only (``common.identity.in_stream``)."""
    return {int(r["index"]) for r in records
            if r.get("decision") in ("accepted", "rejected") and in_stream(r, pack_hash, stream_key)}


def history_fingerprint(dataset_dir) -> str:
    """Cheap change marker (size + mtime of the manifest and embedding stores, whether the folder
    exists at all, and how many batches this process handed to its background writer, which are
    on their way into the manifest) for ComfyUI's ``fingerprint_inputs``."""
    parts = [f"folder:{Path(dataset_dir).is_dir()}", f"handed_over:{handover.batches(dataset_dir)}"]
    for path in [Path(dataset_dir) / MANIFEST, *sorted((Path(dataset_dir) / EMBEDDINGS).glob("*.bin"))]:
        try:
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{path.name}:-")
    return "|".join(parts)
