"""A live, read-only view of a dataset's manifest for the queue client.

The same per-process incremental view the nodes use (``nodes.store.reader.live_state``): a
poll reads only the lines appended since the last one, a rewritten manifest (finalize, reconcile)
is read again in full. Counts and done indices follow the same rules as the nodes (``reader.class_counts``,
``identity.in_stream``). A dataset may hold several sources (``generated`` SD images, ``copy_paste``,
``real``): ``counts(source)`` counts what fills that source's quota, as the nodes do.
"""
from __future__ import annotations

from pathlib import Path

from ..nodes.common.identity import StreamKey
from ..nodes.store.reader import class_counts, in_quota, live_state, source_of, stored_indices


class DatasetView:
    def __init__(self, dataset_dir, pack_hash: str | None = None, stream_key: StreamKey | None = None):
        self.dir = Path(dataset_dir)
        self.pack_hash, self.stream_key = pack_hash, stream_key
        self._records: list[dict] = []

    def refresh(self) -> DatasetView:
        view = live_state(self.dir)[2]
        self._records = [r for r in view.values() if r["decision"] in ("accepted", "rejected")]
        return self

    def counts(self, source: str | None = None) -> dict[str, dict[str, int]]:
        """Per class accepted/rejected of every source, or of ``source`` only (with the real images
        imported toward quotas, which count for every source: ``reader.class_counts``)."""
        return class_counts(self._records, source)

    def sources(self) -> set[str]:
        """The sources of the stored images (``generated``, ``copy_paste``, ``real``, ...)."""
        return {source_of(r) for r in self._records}

    def labels_of(self, source: str) -> set[str]:
        """Classes with at least one stored image of exactly this source."""
        return {r["label"] for r in self._records if source_of(r) == source}

    def accepted_outside(self, sources) -> dict[str, int]:
        """Per class, accepted images the writers count toward their quota_per_class (every source)
        but none of ``sources`` counts: other sources' images (not real ones; those imported toward
        quotas count for every source, the others for none)."""
        out: dict[str, int] = {}
        for r in self._records:
            src = source_of(r)
            if r["decision"] == "accepted" and src not in sources and src != "real" \
                    and in_quota(src, r.get("metadata")):
                out[r["label"]] = out.get(r["label"], 0) + 1
        return out

    def done_indices(self) -> set[int]:
        """Indices stored (accepted or rejected) for this client's pack and sampler stream."""
        return stored_indices(self._records, self.pack_hash, self.stream_key)

    def foreign_pack_hashes(self) -> set[str]:
        return {r["pack_hash"] for r in self._records if r.get("pack_hash") and r["pack_hash"] != self.pack_hash}
