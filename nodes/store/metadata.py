"""``images/metadata.jsonl``: per-image columns for Hugging Face ``datasets`` (imagefolder).

A derived view of the accepted records in the manifest: appended after each manifest append and
rewritten atomically by ``reconcile`` / ``finalize``. ``datasets`` builds its rows from this file
(then it infers no labels from folders), so every row carries ``label`` = the class folder name;
``.class_encode_column("label")`` turns it into a ClassLabel in the same order as torchvision.
Instance masks show as ``mask`` (path relative to ``images/``, ``../masks/<label>/<stem>.png``, or
null) and ``objects`` (the record's instances: id, label, bbox [x, y, w, h], area), so a
``datasets`` row carries what is needed to open its mask.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..common.records import GENERATED
from .fsio import append_durable, write_bytes_atomic
from .layout import IMAGES, METADATA

COLUMNS = ("prompt", "negative", "seed", "index", "pack", "score", "threshold", "method", "reason", "provisional")


def row(record: dict, depth: int = 1) -> dict:
    """The metadata row of an accepted record; ``depth`` = how many folders below the dataset the
    metadata file sits (``images/``: 1, ``splits/<split>/``: 2), for the relative mask path."""
    out = {"file_name": record["file"].split("/", 1)[1], "label": record["label_dir"], "label_text": record["label"]}
    out.update({k: record.get(k) for k in COLUMNS})
    out["source"] = record.get("source") or GENERATED   # older records: all generated
    out["id"] = record["id"]
    out["mask"] = "../" * depth + record["mask"] if record.get("mask") else None   # relative to the file
    out["objects"] = record.get("instances") or []   # records before masks have neither field
    if "split" in record:
        out["split"] = record["split"]
    return out


def _encode(records) -> bytes:
    return b"".join(
        (json.dumps(row(r), ensure_ascii=False) + "\n").encode("utf-8") for r in records if r["decision"] == "accepted"
    )


def append(dataset_dir, records) -> None:
    data = _encode(records)
    if data:
        append_durable(Path(dataset_dir) / IMAGES / METADATA, data)


def regenerate(dataset_dir, records) -> None:
    folder = Path(dataset_dir) / IMAGES
    folder.mkdir(exist_ok=True)
    write_bytes_atomic(folder / METADATA, _encode(records))
