"""The header of a ``.safetensors`` file (tensor names, dtypes, shapes) without reading any weight.

Budgeted: only regular files are opened (a FIFO named ``x.safetensors`` would block the caller), and
a header is refused above ``MAX_HEADER_BYTES`` (the safetensors library's own limit).
"""
from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import PathProblem

MAX_HEADER_BYTES = 100 * 1024 * 1024


class HeaderError(PathProblem, ValueError):
    """The file cannot be read as safetensors; the message names it (its name: files come from a
    model list)."""

    NAME_ONLY = True


@dataclass(frozen=True)
class Tensor:
    dtype: str            # safetensors spelling: F32, F16, BF16, F8_E4M3, F8_E5M2, I8, U8, ...
    shape: tuple


def read_header(path) -> dict[str, Tensor]:
    """{name: Tensor} of a safetensors file; ``HeaderError`` naming the file when it is none."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise HeaderError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise HeaderError(path, "is not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise HeaderError(path, f"is {st.st_size} bytes long: too short for a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > MAX_HEADER_BYTES or size > st.st_size - 8:
                raise HeaderError(path, f"is not a safetensors file (its header claims {size} bytes)")
            raw = fh.read(size)
    except OSError as exc:
        raise HeaderError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise HeaderError(path, "is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise HeaderError(path, "is not a safetensors file (its header is not a JSON object)")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or not isinstance(entry.get("shape"), list):
            raise HeaderError(path, f"tensor {name!r} has no dtype/shape in the header")
        out[name] = Tensor(entry["dtype"], tuple(int(d) for d in entry["shape"]))
    return out
