"""``DatasetWriter``: stores scored images crash-safely, one durable step at a time.

Per batch, under the dataset lock: each item's instance mask (if it has one) and then its image ->
hidden temp file -> fsync -> ``os.replace`` into ``masks/<label>/`` and ``images/<label>/``
(accepted) or ``rejected/<label>/``; then the batch's embeddings and manifest lines are appended and
fsynced; then ``images/metadata.jsonl`` rows. A kill at any point leaves at worst a mask and/or an
image without a line, which ``reconcile`` (run at open) moves to ``orphans/``.

Item identity (dedup key): ``metadata["item_id"]`` if the caller gives one, else the prompt
sampler's ``stream:index`` (the stream names pack content, mode, base seed and classes), else
``pack_hash:index`` (sampler metadata without a stream), else a hash of label + prompt + seed + pixels.
Writing an id that is already in the dataset is skipped and counted as a duplicate.

``write`` is synchronous: it returns when the batch is durable. The writer node goes through
``background.py`` instead, which uses the same steps split in two: ``plan`` (checks, dedup, quotas,
records; on the caller's thread) and ``store_encoded`` (the durable steps above, on a worker thread,
with files encoded beforehand).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..common.identity import item_id, legacy_item_id, legacy_key
from ..common.quota import still_needed
from ..common.records import GENERATED, ScoredItem
from . import embeddings, manifest, masks, metadata
from .fsio import fsync_dir, move_unique, write_atomic, write_bytes
from .clean_marker import manifest_stat, mark_clean, mark_dirty
from .layout import (IMAGE_EXTS, IMAGES, MANIFEST, ORPHANS, REJECTED, DatasetWriteError, check_tree, now_iso, open_dataset)
from .lock import DatasetLock
from .paths import DatasetPathError, safe_label
from .reader import count_record, in_quota, live_state
from .reconcile import ReconcileReport, ensure_consistent

PNG_COMPRESS_LEVEL = 4  # same as ComfyUI SaveImage


@dataclass
class WriteResult:
    written: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    skipped_duplicate: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    skipped_quota: int = 0                            # accepted items of a class already at its target
    paths: list[Path] = field(default_factory=list)   # files written, in item order


@dataclass
class Planned:
    """One item ``DatasetWriter.plan`` decided to store: its record (sizes not known yet), the item,
    its prepared uint8 mask (or None) and its position in the caller's batch (for error messages).
    The background writer fills in the encoded file bytes before ``store_encoded``."""
    rec: dict
    item: ScoredItem
    mask: np.ndarray | None
    position: int   # in the caller's batch
    image_data: bytes | None = None
    mask_data: bytes | None = None


def check_image(image, where: str) -> None:
    """Refuse an image ``to_uint8`` cannot convert, by its shape alone (no copy, no conversion)."""
    shape = tuple(np.shape(image))
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
        raise ValueError(f"{where}: image must be H x W x 3 (or 1/4 channels), got shape {shape}")


def to_uint8(image, where: str) -> np.ndarray:
    """ComfyUI IMAGE row (H x W x C float in [0, 1]) -> uint8, the way SaveImage converts it."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"{where}: image must be H x W x 3 (or 1/4 channels), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(255.0 * arr.astype(np.float32), 0, 255).astype(np.uint8)
    return arr


def encode_image(arr: np.ndarray, fmt: str, quality: int, png_text: dict | None, out) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    img = Image.fromarray(arr)
    if fmt == "png":
        info = None
        if png_text:
            info = PngInfo()
            for key, value in png_text.items():
                info.add_text(key, value if isinstance(value, str) else json.dumps(value))
        img.save(out, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        img.convert("RGB").save(out, format="JPEG", quality=quality)
    else:
        img.save(out, format="WEBP", quality=quality)


class DatasetWriter:
    """Context manager: ``with DatasetWriter(dir) as w: w.write(items, models, sampler_settings)``."""

    def __init__(self, dataset_dir, image_format: str = "png", quality: int = 95, quotas: dict | None = None):
        self.dir = Path(dataset_dir)
        self.configure(image_format, quality, quotas)
        self.reconciled: ReconcileReport | None = None
        self._ids: set[str] = set()
        self._legacy: dict[str, tuple] = {}    # id -> legacy_key() of records without a stream
        self._counts: dict[str, dict[str, int]] = {}
        self._folders: dict[str, str] = {}     # folder.lower() -> label that owns it
        self._label_dirs: dict[str, str] = {}  # label -> its folder name as stored
        self._offset = 0
        self._inode = None
        self._current: dict | None = None  # record being placed (names the file in errors)
        self._writing = "file"             # which of its files: "file" (the image) or "mask"
        # set by a background writer sharing this one (``share_handed_over``): () -> {id: record}
        # handed over and not stored yet; ``write`` skips those ids and counts them toward quotas
        self._handed_over = None

    def share_handed_over(self, handed_over) -> None:
        """``handed_over() -> {id: record}``: items a background writer took over from this writer
        and has not stored yet; synchronous ``write`` calls treat them as stored (skip, count)."""
        self._handed_over = handed_over

    def configure(self, image_format: str = "png", quality: int = 95, quotas: dict | None = None) -> None:
        """Format, quality and quotas of the next writes (a long-lived writer changes them per call)."""
        fmt = str(image_format).lower()
        if fmt not in IMAGE_EXTS:
            raise ValueError(f"image_format {image_format!r}: choose one of png, jpeg, webp")
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality {quality!r}: must be 1..100")
        self.format = "jpeg" if fmt == "jpg" else fmt
        self.ext = IMAGE_EXTS[fmt]
        self.quality = int(quality)
        parsed = {}
        for label, target in (quotas or {}).items():
            if target is not None and int(target) < 0:
                raise ValueError(f"quota for label {label!r}: {target!r} must be >= 0")
            parsed[label] = None if target is None else int(target)
        self.quotas = parsed

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> DatasetWriter:
        open_dataset(self.dir)
        # O(1) when the last write finished and nothing changed since; a full reconcile otherwise
        self.reconciled = ensure_consistent(self.dir) or ReconcileReport()
        with DatasetLock(self.dir):
            self._reload()
        return self

    def reopen(self) -> DatasetWriter:
        """What ``__enter__`` does, for a writer kept open across calls: the dataset is created
        again if it was removed, repaired if a change did not finish, and the state is brought up to
        date from the manifest (only the new lines when it was not rewritten)."""
        open_dataset(self.dir)
        self.reconciled = ensure_consistent(self.dir) or ReconcileReport()
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        pass  # every write is already durable; nothing is buffered

    # -- state from the manifest -----------------------------------------------------------
    def _reload(self) -> None:
        """State from the whole manifest, via the per-process cached view (incremental reads), so
        opening the dataset once per queue run does not re-parse every line."""
        self._ids.clear(), self._counts.clear(), self._folders.clear(), self._legacy.clear()
        self._label_dirs.clear()
        inode, end, view = live_state(self.dir)
        for rec in view.values():
            self._take(rec)
        self._offset, self._inode = end, inode
        self.refresh()

    def refresh(self) -> None:
        """Take in lines other writers appended; a rewritten manifest (finalize) means full reload."""
        inode, size = manifest_stat(self.dir)
        if self._inode is not None and (inode != self._inode or size < self._offset):
            self._inode = None
            return self._reload()
        read = manifest.read(self.dir, self._offset)
        view = manifest.live(read.records)
        for rec in view.values():
            if rec["id"] in self._ids:  # only happens for redecide lines: recount from scratch
                self._inode = None
                return self._reload()
            self._take(rec)
        self._offset, self._inode = read.end, inode

    def _take(self, rec: dict) -> None:
        """Count a stored record into this writer's view of the dataset."""
        self._ids.add(rec["id"])
        count_record(self._counts, rec)
        self._folders.setdefault(rec["label_dir"].lower(), rec["label"])
        self._label_dirs.setdefault(rec["label"], rec["label_dir"])
        if rec.get("index") is not None and not rec.get("stream"):
            self._legacy[rec["id"]] = legacy_key(rec.get("metadata") or {})

    def label_folder(self, label: str) -> str:
        """The folder name of ``label`` in this dataset (its first spelling owns it); a label whose
        folder collides with another's on a case-insensitive file system is refused."""
        folder = safe_label(label)
        owner = self._folders.setdefault(folder.lower(), label)
        if owner != label:
            raise DatasetPathError(
                "label", label, f"collides with label {owner!r} already in {self.dir} (folder "
                f"{self._label_dirs.get(owner, owner)!r}): folder {folder!r} would be the same folder on "
                "case-insensitive file systems (Windows, macOS)")
        self._label_dirs.setdefault(label, folder)
        return folder

    # -- public API ------------------------------------------------------------------------
    def class_counts(self) -> dict[str, dict[str, int]]:
        """{label: {accepted, rejected, ...}} as of the last read of the manifest (a copy)."""
        return {label: dict(c) for label, c in self._counts.items()}

    def status(self, handed_over=()) -> dict[str, dict]:
        """{label: {accepted, rejected, target, missing}} (target/missing None without a quota).
        ``handed_over``: records handed to a background writer, counted as stored (take the snapshot
        before this call: one stored meanwhile is then counted once)."""
        self.refresh()
        counts = self._counts
        ahead = [rec for rec in handed_over if rec["id"] not in self._ids]
        if ahead:
            counts = {label: dict(c) for label, c in counts.items()}
            for rec in ahead:
                count_record(counts, rec)
        out = {}
        for label in sorted(set(counts) | set(self.quotas)):
            c = counts.get(label, {"accepted": 0, "rejected": 0})
            target = self.quotas.get(label)
            missing = still_needed(target, c["accepted"])
            out[label] = {"accepted": c["accepted"], "rejected": c["rejected"], "target": target, "missing": missing}
            if c.get("real"):
                out[label]["real"] = c["real"]
        return out

    def stored(self, rid: str) -> bool:
        """Whether an item id is in the dataset (as of the last read of the manifest)."""
        return rid in self._ids

    def write(self, items: list[ScoredItem], models: dict | None = None, sampler_settings: dict | None = None,
              png_text: dict | None = None) -> WriteResult:
        result = WriteResult()
        with DatasetLock(self.dir):
            check_tree(self.dir)   # no symlink may have appeared since the open
            self.refresh()
            handed_over = self._handed_over() if self._handed_over is not None else None
            planned = self.plan(items, models, sampler_settings, result, handed_over=handed_over)
            placed: list[tuple[dict, ScoredItem]] = []
            error, self._current = None, None
            mark_dirty(self.dir)
            try:
                for p in planned:
                    self._current = p.rec
                    self._place(p.item, p.rec, png_text, p.position, p.mask)
                    placed.append((p.rec, p.item))
            except OSError as e:
                error = self._write_error(e, len(placed))
            except BaseException as e:  # bad image, interrupt ...: still record what is on disk
                error = e
            self._finish(placed, result, error)
        return result

    def plan(self, items: list[ScoredItem], models: dict | None = None, sampler_settings: dict | None = None,
             result: WriteResult | None = None, handed_over: dict[str, dict] | None = None,
             check_images: bool = False) -> list[Planned]:
        """What ``write`` stores of ``items``, decided without writing anything: refuses bad labels
        and masks (with ``check_images``, image shapes too) for the whole batch; skips duplicates (of the dataset as last read, of
        ``handed_over`` records handed to a background writer and not stored yet, within the batch) and
        accepted items past their class quota (``handed_over`` ones count), counting both in ``result``;
        builds each stored item's record. The caller refreshes the state first."""
        result = result if result is not None else WriteResult()
        for item in items:  # label problems are refused before anything is written
            self.label_folder(item.label)
        # so are mask problems (shape, ids, labels): (uint8 mask or None, instances) per item
        prepared = [masks.prepare(item, _where(n, item)) for n, item in enumerate(items)]
        for n, item in enumerate(items if check_images else ()):   # and images that cannot be stored
            check_image(item.image, _where(n, item))
        # records handed over earlier and stored since are in the state already: never count twice
        ahead = [rec for rid, rec in (handed_over or {}).items() if rid not in self._ids]
        ahead_ids = {rec["id"] for rec in ahead}
        planned: list[Planned] = []
        batch_ids: set[str] = set()
        for n, item in enumerate(items):
            decision = "accepted" if item.accepted else "rejected"
            rid = item_id(item)
            if rid in self._ids or rid in ahead_ids or rid in batch_ids or self._is_legacy_copy(item):
                result.skipped_duplicate[decision] += 1
                continue
            if decision == "accepted" and in_quota((item.metadata or {}).get("source"), item.metadata) \
                    and self._quota_full(item.label, ahead + [p.rec for p in planned]):
                result.skipped_quota += 1
                continue
            rec = self._record(item, rid, decision, models, sampler_settings, prepared[n][1])
            batch_ids.add(rid)
            planned.append(Planned(rec, item, prepared[n][0], n))
        return planned

    def store_encoded(self, planned: list[Planned], sink=None, quotas: dict | None = None) -> WriteResult:
        """Store items whose files are already encoded (``Planned.image_data`` / ``mask_data``) with
        the durability protocol of ``write``: under the dataset lock each file goes temp -> fsync ->
        ``os.replace``, then folder fsyncs, embeddings, manifest lines (+ fsync), metadata rows.
        What other writers (processes) stored since the items were planned is checked again here,
        under the lock: an id stored meanwhile is skipped as a duplicate, an accepted item whose
        class reached its quota in ``quotas`` (those the items were planned with) as over quota.
        ``sink(fileobj, data)`` writes the bytes into the temp file (default: ``fileobj.write``)."""
        sink = sink or write_bytes
        result = WriteResult()
        with DatasetLock(self.dir):
            check_tree(self.dir)
            self.refresh()
            todo: list[Planned] = []
            for p in planned:
                rec = p.rec
                if rec["id"] in self._ids:
                    result.skipped_duplicate[rec["decision"]] += 1
                elif rec["decision"] == "accepted" and in_quota(rec["source"], rec["metadata"]) \
                        and self._quota_full(rec["label"], [q.rec for q in todo], quotas):
                    result.skipped_quota += 1
                else:
                    todo.append(p)
            placed: list[tuple[dict, ScoredItem]] = []
            error, self._current = None, None
            mark_dirty(self.dir)
            try:
                for p in todo:
                    self._current = p.rec
                    if p.mask_data is not None:
                        self._writing = "mask"
                        p.rec["mask_bytes"] = self._put(p.rec["mask"], partial(sink, data=p.mask_data))
                    self._writing = "file"
                    p.rec["bytes"] = self._put(p.rec["file"], partial(sink, data=p.image_data))
                    placed.append((p.rec, p.item))
            except OSError as e:
                error = self._write_error(e, len(placed))
            except BaseException as e:
                error = e
            self._finish(placed, result, error)
        return result

    # -- internals -------------------------------------------------------------------------
    def _write_error(self, e: OSError, saved: int) -> DatasetWriteError:
        rec, what = self._current, self._writing
        error = DatasetWriteError(
            self.dir / rec[what],
            f"could not write {'mask' if what == 'mask' else 'image'} ({e.strerror or e}); {saved} "
            "earlier item(s) of this batch "
            "were saved, this one and the rest were not; the dataset is consistent - free space / "
            "fix permissions and run again (saved items are skipped as duplicates)",
        )
        error.__cause__ = e
        return error

    def _finish(self, placed, result: WriteResult, error: BaseException | None) -> None:
        """Record what is on disk (even after an error), then raise the error or mark the dataset clean."""
        if placed:
            self._commit(placed)
            for rec, _ in placed:
                result.written[rec["decision"]] += 1
                result.paths.append(self.dir / rec["file"])
        if error is not None:
            raise error  # no clean marker: the next open reconciles
        mark_clean(self.dir)

    def _is_legacy_copy(self, item: ScoredItem) -> bool:
        legacy = legacy_item_id(item)
        return legacy in self._legacy and self._legacy[legacy] == legacy_key(item.metadata or {})

    def _quota_full(self, label: str, ahead: list[dict], quotas: dict | None = None) -> bool:
        """Whether ``label`` is at its quota (``quotas``, default this writer's), counting the
        ``ahead`` records (planned, not stored yet)."""
        target = (self.quotas if quotas is None else quotas).get(label)
        if target is None:
            return False
        have = self._counts.get(label, {}).get("accepted", 0)
        have += sum(1 for rec in ahead if rec["label"] == label and rec["decision"] == "accepted"
                    and in_quota(rec["source"], rec["metadata"]))
        return have >= target

    def _record(self, item: ScoredItem, rid: str, decision: str, models, sampler_settings, instances) -> dict:
        folder = self.label_folder(item.label)
        meta = item.metadata or {}
        source = meta.get("source") or GENERATED
        if item.index is not None:
            name = f"{int(item.index):06d}_{rid[:8]}"
        else:
            name = f"{source}_{rid}" if source != GENERATED else f"item_{rid}"
        name += self.ext
        tree = IMAGES if decision == "accepted" else REJECTED
        emb = None if item.embedding is None else np.asarray(item.embedding, dtype=np.float32).reshape(-1)
        has_mask = item.instance_map is not None
        return {
            "id": rid, "file": f"{tree}/{folder}/{name}", "label": item.label, "label_dir": folder,
            "prompt": item.prompt, "negative": item.negative, "seed": item.seed,
            "index": None if item.index is None else int(item.index),
            "source": source, "pack": meta.get("pack"), "pack_hash": meta.get("pack_hash"), "stream": meta.get("stream"),
            "score": None if item.score is None else float(item.score),
            "threshold": None if item.threshold is None else float(item.threshold),
            "method": item.method, "decision": decision, "reason": item.reason, "provisional": bool(item.provisional),
            "models": dict(models or {}), "sampler": dict(sampler_settings or {}),
            "metadata": meta, "extra": item.extra or {},
            "embedding_dim": None if emb is None else int(emb.shape[0]),
            "mask": masks.mask_rel(folder, name) if has_mask else None, "instances": instances,
            "format": self.format, "time": now_iso(), "event": "write",
        }

    def _place(self, item: ScoredItem, rec: dict, png_text, n: int, mask) -> None:
        """The mask first, then the image: a kill between them leaves a mask without an image and
        without a line, which reconcile parks in ``orphans/masks/``; never an image without its mask."""
        arr = to_uint8(item.image, _where(n, item))
        if mask is not None:
            self._writing = "mask"
            rec["mask_bytes"] = self._put(rec["mask"], lambda f: masks.encode(mask, f))
        self._writing = "file"
        # reconcile compares it: a truncated or replaced file shows
        rec["bytes"] = self._put(rec["file"], lambda f: encode_image(arr, self.format, self.quality, png_text, f))

    def _put(self, rel: str, write) -> int:
        """Write one file durably at ``rel`` (folder fsynced at commit); returns its size."""
        final = self.dir / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Not in the manifest (its id is new): a leftover of a crashed writer. Keep it, never overwrite.
            move_unique(final, self.dir / ORPHANS / Path(rel).parent)
        write_atomic(final, write, sync_dir=False)
        return final.stat().st_size

    def _commit(self, placed) -> None:
        for folder in {(self.dir / rel).parent for rec, _ in placed for rel in (rec["file"], rec.get("mask")) if rel}:
            fsync_dir(folder)
        rows = [(rec["id"], item.embedding) for rec, item in placed if item.embedding is not None]
        records = [rec for rec, _ in placed]
        emb_sizes = {}
        try:
            emb_sizes = embeddings.append(self.dir, rows) if rows else {}
            manifest.append(self.dir, records)
        except OSError as e:
            embeddings.rollback(self.dir, emb_sizes)
            for rec in records:  # images (and masks) without lines: park them like reconcile would
                for rel in (rec["file"], rec.get("mask")):
                    if rel:
                        move_unique(self.dir / rel, self.dir / ORPHANS / Path(rel).parent)
            raise DatasetWriteError(
                self.dir / MANIFEST,
                f"could not record {len(records)} item(s) ({e.strerror or e}); their images were moved to "
                f"{ORPHANS}/, the manifest is unchanged - free space and run again",
            ) from e
        for rec in records:
            self._take(rec)
        self._inode, self._offset = manifest_stat(self.dir)
        try:
            metadata.append(self.dir, records)
        except OSError as e:
            raise DatasetWriteError(
                self.dir / IMAGES / metadata.METADATA,
                f"images and manifest were saved but metadata.jsonl could not be appended ({e.strerror or e}); "
                "it is rebuilt from the manifest the next time any DTGen node or the dataset CLI opens the "
                "dataset - free space and queue again (or run the CLI's reconcile)",
            ) from e


def _where(n: int, item: ScoredItem) -> str:
    """How errors name an item of a batch."""
    return f"item {n} (label {item.label!r}, index {item.index})"


# -- what the writer node needs around a write (plain, so it is tested without ComfyUI) ---------
def quotas_for(items: list[ScoredItem], per_class: int | None) -> dict | None:
    """The same quota for every label in ``items``; None when ``per_class`` is 0 (no quota)."""
    if not per_class:
        return None
    return {label: int(per_class) for label in sorted({it.label for it in items})}


def png_text(prompt, extra_pnginfo) -> dict | None:
    """PNG text chunks like ComfyUI's SaveImage: the API prompt and the workflow."""
    out = {}
    if prompt is not None:
        out["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        out.update({k: json.dumps(v) for k, v in extra_pnginfo.items()})
    return out or None


def run_line(result: WriteResult) -> str:
    """What this queue run did, including what it did not store and why."""
    skipped = sum(result.skipped_duplicate.values())
    line = f"this run: {result.written['accepted']} accepted + {result.written['rejected']} rejected written"
    if skipped:
        line += (f"; {skipped} skipped, already in the dataset (same sampler item: same pack, mode, seed, "
                 "classes and index)")
    if result.skipped_quota:
        line += f"; {result.skipped_quota} accepted not stored, class already at its quota"
    return line


def summary(path, result: WriteResult | None, status: dict, handed_over: int = 0) -> str:
    """The writer node's text: the folder, this run (if it wrote generated images), how many items
    are still being written in the background, then per-class counts toward the quota (which count
    those items)."""
    lines = [str(path)] + ([run_line(result)] if result is not None else [])
    if handed_over:
        lines.append(f"{handed_over} being written in the background (on disk before Finalize, Evaluate or "
                     "the filter's history reads the dataset)")
    lines += [f"{label}: {s['accepted']} accepted, {s['rejected']} rejected"
              + (f", {s['missing']} missing" if s.get("missing") is not None else "")
              + (f", {s['real']} real" if s.get("real") else "") for label, s in status.items()]
    return "\n".join(lines)

