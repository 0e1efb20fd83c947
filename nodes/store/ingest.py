"""Move stored items from one dataset into another as encoded bytes: the Ray queue's transfer.

A Ray worker's ComfyUI writes each block into a *scratch* dataset on the worker's node (the writer
node, as always). ``ScratchReader`` (on the worker) reads what a block added there: the manifest
records, the image and mask files as bytes and the embeddings; the driver stores them into the
central dataset with ``DatasetIngest``.

``DatasetIngest`` stores the bytes as they are (no decode, no re-encode) through
``DatasetWriter.store_encoded``, the writer's own crash-safe sequence under the dataset lock: per
batch, each mask and image -> hidden temp file -> fsync -> ``os.replace`` (folders fsynced once),
then the embeddings and the manifest lines appended and fsynced, then ``images/metadata.jsonl``, so
a kill at any point is repaired by the next open's ``reconcile`` like a writer's. Records keep the writer's shape: only the paths are
re-based onto the central dataset's class folders (``file``, ``label_dir``, ``mask``). Dedup is by
item id (an id already in the dataset is skipped), quotas count like the writer's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import embeddings, manifest, masks
from .clean_marker import manifest_stat
from .fsio import open_nofollow
from .layout import EMBEDDINGS, IMAGES, REJECTED
from .reconcile import ReconcileReport
from .writer import DatasetWriter, Planned


@dataclass
class EncodedItem:
    """One stored item of another dataset: its manifest record as written there, its files' bytes."""
    record: dict
    image: bytes
    mask: bytes | None = None
    embedding: np.ndarray | None = None     # float32, ``record["embedding_dim"]`` long


@dataclass
class IngestResult:
    written: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    skipped_duplicate: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    skipped_quota: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)   # (item id, why): damaged in transit
    records: list[dict] = field(default_factory=list)              # the records stored, in order


def _read(path: Path) -> bytes:
    with open_nofollow(path, "rb") as f:
        return f.read()


class ScratchReader:
    """What the writer added to a dataset since the last call, as ``EncodedItem``s.

    Reads the manifest incrementally (a rewritten one, after a reconcile, is read again; ids
    already handed out are never handed out twice) and the embedding stores from where it stopped.
    ``take(indices)`` returns the new items of those sampler indices and keeps the others for a
    later ``take`` (two blocks may finish into one scratch dataset in either order). With
    ``drop_files`` the image and mask files are deleted once read (the bytes go to the driver):
    the scratch dataset keeps only its manifest and embeddings, the history a filter needs.
    """

    def __init__(self, dataset_dir, drop_files: bool = True):
        self.dir = Path(dataset_dir)
        self.drop_files = drop_files
        self._inode, self._offset = None, 0
        self._emb_offsets: dict[Path, int] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._sent: set[str] = set()
        self._waiting: dict[str, EncodedItem] = {}   # read, not taken yet

    def take(self, indices=None) -> list[EncodedItem]:
        """New items whose sampler ``index`` is in ``indices`` (None: every new item)."""
        self._read_new()
        wanted = None if indices is None else {int(i) for i in indices}
        out = [it for rid, it in self._waiting.items()
               if wanted is None or (it.record.get("index") is not None and int(it.record["index"]) in wanted)]
        for it in out:
            del self._waiting[it.record["id"]]
        return out

    def _read_new(self) -> None:
        inode, size = manifest_stat(self.dir)
        if inode is None:
            return
        if self._inode is not None and (inode != self._inode or size < self._offset):
            self._offset = 0          # rewritten (reconcile): read it all again, skip what was sent
        read = manifest.read(self.dir, self._offset)
        self._inode, self._offset = inode, read.end
        live = manifest.live(read.records)
        if not live:
            return
        self._read_embeddings()
        for rid, rec in live.items():
            if rid in self._sent or rec.get("event") != "write":
                continue
            image_path = self.dir / rec["file"]
            mask_path = self.dir / rec["mask"] if rec.get("mask") else None
            try:
                image = _read(image_path)
                mask = _read(mask_path) if mask_path is not None else None
            except FileNotFoundError:
                continue              # set aside by a reconcile meanwhile: the item is made again
            vec = self._vectors.pop(rid, None) if rec.get("embedding_dim") else None
            self._waiting[rid] = EncodedItem(rec, image, mask, vec)
            self._sent.add(rid)
            if self.drop_files:
                for path in (image_path, mask_path):
                    if path is not None:
                        path.unlink(missing_ok=True)

    def _read_embeddings(self) -> None:
        """Records appended to ``embeddings/f32x<D>.bin`` since the last read (they precede their
        manifest lines, so every new line's vector is there)."""
        for path in sorted((self.dir / EMBEDDINGS).glob("f32x*.bin")):
            dt = np.dtype([("id", f"S{embeddings.ID_BYTES}"), ("v", "<f4", (int(path.stem[4:]),))])
            start = self._emb_offsets.get(path, 0)
            with open_nofollow(path, "rb") as f:
                f.seek(start)
                data = f.read()
            count = len(data) // dt.itemsize
            if count:
                arr = np.frombuffer(data[:count * dt.itemsize], dtype=dt)
                for rid, vec in zip(arr["id"], arr["v"]):
                    self._vectors[rid.decode("ascii")] = np.array(vec, dtype=np.float32)
            self._emb_offsets[path] = start + count * dt.itemsize


class DatasetIngest:
    """Context manager: ``with DatasetIngest(dir, quotas) as d: d.store(items)``.

    A thin layer over ``DatasetWriter``: records are re-based onto this dataset's class folders and
    handed to ``DatasetWriter.store_encoded`` as already-encoded files, so dedup, quotas, label
    folder collisions and the durable sequence are the writer's own (one copy of each rule).
    ``quotas``: {label: accepted images wanted}; accepted items of a class at its target are not
    stored (``skipped_quota``), rejected ones always are, as the writer does."""

    def __init__(self, dataset_dir, quotas: dict | None = None):
        self.dir = Path(dataset_dir)
        self.writer = DatasetWriter(self.dir, quotas=quotas)   # the format is the items' own
        self.reconciled: ReconcileReport | None = None

    def __enter__(self) -> DatasetIngest:
        self.writer.__enter__()
        self.reconciled = self.writer.reconciled
        return self

    def __exit__(self, *exc) -> None:
        self.writer.__exit__(*exc)   # every store is durable when it returns

    def counts(self) -> dict[str, dict[str, int]]:
        return self.writer.class_counts()

    def stored(self, rid: str) -> bool:
        return self.writer.stored(rid)

    def store(self, items: list[EncodedItem]) -> IngestResult:
        result = IngestResult()
        good, batch = [], set()
        for it in items:
            why = _damage(it)
            if why is not None:
                result.refused.append((str(it.record.get("id")), why))
            elif it.record["id"] in batch:
                result.skipped_duplicate[it.record["decision"]] += 1
            else:
                self.writer.label_folder(it.record["label"])   # label problems refuse the batch before any write
                batch.add(it.record["id"])
                good.append(it)
        planned = [Planned(self._rebased(it), _Vector(it.embedding), None, n, image_data=it.image, mask_data=it.mask)
                   for n, it in enumerate(good)]
        done = self.writer.store_encoded(planned)
        written = {str(p) for p in done.paths}
        for key in ("accepted", "rejected"):
            result.written[key] = done.written[key]
            result.skipped_duplicate[key] += done.skipped_duplicate[key]
        result.skipped_quota = done.skipped_quota
        result.records = [p.rec for p in planned if str(self.dir / p.rec["file"]) in written]
        return result

    def _rebased(self, it: EncodedItem) -> dict:
        """The record as the writer would have written it here: the same fields, paths in this
        dataset's class folder (the file name, ``<index>_<id>.<ext>``, is kept)."""
        rec = dict(it.record)
        folder = self.writer.label_folder(rec["label"])
        name = Path(rec["file"]).name
        tree = IMAGES if rec["decision"] == "accepted" else REJECTED
        rec["file"], rec["label_dir"] = f"{tree}/{folder}/{name}", folder
        rec["mask"] = masks.mask_rel(folder, name) if it.mask is not None else None
        if it.embedding is None:
            rec["embedding_dim"] = None
        return rec


@dataclass
class _Vector:
    """What ``store_encoded`` reads of an item once its files are encoded: the embedding."""
    embedding: np.ndarray | None


def _damage(it: EncodedItem) -> str | None:
    """Why an item cannot be stored as it came, or None: its bytes are not what its record says
    was written (size), or its embedding is not ``embedding_dim`` long."""
    rec = it.record
    for key in ("id", "file", "label", "decision"):
        if not rec.get(key):
            return f"its record has no {key!r}"
    if rec["decision"] not in ("accepted", "rejected"):
        return f"decision {rec['decision']!r}"
    if rec.get("bytes") is not None and len(it.image) != rec["bytes"]:
        return f"image is {len(it.image)} bytes, {rec['bytes']} were written"
    if it.mask is not None and rec.get("mask_bytes") is not None and len(it.mask) != rec["mask_bytes"]:
        return f"mask is {len(it.mask)} bytes, {rec['mask_bytes']} were written"
    if rec.get("mask") and it.mask is None:
        return "its mask is missing"
    if it.embedding is not None and rec.get("embedding_dim") and np.asarray(it.embedding).size != rec["embedding_dim"]:
        return f"embedding has {np.asarray(it.embedding).size} values, embedding_dim {rec['embedding_dim']}"
    return None
