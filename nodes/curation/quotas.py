"""Per-class targets in a dataset: what is missing, which item indices are done, which to generate
next (the choice itself is ``common.quota.pick_blocks``, shared with the queue client)."""
from __future__ import annotations

from collections.abc import Callable

from ..common.identity import StreamKey
from ..common.quota import pick_blocks, still_needed
from ..store.reader import class_counts, live_records, stored_indices


def counts(dataset_dir, source: str | None = None, with_handed_over: bool = False) -> dict[str, dict[str, int]]:
    """Per-class counts of live records (``with_handed_over``: with this process's items on their way in,
    ``reader.live_records``)."""
    return class_counts(live_records(dataset_dir, with_handed_over=with_handed_over), source)


def missing(dataset_dir, targets: dict[str, int], source: str | None = None) -> dict[str, int]:
    """{label: accepted images still needed to reach its target} (0 when full); with ``source``,
    counting only that source's images."""
    have = counts(dataset_dir, source)
    return {label: still_needed(t, have.get(label, {}).get("accepted", 0)) for label, t in targets.items()}


def done_indices(dataset_dir, pack_hash: str | None = None, stream_key: StreamKey | None = None,
                 with_handed_over: bool = False) -> set[int]:
    """Sampler indices already stored (accepted or rejected), optionally of one prompt pack and
    one sampler stream only (``with_handed_over``: and those this process is storing)."""
    return stored_indices(live_records(dataset_dir, with_handed_over=with_handed_over), pack_hash, stream_key)


def next_missing_indices(dataset_dir, label_of: Callable[[int], str], start: int, n: int,
                         targets: dict[str, int] | None = None, pack_hash: str | None = None,
                         max_scan: int | None = None, stream_key: StreamKey | None = None,
                         busy=frozenset(), in_flight: dict[str, int] | None = None,
                         source: str | None = None, with_handed_over: bool = False) -> list[int]:
    """Up to ``n`` indices from ``start`` on (ascending) that are not done and whose class still
    needs images.

    Each picked index counts as one future accepted image of its class, so a class with 3 missing
    gets at most 3 indices (ask again after filtering: rejected ones leave a gap). Labels absent from
    ``targets`` are not made. ``busy`` indices are skipped and ``in_flight`` images per label count
    as on their way (claims.py). Scans at most ``max_scan`` indices (default ``100 * n + 1000``).
    With ``source`` the targets count only that source's images (``store.reader.class_counts``).
    With ``with_handed_over`` the items this process handed over to its background writer count as stored.

    Without ``targets`` indices are taken in order; with targets, when every target class is full
    nothing is returned. With targets the fill is balanced across
    streams: each pick goes to the class with the fewest stored, in-flight and picked items among
    those that still need images (ties: the earliest index). So a graph whose seed changes on every
    queue (a new stream each time, index 0 first) still fills the classes in turn instead of making
    the first class again and again.
    """
    done = done_indices(dataset_dir, pack_hash, stream_key, with_handed_over) | set(busy)
    limit = start + (max_scan if max_scan is not None else 100 * n + 1000)
    items = ((i,) for i in range(start, limit) if i not in done)
    if not targets:
        return [i for (i,) in pick_blocks(items, label_of, n)]
    have = counts(dataset_dir, source, with_handed_over)
    in_flight = in_flight or {}
    need = {label: still_needed(t, have.get(label, {}).get("accepted", 0), in_flight.get(label, 0))
            for label, t in targets.items()}
    tried = {label: sum(have.get(label, {}).get(k, 0) for k in ("accepted", "rejected")) + in_flight.get(label, 0)
             for label in need}
    return [i for (i,) in pick_blocks(items, label_of, n, need, tried)]
