"""Per-class targets: what is missing, which item indices are done, which to generate next."""
from __future__ import annotations

from collections.abc import Callable

from .history import live_records


def counts(dataset_dir) -> dict[str, dict[str, int]]:
    return class_counts(live_records(dataset_dir))


def class_counts(records) -> dict[str, dict[str, int]]:
    """{label: {"accepted": n, "rejected": m}} of live records."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        c = out.setdefault(rec["label"], {"accepted": 0, "rejected": 0})
        c[rec["decision"]] += 1
    return out


def missing(dataset_dir, targets: dict[str, int]) -> dict[str, int]:
    """{label: accepted images still needed to reach its target} (0 when full)."""
    have = counts(dataset_dir)
    return {label: max(0, int(t) - have.get(label, {}).get("accepted", 0)) for label, t in targets.items()}


def done_indices(dataset_dir, pack_hash: str | None = None, stream: tuple | None = None) -> set[int]:
    """Sampler indices already stored (accepted or rejected), optionally of one prompt pack and
    one sampler stream only (``Sampler.stream_key``)."""
    return {int(r["index"]) for r in live_records(dataset_dir) if is_done(r, pack_hash, stream)}


def is_done(rec: dict, pack_hash: str | None, stream: tuple | None) -> bool:
    """Whether a live record holds an index of this pack and stream. ``stream`` is
    (stream id, base seed, mode): a record written before streams existed (pack 0.1.0) has no
    stream id and counts when its base seed and mode match (its class subset was not recorded)."""
    if rec.get("index") is None or (pack_hash is not None and rec.get("pack_hash") != pack_hash):
        return False
    if stream is None:
        return True
    if rec.get("stream"):
        return rec["stream"] == stream[0]
    return legacy_key(rec.get("metadata") or {}) == tuple(stream[1:])


def legacy_key(meta: dict) -> tuple:
    """What a record written before streams existed (pack 0.1.0) is matched on: its sampler
    metadata's (base seed, mode); its class subset was not recorded."""
    return meta.get("base_seed"), meta.get("mode")


def next_missing_indices(dataset_dir, label_of: Callable[[int], str], start: int, n: int,
                         targets: dict[str, int] | None = None, pack_hash: str | None = None,
                         max_scan: int | None = None, stream: tuple | None = None,
                         busy=frozenset(), in_flight: dict[str, int] | None = None) -> list[int]:
    """Up to ``n`` indices from ``start`` on that are not done and whose class still needs images.

    Each picked index counts as one future accepted image of its class, so a class with 3 missing
    gets at most 3 indices (ask again after filtering: rejected ones leave a gap). Labels absent from
    ``targets`` have no limit. Scans at most ``max_scan`` indices (default ``100 * n + 1000``).
    ``busy`` indices are skipped and ``in_flight`` images per label count as on their way (claims.py).
    """
    done = done_indices(dataset_dir, pack_hash, stream) | set(busy)
    need = dict(missing(dataset_dir, targets)) if targets else {}
    for label, coming in (in_flight or {}).items():
        if label in need:
            need[label] = max(0, need[label] - coming)
    picked: list[int] = []
    limit = start + (max_scan if max_scan is not None else 100 * n + 1000)
    i = start
    while len(picked) < n and i < limit:
        if i not in done:
            label = label_of(i)
            if label not in need:
                picked.append(i)
            elif need[label] > 0:
                need[label] -= 1
                picked.append(i)
        i += 1
    return picked
