"""Split folders: ``<dataset>/splits/<split>/<label>/<file>``, one ImageFolder tree per split.

Built by ``finalize(..., split_folders=True)`` from the accepted records that carry a ``split``:

- each image is a hard link to ``images/<label>/<file>`` (no extra disk space); where the file system
  refuses a link (another device, FAT/exFAT, a share without links) it is a copy. Never a symlink.
- each split folder has its own ``metadata.jsonl`` (the rows of ``images/metadata.jsonl``, with
  ``file_name`` relative to that split folder), so ``torchvision.datasets.ImageFolder(splits/train)``
  and ``datasets.load_dataset("imagefolder", data_dir=splits/train, split="train")`` both see the
  training images only, and ``load_dataset("imagefolder", data_dir=splits)`` returns every split
  (``datasets`` maps the folder names ``train``/``val``/``test`` to train/validation/test).
- every split has a folder for every class, empty where the split has none of that class's images:
  ``ImageFolder`` then refuses such a split loudly, and with ``allow_empty=True`` gives every split
  the same classes and class indices (never silently shifted ones).

The tree is rebuilt from scratch in a hidden folder (``.splits.tmp-<pid>-<rand>``) and swapped in
only when complete: one atomic ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, otherwise
``splits`` -> ``.splits.old-*`` and the new tree -> ``splits`` (a crash between the two renames is
undone by :func:`recover`, which puts the old tree back). The old tree is deleted last.
Run it under the dataset lock: nothing else may move images meanwhile.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..common.labels import label_problem
from ..store import metadata
from ..store.fsio import fsync_dir, open_nofollow, temp_path, write_bytes_atomic
from ..store.layout import IMAGES, METADATA, DatasetError, DatasetSymlinkError, DatasetWriteError

SPLITS = "splits"
OLD_MARK = ".old-"
ORDER = ("train", "val", "test")   # report order; other split names follow, sorted
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
# os.link errors that mean "this file system does not do hard links here": copy instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EACCES,
            getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EOPNOTSUPP}


@dataclass
class SplitFolders:
    """What :func:`build` made: counts per split and class, and how the files got there."""
    path: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)   # split -> label folder -> images (0 too)
    linked: int = 0
    copied: int = 0
    unsplit: int = 0          # accepted images without a split (written after the last split): left out

    @property
    def images(self) -> dict[str, int]:
        return {name: sum(per_class.values()) for name, per_class in self.counts.items()}

    @property
    def missing_classes(self) -> dict[str, list[str]]:
        """Classes with images in another split but none in this one: their folder here is empty."""
        out = {name: [c for c, n in per_class.items() if not n] for name, per_class in self.counts.items()}
        return {name: missing for name, missing in out.items() if missing}

    def as_dict(self) -> dict:
        return {"path": SPLITS, "images": self.images, "per_class": self.counts, "linked": self.linked,
                "copied": self.copied, "unsplit": self.unsplit, "missing_classes": self.missing_classes}

    def summary(self) -> str:
        how = "hard links" if not self.copied else ("copies" if not self.linked else
                                                    f"{self.linked} hard links, {self.copied} copies")
        parts = ", ".join(f"{name} {n}" for name, n in self.images.items()) or "no images"
        line = f"split folders ({SPLITS}/): {parts} ({how})"
        if self.unsplit:
            line += f"; {self.unsplit} accepted images have no split yet (finalize with a split)"
        return line


def split_problem(name) -> str | None:
    """Why ``name`` cannot be a split folder, or None."""
    if not isinstance(name, str) or not _SPLIT_NAME.match(name):
        return f"split name {name!r}: use 1-32 ASCII letters, digits, '_' or '-'"
    return label_problem(name)


def plan(records) -> tuple[dict[str, list[dict]], int]:
    """Accepted records grouped by split (each group sorted by file), and how many accepted records
    have no split. Raises ValueError on a split name that cannot be a folder."""
    groups: dict[str, list[dict]] = {}
    unsplit = 0
    for rec in records:
        if rec.get("decision") != "accepted":
            continue
        name = rec.get("split")
        if name is None:
            unsplit += 1
            continue
        problem = split_problem(name)
        if problem:
            raise ValueError(problem)
        groups.setdefault(name, []).append(rec)
    folded: dict[str, str] = {}
    for name in groups:
        if folded.setdefault(name.casefold(), name) != name:
            raise ValueError(f"split names {folded[name.casefold()]!r} and {name!r} differ only by case: "
                             "they would share one folder on Windows and macOS")
    order = sorted(groups, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {name: sorted(groups[name], key=lambda r: r["file"]) for name in order}, unsplit


def _image_parts(rec: dict) -> tuple[str, str]:
    """(label folder, file name) of an accepted record's ``images/<label>/<file>``."""
    parts = str(rec.get("file", "")).split("/")
    if (len(parts) != 3 or parts[0] != IMAGES or any(not p or p.startswith(".") for p in parts[1:])
            or rec.get("label_dir") not in (None, parts[1])):
        raise DatasetError(rec.get("file", "?"), f"record {rec.get('id')!r}: not a file under {IMAGES}/<label>/")
    return parts[1], parts[2]


class _Placer:
    """Hard link where the file system allows it, else copy (and stop trying links after the first
    refusal). Never follows or makes a symlink."""

    def __init__(self) -> None:
        self.links_work = True
        self.linked = self.copied = 0

    def place(self, src: Path, dest: Path) -> None:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            raise DatasetSymlinkError(src, "is a symlink; split folders hold hard links or copies of real "
                                      "image files only. Replace it by the real file")
        if not stat.S_ISREG(st.st_mode):
            raise DatasetError(src, "is not a regular file")
        if self.links_work:
            try:
                if os.link in os.supports_follow_symlinks:
                    os.link(src, dest, follow_symlinks=False)
                else:
                    os.link(src, dest)
                self.linked += 1
                return
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                self.links_work = False
        with open_nofollow(src, "rb") as fin, open(dest, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        self.copied += 1


def _fill(dataset_dir: Path, tree: Path, groups: dict[str, list[dict]], result: SplitFolders) -> None:
    # Every split gets a folder for every class of the tree, empty where the split has none of its
    # images: ImageFolder then refuses that split loudly (or, with allow_empty=True, gives every
    # split the same classes and class indices) instead of silently shifting the indices.
    classes = sorted({_image_parts(rec)[0] for recs in groups.values() for rec in recs})
    placer = _Placer()
    tree.mkdir()
    for name, recs in groups.items():
        split_dir = tree / name
        split_dir.mkdir()
        per_class = result.counts[name] = dict.fromkeys(classes, 0)
        for label_dir in classes:
            (split_dir / label_dir).mkdir()
        for rec in recs:
            label_dir, file_name = _image_parts(rec)
            placer.place(dataset_dir / IMAGES / label_dir / file_name, split_dir / label_dir / file_name)
            per_class[label_dir] += 1
        for label_dir in classes:
            fsync_dir(split_dir / label_dir)
        write_bytes_atomic(split_dir / METADATA, b"".join(   # the columns of images/metadata.jsonl
            (json.dumps(metadata.row(rec, depth=2), ensure_ascii=False) + "\n").encode("utf-8") for rec in recs))
        fsync_dir(split_dir)
    fsync_dir(tree)
    result.linked, result.copied = placer.linked, placer.copied


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _old_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _swap(new: Path, final: Path) -> Path | None:
    """Put the complete tree ``new`` at ``final``; returns where the old tree now is (to delete)."""
    if not os.path.lexists(final):
        os.rename(new, final)
        return None
    if _exchange(new, final):
        return new            # the old tree now has the hidden build name
    old = _old_path(final)
    os.rename(final, old)     # a crash right here: recover() renames it back
    try:
        os.rename(new, final)
    except OSError:
        os.rename(old, final)
        raise
    return old


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _leftovers(dataset_dir: Path) -> tuple[list[Path], list[Path]]:
    builds, olds = [], []
    for entry in os.scandir(dataset_dir):
        if entry.name.startswith(f".{SPLITS}.tmp-"):
            builds.append(Path(entry.path))
        elif entry.name.startswith(f".{SPLITS}{OLD_MARK}"):
            olds.append(Path(entry.path))
    return builds, olds


def recover(dataset_dir) -> None:
    """Undo what an interrupted build or swap left: half-built hidden trees are removed; if
    ``splits/`` is missing because the process died between the two renames of a swap, the old
    (complete) tree is put back. Cheap (one listing of the dataset folder); call under the lock."""
    dataset_dir = Path(dataset_dir)
    builds, olds = _leftovers(dataset_dir)
    if olds and not os.path.lexists(dataset_dir / SPLITS):
        newest = max(olds, key=lambda p: p.lstat().st_mtime_ns)
        if newest.is_dir() and not newest.is_symlink():
            os.rename(newest, dataset_dir / SPLITS)
            olds.remove(newest)
            fsync_dir(dataset_dir)
    for path in builds + olds:
        _remove(path)


def build(dataset_dir, records) -> SplitFolders:
    """(Re)build ``<dataset>/splits/`` from ``records`` (the live manifest view, after finalize
    decided and split it). The old tree stays in place, whole, until the new one is complete."""
    dataset_dir = Path(dataset_dir)
    final = dataset_dir / SPLITS
    groups, unsplit = plan(records)   # no accepted image with a split: an empty splits/
    if os.path.lexists(final) and (final.is_symlink() or not final.is_dir()):
        raise DatasetError(final, "is not a folder; split folders are built there. Move it away")
    recover(dataset_dir)
    result = SplitFolders(path=final, unsplit=unsplit)
    tree = temp_path(final)
    try:
        _fill(dataset_dir, tree, groups, result)
        old = _swap(tree, final)
    except BaseException as e:
        _remove(tree)
        if isinstance(e, OSError):
            raise DatasetWriteError(e.filename or final, f"could not build the split folders ({e.strerror or e}); "
                                    f"the previous {SPLITS}/ is unchanged") from e
        raise
    fsync_dir(dataset_dir)
    if old is not None:
        try:
            _remove(old)
        except OSError:
            pass    # e.g. a file still open on Windows: the next finalize removes it (recover)
    return result
