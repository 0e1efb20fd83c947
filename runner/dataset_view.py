"""A live, read-only view of a dataset's manifest for the queue client.

The same per-process incremental view the nodes use (``nodes.store.reader.live_state``): a
poll reads only the lines appended since the last one, a rewritten manifest (finalize, reconcile)
is read again in full. Counts and done indices follow the same rules as the nodes (``reader.class_counts``,
``identity.in_stream``).
"""
from __future__ import annotations

from pathlib import Path

from ..nodes.common.identity import StreamKey, in_stream
from ..nodes.store.reader import class_counts, live_state


class DatasetView:
    def __init__(self, dataset_dir, pack_hash: str | None = None, stream_key: StreamKey | None = None):
        self.dir = Path(dataset_dir)
        self.pack_hash, self.stream_key = pack_hash, stream_key
        self._records: list[dict] = []

    def refresh(self) -> DatasetView:
        view = live_state(self.dir)[2]
        self._records = [r for r in view.values() if r["decision"] in ("accepted", "rejected")]
        return self

    def counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self._records)

    def done_indices(self) -> set[int]:
        """Indices stored (accepted or rejected) for this client's pack and sampler stream."""
        return {int(r["index"]) for r in self._records if in_stream(r, self.pack_hash, self.stream_key)}

    def foreign_pack_hashes(self) -> set[str]:
        return {r["pack_hash"] for r in self._records if r.get("pack_hash") and r["pack_hash"] != self.pack_hash}
