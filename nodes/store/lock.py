"""Exclusive inter-process lock on ``<dataset>/.lock`` (fcntl.flock on POSIX, msvcrt on Windows).

The OS releases the lock when the holder dies (even by SIGKILL), so a crashed writer never leaves
the dataset locked. Not re-entrant: take it once around a whole append / reconcile.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_NAME = ".lock"


class DatasetLock:
    def __init__(self, dataset_dir):
        self.path = Path(dataset_dir) / LOCK_NAME
        self._fd = None

    def __enter__(self) -> DatasetLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            else:
                # msvcrt.LK_LOCK retries for ~10 s then raises; loop until we own byte 0.
                while True:
                    try:
                        msvcrt.locking(self._fd, msvcrt.LK_LOCK, 1)
                        break
                    except OSError:
                        continue
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:
                os.lseek(self._fd, 0, os.SEEK_SET)
                msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(self._fd)
            self._fd = None
