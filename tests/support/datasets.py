"""Dataset test helpers: tiny deterministic ScoredItems and a dataset consistency check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store import manifest, masks
from dtgen.nodes.store.reconcile import _image_files  # the same walk reconcile makes

LABELS = ("cat", "dog", "tea cup")


def make_item(i: int, labels=LABELS, size: int = 8, accepted=None, pack_hash: str = "ph1") -> ScoredItem:
    rng = np.random.default_rng(i)
    return ScoredItem(
        image=rng.random((size, size, 3), dtype=np.float32), label=labels[i % len(labels)],
        prompt=f"a photo of item {i}", negative="blurry", seed=1000 + i, index=i,
        metadata={"pack": "test", "pack_hash": pack_hash}, score=float(0.2 + 0.01 * (i % 17)),
        threshold=0.25, method="mean_std", accepted=(i % 4 != 0) if accepted is None else accepted,
        reason="ok", embedding=rng.standard_normal(4).astype(np.float32),
    )


def make_items(indices, **kw) -> list[ScoredItem]:
    return [make_item(i, **kw) for i in indices]


def check_consistent(dataset_dir: Path) -> dict[str, dict]:
    """Assert the invariants reconcile promises; returns the live records by id."""
    read = manifest.read(dataset_dir)
    assert read.partial_tail == b"" and read.bad_lines == []
    view = manifest.live(read.records)
    files = _image_files(Path(dataset_dir))
    recorded = {r["file"] for r in view.values()}
    assert recorded == set(files), (recorded ^ set(files))
    # instance masks: every recorded mask is on disk, every mask on disk is recorded (a dataset
    # without masks: both sides empty)
    recorded_masks = {r["mask"] for r in view.values() if r.get("mask")}
    mask_files = masks.mask_files(Path(dataset_dir))
    assert recorded_masks == set(mask_files), (recorded_masks ^ set(mask_files))
    for rec in view.values():
        tree = rec["file"].split("/")[0]
        assert tree == ("images" if rec["decision"] == "accepted" else "rejected")
    temps = [p for p in Path(dataset_dir).rglob(".*.tmp-*")]
    assert temps == []
    rows = [json.loads(x) for x in (Path(dataset_dir) / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sorted("images/" + r["file_name"] for r in rows) == sorted(
        r["file"] for r in view.values() if r["decision"] == "accepted")
    return view
