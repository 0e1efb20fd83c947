"""Move stored items from one dataset into another as encoded bytes: the Ray queue's transfer.

A Ray worker's ComfyUI writes each block into a *scratch* dataset on the worker's node (the writer
node, as always). ``ScratchReader`` (on the worker) reads what a block added there: the manifest
records, the image and mask files as bytes and the embeddings; the driver stores them into the
central dataset with ``DatasetIngest``.

``DatasetIngest`` stores the bytes as they are (no decode, no re-encode) with the writer's
crash-safe sequence and the store's own primitives, under the dataset lock: per batch, each mask
and image -> hidden temp file -> fsync -> ``os.replace`` (folders fsynced once), then the
embeddings and the manifest lines appended and fsynced, then ``images/metadata.jsonl``; the
``.clean`` marker is removed first and written back last, so a kill at any point is repaired by
the next open's ``reconcile`` like a writer's. Records keep the writer's shape: only the paths are
re-based onto the central dataset's class folders (``file``, ``label_dir``, ``mask``). Dedup is by
item id (an id already in the dataset is skipped), quotas count like the writer's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import embeddings, manifest, masks, metadata
from .clean_marker import manifest_stat, mark_clean, mark_dirty
from .fsio import fsync_dir, move_unique, open_nofollow, write_atomic
from .layout import EMBEDDINGS, IMAGES, MANIFEST, ORPHANS, REJECTED, DatasetWriteError, check_tree, open_dataset
from .lock import DatasetLock
from .paths import DatasetPathError, safe_label
from .reader import count_record, in_quota, live_state
from .reconcile import ReconcileReport, ensure_consistent


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

    ``quotas``: {label: accepted images wanted}; accepted items of a class at its target are not
    stored (``skipped_quota``), rejected ones always are, as the writer does."""

    def __init__(self, dataset_dir, quotas: dict | None = None):
        self.dir = Path(dataset_dir)
        self.quotas = {label: int(n) for label, n in (quotas or {}).items() if n is not None}
        self.reconciled: ReconcileReport | None = None
        self._ids: set[str] = set()
        self._counts: dict[str, dict[str, int]] = {}
        self._folders: dict[str, str] = {}     # folder.lower() -> label that owns it
        self._label_dirs: dict[str, str] = {}  # label -> its folder as stored
        self._inode, self._offset = None, 0

    def __enter__(self) -> DatasetIngest:
        open_dataset(self.dir)
        self.reconciled = ensure_consistent(self.dir) or ReconcileReport()
        with DatasetLock(self.dir):
            self._reload()
        return self

    def __exit__(self, *exc) -> None:
        pass   # every store is durable when it returns

    # -- state from the manifest (as the writer keeps it) ----------------------------------
    def _reload(self) -> None:
        self._ids.clear(), self._counts.clear(), self._folders.clear(), self._label_dirs.clear()
        inode, end, view = live_state(self.dir)
        for rec in view.values():
            self._take(rec)
        self._inode, self._offset = inode, end

    def _refresh(self) -> None:
        """Take in lines other writers appended; a rewritten manifest means a full reload."""
        inode, size = manifest_stat(self.dir)
        if self._inode is not None and (inode != self._inode or size < self._offset):
            return self._reload()
        read = manifest.read(self.dir, self._offset)
        for rec in manifest.live(read.records).values():
            if rec["id"] in self._ids:     # a redecide line: recount from scratch
                return self._reload()
            self._take(rec)
        self._inode, self._offset = inode, read.end

    def _take(self, rec: dict) -> None:
        self._ids.add(rec["id"])
        count_record(self._counts, rec)
        self._folders.setdefault(rec["label_dir"].lower(), rec["label"])
        self._label_dirs.setdefault(rec["label"], rec["label_dir"])

    def _folder(self, label: str) -> str:
        folder = safe_label(label)
        owner = self._folders.setdefault(folder.lower(), label)
        if owner != label:
            raise DatasetPathError(
                "label", label, f"collides with label {owner!r} already in {self.dir} (folder "
                f"{self._label_dirs.get(owner, owner)!r}): folder {folder!r} would be the same folder on "
                "case-insensitive file systems (Windows, macOS)")
        self._label_dirs.setdefault(label, folder)
        return folder

    def counts(self) -> dict[str, dict[str, int]]:
        return {label: dict(c) for label, c in self._counts.items()}

    def stored(self, rid: str) -> bool:
        return rid in self._ids

    # -- storing -------------------------------------------------------------------------
    def store(self, items: list[EncodedItem]) -> IngestResult:
        result = IngestResult()
        with DatasetLock(self.dir):
            check_tree(self.dir)
            self._refresh()
            good = []
            for it in items:
                why = _damage(it)
                if why is not None:
                    result.refused.append((str(it.record.get("id")), why))
                else:
                    self._folder(it.record["label"])   # label problems refuse the batch before any write
                    good.append(it)
            placed: list[tuple[dict, EncodedItem]] = []
            current, error = None, None
            mark_dirty(self.dir)
            try:
                batch: set[str] = set()
                for it in good:
                    rec = it.record
                    if rec["id"] in self._ids or rec["id"] in batch:
                        result.skipped_duplicate[rec["decision"]] += 1
                        continue
                    if rec["decision"] == "accepted" and in_quota(rec.get("source"), rec.get("metadata")) \
                            and self._quota_full(rec["label"], placed):
                        result.skipped_quota += 1
                        continue
                    current = self._rebased(it)
                    self._place(current, it)
                    batch.add(rec["id"])
                    placed.append((current, it))
            except OSError as e:
                error = DatasetWriteError(
                    self.dir / (current or {}).get("file", ""),
                    f"could not write an item ({e.strerror or e}); {len(placed)} earlier item(s) of this batch "
                    "were saved, this one and the rest were not; the dataset is consistent - free space / fix "
                    "permissions and run again (saved items are skipped as duplicates)")
                error.__cause__ = e
            except BaseException as e:   # interrupt ...: still record what is on disk
                error = e
            if placed:
                self._commit(placed)
                for rec, _ in placed:
                    result.written[rec["decision"]] += 1
                    result.records.append(rec)
            if error is not None:
                raise error              # no clean marker: the next open reconciles
            mark_clean(self.dir)
        return result

    def _quota_full(self, label: str, placed) -> bool:
        target = self.quotas.get(label)
        if target is None:
            return False
        have = self._counts.get(label, {}).get("accepted", 0)
        have += sum(1 for rec, _ in placed if rec["label"] == label and rec["decision"] == "accepted"
                    and in_quota(rec.get("source"), rec.get("metadata")))
        return have >= target

    def _rebased(self, it: EncodedItem) -> dict:
        """The record as the writer would have written it here: the same fields, paths in this
        dataset's class folder (the file name, ``<index>_<id>.<ext>``, is kept)."""
        rec = dict(it.record)
        folder = self._folder(rec["label"])
        name = Path(rec["file"]).name
        tree = IMAGES if rec["decision"] == "accepted" else REJECTED
        rec["file"], rec["label_dir"] = f"{tree}/{folder}/{name}", folder
        rec["mask"] = masks.mask_rel(folder, name) if it.mask is not None else None
        if it.embedding is None:
            rec["embedding_dim"] = None
        return rec

    def _place(self, rec: dict, it: EncodedItem) -> None:
        """The mask first, then the image (a kill between them leaves a mask without a line,
        which reconcile parks in orphans/)."""
        if it.mask is not None:
            rec["mask_bytes"] = self._put(rec["mask"], it.mask)
        rec["bytes"] = self._put(rec["file"], it.image)

    def _put(self, rel: str, data: bytes) -> int:
        final = self.dir / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():   # not in the manifest (its id is new): a crashed writer's leftover, kept
            move_unique(final, self.dir / ORPHANS / Path(rel).parent)
        write_atomic(final, lambda f: f.write(data), sync_dir=False)
        return len(data)

    def _commit(self, placed) -> None:
        for folder in {(self.dir / rel).parent for rec, _ in placed for rel in (rec["file"], rec.get("mask")) if rel}:
            fsync_dir(folder)
        rows = [(rec["id"], it.embedding) for rec, it in placed if it.embedding is not None]
        records = [rec for rec, _ in placed]
        emb_sizes = {}
        try:
            emb_sizes = embeddings.append(self.dir, rows) if rows else {}
            manifest.append(self.dir, records)
        except OSError as e:
            embeddings.rollback(self.dir, emb_sizes)
            for rec in records:
                for rel in (rec["file"], rec.get("mask")):
                    if rel:
                        move_unique(self.dir / rel, self.dir / ORPHANS / Path(rel).parent)
            raise DatasetWriteError(
                self.dir / MANIFEST, f"could not record {len(records)} item(s) ({e.strerror or e}); their images "
                f"were moved to {ORPHANS}/, the manifest is unchanged - free space and run again") from e
        for rec in records:
            self._take(rec)
        self._inode, self._offset = manifest_stat(self.dir)
        try:
            metadata.append(self.dir, records)
        except OSError as e:
            raise DatasetWriteError(
                self.dir / IMAGES / metadata.METADATA,
                f"images and manifest were saved but metadata.jsonl could not be appended ({e.strerror or e}); "
                "it is rebuilt from the manifest the next time the dataset is opened") from e


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
