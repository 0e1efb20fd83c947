"""What makes two things the same item: one meaning for each word.

- **stream** (``stream_id``): the id string of one item sequence of a prompt pack, from (pack
  content, mode, base seed, sampled classes). A new seed, mode or class subset is a new stream.
- **stream key** (``StreamKey``): what a stored record is matched on when resuming: the stream id,
  plus (base seed, mode) for records written before streams existed (pack 0.1.0).
- **frame id** (``frame_id``): frame ``b`` of a multi-frame image of one sampler item.
- **item id** (``item_id``): the 16-hex dataset id of a stored image (its dedup key), from the
  caller's ``item_id`` metadata, else the stream and index, else the pack hash and index, else
  label + prompt + seed + pixels.
- **legacy** (``legacy_item_id``, ``legacy_key``): how 0.1.0 records are recognised.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from .records import ScoredItem


class StreamKey(NamedTuple):
    stream: str          # stream_id(...)
    base_seed: int
    mode: str


def stream_id(pack_hash: str, mode: str, seed: int, labels) -> str:
    h = hashlib.blake2b(digest_size=8, person=b"dtgen.stream")
    h.update(f"{pack_hash}|{mode}|{seed}|{','.join(labels)}".encode())
    return h.hexdigest()


def frame_id(meta: dict, index, frame: int) -> str:
    """Identity of frame ``frame`` of a multi-frame item: by stream when the item has one (a new
    seed's frames are new items), else by pack hash."""
    if meta.get("stream"):
        return f"stream:{meta['stream']}:{index}:{frame}"
    return f"{meta.get('pack_hash', '')}:{index}:{frame}"


def item_key(item: ScoredItem) -> str:
    meta = item.metadata or {}
    if meta.get("item_id") is not None:
        return f"item_id:{meta['item_id']}"
    if item.index is not None and meta.get("stream"):
        return f"stream:{meta['stream']}:{int(item.index)}"
    if item.index is not None:
        return f"{meta.get('pack_hash') or ''}:{int(item.index)}"
    h = hashlib.sha256(f"{item.label}\0{item.prompt}\0{item.seed}".encode())
    h.update(np.ascontiguousarray(item.image).tobytes())
    return f"content:{h.hexdigest()}"


def item_id(item: ScoredItem) -> str:
    return hashlib.sha256(item_key(item).encode()).hexdigest()[:16]


def legacy_item_id(item: ScoredItem) -> str | None:
    """The id a streamed sampler item had before streams existed (0.1.0), else None. Such a
    stored record is the same item when its ``legacy_key`` matches the item's."""
    meta = item.metadata or {}
    if item.index is None or not meta.get("stream"):
        return None
    key = f"{meta.get('pack_hash') or ''}:{int(item.index)}"
    if "batch_index" in (item.extra or {}):
        key = f"item_id:{key}:{item.extra['batch_index']}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def legacy_key(meta: dict) -> tuple:
    """What a 0.1.0 record is matched on: its sampler metadata's (base seed, mode); its class
    subset was not recorded."""
    return meta.get("base_seed"), meta.get("mode")


def in_stream(rec: dict, pack_hash: str | None, key: StreamKey | None) -> bool:
    """Whether a stored record holds an index of this pack (any pack when None) and stream (any
    stream when None)."""
    if rec.get("index") is None or (pack_hash is not None and rec.get("pack_hash") != pack_hash):
        return False
    if key is None:
        return True
    if rec.get("stream"):
        return rec["stream"] == key.stream
    return legacy_key(rec.get("metadata") or {}) == (key.base_seed, key.mode)
