"""The header of a ``.safetensors`` file (tensor names, dtypes, shapes) without reading any weight.

Budgeted: files are opened with ``common.files.open_regular`` (a FIFO named ``x.safetensors`` would
block the caller), and a header is refused above ``MAX_HEADER_BYTES`` (the safetensors library's own limit).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import PathProblem
from ..common.files import NotReadable, open_regular

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
        with open_regular(path, follow_symlinks=True) as fh:   # model files are often symlinks; never a FIFO
            length = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise HeaderError(path, f"is {length} bytes long: too short for a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > MAX_HEADER_BYTES or size > length - 8:
                raise HeaderError(path, f"is not a safetensors file (its header claims {size} bytes)")
            raw = fh.read(size)
    except NotReadable as exc:
        raise HeaderError(path, exc.strerror) from None
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
