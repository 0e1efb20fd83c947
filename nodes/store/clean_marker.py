"""The ``.clean`` marker: "the last change finished", so the next writer open may skip the full
reconcile (a scan of every image).

Protocol (all under the dataset lock): anything that moves or places image files first removes
the marker (``mark_dirty``) and writes it back, stamped with the manifest's inode and size, only
after its last durable step (``mark_clean``). A crash anywhere in between leaves no marker (or a
stale stamp), and the next open reconciles.
"""
from __future__ import annotations

from pathlib import Path

from .fsio import fsync_dir, write_atomic
from .layout import CLEAN, MANIFEST


def manifest_stat(dataset_dir) -> tuple[int | None, int]:
    """(inode, size) of the manifest; (None, 0) when there is none yet."""
    try:
        st = (Path(dataset_dir) / MANIFEST).stat()
        return st.st_ino, st.st_size
    except FileNotFoundError:
        return None, 0


def _stamp(dataset_dir) -> str:
    inode, size = manifest_stat(dataset_dir)
    return f"{inode}:{size}"


def is_clean(dataset_dir) -> bool:
    try:
        return (Path(dataset_dir) / CLEAN).read_text() == _stamp(dataset_dir)
    except OSError:
        return False


def mark_clean(dataset_dir) -> None:
    write_atomic(Path(dataset_dir) / CLEAN, lambda f: f.write(_stamp(dataset_dir).encode()))


def mark_dirty(dataset_dir) -> None:
    try:
        (Path(dataset_dir) / CLEAN).unlink()
    except FileNotFoundError:
        return
    fsync_dir(Path(dataset_dir))
