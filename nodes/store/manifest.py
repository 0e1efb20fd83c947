"""``manifest.jsonl``: append-only, one JSON object per line per image event.

Every line is a full record of one item (``id``); the live view folds lines by ``id``, last line
wins (``event`` = ``write`` | ``redecide`` | ``recovered``). A crash can only leave a partial *last*
line; readers skip it, ``reconcile`` moves it to a ``manifest.jsonl.corrupt-<time>`` side file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fsio import append_durable, open_nofollow, write_bytes_atomic
from .layout import MANIFEST


@dataclass
class ManifestRead:
    records: list[dict] = field(default_factory=list)
    bad_lines: list[tuple[int, bytes]] = field(default_factory=list)  # (1-based line number, raw bytes)
    partial_tail: bytes = b""      # bytes after the last newline (an interrupted append)
    end: int = 0                   # offset just after the last complete line


def _jsonable(value):
    """numpy scalars/arrays and other odd values in caller metadata -> plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def encode(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_jsonable) + "\n").encode("utf-8")


def parse(data: bytes, first_line: int = 1) -> ManifestRead:
    out = ManifestRead()
    cut = data.rfind(b"\n") + 1
    out.partial_tail, out.end = data[cut:], cut
    for n, raw in enumerate(data[:cut].split(b"\n")[:-1], start=first_line):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "id" not in rec or "file" not in rec:
                raise ValueError("not a manifest record")
        except (ValueError, UnicodeDecodeError):
            out.bad_lines.append((n, raw))
            continue
        out.records.append(rec)
    return out


def read(dataset_dir, offset: int = 0) -> ManifestRead:
    """Read complete lines from ``offset`` (``end`` is then an absolute offset)."""
    path = Path(dataset_dir) / MANIFEST
    try:
        with open_nofollow(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return ManifestRead(end=offset)
    out = parse(data)
    out.end += offset
    return out


def live(records) -> dict[str, dict]:
    """Fold events into the current record per id (insertion order of first appearance)."""
    view: dict[str, dict] = {}
    for rec in records:
        view[rec["id"]] = rec
    return view


def append(dataset_dir, records: list[dict]) -> int:
    """Append records durably (one write + fsync); returns the previous size for rollback."""
    return append_durable(Path(dataset_dir) / MANIFEST, b"".join(encode(r) for r in records))


def rollback(dataset_dir, size: int) -> None:
    with open_nofollow(Path(dataset_dir) / MANIFEST, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"


def save_side_file(dataset_dir, kind: str, data: bytes) -> Path:
    """Keep bytes we remove from the manifest (``corrupt`` lines, ``bak`` copies): never lost silently."""
    path = Path(dataset_dir) / f"{MANIFEST}.{kind}-{stamp()}"
    write_bytes_atomic(path, data)
    return path


def rewrite(dataset_dir, records: list[dict]) -> Path | None:
    """Replace the manifest by ``records`` atomically, after keeping the old one as a ``.bak-`` file."""
    path = Path(dataset_dir) / MANIFEST
    backup = None
    if path.exists():
        with open_nofollow(path, "rb") as f:
            backup = save_side_file(dataset_dir, "bak", f.read())
    write_bytes_atomic(path, b"".join(encode(r) for r in records))
    return backup
