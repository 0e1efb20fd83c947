"""Durable file operations: temp file in the same folder -> fsync -> os.replace -> fsync folder.

Temp files are hidden (``.name.tmp-<pid>-<rand>``) so neither torchvision nor ``datasets`` sees
them, and ``reconcile`` recognises leftovers by ``TMP_MARK``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from ..common.files import NotReadable, kind_of

TMP_MARK = ".tmp-"


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARK in path.name


def fsync_dir(folder: Path) -> None:
    """Make a rename/creation in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(final: Path, write: Callable[[object], None], sync_dir: bool = True) -> None:
    """Call ``write(fileobj)`` on a temp file, fsync it and move it onto ``final`` in one step.

    On any error the temp file is removed and ``final`` is untouched.
    """
    tmp = temp_path(final)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    write_atomic(final, lambda f: f.write(data))


# Files inside a dataset are opened without following a symlink in the last component (the tree
# check in layout.py refuses links in advance; this closes the window between check and open).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path: Path, mode: str):
    """``open(path, mode)`` ("rb", "ab", "r+b") of a dataset's own file: fails with ELOOP on a
    symlink, never blocks on a FIFO (refused, like any file that is not regular: ``NotReadable``),
    and a file opened to append or rewrite must have one link only (a hard link would make DTGen
    write into a file outside the dataset)."""
    flags = {"rb": os.O_RDONLY, "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "r+b": os.O_RDWR}[mode]
    fd = os.open(path, flags | os.O_NONBLOCK | NOFOLLOW | getattr(os, "O_BINARY", 0), 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(path, f"is {kind_of(st.st_mode)}, not a regular file")
        if mode != "rb" and st.st_nlink > 1:
            raise NotReadable(path, f"has {st.st_nlink} hard links; DTGen writes only files of its own (remove the "
                                    "link, or copy the file in its place)", errno.EMLINK)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def append_durable(path: Path, data: bytes) -> int:
    """Append ``data`` and fsync; returns the file size before the append (to roll back on error)."""
    with open_nofollow(path, "ab") as f:
        start = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.truncate(start)  # never leave a half-written record behind if we are still alive
            raise
    return start


def move_unique(src: Path, dest_dir: Path) -> Path:
    """Move ``src`` into ``dest_dir`` without overwriting anything there (adds ``-1``, ``-2`` ...)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    n = 0
    while dest.exists():
        n += 1
        dest = dest_dir / f"{src.stem}-{n}{src.suffix}"
    os.replace(src, dest)
    return dest


def write_bytes(f, data: bytes) -> None:
    """The default sink of encoded bytes into an open temp file (tests inject slow or failing ones)."""
    f.write(data)
