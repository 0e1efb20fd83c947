"""Resume-mode claims: item indices a queue run has planned and not stored yet.

Without them two ComfyUI servers in resume mode on one dataset read the same manifest and plan the
same next missing items; one server's images are then all skipped as duplicates. Planning happens
under the dataset lock and records each planned index in ``claims.json``; the next planner (any
server) skips claimed indices and counts them as images on their way to their class.

A claim ends when its item is stored (accepted or rejected), when the process that made it plans
again (ComfyUI runs one prompt at a time, so that process's earlier prompt has finished; items its
writer handed to the background writer and not stored yet count as stored here), when
that process is gone (same host), or after ``CLAIM_TTL_S`` (a server on another machine that died).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

from ..common.identity import StreamKey
from ..common.records import GENERATED
from ..store.fsio import open_nofollow, write_bytes_atomic
from ..store.layout import CLAIMS, open_dataset
from ..store.lock import DatasetLock
from ..store.reader import live_records
from .quotas import next_missing_indices

CLAIM_TTL_S = 3600.0
MAX_CLAIMS = 100_000          # a claims file past this is treated as damaged and started afresh
_HOST = socket.gethostname()
_OWNER = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"   # this process, across pid reuse


def _alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    if host != _HOST:
        return True                    # another machine: only the TTL can tell
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def load(dataset_dir) -> list[dict]:
    """The claims on file (possibly expired); a damaged file counts as no claims."""
    try:
        with open_nofollow(Path(dataset_dir) / CLAIMS, "rb") as f:
            data = json.loads(f.read(64 * MAX_CLAIMS))
        claims = data["claims"]
        if not isinstance(claims, list) or len(claims) > MAX_CLAIMS:
            return []
        return [c for c in claims if _well_formed(c)]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return []


def _well_formed(c) -> bool:
    return (isinstance(c, dict) and isinstance(c.get("stream"), str) and isinstance(c.get("label"), str)
            and isinstance(c.get("owner"), str) and type(c.get("index")) is int
            and isinstance(c.get("until"), (int, float)) and not isinstance(c.get("until"), bool))


def _live(claims: list[dict], stored: set, now: float) -> list[dict]:
    keep, checked = [], {}
    for c in claims:
        if c["until"] <= now or (c["stream"], c["index"]) in stored or c["owner"] == _OWNER:
            continue
        if c["owner"] not in checked:
            checked[c["owner"]] = _alive(c["owner"])
        if checked[c["owner"]]:
            keep.append(c)
    return keep


def claim_missing_indices(dataset_dir, label_of, start: int, count: int, targets: dict[str, int],
                          stream_key: StreamKey, pack_hash: str | None, max_scan: int | None = None,
                          now: float | None = None, source: str = GENERATED) -> list[int]:
    """Like ``quotas.next_missing_indices`` for one stream of one source (``generated`` for the
    prompt sampler, ``copy_paste``, ...), skipping what other runs have claimed, and claiming what
    it returns. Targets count only ``source``'s images and claims."""
    now = time.time() if now is None else now
    open_dataset(dataset_dir)
    with DatasetLock(dataset_dir):
        # a claim ends when its item is stored, whichever stream (server) it belongs to
        # this process's items still being written (store/background.py) count as stored
        stored = {(r.get("stream"), r["index"]) for r in live_records(dataset_dir, with_handed_over=True)
                  if r.get("index") is not None}
        claims = _live(load(dataset_dir), stored, now)
        mine = {c["index"] for c in claims if c["stream"] == stream_key.stream}
        in_flight = Counter(c["label"] for c in claims if c.get("source", GENERATED) == source)
        picked = next_missing_indices(dataset_dir, label_of, start, count, targets=targets, pack_hash=pack_hash,
                                      max_scan=max_scan, stream_key=stream_key, busy=mine,
                                      in_flight=in_flight, source=source, with_handed_over=True)
        claims += [{"stream": stream_key.stream, "index": i, "label": label_of(i), "until": now + CLAIM_TTL_S,
                    "owner": _OWNER, "source": source} for i in picked]
        write_bytes_atomic(Path(dataset_dir) / CLAIMS, json.dumps({"claims": claims}).encode())
    return picked
