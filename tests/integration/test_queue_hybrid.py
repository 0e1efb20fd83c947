"""The queue client on the hybrid template (real ComfyUI on CPU, tiny SD3 + LoRA, the fixture
cutout and background sets): ``--quota 4 --mix sd:1,copy_paste:1`` makes 2 SD images and 2
copy-paste images (with instance masks) per class, each source counted on its own; run again,
nothing more is made."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
from PIL import Image
from support.datasets import check_consistent
from support.fixtures import CUTOUT_SET
from support.graphs import example_api
from support.pkg import ROOT

RUNNER = [sys.executable, str(ROOT / "runner"), "queue"]
CLASSES = ("plate_clean", "plate_heavily_dirty")   # the fixture cutout set has exactly these


def hybrid_workflow(tmp_path):
    graph = example_api("dtgen_hybrid_copy_paste")
    for node in graph.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = 64
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    assert graph["14"]["inputs"]["cutouts"] == CUTOUT_SET
    path = tmp_path / "hybrid.json"
    path.write_text(json.dumps(graph))
    return path


def queue(args, tmp_path, timeout=900):
    done = subprocess.run([*RUNNER, *map(str, args)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr


def test_hybrid_template_with_mix_fills_each_source_to_its_share(comfy_server, tmp_path):
    ds = comfy_server.output_dir / "qh_hybrid"
    args = [hybrid_workflow(tmp_path), "--server", comfy_server.url, "--quota", 4, "--mix", "sd:1,copy_paste:1",
            "--set", "1.classes=" + ",".join(CLASSES), "--dataset", "qh_hybrid"]
    rc, out, err = queue(args, tmp_path)
    assert rc == 0, err + comfy_server.log()[-4000:]

    records = list(check_consistent(ds).values())   # images and masks on disk match the manifest
    accepted = Counter((r["source"], r["label"]) for r in records if r["decision"] == "accepted")
    assert accepted == {(source, label): 2 for source in ("generated", "copy_paste") for label in CLASSES}, records
    keys = [(r["stream"], r["index"]) for r in records]
    assert len(keys) == len(set(keys))
    for r in records:
        if r["source"] == "copy_paste":
            assert r["mask"] and r["instances"] and all(i["label"] == r["label"] for i in r["instances"])
            mask = np.asarray(Image.open(ds / r["mask"]))
            assert mask.shape == (128, 128) and {i["id"] for i in r["instances"]} <= set(np.unique(mask).tolist())
        else:
            assert not r.get("mask") and r["pack"] == "tableware"

    lines = out.splitlines()
    assert lines[0] == f"dataset: {ds}"
    assert "  sd (source generated):" in lines and "  copy_paste:" in lines
    assert "sd: plate_clean 2/2 plate_heavily_dirty 2/2 | copy_paste: plate_clean 2/2 plate_heavily_dirty 2/2" in err

    # run again: both sources are full; at most a copy-paste check runs, nothing is stored
    before = (ds / "manifest.jsonl").read_text()
    rc, out, err = queue(args, tmp_path, 300)
    assert rc == 0, err
    assert (ds / "manifest.jsonl").read_text() == before
    assert f"dataset: {ds}" in out
