"""DTGen Dataset Finalize with ``split_folders`` through the HTTP API: ``splits/<split>/<label>/``
holds exactly each split's accepted images, read back with torchvision's ImageFolder."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from dtgen.nodes.store.writer import DatasetWriter

from support.datasets import check_consistent, make_items
from support.graphs import run_ok


def finalize_graph(name: str, split: str, **extra) -> dict:
    return {"1": {"class_type": "DTGenDatasetFinalize", "inputs": {
        "dataset_name": name, "redecide": False, "method": "mean_std", "k": 1.5, "keep_percent": 90.0,
        "fixed_threshold": 0.25, "min_count": 2, "split": split, **extra}}}


def test_finalize_node_builds_split_folders(client, comfy_server):
    torchvision = pytest.importorskip("torchvision")
    ds = comfy_server.output_dir / "e2e_split_folders"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(60)))
    for split in ("0.6,0.2,0.2", "0.8,0.1,0.1"):   # a second run rebuilds the tree with the new split
        result = run_ok(client, finalize_graph(ds.name, split, split_folders=True))
        report = json.loads((ds / "report" / "report.json").read_text())
        want: dict[str, Counter] = {}
        for rec in check_consistent(ds).values():
            if rec["decision"] == "accepted":
                want.setdefault(rec["split"], Counter())[rec["label_dir"]] += 1
        assert report["split"]["fractions"] == dict(zip(("train", "val", "test"), map(float, split.split(","))))
        assert report["split_folders"]["images"] == {n: sum(want[n].values()) for n in ("train", "val", "test")}
        assert report["split_folders"]["copied"] == 0   # hard links on one file system
        for name in ("train", "val", "test"):
            folder = torchvision.datasets.ImageFolder(str(ds / "splits" / name), allow_empty=True)
            assert Counter(folder.classes[t] for _, t in folder.samples) == want[name], (split, name)
        assert not [p for p in ds.iterdir() if p.name.startswith(".splits")]
        assert result.outputs("1").get("images"), "finalize shows its plot as a preview"


def test_split_folders_defaults_off(client, comfy_server):
    ds = comfy_server.output_dir / "e2e_no_split_folders"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(12)))
    run_ok(client, finalize_graph(ds.name, "0.5,0.5"))   # a saved graph without the new input
    assert not (ds / "splits").exists()
    assert json.loads((ds / "report" / "report.json").read_text())["split_folders"] is None
