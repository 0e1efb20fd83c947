"""Bring a dataset back to a consistent state after a crash, a kill or an interrupted finalize.

Run under the dataset lock (``DatasetWriter`` does at open, ``finalize`` before and after).
Afterwards: every live manifest record has its file (and its mask, if it has one), every image
under ``images/`` and ``rejected/`` and every mask under ``masks/`` has a record, no temp files
remain, ``images/metadata.jsonl`` matches the records. Nothing is deleted except our own temp
files: bad manifest bytes go to a ``.corrupt-`` side file, unrecorded images and masks to
``orphans/``, a rewritten manifest leaves a ``.bak-`` copy. A record whose mask is missing or
damaged is treated like one whose image is damaged: both files go to ``orphans/damaged/``, the
record is dropped, so resume makes the item again (an image is never kept without its mask).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common.files import open_regular
from . import embeddings, manifest, masks, metadata
from .clean_marker import is_clean, mark_clean
from .fsio import is_temp, move_unique
from .layout import IMAGES, MARKER, ORPHANS, REJECTED, check_tree
from .lock import DatasetLock

TREES = {IMAGES: "accepted", REJECTED: "rejected"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class ReconcileReport:
    corrupt_lines: int = 0
    corrupt_file: str | None = None
    temps_removed: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)      # where unrecorded images and masks were moved
    dropped: list[str] = field(default_factory=list)      # ids whose file is gone
    damaged: list[str] = field(default_factory=list)      # where files that fail the check were moved
    recovered: list[str] = field(default_factory=list)    # ids found in the other tree (interrupted move)
    backup: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.corrupt_lines or self.temps_removed or self.orphans or self.dropped or self.recovered
                    or self.damaged)


def _remove_temps(dataset_dir: Path, report: ReconcileReport) -> None:
    for root, dirs, files in os.walk(dataset_dir):
        dirs[:] = [d for d in dirs if d != ORPHANS]
        for name in files:
            path = Path(root) / name
            if is_temp(path):
                path.unlink()
                report.temps_removed.append(str(path.relative_to(dataset_dir)))


def _image_files(dataset_dir: Path) -> dict[str, Path]:
    """{relative posix path: path} of images in ``images/<label>/`` and ``rejected/<label>/``."""
    found = {}
    for tree in TREES:
        base = dataset_dir / tree
        if not base.is_dir():
            continue
        for label_dir in base.iterdir():
            if label_dir.is_dir():
                for p in label_dir.iterdir():
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                        found[f"{tree}/{label_dir.name}/{p.name}"] = p
    return found


def ensure_consistent(dataset_dir) -> ReconcileReport | None:
    """Repair the dataset if its last change did not finish (no ``.clean`` stamp): every reader and
    node that touches a dataset calls this on open, so a crash between the manifest commit and a
    derived file (``images/metadata.jsonl``) is repaired even when no writer runs again (e.g. every
    quota is full). O(1) when the dataset is clean; None when nothing was done."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / MARKER).is_file():
        return None           # not a dataset (yet): nothing to repair
    check_tree(dataset_dir)
    if is_clean(dataset_dir):
        return None
    with DatasetLock(dataset_dir):
        if is_clean(dataset_dir):   # a writer finished meanwhile
            return None
        report = reconcile(dataset_dir)
        mark_clean(dataset_dir)
    return report


def damage(path: Path, rec: dict, verify: bool) -> str | None:
    """Why a recorded image file is not the one that was written, or None: its size differs from
    the recorded ``bytes`` (truncated, replaced), or with ``verify`` it does not decode."""
    size = path.stat().st_size
    if rec.get("bytes") is not None and size != rec["bytes"]:
        return f"{size} bytes, {rec['bytes']} written"
    if verify:
        from PIL import Image

        try:
            with open_regular(path) as f, Image.open(f) as img:
                img.load()
        except Exception as exc:   # PIL raises many types for broken files
            return f"does not decode ({type(exc).__name__}: {exc})"
    return None


def _mask_problem(rec: dict, image: Path, mask_disk: dict, verify: bool) -> str | None:
    """Why a live record's mask is not usable (so its image cannot stay), or None (also without a mask)."""
    rel = rec.get("mask")
    if not rel:
        return None
    if rel not in mask_disk:
        return f"its mask {rel} is missing"
    problem = masks.damage(mask_disk[rel], rec, verify, image)
    return None if problem is None else f"its mask {rel}: {problem}"


def reconcile(dataset_dir, verify: bool = False) -> ReconcileReport:
    """Run under the dataset lock; see the module docstring. Every recorded image's size is
    checked; ``verify`` also decodes every image (slow: for the CLI)."""
    dataset_dir = Path(dataset_dir)
    check_tree(dataset_dir)
    report = ReconcileReport()
    _remove_temps(dataset_dir, report)
    embeddings.truncate_partial(dataset_dir)

    read = manifest.read(dataset_dir)
    rewrite = False
    bad = [raw for _, raw in read.bad_lines] + ([read.partial_tail] if read.partial_tail else [])
    if bad:
        report.corrupt_lines = len(bad)
        report.corrupt_file = manifest.save_side_file(dataset_dir, "corrupt", b"\n".join(bad) + b"\n").name
        if read.bad_lines:
            rewrite = True
        else:  # only an interrupted last append: cut it off
            manifest.rollback(dataset_dir, read.end)

    view = manifest.live(read.records)
    on_disk = _image_files(dataset_dir)
    mask_disk = masks.mask_files(dataset_dir)

    def set_aside(item_id: str, rec: dict, problem: str) -> None:
        """Kept aside, never deleted: the image and its mask to orphans/damaged/; the record goes,
        so resume makes the item again."""
        dest = move_unique(on_disk.pop(rec["file"]), dataset_dir / ORPHANS / "damaged" / Path(rec["file"]).parent)
        report.damaged.append(f"{dest.relative_to(dataset_dir)} ({problem})")
        if rec.get("mask") in mask_disk:
            move_unique(mask_disk.pop(rec["mask"]), dataset_dir / ORPHANS / "damaged" / Path(rec["mask"]).parent)
        del view[item_id]

    for item_id, rec in list(view.items()):
        if rec["file"] in on_disk:
            problem = damage(on_disk[rec["file"]], rec, verify)
            if problem is None:
                problem = _mask_problem(rec, on_disk[rec["file"]], mask_disk, verify)
                if problem is None:
                    continue
            set_aside(item_id, rec, problem)
            rewrite = True
            continue
        tree, label, name = rec["file"].split("/", 2)
        other = (REJECTED if tree == IMAGES else IMAGES) + f"/{label}/{name}"
        if other in on_disk:  # finalize moved the file but died before recording it
            view[item_id] = dict(rec, file=other, decision=TREES[other.split("/")[0]],
                                 reason="recovered_interrupted_move", event="recovered")
            problem = _mask_problem(rec, on_disk[other], mask_disk, verify)
            if problem is None:
                report.recovered.append(item_id)
            else:
                set_aside(item_id, view[item_id], problem)
        else:
            del view[item_id]
            report.dropped.append(item_id)
        rewrite = True

    recorded = {rec["file"] for rec in view.values()} | {rec["mask"] for rec in view.values() if rec.get("mask")}
    for rel, path in [*on_disk.items(), *mask_disk.items()]:
        if rel not in recorded:   # an image or a mask without a live record: kept in orphans/
            dest = move_unique(path, dataset_dir / ORPHANS / Path(rel).parent)
            report.orphans.append(str(dest.relative_to(dataset_dir)))

    if rewrite:
        backup = manifest.rewrite(dataset_dir, list(view.values()))
        report.backup = backup.name if backup else None
    metadata.regenerate(dataset_dir, view.values())
    return report
