"""The one way the pack hashes a file: sha256 of its bytes, read in blocks (a 10 GB checkpoint never
sits in memory)."""
from __future__ import annotations

import hashlib

from .files import open_regular

BLOCK = 4 * 1024 * 1024


def sha256_file(path) -> str:
    """Hex sha256 of the file's bytes; OSError as ``open``/``read`` raise it."""
    digest = hashlib.sha256()
    with open_regular(path, follow_symlinks=True) as fh:   # a FIFO never blocks the hash
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
