"""Folder layout of a DTGen dataset and its ``dataset.json`` marker (see docs/dataset-format.md)."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from ..common.errors import PathProblem
from ..common.naming import public_error
from .fsio import is_temp, write_bytes_atomic
from .lock import LOCK_NAME, DatasetLock

FORMAT = "dtgen-dataset"
FORMAT_VERSION = 1

MARKER = "dataset.json"
MANIFEST = "manifest.jsonl"
IMAGES = "images"          # the ImageFolder / `datasets` imagefolder root: accepted images only
REJECTED = "rejected"
MASKS = "masks"            # masks/<label>/<image stem>.png: instance masks (store/masks.py)
ANNOTATIONS = "annotations"  # COCO exports (curation/export_coco.py)
LABELS = "labels"          # YOLO labels beside images/ (curation/export_yolo.py)
DATA_YAML = "data.yaml"    # the YOLO dataset file
EMBEDDINGS = "embeddings"
ORPHANS = "orphans"
REPORT = "report"
METADATA = "metadata.jsonl"  # inside IMAGES, for `datasets`
CLEAN = ".clean"  # "the last write finished": lets the next open skip the full reconcile

CLAIMS = "claims.json"     # resume mode: item indices in flight (see claims.py)

IMAGE_EXTS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}

# Everything DTGen writes or reads inside a dataset folder; none of it may be a symlink (one could
# make the writer write, or a repair copy, outside the output directory). The number per folder is
# how many levels below it are checked: images/<label>/, masks/<label>/, embeddings/<file>,
# orphans/damaged/<tree>/<label>/, splits/<split>/<label>/ (curation/splits.py), annotations/<file>,
# labels/<label>/.
_OWNED_FILES = (MARKER, MANIFEST, CLEAN, CLAIMS, f"{IMAGES}/{METADATA}", DATA_YAML)
_OWNED_TREES = {IMAGES: 1, REJECTED: 1, MASKS: 1, EMBEDDINGS: 1, REPORT: 1, ORPHANS: 3, "splits": 2,
                ANNOTATIONS: 1, LABELS: 1}


@public_error
class DatasetError(PathProblem, RuntimeError):
    """A dataset folder cannot be used as asked; ``path`` names the file or folder."""


@public_error
class DatasetFormatError(DatasetError):
    """The folder is not a DTGen dataset (or one of a newer format)."""


@public_error
class DatasetWriteError(DatasetError):
    """Writing failed (disk full, permission denied ...); the dataset stays consistent."""


@public_error
class DatasetSymlinkError(DatasetError):
    """A path inside the dataset folder is a symlink; nothing was read or written through it."""


def check_tree(dataset_dir) -> None:
    """Refuse a dataset folder that holds a symlink where DTGen reads or writes.

    Costs one ``lstat`` per owned file and per label folder (not per image): cheap enough for every
    open and every write batch. Symlinked image files are harmless (files are replaced by rename,
    which replaces the link itself) and are not looked at here.
    """
    root = Path(dataset_dir)
    for rel in (*_OWNED_FILES, *_OWNED_TREES):
        _refuse_link(root, root / rel)
    for tree, depth in _OWNED_TREES.items():
        _check_folders(root, root / tree, depth)


def _check_folders(root: Path, folder: Path, depth: int) -> None:
    if depth == 0:
        return
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_symlink():
            _refuse_link(root, Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            _check_folders(root, Path(entry.path), depth - 1)


def _refuse_link(root: Path, path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(mode):
        raise DatasetSymlinkError(path, f"is a symlink (to {os.readlink(path)}); a DTGen dataset may not contain "
                                  f"symlinks where it writes, or it could write outside the output folder. Replace "
                                  f"it by a real {'file' if path.suffix else 'folder'} or choose another dataset "
                                  "name; nothing was read or written through it")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_marker(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFormatError(dataset_dir, f"not a DTGen dataset: {MARKER} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(path, f"unreadable dataset marker ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetFormatError(path, f"not a DTGen dataset marker (format must be {FORMAT!r})")
    if not isinstance(info.get("format_version"), int) or info["format_version"] > FORMAT_VERSION:
        raise DatasetFormatError(
            path, f"format_version {info.get('format_version')!r} is not supported (this DTGen reads <= {FORMAT_VERSION})"
        )
    return info


def _foreign_entries(dataset_dir: Path) -> list[str]:
    return sorted(p.name for p in dataset_dir.iterdir() if p.name != LOCK_NAME and not is_temp(p))


def open_dataset(dataset_dir, create: bool = True) -> dict:
    """Return the marker of ``dataset_dir``, creating an empty dataset there if allowed.

    A non-empty folder without our marker is refused untouched (it may hold someone's files).
    """
    dataset_dir = Path(dataset_dir)
    check_tree(dataset_dir)
    if (dataset_dir / MARKER).exists():
        return read_marker(dataset_dir)
    if not create:
        raise DatasetFormatError(dataset_dir, f"not a DTGen dataset: {MARKER} is missing")
    if dataset_dir.exists():
        if not dataset_dir.is_dir():
            raise DatasetFormatError(dataset_dir, "exists and is not a folder")
        foreign = _foreign_entries(dataset_dir)
        if MARKER in foreign:   # another writer created the dataset since the first look
            return read_marker(dataset_dir)
        if foreign:
            raise DatasetFormatError(
                dataset_dir,
                f"folder is not empty and has no {MARKER}, so it was not written by DTGen "
                f"(found {foreign[:5]}); choose another dataset name. Nothing was changed.",
            )
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with DatasetLock(dataset_dir):
        if (dataset_dir / MARKER).exists():  # another process created it meanwhile
            return read_marker(dataset_dir)
        foreign = _foreign_entries(dataset_dir)
        if foreign:
            raise DatasetFormatError(dataset_dir, f"files appeared while creating the dataset: {foreign[:5]}")
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now_iso(), "name": dataset_dir.name}
        write_bytes_atomic(dataset_dir / MARKER, (json.dumps(info, indent=2) + "\n").encode())
    return info
