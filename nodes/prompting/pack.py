"""Prompt packs: the YAML format (``version: 1``), parsed once into an immutable ``Pack``.

The entry point the rest of DTGen imports: ``parse_pack`` (text) and ``load_pack`` (a file, with
a cache), and the pack types. Every problem raises ``PromptPackError`` naming the file, the YAML
path (``classes[3].templates[0]``) and the line. The format is documented in
docs/prompt-packs.md. The work is done by:

- ``pack_model.py``: ``Pack``, ``PackClass``, ``Entry``, ``PromptPackError``, ``split_template``;
- ``yaml_budget.py``: reading the YAML within fixed budgets (``MAX_PACK_BYTES``, ``MAX_YAML_*``);
- ``pack_checks.py``: the fields of the pack and its classes;
- ``slot_checks.py``: slot references, cycles, nesting and prompt-size budgets.
"""
from __future__ import annotations

import os
import threading

from ..common.files import open_regular
from .pack_checks import validate_pack
from .pack_model import (
    FORMAT_VERSION, PACK_SUFFIXES, Entry, Pack, PackClass, PromptPackError, split_template,
)
from .yaml_budget import MAX_PACK_BYTES, read_yaml

__all__ = [
    "FORMAT_VERSION", "MAX_PACK_BYTES", "PACK_SUFFIXES", "Entry", "Pack", "PackClass", "PromptPackError",
    "load_pack", "parse_pack", "split_template",
]


def parse_pack(text: str, source: str = "<inline>") -> Pack:
    """Parse and validate pack YAML text; ``source`` names it in errors and ``Pack.source``.

    Every budget is checked before the work it bounds; a refusal names the limit, the value and
    the YAML path."""
    node, data = read_yaml(text, source)
    return validate_pack(data, source, node)


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def load_pack(path: str) -> Pack:
    """Load a pack file; repeated loads of an unchanged file (same mtime and size) are free."""
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise PromptPackError(f"cannot read prompt pack: {exc.strerror}", file=path) from None
    if stat.st_size > MAX_PACK_BYTES:
        raise PromptPackError(f"the pack is {stat.st_size} bytes; the limit is {MAX_PACK_BYTES} bytes "
                              "(MAX_PACK_BYTES)", file=path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with open_regular(path, follow_symlinks=True) as handle:   # a FIFO never blocks validation
            raw = handle.read()
    except OSError as exc:
        raise PromptPackError(f"cannot read prompt pack: {exc.strerror}", file=path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptPackError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    pack = parse_pack(text, source=path)
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]
        while len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = pack
    return pack
