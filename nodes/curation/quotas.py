"""Per-class targets: what is missing, which item indices are done, which to generate next."""
from __future__ import annotations

from collections.abc import Callable

from ..common.identity import StreamKey, in_stream
from ..store.reader import class_counts, live_records


def counts(dataset_dir) -> dict[str, dict[str, int]]:
    return class_counts(live_records(dataset_dir))


def missing(dataset_dir, targets: dict[str, int]) -> dict[str, int]:
    """{label: accepted images still needed to reach its target} (0 when full)."""
    have = counts(dataset_dir)
    return {label: max(0, int(t) - have.get(label, {}).get("accepted", 0)) for label, t in targets.items()}


def done_indices(dataset_dir, pack_hash: str | None = None, stream_key: StreamKey | None = None) -> set[int]:
    """Sampler indices already stored (accepted or rejected), optionally of one prompt pack and
    one sampler stream only."""
    return {int(r["index"]) for r in live_records(dataset_dir) if in_stream(r, pack_hash, stream_key)}


def next_missing_indices(dataset_dir, label_of: Callable[[int], str], start: int, n: int,
                         targets: dict[str, int] | None = None, pack_hash: str | None = None,
                         max_scan: int | None = None, stream_key: StreamKey | None = None,
                         busy=frozenset(), in_flight: dict[str, int] | None = None) -> list[int]:
    """Up to ``n`` indices from ``start`` on that are not done and whose class still needs images.

    Each picked index counts as one future accepted image of its class, so a class with 3 missing
    gets at most 3 indices (ask again after filtering: rejected ones leave a gap). Labels absent from
    ``targets`` have no limit. Scans at most ``max_scan`` indices (default ``100 * n + 1000``).
    ``busy`` indices are skipped and ``in_flight`` images per label count as on their way (claims.py).
    """
    done = done_indices(dataset_dir, pack_hash, stream_key) | set(busy)
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
