"""Items this process handed over to a background writer and has not stored yet, per dataset.

A leaf module: the background writer (``background.py``) registers each dataset's source here,
and readers (``reader.py``) ask it, so neither imports the other and no import cycle runs through
the store. A source is any object with ``records() -> list[dict]`` (a snapshot of the records
handed over and not durable yet) and ``batches() -> int`` (how many batches were handed over so
far: a change marker).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

_SOURCES: dict[str, tuple[int, object]] = {}   # dataset key -> (pid, source)
_LOCK = threading.Lock()


def dataset_key(dataset_dir) -> str:
    return os.path.normcase(str(Path(dataset_dir).resolve()))


def register(dataset_dir, source) -> None:
    with _LOCK:
        _SOURCES[dataset_key(dataset_dir)] = (os.getpid(), source)


def unregister(dataset_dir, source) -> None:
    with _LOCK:
        key = dataset_key(dataset_dir)
        if key in _SOURCES and _SOURCES[key][1] is source:
            del _SOURCES[key]


def _source(dataset_dir):
    if not _SOURCES:
        return None
    with _LOCK:
        entry = _SOURCES.get(dataset_key(dataset_dir))
    # a source inherited through fork has no worker in this process: nothing is in flight here
    return entry[1] if entry is not None and entry[0] == os.getpid() else None


def records(dataset_dir) -> list[dict]:
    """Records of ``dataset_dir`` this process handed over and has not stored yet."""
    source = _source(dataset_dir)
    return source.records() if source is not None else []


def batches(dataset_dir) -> int:
    """How many batches this process handed over for ``dataset_dir`` (changes with every hand-over)."""
    source = _source(dataset_dir)
    return source.batches() if source is not None else 0
