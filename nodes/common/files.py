"""The one way the pack opens a file in a user's folder or a dataset for reading: never through a
symlink, never a FIFO, socket or device (opening a FIFO blocks until a writer appears, which froze
ComfyUI's event loop at queue time), and within a size budget.

``open_regular`` opens with ``O_NONBLOCK`` (so a FIFO cannot block the open), checks with ``fstat``
that it is a regular file, then clears ``O_NONBLOCK`` for plain reads. Its refusals are
``NotReadable`` errors: an ``OSError`` (so ``except OSError`` handlers turn them into their own
"cannot be read (...)" messages) that names the path.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KIND = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


class NotReadable(OSError):
    """A path the pack will not read: not a regular file, a symlink, or over its size budget."""

    def __init__(self, path, problem: str, code: int = errno.EINVAL):
        super().__init__(code, problem, str(path))


def kind_of(mode: int) -> str:
    return _KIND.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path, max_bytes: int | None = None, follow_symlinks: bool = False):
    """``path`` opened for reading (binary), refused (``NotReadable``) unless it is a regular file of
    at most ``max_bytes`` (and not a symlink, unless ``follow_symlinks``: model files often are);
    never blocks on a FIFO."""
    nofollow = 0 if follow_symlinks else NOFOLLOW
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | nofollow | getattr(os, "O_BINARY", 0))
    except OSError as e:
        if not follow_symlinks and (e.errno == errno.ELOOP or os.path.islink(path)):
            raise NotReadable(path, "is a symlink; only real files are read", errno.ELOOP) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(path, f"is {kind_of(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotReadable(path, f"is {st.st_size / 1024 ** 2:.1f} MiB; at most {max_bytes / 1024 ** 2:.0f} MiB "
                                    "are read", errno.EFBIG)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_bytes: int | None = None, follow_symlinks: bool = False) -> bytes:
    with open_regular(path, max_bytes, follow_symlinks) as f:
        return f.read()
