"""A live, read-only view of a dataset's manifest for the queue client.

Reads only what was appended since the last look (the manifest is append-only); a manifest
rewritten by finalize or reconcile is read again in full. Same live view (last line per id) as
``nodes.dataset.quotas.counts`` and ``done_indices``, without rereading thousands of lines per poll.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..nodes.dataset import manifest
from ..nodes.dataset.layout import MANIFEST
from ..nodes.dataset.quotas import is_done


class DatasetView:
    def __init__(self, dataset_dir, pack_hash: str | None = None, stream: tuple | None = None):
        self.dir = Path(dataset_dir)
        self.pack_hash, self.stream = pack_hash, stream
        self._live: dict[str, dict] = {}
        self._offset, self._inode = 0, None

    def refresh(self) -> DatasetView:
        try:
            st = os.stat(self.dir / MANIFEST)
        except FileNotFoundError:
            self._live.clear()
            self._offset, self._inode = 0, None
            return self
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self._offset):
            self._live.clear()
            self._offset = 0
        read = manifest.read(self.dir, self._offset)
        for rec in read.records:
            meta = rec.get("metadata") or {}
            self._live[rec["id"]] = {**{k: rec.get(k) for k in ("label", "decision", "index", "pack_hash", "stream", "file")},
                                     "metadata": {k: meta.get(k) for k in ("base_seed", "mode")}}
        self._offset, self._inode = read.end, st.st_ino
        return self

    def records(self) -> list[dict]:
        return [r for r in self._live.values() if r["decision"] in ("accepted", "rejected")]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for rec in self.records():
            c = out.setdefault(rec["label"], {"accepted": 0, "rejected": 0})
            c[rec["decision"]] += 1
        return out

    def accepted(self, label: str) -> int:
        return self.counts().get(label, {}).get("accepted", 0)

    def done_indices(self) -> set[int]:
        """Indices stored (accepted or rejected) for this client's pack and sampler stream."""
        return {int(r["index"]) for r in self.records() if is_done(r, self.pack_hash, self.stream)}

    def foreign_pack_hashes(self) -> set[str]:
        return {r["pack_hash"] for r in self.records() if r.get("pack_hash") and r["pack_hash"] != self.pack_hash}
